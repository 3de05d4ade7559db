#!/usr/bin/env python
"""Every experiment of the paper from trained models: ``python examples/dfcvae/report.py --pretrained``.

The program is :mod:`dfcvae.report` (this script is its runner; ``python -m dfcvae.report``)."""
import sys

from dfcvae.report import main

if __name__ == "__main__":
    sys.exit(main())
