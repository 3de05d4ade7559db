"""Image files to RGB float32 tensors in [0, 1], by one stated policy (``DECODING_POLICY``).

The policy (also in ``python -m perceptloss score --help``):

- 8-bit RGB: value / 255. 8-bit grey (``L``) and bilevel (``1``) images: the grey value copied to R, G and B.
- 16-bit grey (PNG/TIFF ``I;16`` / ``I``): value / 65535, copied to R, G and B. 16-bit-per-channel colour PNGs:
  Pillow reads them at 8 bits per channel (a warning says so once).
- Alpha (``RGBA``, ``LA``, palette transparency): dropped; the colour channels are used as stored, not
  composited over any background.
- Palette (``P``) images: expanded through their palette to RGB. CMYK / YCbCr / LAB: Pillow's conversion to RGB.
- EXIF orientation is not applied (pixels as stored); animated files: the first frame.
- Floating-point images (``F``) are refused (their range is unknown): save them as 8- or 16-bit files.
- A header that claims more pixels than Pillow opens without a warning (``PIL.Image.MAX_IMAGE_PIXELS``, about
  89 million: a decompression bomb, or an image too large to score whole) makes the file unreadable, as does any
  error of Pillow's parsers on a damaged or hostile file.

Two images of a pair of different sizes are an error unless ``resize`` (the distorted image resampled to the
reference's size with a named Pillow filter, in float32, per channel, clipped to [0, 1]) or ``crop="center"``
(both cropped to the common size, centred) is given.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import ScoreError

DECODING_POLICY = (
    "Images become RGB in [0, 1]: 8-bit / 255; grey and bilevel copied to R, G, B; 16-bit grey / 65535 (16-bit "
    "colour PNGs are read at 8 bits by Pillow, with a warning); alpha and palette transparency dropped (colour "
    "as stored, not composited); palette images expanded to RGB; CMYK/YCbCr converted by Pillow; EXIF "
    "orientation not applied; first frame of animations; floating-point (mode F) images refused; a header "
    "claiming more than PIL.Image.MAX_IMAGE_PIXELS (89 million) pixels is an unreadable file."
)

#: ``--resize`` filters: Pillow's resampling filters by name.
RESIZE_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
CROPS = ("center",)

_SIXTEEN_BIT_COLOUR_WARNED = False


class DecodeError(ScoreError):
    """A file that cannot be read as an image (corrupt, truncated, unsupported); the message names it."""


def _open(path: Path):
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"cannot read {path}: its header claims more pixels than Pillow opens without a warning "
                          f"({e}); a damaged or hostile file, or an image too large to score whole: split it into "
                          f"smaller files") from None
    except Exception as e:  # the file is data: whatever its parser raises, the file cannot be read
        raise DecodeError(f"cannot read {path}: {_reason(e, path)}") from None


def _reason(error: Exception, path: Path) -> str:
    """The error's message, with its type where the message alone does not say what went wrong (Pillow's
    ``repr`` of the path written as the path itself, so that a name that is not UTF-8 reads the same in both)."""
    text = str(error).replace(repr(str(path)), f"'{path}'")
    if isinstance(error, (OSError, ValueError, SyntaxError, EOFError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header (no decoding); DecodeError for an unreadable file."""
    with _open(path) as img:
        width, height = img.size
    if width < 1 or height < 1:
        raise DecodeError(f"cannot read {path}: it has no pixels ({width}x{height})")
    return height, width


def _png_bit_depth(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def decode(path: Path) -> np.ndarray:
    """The image at ``path`` as an (H, W, 3) float32 array in [0, 1] by the module's policy; DecodeError else
    (for any error while decoding it: a damaged or hostile file never stops the run)."""
    try:
        return _decode(path)
    except DecodeError:
        raise
    except Exception as e:  # the file is data: whatever its decoder raises (MemoryError too), it cannot be read
        raise DecodeError(f"cannot decode {path}: {_reason(e, path)}") from None


def _decode(path: Path) -> np.ndarray:
    global _SIXTEEN_BIT_COLOUR_WARNED

    with _open(path) as img:
        img.seek(0)
        img.load()
        mode = img.mode
        if mode == "F":
            raise DecodeError(f"{path} is a floating-point image (mode F) of unknown range; save it as an 8- or 16-bit file")
        if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            grey = np.asarray(img, dtype=np.float64)
            if grey.size and (grey.min() < 0 or grey.max() > 65535):
                raise DecodeError(f"{path} is a 32-bit integer image with values outside 0..65535; save it as 8 or 16 bits")
            rgb = np.repeat((grey / 65535.0).astype(np.float32)[..., None], 3, axis=2)
            return np.ascontiguousarray(rgb)
        if mode in ("RGB", "RGBA") and not _SIXTEEN_BIT_COLOUR_WARNED and _png_bit_depth(path) == 16:
            _SIXTEEN_BIT_COLOUR_WARNED = True
            warnings.warn(f"{path} is a 16-bit colour PNG: Pillow reads it at 8 bits per channel", stacklevel=3)
        if mode == "P":
            img = img.convert("RGBA")
        if mode in ("1", "L", "LA"):
            grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        return np.asarray(rgb, dtype=np.float32) / 255.0


def resample(image: np.ndarray, size: tuple[int, int], filter_name: str) -> np.ndarray:
    """(H, W, 3) float32 -> (size[0], size[1], 3) with Pillow's ``filter_name``, per channel in float32, clipped to [0, 1]."""
    from PIL import Image

    if filter_name not in RESIZE_FILTERS:
        raise ScoreError(f"--resize must be one of {', '.join(RESIZE_FILTERS)}, got {filter_name!r}")
    resampling = getattr(Image.Resampling, filter_name.upper())
    height, width = size
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F").resize((width, height), resampling))
        for c in range(3)
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0).astype(np.float32)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centred (size[0], size[1]) window of an (H, W, 3) array (H >= size[0], W >= size[1])."""
    top, left = (image.shape[0] - size[0]) // 2, (image.shape[1] - size[1]) // 2
    return image[top:top + size[0], left:left + size[1]]


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 array -> (3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
