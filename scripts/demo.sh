#!/usr/bin/env bash
# The main job on the embedded default: build the demo cohort, check it, train and evaluate the VQ-VAE.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO=${DEMO_DIR:-data/demo}
OUT=${OUTPUT_DIR:-runs/demo/vqvae}
EPOCHS=${DEMO_EPOCHS:-6}   # about 3 minutes on a 2-core CPU with the default network
MINUTES=${DEMO_MINUTES:-5} # a ceiling for slower machines: training stops at the last epoch that fits

.venv/bin/oasis-gen data demo "$DEMO"
.venv/bin/oasis-gen data check "$DEMO" -q
$PY -m monai.bundle run training --config_file bundle/configs/train.yaml \
    --dataset_dir "$DEMO" --output_dir "$OUT" --max_epochs "$EPOCHS" --time_limit_minutes "$MINUTES"
$PY -m monai.bundle run evaluating --config_file bundle/configs/evaluate.yaml \
    --dataset_dir "$DEMO" --output_dir "$OUT"

cat <<TXT

Done. Where to look:
  pictures     $OUT/pictures/ (reconstructions per validation), $OUT/evaluation/pictures/
  metrics      $OUT/evaluation/per_image.csv and summary.json
  checkpoints  $OUT/checkpoints/model.pt (best validation SSIM)
  MLflow UI    .venv/bin/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlruns/mlflow.db --host 127.0.0.1
               then open http://127.0.0.1:5000 (experiment "oasis-gen")
TXT
