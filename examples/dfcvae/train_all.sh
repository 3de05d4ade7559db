#!/usr/bin/env bash
# Train the three models of the paper one after another (the shipped pretrained/ models were made this way):
#   bash examples/dfcvae/train_all.sh OUT_ROOT [extra train.py arguments]
# Each run goes to OUT_ROOT/<preset> and is resumed from its checkpoint when one is there, so re-running the
# script after an interruption (or a kill) continues where it stopped. PYTHON selects the interpreter.
set -euo pipefail
root=${1:?usage: train_all.sh OUT_ROOT [train.py arguments]}
shift
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
source "$here/../../scripts/malloc_env.sh"  # glibc keeps freed memory: 8-18% more images/s on the CPU
for preset in ${PRESETS:-pvae vae123 vae345}; do
  out="$root/$preset"
  resume=()
  [ -f "$out/checkpoint.pt" ] && resume=(--resume)
  "$py" "$here/train.py" --preset "$preset" --out "$out" --epochs 5 --amp auto --channels-last --device cpu \
    "${resume[@]}" "$@"
done
