#!/usr/bin/env bash
# The main job on the embedded default: the demo pipeline (pipelines/demo.yaml). It builds the demo cohort, trains
# and evaluates the VQ-VAE, encodes the slices, trains the Gated PixelCNN prior on the codes, draws new slices,
# completes a test slice and runs inference on the test scans; then it prints where the pictures, metrics and the
# MLflow UI are. Finished stages are skipped on the next run (--force re-runs them).
#
#   bash scripts/demo.sh [--force] [--set vqvae_minutes=5 ...]     (extra arguments go to `oasis-gen pipeline run`)
#
# The variables below, when set, change the pipeline's variables of the same meaning.
set -euo pipefail
cd "$(dirname "$0")/.."
SETS=()
[ -n "${DEMO_DIR:-}" ] && SETS+=(--set "data_dir=$DEMO_DIR")
[ -n "${RUNS_DIR:-}" ] && SETS+=(--set "runs_dir=$RUNS_DIR")
[ -n "${DEMO_EPOCHS:-}" ] && SETS+=(--set "vqvae_epochs=$DEMO_EPOCHS")
[ -n "${DEMO_MINUTES:-}" ] && SETS+=(--set "vqvae_minutes=$DEMO_MINUTES")
[ -n "${DEMO_PRIOR_MINUTES:-}" ] && SETS+=(--set "prior_minutes=$DEMO_PRIOR_MINUTES")
exec .venv/bin/oasis-gen pipeline run pipelines/demo.yaml ${SETS[@]+"${SETS[@]}"} "$@"
