#!/usr/bin/env bash
# The main job on the embedded default: build and check the demo cohort, train and evaluate the VQ-VAE,
# train the Gated PixelCNN prior on its codes, then draw new slices and complete a test slice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO=${DEMO_DIR:-data/demo}
RUNS=${RUNS_DIR:-runs/demo}
EPOCHS=${DEMO_EPOCHS:-6}               # about 3 minutes on a 2-core CPU with the default network
MINUTES=${DEMO_MINUTES:-5}             # a ceiling for slower machines: training stops at the last epoch that fits
PRIOR_MINUTES=${DEMO_PRIOR_MINUTES:-3}

.venv/bin/oasis-gen data demo "$DEMO"
.venv/bin/oasis-gen data check "$DEMO" -q
$PY -m monai.bundle run training --config_file bundle/configs/train.yaml \
    --dataset_dir "$DEMO" --output_dir "$RUNS/vqvae" --max_epochs "$EPOCHS" --time_limit_minutes "$MINUTES"
$PY -m monai.bundle run evaluating --config_file bundle/configs/evaluate.yaml \
    --dataset_dir "$DEMO" --output_dir "$RUNS/vqvae"
$PY -m monai.bundle run training --config_file bundle/configs/train_prior.yaml \
    --dataset_dir "$DEMO" --vqvae_ckpt "$RUNS/vqvae/checkpoints/model.pt" --output_dir "$RUNS/prior" \
    --max_epochs 4 --time_limit_minutes "$PRIOR_MINUTES"
SCAN=$(ls "$DEMO"/keras_png_slices_test/*slice_16.nii.png | head -n 1)
$PY -m monai.bundle run sampling --config_file bundle/configs/sample.yaml \
    --prior_ckpt "$RUNS/prior/checkpoints/model.pt" --output_dir "$RUNS/samples" --num_samples 16 \
    --complete_scan "$SCAN" --region bottom_half

cat <<TXT

Done. Where to look:
  reconstructions  $RUNS/vqvae/pictures/ and $RUNS/vqvae/evaluation/pictures/
  metrics          $RUNS/vqvae/evaluation/per_image.csv and summary.json (test SSIM, PSNR, MSE per slice)
  prior samples    $RUNS/prior/pictures/ (each validation), $RUNS/samples/grid.png (new slices and code maps)
  completion       $RUNS/samples/completion/grid.png (original | masked | completions of the bottom half)
  MLflow UI        .venv/bin/mlflow ui --backend-store-uri sqlite:///$(pwd)/mlruns/mlflow.db --host 127.0.0.1
                   then open http://127.0.0.1:5000 (experiment "oasis-gen")
TXT
