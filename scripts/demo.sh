#!/usr/bin/env bash
# The demo: make a virtualenv (.venv-demo), install perceptloss + the example's needs, and train a short
# VAE-123 on the CelebA data (default ../shared/data/celeba; DATA=/path/to/celeba to change) on the CPU:
# 8,192 training images, 2 epochs, bf16 autocast + channels_last, about 4-6 minutes on 2 cores.
# Output (grids, log, checkpoint): runs/demo-vae123 (OUT=... to change). Extra arguments go to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-demo}
PERCEPTLOSS_NO_CUDA=${PERCEPTLOSS_NO_CUDA:-1} bash scripts/setup_venv.sh "$venv" pillow tqdm matplotlib tensorboard
out=${OUT:-runs/demo-vae123}
"$venv/bin/python" examples/dfcvae/train.py --preset vae123 --data "${DATA:-../shared/data/celeba}" \
  --subset 8192 --epochs 2 --amp bf16 --channels-last --device cpu --out "$out" "$@"
echo "demo finished: reconstructions and samples in $out/grids, log in $out/log.csv, checkpoint $out/checkpoint.pt"
