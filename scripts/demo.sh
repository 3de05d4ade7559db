#!/usr/bin/env bash
# The demo: make a virtualenv (.venv-demo), install perceptloss + the example's needs, train a short VAE-123 on
# the CelebA data (default ../shared/data/celeba; DATA=/path/to/celeba to change) on the CPU, then write a gallery
# from the shipped, fully trained models (examples/dfcvae/pretrained) in a few seconds.
# Size: 8,192 training images x 2 epochs = 256 steps of 64, with a time budget for the whole demo (TIME_BUDGET,
# default 330 s, the virtualenv build included): training stops (with a checkpoint, grids and the gallery as usual)
# when its share runs out, so the demo stays under 6 minutes on every CPU while a fast one gets the whole run;
# `make demo` again continues it. --amp auto picks bf16 autocast only where the CPU has
# AVX512-BF16/AMX, float32 elsewhere (emulated bf16 is ~15x slower: 47-51 s per step on a Zen 3, where the former
# demo took 3.5 hours). Training step in train.py, batch 64, channels_last, 2 threads (2026-12-01, quiet spells of a
# shared machine; the Zen 3 figure is issue 17's, fp32, measured with older code):
#   AMD EPYC (AVX-512, AVX512-BF16), auto = bf16                                   0.39 s/step (165 img/s): all 256 steps, ~100 s
#   the same CPU as AVX2-only (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), auto = fp32  1.0 s/step: ~180 steps
#     (forcing bf16 there, as this script used to: 12.3 s/step)
#   AMD EPYC Zen 3, AVX2 only, fp32                                                2.1 s/step (30 img/s): ~85 steps
# plus start-up and face decoding (10-20 s) and 5-15 s for the gallery; the first run also builds .venv-demo.
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
# TIME_BUDGET is the whole demo's (default 330 s), the virtualenv build included: training gets what is left after
# the build, less a reserve for its start-up (face decoding) and the gallery, and at least 20 s.
budget=${TIME_BUDGET:-330}
case "$budget" in ''|*[!0-9]*) echo "TIME_BUDGET must be a whole number of seconds, got '$budget'" >&2; exit 2 ;; esac
reserve=45
train_budget=$((budget - SECONDS - reserve))
((train_budget < 20)) && train_budget=20
echo "== $SECONDS s spent on the set-up; training budget ${train_budget} s (TIME_BUDGET=${budget} s for the whole demo)"
"$venv/bin/python" examples/dfcvae/train.py --preset vae123 --data "$data" --subset 8192 --epochs 2 --amp auto \
  --channels-last --device cpu --time-budget "$train_budget" --out "$out" "${resume[@]}" "$@"
echo "demo training done (run make demo again to continue an unfinished run): reconstructions and samples in $out/grids, log in $out/log.csv, checkpoint $out/checkpoint.pt"
"$venv/bin/python" examples/dfcvae/gallery.py --data "$data" --out "$out/gallery"
