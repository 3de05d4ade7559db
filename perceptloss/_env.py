"""The ``PERCEPTLOSS_*`` environment variables: the one table of them, and how a flag is read.

**At run time** the package reads these four (a flag is on when set to anything but ``""``, ``0`` or
``false``):

| Variable | Default | Effect |
|---|---|---|
| ``PERCEPTLOSS_HOME`` | ``$XDG_CACHE_HOME/perceptloss`` (``~/.cache/perceptloss``) | where weights are cached (its ``weights/`` folder) |
| ``PERCEPTLOSS_OFFLINE`` | off | never download (weights, and timm's Hugging Face Hub); ``HF_HUB_OFFLINE=1`` does the same |
| ``PERCEPTLOSS_NO_EXT_WARNING`` | off | no ``FusedOperatorUnavailableWarning`` at import when the operator is not built |
| ``PERCEPTLOSS_DISABLE_EXT`` | off | do not load the built operator (``HAS_EXT`` is False): for tests of the pure-PyTorch path |

**At build time** ``setup.py`` (``pip install``) reads three more, besides torch's ``FORCE_CUDA``,
``CUDA_HOME``, ``TORCH_CUDA_ARCH_LIST``, ``MAX_JOBS`` and ``USE_NINJA``:

| Variable | Default | Effect |
|---|---|---|
| ``PERCEPTLOSS_REQUIRE_EXT`` | off | a failed operator build fails the install (CI sets it) instead of installing the pure-PyTorch package |
| ``PERCEPTLOSS_NO_EXT`` | off | build the pure-PyTorch package only (then set ``PERCEPTLOSS_NO_EXT_WARNING=1`` where it runs) |
| ``PERCEPTLOSS_CPU_LEVELS`` | every level of ``csrc/ops/cpu/kernels/cpu_levels.txt`` | the CPU kernel levels to compile, e.g. ``DEFAULT,AVX2`` |

The scripts add one of their own: ``PERCEPTLOSS_NO_CUDA=1`` makes ``scripts/setup_venv.sh`` build without the
CUDA kernels (``scripts/demo.sh`` sets it).
"""
from __future__ import annotations

import os


def flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to anything but ``""``, ``0`` or ``false``."""
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false")
