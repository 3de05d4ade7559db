r"""Exact tiled evaluation: ``tiled(loss, tile=N)`` gives ``loss(input, target)`` in memory bounded by the tile.

The network sees one crop of at most ``tile`` x ``tile`` pixels at a time. Each crop is a tile's *interior*
(the pixels whose features it contributes) plus a *halo* of real neighbouring pixels that covers the receptive
field of the deepest tapped layer, so that the interior's features are exactly the whole image's:

- the halo and the alignment come from the network's own layers (convolutions, pools, L2 pools, BlurPools
  (their reflection padding, like zero padding, is the whole image's at its border), Fire modules;
  activations and batch norm are pointwise): each crop starts on a multiple of the product of the strides up
  to the deepest tap (16 for relu5_x of VGG), so every layer's grid is the whole image's grid shifted by a whole
  number of cells; a crop at the image border keeps that border, so the network's own zero padding there is
  reproduced; every tile's interior is checked, layer by layer, to depend only on real pixels or on the
  whole image's own padding;
- each layer's feature map is cut into disjoint owned windows (one per tile), and the loss is accumulated
  from them as the loss's criterion says (``perceptloss.criteria``, ``Criterion.tiling``): "local" criteria
  as means of local terms with their counts (FeatureLoss with every distance, LPIPS; a spatial criterion's
  per-layer maps are stitched before the bilinear upsampling), "pooled" ones as sums of their pooled
  statistics (StyleLoss: F F^T), "paired" ones from sums over both images' features (DISTS: per-channel sums
  of x, y, x^2, y^2 and xy in float64, from which its means, variances and covariances follow). A criterion
  that does not say how it tiles is refused.

Gradients flow: the forward pass keeps no activations; the backward pass recomputes one tile at a time and
backpropagates its share (a custom autograd function; not twice differentiable). ``set_target`` targets are
used as they are (the kept features are cropped per tile; kept Gram matrices are compared whole).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ._base import PerceptualLoss
from ._signature import format_signature, parse_signature
from ._sizes import pair
from .backbones.sequential import SequentialFeatures
from .backbones.blurpool import BlurPool2d
from .backbones.vgg_l2pool import L2Pool2d

__all__ = ["tiled", "TiledLoss"]

#: Layers that act on each position alone (the loss networks are always in eval mode).
_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout2d,
    nn.BatchNorm2d,
)


class _Opaque(Exception):
    """The receptive field of a network cannot be derived from its layers (the message says which)."""


# ------------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class _Op:
    """One spatial operation along one axis: a window of ``kernel`` taps ``dilation`` apart, every ``stride``."""

    kernel: int
    stride: int
    padding: int
    dilation: int = 1
    ceil: bool = False

    @property
    def extent(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def out_size(self, n: int) -> int:
        """Output length for an input of length ``n`` (PyTorch's rule, ceil mode included); <= 0: too small."""
        num = n + 2 * self.padding - self.extent
        if num < 0:
            return 0
        if not self.ceil:
            return num // self.stride + 1
        out = -(-num // self.stride) + 1
        if (out - 1) * self.stride >= n + self.padding:
            out -= 1
        return out


AxisOps = list[_Op]


def _module_ops(m: nn.Module) -> list[tuple[_Op, _Op]]:
    """The (height, width) operations of one trunk module, in order; _Opaque for a module it cannot analyse."""
    if isinstance(m, nn.Sequential):
        return [op for child in m for op in _module_ops(child)]
    if isinstance(m, _POINTWISE):
        return []
    if isinstance(m, nn.Conv2d):
        if isinstance(m.padding, str) and m.padding != "valid":
            raise _Opaque(f"a Conv2d with padding={m.padding!r}")
        if m.padding_mode == "circular":
            raise _Opaque("a Conv2d with circular padding (its border outputs read the opposite border)")
        pad = (0, 0) if isinstance(m.padding, str) else pair(m.padding)
        k, s, d = pair(m.kernel_size), pair(m.stride), pair(m.dilation)
        return [(_Op(k[0], s[0], pad[0], d[0]), _Op(k[1], s[1], pad[1], d[1]))]
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k = pair(m.kernel_size)
        s = pair(m.stride if m.stride is not None else m.kernel_size)
        p = pair(m.padding)
        d = pair(getattr(m, "dilation", 1))
        return [(_Op(k[0], s[0], p[0], d[0], m.ceil_mode), _Op(k[1], s[1], p[1], d[1], m.ceil_mode))]
    if isinstance(m, (L2Pool2d, BlurPool2d)):  # a depthwise window; BlurPool's reflection padding, like zero
        k = int(m.window.shape[-1])  # padding, reads only the image's own border pixels, which border tiles keep
        return [(_Op(k, m.stride, m.padding), _Op(k, m.stride, m.padding))]
    if type(m).__name__ == "Fire" and all(hasattr(m, a) for a in ("squeeze", "expand1x1", "expand3x3")):
        one = [op for c in (m.squeeze, m.expand1x1) for op in _module_ops(c)]
        if any(op != _Op(1, 1, 0) for axes in one for op in axes):
            raise _Opaque("a Fire module whose 1x1 convolutions are not 1x1, stride 1, unpadded")
        three = _module_ops(m.expand3x3)
        if len(three) != 1 or any(op.stride != 1 or 2 * op.padding != op.extent - 1 for op in three[0]):
            raise _Opaque("a Fire module whose 3x3 branch is not centred with stride 1")
        return three  # two parallel centred branches: the 3x3 one has the larger window
    raise _Opaque(f"a {type(m).__name__} layer")


def _tap_ops(loss: PerceptualLoss) -> list[tuple[AxisOps, AxisOps]]:
    """For each of ``loss.layers``: the (height, width) operations from the image to that layer."""
    net = loss.net
    if not isinstance(net, SequentialFeatures):
        raise _Opaque(f"a {type(net).__name__} network")
    per_module = [_module_ops(m) for m in net.features]
    taps = []
    for i in net.taps:
        ops = [op for mod in per_module[: i + 1] for op in mod]
        taps.append(([h for h, _ in ops], [w for _, w in ops]))
    if loss.image_tap:
        taps.insert(0, ([], []))  # "layer 0": the image itself
    return taps


def receptive_field(ops: Sequence[_Op]) -> tuple[int, int, int]:
    """(stride, left padding, size) in input pixels of the last of ``ops`` along one axis."""
    jump, pad, size = 1, 0, 1
    for op in ops:
        size += (op.extent - 1) * jump
        pad += op.padding * jump
        jump *= op.stride
    return jump, pad, size


def _propagate(ops: Sequence[_Op], length: int, a: int, b: int) -> tuple[int, int, int, int, int] | None:
    """Follow the crop [a, b) of an axis of ``length`` through ``ops``.

    Returns (start, size, whole length, first exact, end of exact) of the last layer's map, in that layer's
    whole-image coordinates: positions in [first exact, end of exact) of the crop's map equal the whole image's
    (they read only real pixels of the crop, or the whole image's own padding). None: the crop is too small.
    """
    n, va, vb = b - a, a, b
    for op in ops:
        if a % op.stride:
            raise RuntimeError(f"perceptloss.tiling: a crop at {a} is not aligned to stride {op.stride}")
        n_out, length_out, a_out = op.out_size(n), op.out_size(length), a // op.stride
        if n_out <= 0:
            return None
        va_out = 0 if va == 0 else max(a_out, -(-(va + op.padding) // op.stride))
        if vb == length:
            vb_out = a_out + n_out
            if vb_out != length_out:
                raise RuntimeError("perceptloss.tiling: a crop at the image border does not end where the image does")
        else:
            vb_out = min(a_out + n_out, (vb + op.padding - op.extent) // op.stride + 1)
        a, n, length, va, vb = a_out, n_out, length_out, va_out, max(vb_out, va_out)
    return a, n, length, va, vb


@dataclass
class _Span:
    """One tile along one axis: its crop of the image, and per layer its owned window of the feature map."""

    crop: tuple[int, int]
    owned: list[tuple[int, int | None]]  # whole-map coordinates; None: to the end of the map
    local: list[tuple[int, int | None]]  # the same window in the crop's map


class _AxisGeometry:
    """The tapped layers along one axis: strides, halos and (when known) the operations themselves."""

    def __init__(self, ops: list[AxisOps] | None, strides: list[int]) -> None:
        self.ops = ops
        self.strides = strides
        self.align = math.lcm(*strides)

    def needed_halo(self) -> tuple[int, int]:
        """(left halo rounded up to the alignment, right halo) from the receptive fields."""
        left = right = 0
        for ops in self.ops or []:
            jump, pad, size = receptive_field(ops)
            left, right = max(left, pad), max(right, size - jump - pad)
        return -(-left // self.align) * self.align, right

    def sizes(self, length: int) -> list[int]:
        out = []
        for ops in self.ops:
            n = length
            for op in ops:
                n = op.out_size(n) if n > 0 else 0
            out.append(n)
        return out

    def plan(self, length: int, tile: int, left: int, right: int) -> list[_Span] | None:
        """Tiles covering [0, length) with crops of at most ``tile`` pixels; None: the halo is not enough."""
        s = self.align
        bounds = [0]
        if length > tile:
            t = 0
            while True:
                start = max(0, t - left)
                if start + tile >= length:
                    break
                u = ((start + tile - right) // s) * s
                if u <= t:
                    raise _TileTooSmall(left + right + s)
                bounds.append(u)
                t = u
            if len(bounds) > 1:  # balance the last two tiles (a sliver of a last tile helps nobody)
                prev, last = bounds[-2], bounds[-1]
                mid = prev + ((length - prev) // 2 // s) * s
                if prev < mid < last and length - max(0, mid - left) <= tile:
                    bounds[-1] = mid
        if self.ops is not None:
            sizes = self.sizes(length)
            if min(sizes) <= 0:
                return []  # too small for the network: the loss itself says so
            # every layer must own something in the last tile: move its start back (or merge) where needed
            while len(bounds) > 1 and any(bounds[-1] // st >= n for st, n in zip(self.strides, sizes)):
                bounds[-1] -= s
                if bounds[-1] <= bounds[-2]:
                    bounds.pop()
                if length - max(0, bounds[-1] - left) > tile:
                    raise _TileTooSmall(left + right + s)
        bounds.append(length)
        spans = []
        for t, u in zip(bounds[:-1], bounds[1:]):
            crop = (max(0, t - left), min(length, u + right))
            owned, local = [], []
            for k, st in enumerate(self.strides):
                g0 = t // st
                if self.ops is None:
                    g1 = None if u == length else u // st
                else:
                    n = self.sizes(length)[k]
                    g1 = n if u == length else min(u // st, n)
                    exact = _propagate(self.ops[k], length, *crop)
                    if exact is None or not (exact[3] <= g0 < g1 <= exact[4]):
                        return None
                off = crop[0] // st
                owned.append((g0, g1))
                local.append((g0 - off, None if g1 is None else g1 - off))
            spans.append(_Span(crop, owned, local))
        return spans


class _TileTooSmall(Exception):
    def __init__(self, minimum: int) -> None:
        super().__init__(minimum)
        self.minimum = minimum


# ------------------------------------------------------------------------------------------ the module


class _Tiles(torch.autograd.Function):
    """Sufficient statistics summed over tiles; the backward pass recomputes one tile at a time."""

    @staticmethod
    def forward(ctx, run: "_Run", x: torch.Tensor, y: torch.Tensor | None):  # type: ignore[override]
        ctx.run = run
        ctx.save_for_backward(x, y)
        return tuple(run.accumulate(x, y))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):  # type: ignore[override]
        x, y = ctx.saved_tensors
        gx, gy = ctx.run.backward(x, y, grads, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        return None, gx, gy


class _Run:
    """One call: the tiles of an (N', 3, H, W) image pair and the statistics of each."""

    def __init__(self, owner: "TiledLoss", kind: str, rows: list[_Span], cols: list[_Span], n: int) -> None:
        self.owner, self.kind, self.rows, self.cols, self.n = owner, kind, rows, cols, n
        self.areas: list[int] | None = None

    def tiles(self):
        return [(r, c) for r in self.rows for c in self.cols]

    def accumulate(self, x: torch.Tensor, y: torch.Tensor | None) -> list[torch.Tensor]:
        outs: list[torch.Tensor] | None = None
        areas = None
        with torch.no_grad():
            for r, c in self.tiles():
                window = (..., slice(*r.crop), slice(*c.crop))
                stats, tile_areas = self.owner._tile_stats(
                    self.kind, x[window], None if y is None else y[window], r, c, self.n
                )
                areas = tile_areas if areas is None else [a + b for a, b in zip(areas, tile_areas)]
                if outs is None:
                    outs = [self._place(k, s, r, c, None) for k, s in enumerate(stats)]
                else:
                    outs = [self._place(k, s, r, c, o) for k, (s, o) in enumerate(zip(stats, outs))]
        self.areas = areas
        return outs

    def _place(self, k: int, stat: torch.Tensor, r: _Span, c: _Span, out: torch.Tensor | None) -> torch.Tensor:
        if self.kind != "spatial":
            return stat if out is None else out + stat
        if out is None:
            out = stat.new_zeros(*stat.shape[:-2], self.rows[-1].owned[k][1], self.cols[-1].owned[k][1])
        out[..., r.owned[k][0]:r.owned[k][1], c.owned[k][0]:c.owned[k][1]] = stat
        return out

    def backward(self, x, y, grads, need_x: bool, need_y: bool):
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        for r, c in self.tiles():
            window = (..., slice(*r.crop), slice(*c.crop))
            with torch.enable_grad():
                xc = x[window].detach().requires_grad_(need_x)
                yc = None if y is None else y[window].detach().requires_grad_(need_y)
                stats, _ = self.owner._tile_stats(self.kind, xc, yc, r, c, self.n)
                pairs = []
                for k, (s, g) in enumerate(zip(stats, grads)):
                    if self.kind == "spatial":
                        g = g[..., r.owned[k][0]:r.owned[k][1], c.owned[k][0]:c.owned[k][1]]
                    if s.requires_grad:
                        pairs.append((s, g))
                leaves = [t for t, need in ((xc, need_x), (yc, need_y)) if need]
                if not pairs:
                    continue
                got = torch.autograd.grad([s for s, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
            got = list(got)
            if need_x:
                g = got.pop(0)
                if g is not None:
                    gx[window] += g
            if need_y:
                g = got.pop(0)
                if g is not None:
                    gy[window] += g
        return gx, gy


class TiledLoss(nn.Module):
    """``loss`` evaluated tile by tile: ``forward(input, target=None)`` equals ``loss(input, target)``.

    Built by ``perceptloss.tiled``; see there. ``per_layer`` equals ``loss.per_layer``. The wrapped loss is
    ``.loss`` (a submodule: ``.to()`` moves it).
    """

    def __init__(self, loss: PerceptualLoss, tile: int, halo: int | None = None) -> None:
        super().__init__()
        _check_loss(loss)
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
            raise ValueError(f"tile must be a whole number of pixels >= 1 (e.g. tile=512), got {tile!r}")
        if halo is not None and (isinstance(halo, bool) or not isinstance(halo, int) or halo < 0):
            raise ValueError(f"halo must be None (derived from the network) or a whole number of pixels >= 0, got {halo!r}")
        self.loss = loss
        self.tile = tile
        self.halo = halo
        try:
            taps = _tap_ops(loss)
        except _Opaque as e:
            if halo is None:
                raise ValueError(
                    f"perceptloss.tiled cannot tile {type(loss).__name__} exactly: it cannot derive the receptive "
                    f"field of its network ({e} is not a convolution, pool or pointwise layer it knows); pass "
                    f"halo=H, the pixels on each side of a tile that cover the receptive field of layer "
                    f"{loss.layers[-1]!r} (the network must then be translation-equivariant at its strides)"
                ) from None
            taps = None
        self._taps = taps
        self._measured: tuple[list[int], list[int]] | None = None

    # -------------------------------------------------------------------------------- planning

    def _geometry(self, device: torch.device) -> tuple[_AxisGeometry, _AxisGeometry]:
        if self._taps is not None:
            hs = [receptive_field(h)[0] for h, _ in self._taps]
            ws = [receptive_field(w)[0] for _, w in self._taps]
            return _AxisGeometry([h for h, _ in self._taps], hs), _AxisGeometry([w for _, w in self._taps], ws)
        if self._measured is None:
            self._measured = self._measure_strides(device)
        hs, ws = self._measured
        return _AxisGeometry(None, hs), _AxisGeometry(None, ws)

    def _measure_strides(self, device: torch.device) -> tuple[list[int], list[int]]:
        """Each tapped layer's stride, from the feature sizes of two probe images 64 pixels apart."""
        big = self.tile
        if big < 128:
            raise ValueError(f"with halo= for a network perceptloss cannot analyse, use tile >= 128 (got tile={self.tile})")
        lo = float(self.loss.input_range[0])
        with torch.no_grad():
            sizes = [
                [tuple(f.shape[-2:]) for f in self.loss.features(torch.full((1, 3, p, p), lo, device=device))]
                for p in (big, big - 64)
            ]
        strides: tuple[list[int], list[int]] = ([], [])
        for name, a, b in zip(self.loss.layers, *sizes):
            for axis in (0, 1):
                diff = a[axis] - b[axis]
                if diff <= 0 or 64 % diff:
                    raise ValueError(
                        f"perceptloss.tiled: layer {name!r} does not shrink by a whole stride dividing 64 between "
                        f"{big}- and {big - 64}-pixel probes ({a} vs {b}); this network cannot be tiled"
                    )
                strides[axis].append(64 // diff)
        return strides

    def _plan_axis(self, geo: _AxisGeometry, length: int, axis: str, halo: int | None) -> list[_Span]:
        if halo is not None:
            left, right = -(-halo // geo.align) * geo.align, halo
        else:
            left, right = geo.needed_halo()
        for _ in range(256):
            try:
                spans = geo.plan(length, self.tile, left, right)
            except _TileTooSmall as e:
                raise ValueError(
                    f"tile={self.tile} is too small for layer {self.loss.layers[-1]!r}: a tile needs a halo of "
                    f"{left} + {right} pixels ({axis}) around its interior, whose origins are multiples of "
                    f"{geo.align}; use tile >= {e.minimum}{'' if self._taps is None else ' or shallower layers'}"
                ) from None
            if spans is not None:
                return spans
            if halo is not None:
                self._plan_axis(geo, length, axis, None)
                raise ValueError(
                    f"halo={halo} does not cover the receptive field of layer {self.loss.layers[-1]!r} "
                    f"({axis}); use halo=None: perceptloss derives it from the network"
                )
            left, right = left + geo.align, right + geo.align
        raise RuntimeError("perceptloss.tiling: no halo found that covers the receptive field")  # pragma: no cover

    # -------------------------------------------------------------------------------- tiles

    def _kind(self) -> str:
        """"spatial" for a spatial criterion's maps, else the criterion's tiling mode."""
        criterion = self.loss.criterion
        return "spatial" if criterion.spatial else str(criterion.tiling)

    def _owned(self, feats: list[torch.Tensor], r: _Span, c: _Span) -> list[torch.Tensor]:
        return [f[..., slice(*r.local[k]), slice(*c.local[k])] for k, f in enumerate(feats)]

    def _kept_target(self, reprs: list[torch.Tensor], r: _Span, c: _Span, n: int) -> list[torch.Tensor]:
        """The set_target representation of this tile's owned windows, expanded as the loss does."""
        windows = [(slice(*r.owned[k]), slice(*c.owned[k])) for k in range(len(reprs))]
        return self.loss.fixed_target(reprs, n, windows=windows)

    def _tile_stats(self, kind, x, y, r: _Span, c: _Span, n: int) -> tuple[list[torch.Tensor], list[int]]:
        """The statistics of one tile, from its crops ``x``, ``y`` (y None: the set_target representation)."""
        loss, criterion = self.loss, self.loss.criterion
        fx = self._owned(loss.features(x), r, c)
        fy = None if y is None else self._owned(loss.features(y), r, c)
        areas = [f.shape[-2] * f.shape[-1] for f in fx]
        if kind == "pooled":
            pooled = [criterion.pooled_sums(f) for f in fx]
            return pooled + ([] if fy is None else [criterion.pooled_sums(f) for f in fy]), areas
        rx = loss.representation(fx)
        ry = self._kept_target(rx, r, c, n) if fy is None else loss.representation(fy)
        if kind == "paired":
            return [criterion.paired_sums(a, b) for a, b in zip(rx, ry)], areas
        if kind == "spatial":
            return criterion.maps(rx, ry), areas
        terms = loss.compare(rx, ry)
        return [terms * terms.new_tensor(areas)], areas

    def _statistics(self, kind: str, x: torch.Tensor, y: torch.Tensor | None, n: int):
        height, width = self._geometry(x.device)
        rows = self._plan_axis(height, x.shape[-2], "height", self.halo)
        cols = self._plan_axis(width, x.shape[-1], "width", self.halo)
        if not rows or not cols:
            return None, None
        run = _Run(self, kind, rows, cols, n)
        if torch.is_grad_enabled() and (x.requires_grad or (y is not None and y.requires_grad)):
            stats = list(_Tiles.apply(run, x, y))
        else:
            stats = run.accumulate(x, y)
        return stats, run.areas

    def _check_kept_target_size(self, x: torch.Tensor) -> None:
        if self._taps is None or self._kind() == "pooled":
            return
        h_geo, w_geo = self._geometry(x.device)
        kept = self.loss.fixed_representation
        for name, h, w, t in zip(self.loss.layers, h_geo.sizes(x.shape[-2]), w_geo.sizes(x.shape[-1]), kept):
            if tuple(t.shape[-2:]) != (h, w):
                raise ValueError(
                    f"layer {name}: the input gives maps of {(h, w)} but the target set with set_target gave "
                    f"{tuple(t.shape[-2:])}; use images of the target's size"
                )

    def _terms(self, input: torch.Tensor, target: torch.Tensor | None, kind: str):
        """(per-image terms before the merge, N) or (None, N) when one tile holds the images."""
        loss = self.loss
        n = input.shape[0] if isinstance(input, torch.Tensor) else 0
        if target is None:
            loss.check(input=input)
            if not loss.has_target:
                loss.fixed_target([], n)  # raises: no target
        else:
            loss.check(input=input, target=target)
        if input.shape[-2] <= self.tile and input.shape[-1] <= self.tile:
            return None, n
        x = loss.split_channels(input)
        y = None if target is None else loss.split_channels(target)
        if y is None:
            self._check_kept_target_size(x)
        stats, areas = self._statistics(kind, x, y, n)
        if stats is None:
            return None, n  # too small for the network: the loss itself says so
        criterion = loss.criterion
        if kind == "spatial":
            size = tuple(input.shape[-2:])
            return sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in stats), n
        if kind == "local":
            return stats[0] / stats[0].new_tensor(areas), n
        if kind == "pooled":
            c = len(areas)
            gx = [criterion.from_pooled_sums(g, a) for g, a in zip(stats[:c], areas)]
            gy = loss.fixed_target(gx, n) if target is None else [
                criterion.from_pooled_sums(g, a) for g, a in zip(stats[c:], areas)]
            return loss.compare(gx, gy), n
        return criterion.terms_from_paired_sums(stats, areas), n

    # -------------------------------------------------------------------------------- public

    def per_layer(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``loss.per_layer(input, target)``, tile by tile: (N, L) (or (N, G, L)) per-layer terms."""
        kind = self._kind()
        terms, n = self._terms(input, target, "local" if kind == "spatial" else kind)
        if terms is None:
            return self.loss.per_layer(input, target)
        return self.loss.merge_channels(terms, n)

    def forward(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``loss(input, target)``, tile by tile: the same reduction, shape and dtype.

        input, target: (N, C, H, W) images in the loss's ``input_range`` (target None: ``set_target``'s).
        """
        loss = self.loss
        kind = self._kind()
        terms, n = self._terms(input, target, kind)
        if terms is None:
            return loss(input, target)
        merged = loss.merge_channels(terms, n)
        if kind == "spatial":
            return loss.reduce(merged)
        return loss.reduce(loss.finish(merged))

    # -------------------------------------------------------------------------------- a loss like the one it wraps

    @property
    def reduction(self) -> str:
        """The wrapped loss's reduction (what this module's output is reduced by)."""
        return self.loss.reduction

    @property
    def layers(self) -> tuple[str, ...]:
        """The wrapped loss's layers (``per_layer``'s columns)."""
        return self.loss.layers

    @property
    def input_range(self) -> tuple[float, float]:
        """The wrapped loss's input range."""
        return self.loss.input_range

    @property
    def signature(self) -> str:
        """The wrapped loss's signature: tiling with a halo derived from (or checked against) the network's layers
        gives the wrapped loss's numbers up to floating-point rounding, so it is the same signature. A halo given
        for a network perceptloss cannot analyse (a user module, a timm model) is the user's claim that it covers
        the receptive field; that signature adds ``tile:<tile>/halo=<halo>`` after its ``metric`` field."""
        if self._taps is not None:
            return self.loss.signature
        out: dict[str, object] = {}
        for key, value in parse_signature(self.loss.signature).items():
            out[key] = value
            if key == "metric":
                out["tile"] = f"{self.tile}/halo={self.halo}"
        return format_signature(out)

    def extra_repr(self) -> str:
        return f"tile={self.tile}, halo={'auto' if self.halo is None else self.halo}"


# ------------------------------------------------------------------------------------------ checks, entry point


def _check_loss(loss: object) -> None:
    if not isinstance(loss, PerceptualLoss):
        raise TypeError(
            f"perceptloss.tiled tiles the losses of this library (FeatureLoss, StyleLoss, LPIPS, DISTS, or a loss "
            f"built on a perceptloss.criteria.Criterion), got {type(loss).__name__}; evaluate other losses whole"
        )
    criterion = loss.criterion
    if criterion.tiling is None and criterion.untiled_reason:
        raise ValueError(f"perceptloss.tiled cannot tile {type(loss).__name__}: {criterion.untiled_reason}")
    if criterion.tiling is None:
        raise ValueError(
            f"perceptloss.tiled cannot tile {type(loss).__name__} with criterion {type(criterion).__name__}: the "
            f"criterion does not say how its terms add up over tiles; set {type(criterion).__name__}.tiling to "
            f"'local' (each term is a mean over positions of a per-position quantity), 'pooled' or 'paired' (see "
            f"perceptloss.criteria) where that holds, or evaluate it whole"
        )
    for method in ("representation", "compare", "finish", "features"):
        if getattr(type(loss), method) is not getattr(PerceptualLoss, method):
            raise TypeError(
                f"perceptloss.tiled cannot tile {type(loss).__name__}: it overrides PerceptualLoss.{method}, so "
                f"whether its terms are local is unknown; put that step in a criterion "
                f"(perceptloss.criteria.Criterion) and say how it tiles"
            )
    if getattr(loss.net, "shared", False):
        raise ValueError(
            "perceptloss.tiled cannot tile a loss built with share_module=True: the shared module may be in "
            "training mode (batch statistics are not local) and its parameters' gradients would not flow through "
            "the tiles; build the loss with share_module=False (a frozen copy) and pass halo=H"
        )


def tiled(loss: PerceptualLoss, tile: int, halo: int | None = None) -> TiledLoss:
    """``loss`` evaluated tile by tile, exactly, with the network never seeing more than ``tile`` x ``tile`` pixels.

    Args:
        loss: a loss of this library whose criterion says how it tiles: FeatureLoss (any distance), StyleLoss,
            LPIPS (``spatial=True`` too), DISTS, or a loss on a criterion of your own with ``tiling`` set.
        tile: the largest crop, in pixels per side, that the network sees: a tile's interior plus the halo
            around it. Images of at most ``tile`` x ``tile`` pixels are evaluated whole.
        halo: None derives it from the network's layers (the receptive field of the deepest tapped layer);
            pixels per side for a network perceptloss cannot analyse (a user module, a timm model), whose
            tapped layers' strides are then measured on two probe images (``tile`` >= 128). A halo given for
            an analysable network is checked: too small is an error.

    Returns a module whose ``forward(input, target=None)`` and ``per_layer`` give what the loss's give (same
    reduction and shapes: (N,), a scalar, LPIPS' (N, 1, H, W) maps), for (N, C, H, W) images in the loss's
    ``input_range``; equal to the whole-image value up to floating-point rounding (float64: ~1e-12 relative).
    Gradients flow to the input (and a target that requires grad), one tile at a time in the backward pass.
    """
    return TiledLoss(loss, tile, halo)
