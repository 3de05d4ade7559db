#!/usr/bin/env python
"""Train a DFC-VAE (VAE-123, VAE-345) or the pixel-loss PVAE on CelebA: ``python examples/dfcvae/train.py --help``.

The program is :mod:`dfcvae.train` (this script is its runner; ``python -m dfcvae.train`` from examples/dfcvae
is the same)."""
import sys

from dfcvae.train import main

if __name__ == "__main__":
    sys.exit(main())
