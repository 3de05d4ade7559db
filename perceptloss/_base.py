r"""``PerceptualLoss``: the one pipeline every loss of this library is (as ``torch.nn.modules.loss._Loss`` for PyTorch's).

A perceptual loss runs two image batches through a frozen network and hands the two lists of per-layer
activations to its **criterion** (``perceptloss.criteria``: representation, comparison, finishing, tiling
statistics). The pipeline owns everything else, once:

- what a loss *accepts*: the common options (``perceptloss._options.LossOptions``), input checks (type,
  shape, NaN/Inf, range; also inside ``torch.compile``), the smallest image size the layers take
  (``ImageTooSmallError`` before running the network) and the channel policy (``channels=``: images are split
  into RGB images before the network, ``split_channels``, and the per-image terms merged back per sample,
  ``merge_channels``);
- the frozen *feature network*: its weights are buffers (no parent's ``requires_grad_(True)`` or optimiser
  can train them, a state-dict hook keeps them out of a parent's ``state_dict``), always in eval mode, run in
  ``dtype`` (``"auto"``: bfloat16 only where the hardware computes it natively) and ``memory_format``,
  preprocessed from ``input_range`` in float32 before any cast, activation checkpointing (``checkpoint=True``);
- the target: its representation under ``no_grad`` unless it requires grad, or fixed once with
  ``set_target`` (kept as buffers: they follow ``.to()`` / ``.cuda()`` / ``.half()``);
- the reduction ("mean" | "sum" | "none" over the batch).

The output dtype is the loss's own, whatever the images' dtype: float64 for a float64 loss (``dtype=torch.float64``
or ``.double()``), float32 for every other (float32, bfloat16 or float16 network, autocast). Images of another
dtype are cast to the network's, so float64 images through a float32 loss are compared in float32: a float64
result would claim a precision it does not have.

The forward pipeline, in one place: ``check`` -> ``split_channels`` -> ``features`` -> ``representation`` ->
``compare`` -> ``merge_channels`` -> ``finish`` -> ``reduce`` (``spatial_map`` for a spatial criterion). Each
step is public, so that the wrappers (``tiled``, ``VolumeLoss``, ``from_basicsr``, ``PerceptualMetric``, the
score CLI) use the pipeline as a user would.
"""
from __future__ import annotations

import itertools
from typing import ClassVar, Literal, Mapping, Sequence, Unpack

import torch
import torch.nn.functional as F
from torch import nn

from ._dtypes import accumulation_dtype, cast_to_network_dtype, compute_dtype, functorch_transform_active, network_dtype
from ._network_dtype import NetworkDtype
from ._layout import activation_layout, check_memory_format, match_weight_layout, to_activation_layout, weight_layout
from ._options import LossOptions, options_signature, resolve_options, with_options_doc
from ._sizes import ImageTooSmallError, too_small_message
from ._frozen import NetworkKeysOnLoad, omit_network_keys
from ._target import FixedTarget
from ._validation import check_image_pair, check_layer_weights, check_values
from .channels import channel_policy
from ._extractor import FeatureExtractor
from .criteria import Criterion, check_criterion
from .factory import create_backbone
from .hardware import autocast_warning
from .preprocessing import Normalization, Preprocess

Reduction = Literal["mean", "sum", "none"]
RangeCheck = Literal["raise", "warn", "off"]


