#!/usr/bin/env python
"""Export a trained model or verify the shipped ones: ``python examples/dfcvae/pretrained.py export|verify --help``.

The program is :mod:`dfcvae.pretrained` (this script is its runner; ``python -m dfcvae.pretrained``)."""
import sys

from dfcvae.pretrained import main

if __name__ == "__main__":
    sys.exit(main())
