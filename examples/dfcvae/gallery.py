#!/usr/bin/env python
"""A few figures from the shipped models in seconds: ``python examples/dfcvae/gallery.py --out gallery/``.

The program is :mod:`dfcvae.gallery` (this script is its runner; ``python -m dfcvae.gallery``)."""
import sys

from dfcvae.gallery import main

if __name__ == "__main__":
    sys.exit(main())