class PerceptualLoss(nn.Module):
    """The loss pipeline: checks, channel policy, frozen network, preprocessing, target handling and reduction
    around a criterion (``self.criterion``, a ``perceptloss.criteria.Criterion``).

    It takes the common options (``perceptloss.LossOptions``, keyword-only in every loss), each defined,
    documented and checked once in ``perceptloss._options``; a subclass's constructor lists only what defines
    it and passes ``**options`` on. Its signature and docstring get one entry per option (with the subclass's
    defaults, ``_option_defaults``) when the subclass is defined.
    """

    #: Defaults of common options that differ for this loss (e.g. ``{"reduction": "none"}``).
    _option_defaults: ClassVar[dict[str, object]] = {}
    #: True when the loss's layers are part of its definition (LPIPS, DISTS): no "shallower layers" advice.
    _fixed_layers: ClassVar[bool] = False
    #: True when ``features`` gives the images themselves (mapped to [0, 1]) as a first layer "image" (DISTS).
    image_tap: ClassVar[bool] = False
    #: How the features are compared (set by the subclass's constructor through ``_set_criterion``).
    criterion: Criterion

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__.__signature__ = options_signature(cls.__init__, cls._option_defaults)  # type: ignore[attr-defined]
        if "__doc__" in cls.__dict__ and cls.__doc__:
            cls.__doc__ = with_options_doc(cls.__doc__, cls._option_defaults)

    def __init__(self, **options: Unpack[LossOptions]) -> None:
        super().__init__()
        for name, value in resolve_options(type(self), options, self._option_defaults).items():
            setattr(self, name, value)
        self.channel_policy = channel_policy(self.channels, self.channel_reduction)
        self.input_range: tuple[float, float]
        self.network_dtype = NetworkDtype(self._dtype_option)  # "auto" follows the device on .to()/.cuda()
        if self.checkpoint and self.share_module:
            raise ValueError(
                "checkpoint=True with share_module=True would run your module's forward twice per step (its "
                "batch-norm statistics would update twice in train mode); pass checkpoint=False, or "
                "share_module=False for a frozen copy"
            )
        self._min_sizes: dict[str, tuple[int, int]] | None = None
        self._last_compute_dtype: str | None = None  # what the network computed in at the latest call
        self.fixed = FixedTarget()  # set_target's representation
        on_load = NetworkKeysOnLoad()
        self._register_state_dict_hook(omit_network_keys)
        self._register_load_state_dict_pre_hook(on_load.refuse, with_module=True)
        self.register_load_state_dict_post_hook(on_load.not_missing)

    # ------------------------------------------------------------------------------------------ network

    def _set_network(self, net: FeatureExtractor, normalization: Normalization) -> None:
        """Install the frozen ``net`` and the preprocessing from ``input_range`` to ``normalization``.

        A shared module (``share_module=True``) is the owner's and keeps its own dtype: a ``dtype=`` it does
        not have cannot apply and is refused (converting it would change the owner's model).
        """
        shared = bool(getattr(net, "shared", False))
        self.network_dtype.install(net, shared)
        self.net = net
        match_weight_layout(net, weight_layout(net, self.memory_format))
        self.layers: tuple[str, ...] = ("image",) * self.image_tap + tuple(net.layers)
        if self.share_module and not shared:
            raise ValueError(
                f"share_module=True reads an nn.Module backbone itself, but {type(self).__name__} runs its own "
                f"frozen network; pass share_module=False, or the module as the backbone of a FeatureLoss"
            )
        self._min_sizes = net.min_input_sizes()
        self.preprocess = Preprocess(normalization, self.input_range, self._constant_dtype)

    def _use_backbone(
        self,
        backbone: str | nn.Module,
        layers: str | Sequence[str] | None,
        layer_weights: Sequence[float] | Mapping[str, float] | None,
        weights,
        normalization,
        default_layers: str,
    ) -> list[float]:
        """Build and install the named backbone's network (``create_backbone``); returns one weight per layer.

        ``layers`` None: the keys of a ``layer_weights`` dict, else ``default_layers``.
        """
        if layers is None:
            layers = list(layer_weights) if isinstance(layer_weights, Mapping) else default_layers
        net, norm = create_backbone(backbone, layers, weights, normalization, share_module=self.share_module)
        self._set_network(net, norm)
        return check_layer_weights(self.layers, layer_weights)

    def _set_criterion(self, criterion: Criterion) -> None:
        """Install the criterion (checked: a ``Criterion`` instance without trainable parameters)."""
        self.criterion = check_criterion(criterion)

    @property
    def _constant_dtype(self) -> torch.dtype:
        """The dtype of the loss's constants (preprocessing, α/β, heads): float64 in a float64 loss, float32 in
        every other (a 16-bit loss accumulates its statistics in float32, so its constants stay float32)."""
        net = getattr(self, "net", None)
        dtype = (network_dtype(net) if net is not None else None) or self.network_dtype.dtype or torch.float32
        return accumulation_dtype(dtype)

    @property
    def dtype(self) -> torch.dtype | None:
        """The network's dtype (float32 unless ``dtype=`` or ``.to()`` changed it)."""
        return network_dtype(self.net)

    def _apply(self, fn, recurse: bool = True):
        """``.to()`` / ``.cuda()`` move everything; with ``dtype="auto"`` the network's dtype follows the device."""
        out = super()._apply(fn, recurse)
        if hasattr(self, "net"):
            self.network_dtype.follow_device(self.net)
            match_weight_layout(self.net, weight_layout(self.net, self.memory_format))
        self._last_compute_dtype = None  # a call before a move or a cast says nothing about the next one
        return out

    def to(self, *args, **kwargs):
        """``nn.Module.to``; ``memory_format=`` (keyword-only, as in torch) also sets the layout the network's
        activations run in (the ``memory_format`` option)."""
        if kwargs.get("memory_format") is not None:
            check_memory_format(kwargs["memory_format"])
            self.memory_format = kwargs["memory_format"]
        return super().to(*args, **kwargs)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        """The loss stays in eval mode whatever ``mode`` is (a shared user module keeps its own mode)."""
        for module in self.children():
            module.train(False)
        self.training = False
        return self

    def __prepare_scriptable__(self):  # called by torch.jit.script
        raise RuntimeError(
            f"{type(self).__name__} cannot be compiled with torch.jit.script (TorchScript is in maintenance); "
            f"use torch.compile(loss) or torch.export.export(loss, (x, y)) instead"
        )

    @property
    def signature(self) -> str:
        """One line, ``key:value|...``, stating how this loss computes its per-image values: metric, network
        (its structure and the sha256 prefix of its weight tensors), preprocessing, layers and their weights,
        distance, input range, channel policy, the dtype it computes in, perceptloss and torch versions
        (``perceptloss._signature``; docs/evaluation.md lists every field). Two numbers with the same signature
        are comparable; how they were aggregated (``reduction``, the number of images) is stated beside it."""
        from ._signature import loss_signature

        return loss_signature(self)

    @property
    def compute_dtype(self) -> str:
        """The dtype the network computed in at this loss's latest call (since the last ``.to()``), by name:
        "float32", "bfloat16/autocast" under ``torch.autocast``, "float32/tf32" where CUDA convolutions run in
        TensorFloat-32, ... (``perceptloss._dtypes.compute_dtype``); before a call, what a call would compute in
        now. Calls inside ``torch.compile`` are not recorded. The signature's ``dtype`` field."""
        if self._last_compute_dtype is not None:
            return self._last_compute_dtype
        tensors = itertools.chain(self.net.parameters(), self.net.buffers())
        return compute_dtype(self.dtype, next((t.device for t in tensors), torch.device("cpu")))

    @property
    def weights_source(self) -> str:
        """Where the network's weights came from: a catalogue entry ("vgg19.caffe"), "file:<name>", "random",
        "module:<class>", "shared-module:<class>" or "<backbone>:<weights>" (timm's). Provenance only: the
        signature identifies weights by their tensors (``sha256``), so the same tensors passed as a catalogue
        entry, a file or a renamed copy of it give one signature."""
        return str(getattr(self.net, "weights_source", "unknown"))

    def signature_fields(self) -> dict[str, object]:
        """This loss's own signature fields, in order: the network's, the layers, then the criterion's."""
        from ._signature import network_fields

        return {**network_fields(self), "layers": ",".join(self.layers), **self.criterion.signature_fields()}

    # ------------------------------------------------------------------------------------------ features

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations of ``self.layers`` for RGB images in ``input_range``: a list of (N, C_l, H_l, W_l).

        Images of another floating dtype than the network (fp16/fp64 without autocast) are cast to it; the
        preprocessing runs in float32 (or float64) first: Caffe's 0-255 scale and mean subtraction lose
        precision in 16-bit floats. With ``image_tap`` the first entry is the images mapped to [0, 1] in the loss's
        output dtype (float64 in a float64 loss, float32 otherwise, whatever the images' dtype).
        """
        if images.dim() == 4:
            self.criterion.check_size((int(images.shape[-2]), int(images.shape[-1])))
        self._check_size(images)
        wide = images if images.dtype in (torch.float32, torch.float64) else images.float()
        x = to_activation_layout(cast_to_network_dtype(self.preprocess(wide), self.net), self.memory_format)
        match_weight_layout(self.net, activation_layout(x, self.memory_format))
        feats = self.net.forward_checkpointed(x) if self.checkpoint and torch.is_grad_enabled() else self.net(x)
        if not torch.compiler.is_compiling():
            self._last_compute_dtype = compute_dtype(self.dtype, x.device)
            for name, f in zip(self.net.layers, feats):
                if f.shape[1:].numel() == 0:  # a network that cannot tell its smallest input up front
                    raise ImageTooSmallError(
                        f"images of size {images.shape[-2]}x{images.shape[-1]} are too small for layer {name} "
                        f"(its features have shape {tuple(f.shape)}); use larger images or shallower layers",
                        size=(int(images.shape[-2]), int(images.shape[-1])), min_size=None, layers=(name,),
                    )
        if not self.image_tap:
            return feats
        unit = images.to(self._constant_dtype)
        lo, hi = self.input_range
        return [unit if (lo, hi) == (0.0, 1.0) else (unit - lo) / (hi - lo)] + list(feats)

    def _check_size(self, images: torch.Tensor) -> None:
        """Raise ImageTooSmallError before running the network when ``images`` are smaller than its layers take."""
        if self._min_sizes is None or images.dim() != 4:
            return
        h, w = int(images.shape[-2]), int(images.shape[-1])
        need_h = max(mh for mh, _ in self._min_sizes.values())
        need_w = max(mw for _, mw in self._min_sizes.values())
        if h >= need_h and w >= need_w:
            return
        message, bad = too_small_message((h, w), self._min_sizes, f"{type(self).__name__}'s layers", self._fixed_layers)
        raise ImageTooSmallError(message, size=(h, w), min_size=(need_h, need_w), layers=bad)

    # ------------------------------------------------------------------------------------------ the steps

    def representation(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """What is compared per layer: ``self.criterion.representation``."""
        return self.criterion.representation(features)

    def compare(self, input_repr: list[torch.Tensor], target_repr: list[torch.Tensor]) -> torch.Tensor:
        """(N, L) weighted per-layer terms between two representations: ``self.criterion.compare``."""
        return self.criterion.compare(input_repr, target_repr)

    def finish(self, terms: torch.Tensor) -> torch.Tensor:
        """(..., L) merged per-layer terms -> (...) per-sample values: ``self.criterion.finish``."""
        return self.criterion.finish(terms)

    def check(self, **images: torch.Tensor) -> None:
        """Check images given by role (``input=x, target=y``) as ``check_inputs`` and ``check_range`` say: type,
        (N, C, H, W) shape with the channels the channel policy accepts, same shape, NaN/Inf, range."""
        if not self.check_inputs:
            return
        first, *rest = images.values()
        # a dtype mismatch is allowed under autocast; the channel policy says how many channels are accepted
        check_image_pair(first, rest[0] if rest else first, channels=self.channel_policy.expected_channels(first))
        check_values(images, self.input_range, self.check_range)
        if not torch.compiler.is_compiling():
            autocast_warning(first.device)

    def split_channels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N*G, 3, H, W) RGB images for the network, by the channel policy."""
        return self.channel_policy.split(images)

    def merge_channels(self, terms: torch.Tensor, n: int) -> torch.Tensor:
        """(N*G, ...) per-image terms -> (N, ...) (mean over a sample's G groups) or (N, G, ...) ("none")."""
        if terms.shape[0] == n and not self.channel_policy.keeps_groups:
            return terms
        return self.channel_policy.merge(terms, n)

    def target_representation(self, target: torch.Tensor) -> list[torch.Tensor]:
        """The representation of (N*G, 3, H, W) RGB ``target`` images, under ``no_grad`` unless they require grad."""
        if target.requires_grad:
            return self.representation(self.features(target))
        with torch.no_grad():
            return self.representation(self.features(target))

    # ------------------------------------------------------------------------------------------ target

    @torch.no_grad()
    def set_target(self, target: torch.Tensor | None) -> "PerceptualLoss":
        """Compute the representation of ``target`` once, so that ``loss(input)`` reuses it (None clears it).

        ``target``: (1 or N, C, H, W) images in ``input_range`` (C as the channel policy accepts: 3 by
        default); a batch of 1 is compared with every input. No gradient flows to it. The representation is kept in buffers (not saved in ``state_dict``), so it
        follows ``.to()``, ``.cuda()`` and ``.half()`` (``self.fixed``). Returns self.
        """
        if target is None:
            self.fixed.clear()
            return self
        self.check(target=target)
        representation = self.representation(self.features(self.split_channels(target)))
        self.fixed.set(representation, samples=int(target.shape[0]), channels=int(target.shape[1]))
        return self

    @property
    def has_target(self) -> bool:
        """True when ``set_target`` fixed a target."""
        return self.fixed.count > 0

    @property
    def fixed_representation(self) -> tuple[torch.Tensor, ...]:
        """The representation ``set_target`` keeps, one tensor per layer, as computed (empty when none)."""
        return self.fixed.tensors

    def fixed_target(
        self,
        input_repr: list[torch.Tensor],
        n: int | None = None,
        channels: int | None = None,
        windows: Sequence[tuple[slice, slice]] | None = None,
    ) -> list[torch.Tensor]:
        """The set_target representation, expanded to the input's N samples (``n``) of G RGB images each.

        ``channels``: the input's C. It must be the target's: with "per_channel" or "groups" the target's
        channels become rows of its representation, and another C would pair input sample i with target
        channel (or group) i. ``windows``: per layer, the (rows, columns) of the kept maps to use (a tile's).
        """
        return self.fixed.paired_with(input_repr, self.layers, self.channel_policy, n, channels, windows)

    # ------------------------------------------------------------------------------------------ the loss

    def _representations(
        self, input: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
        """Checked, split images -> (input representation, target representation, N)."""
        n = input.shape[0] if isinstance(input, torch.Tensor) else 0
        if target is None:
            self.check(input=input)
            input_repr = self.representation(self.features(self.split_channels(input)))
            channels = input.shape[1] if isinstance(input, torch.Tensor) and input.dim() == 4 else None
            return input_repr, self.fixed_target(input_repr, n, channels), n
        self.check(input=input, target=target)
        xs, ys = self.split_channels(input), self.split_channels(target)
        if _one_pass(xs, ys):
            both = self.representation(self.features(torch.cat([xs, ys])))
            m = xs.shape[0]
            if all(isinstance(r, torch.Tensor) and r.dim() > 0 and r.shape[0] == 2 * m for r in both):
                return [r[:m] for r in both], [r[m:] for r in both], n
        input_repr = self.representation(self.features(xs))
        return input_repr, self.target_representation(ys), n

    def per_layer(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample, per-layer weighted terms, shape (N, L) in float32 (columns follow ``self.layers``);
        (N, G, L) with ``channel_reduction="none"``.

        ``target`` None compares with the target fixed by ``set_target``.
        """
        input_repr, target_repr, n = self._representations(input, target)
        return self.merge_channels(self.compare(input_repr, target_repr), n)

    def spatial_map(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, H, W) per-pixel map of a spatial criterion: its per-layer ``maps`` upsampled bilinearly to the
        image size and summed ((N, G, 1, H, W) with ``channel_reduction="none"``)."""
        input_repr, target_repr, n = self._representations(input, target)
        size = tuple(input.shape[-2:])
        out = sum(
            F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in self.criterion.maps(input_repr, target_repr)
        )
        return self.merge_channels(out, n)

    def per_layer_dict(self, input: torch.Tensor, target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``per_layer`` as {layer name: (N,) tensor}, for logging."""
        terms = self.per_layer(input, target)
        return {name: terms[..., i] for i, name in enumerate(self.layers)}

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """Apply ``self.reduction`` to per-sample values (N,) or maps (N, ...)."""
        return reduce(per_sample, self.reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """The loss: a scalar for "mean"/"sum", an (N,) tensor for "none" (target None: ``set_target``'s); a
        spatial criterion's (N, 1, H, W) maps (reduced over the batch with "mean"/"sum")."""
        if self.criterion.spatial:
            return self.reduce(self.spatial_map(input, target))
        return self.reduce(self.finish(self.per_layer(input, target)))


def _one_pass(xs: torch.Tensor, ys: torch.Tensor) -> bool:
    """Whether input and target images go through the network as one batch: when no gradient is asked of either
    (evaluation: ``torch.no_grad`` / ``inference_mode``, or images that do not require grad), both are tensors of
    one shape, dtype and device, and no ``torch.func`` transform is active. One network call on 2N images instead
    of two on N halves the calls (the per-call cost of each layer: weight reordering, thread start-up) and gives
    the matrix engines larger products; each image's features are the same computation either way. With a
    gradient asked the target keeps its own pass under ``no_grad``: nothing of it is saved for the backward."""
    if not (isinstance(xs, torch.Tensor) and isinstance(ys, torch.Tensor)) or xs.dim() != 4:
        return False
    if torch.is_grad_enabled() and (xs.requires_grad or ys.requires_grad):
        return False
    if xs.shape != ys.shape or xs.dtype != ys.dtype or xs.device != ys.device:
        return False
    return not functorch_transform_active()


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-sample values (N, ...) reduced over everything ("mean", "sum") or kept ("none")."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
