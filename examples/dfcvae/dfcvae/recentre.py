"""Re-centre a trained DFC-VAE's latent space on its aggregate posterior mean: a labelled post-training step, not
in the paper (issue 27).

    python -m dfcvae.recentre --checkpoint runs/vae345/checkpoint.pt --out runs/vae345/recentred.pt  # examples/dfcvae

With m the mean of the posterior means over the training split, the encoder's mean head gets bias − m and the
decoder's first linear layer bias + W·m: an exact reparameterisation z' = z − m. Every reconstruction is the same
(up to float rounding) and every posterior's KL to N(0, I) drops by ½|m|² on average, a strictly lower value of
the training objective with the architecture, α and β unchanged; prior samples z' ~ N(0, I) are the old model's
N(m, I) codes. The written checkpoint records ``config["recentred"]`` (|m|, the offset m itself, images, the
source), which the model card of an export keeps: with m known, the raw model's prior samples remain available
(decode z − m), so a report can show both.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the dfcvae package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "dfcvae"

import numpy as np
import torch

from dfcvae.celeba import DEFAULT_DATA, build_cache, load_celeba
from dfcvae.checkpointing import CheckpointError, read_checkpoint, save_atomic, vae_from_checkpoint
from dfcvae.latent import encode
from dfcvae.vae import VAE


def posterior_mean_offset(model: VAE, faces: np.ndarray) -> torch.Tensor:
    """m (latent,): the mean over ``faces`` ((N, 64, 64, 3) uint8) of the posterior means (eval-mode BN)."""
    return encode(model.eval(), faces).double().mean(0).float()


def recentred(model: VAE, m: torch.Tensor) -> VAE:
    """A copy of ``model`` with z' = z − m: encoder mean bias − m, decoder first linear bias + W·m."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.encoder.mean.bias -= m
        fc = out.decoder.fc[0]
        fc.bias += fc.weight @ m
    return out


def offset_record(m: torch.Tensor, images: int, source: Path) -> dict:
    """What a re-centred checkpoint records of its offset ``m`` (latent,): |m|, m (float32 values, as JSON
    numbers), how many training faces it was measured on and the source checkpoint."""
    return {"offset_norm": round(float(m.norm()), 4), "offset": [float(v) for v in m.float().tolist()],
            "images": images, "source": str(source)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint.pt")
    p.add_argument("--out", required=True, help="the re-centred checkpoint to write (never the input itself)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="CelebA folder (official layout): its train split")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    args = p.parse_args(argv)
    src, dst = Path(args.checkpoint), Path(args.out)
    if dst.exists() and (dst.resolve() == src.resolve() or not args.overwrite):
        print(f"error: {dst} exists; choose another --out{'' if dst.resolve() == src.resolve() else ' or add --overwrite'}",
              file=sys.stderr)
        return 2
    try:
        state = read_checkpoint(src)
        model = vae_from_checkpoint(state, src)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if state["config"].get("recentred"):
        print(f"error: {src} is already re-centred", file=sys.stderr)
        return 2
    train = load_celeba(args.data, verbose=False).split("train")
    faces = np.asarray(build_cache(train, state["config"].get("crop", "released"), 64, progress=False).images)
    m = posterior_mean_offset(model, faces)
    new = recentred(model, m)
    state = dict(state, model=new.state_dict(),
                 config=dict(state["config"], recentred=offset_record(m, len(faces), src)))
    save_atomic(state, dst)
    print(f"wrote {dst}: latent re-centred by |m| = {float(m.norm()):.3f} (mean posterior mean over {len(faces)} "
          "training faces); KL lower by about ½|m|² per sample, reconstructions unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
