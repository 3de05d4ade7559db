#!/usr/bin/env bash
# The demo: make a virtualenv (.venv-demo), install perceptloss + the example's needs, train a short VAE-123 on
# the CelebA data (default ../shared/data/celeba; DATA=/path/to/celeba to change) on the CPU (8,192 training
# images, 2 epochs, bf16 autocast + channels_last, about 4-5 minutes on 2 cores), then write a gallery from the
# shipped, fully trained models (examples/dfcvae/pretrained) in a few seconds.
# Output: runs/demo-vae123 (OUT=... to change): grids/, log.csv, checkpoint.pt, gallery/gallery.md.
# Running it again continues (or, when finished, just re-draws) the same run; extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-demo}
data=${DATA:-../shared/data/celeba}
PERCEPTLOSS_NO_CUDA=${PERCEPTLOSS_NO_CUDA:-1} bash scripts/setup_venv.sh "$venv" pillow tqdm matplotlib tensorboard
out=${OUT:-runs/demo-vae123}
resume=()
source scripts/malloc_env.sh  # measured +18% images/s for this step (see the file)
if [ -f "$out/checkpoint.pt" ]; then
  echo "== $out already holds a demo run: continuing it (delete the folder, or set OUT=..., for a fresh one)"
  resume=(--resume)
fi
"$venv/bin/python" examples/dfcvae/train.py --preset vae123 --data "$data" --subset 8192 --epochs 2 --amp bf16 \
  --channels-last --device cpu --out "$out" "${resume[@]}" "$@"
echo "demo training finished: reconstructions and samples in $out/grids, log in $out/log.csv, checkpoint $out/checkpoint.pt"
"$venv/bin/python" examples/dfcvae/gallery.py --data "$data" --out "$out/gallery"
