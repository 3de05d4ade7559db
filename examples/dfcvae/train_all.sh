#!/usr/bin/env bash
# Train the three models of the paper one after another on the paper's schedule, then re-centre each (the shipped
# pretrained/ models were made this way, with --amp bf16 on an AMX CPU):
#   bash examples/dfcvae/train_all.sh OUT_ROOT [extra train.py arguments]
# Each run goes to OUT_ROOT/<preset> (snapshots every 1,000 steps for dfcvae.trajectory) and is resumed from its
# checkpoint when one is there, so re-running the script after an interruption (or a kill) continues where it
# stopped; OUT_ROOT/<preset>/recentred.pt is then what `pretrained.py export --checkpoint` takes. 12,715 steps of
# 64 with the learning rate halved every 2,543 steps: the paper's 5 epochs of 162,770 images and its per-epoch
# halving. PYTHON selects the interpreter; DATA the CelebA folder (default: train.py's).
set -euo pipefail
root=${1:?usage: train_all.sh OUT_ROOT [train.py arguments]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
data=(); [ -n "${DATA:-}" ] && data=(--data "$DATA")
source "$here/../../scripts/malloc_env.sh"  # glibc keeps freed memory: 8-18% more images/s on the CPU
for preset in ${PRESETS:-pvae vae123 vae345}; do
  out="$root/$preset"
  resume=()
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  "$py" "$here/train.py" --preset "$preset" --out "$out" "${data[@]}" --epochs 28 --max-steps 12715 \
    --halve-lr-every 2543 --keep-every 1000 --amp auto --channels-last --device cpu "${resume[@]}" "$@"
  (cd "$here" && PYTHONPATH=. "$py" -m dfcvae.recentre "${data[@]}" --checkpoint "$out/checkpoint.pt" \
    --out "$out/recentred.pt" --overwrite)
done
