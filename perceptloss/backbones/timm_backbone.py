"""timm models as backbones through ``features_only``: layers are the feature stages' module names."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

from .._extractor import FeatureExtractor
from .._validation import suggest, unknown_name_error
from ..preprocessing import Normalization
from ..registry import BackboneSpec, register_resolver

TIMM_PREFIX = "timm:"


@contextlib.contextmanager
def hub_offline_if_requested() -> Iterator[bool]:
    """While active, make Hugging Face Hub (timm's weight source) offline when PERCEPTLOSS_OFFLINE is set.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, so both the variable and the imported
    constant are set, and restored afterwards. Without this, a missing timm checkpoint costs ~50 s of
    connection retries before the error. Yields whether offline mode was forced.
    """
    from ..weights import is_offline

    if not is_offline():
        yield False
        return
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        try:
            import huggingface_hub.constants as constants  # reads the variable just set
        except ImportError:
            constants = None
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield True
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None and saved_const is not None:
            constants.HF_HUB_OFFLINE = saved_const


def _timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("timm backbones need timm: pip install timm") from e
    return timm


def timm_stage_names(model_name: str) -> tuple[str, ...]:
    """The feature stage names timm reports for ``model_name`` (e.g. resnet50: act1, layer1 ... layer4)."""
    timm = _timm()
    if not timm.is_model(model_name):
        raise KeyError(
            f"unknown timm model {model_name!r}.{suggest(model_name, timm.list_models())} "
            f"List them with timm.list_models('*{model_name[:4]}*')"
        )
    model = timm.create_model(model_name, pretrained=False, features_only=True)
    return tuple(model.feature_info.module_name())


class TimmFeatures(FeatureExtractor):
    """A timm ``features_only`` network returning the stages ``layers``, truncated after the deepest one.

    ``weights``: None (random init), "default" (timm's pretrained weights, from its cache or hub) or a file path.
    """

    def __init__(self, model_name: str, layers: tuple[str, ...], weights: str | Path | None = None) -> None:
        super().__init__()
        timm = _timm()
        stages = timm_stage_names(model_name)
        for name in layers:
            if name not in stages:
                raise unknown_name_error(f"layer of timm:{model_name}", name, stages)
        kwargs: dict = {"features_only": True, "out_indices": tuple(stages.index(n) for n in layers)}
        if weights is None:
            kwargs["pretrained"] = False
        elif weights == "default":
            kwargs["pretrained"] = True
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"timm weights file {path} does not exist")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        try:
            with hub_offline_if_requested():
                self.body = timm.create_model(model_name, **kwargs)
        except Exception as e:
            if weights is None:
                raise
            raise FileNotFoundError(
                f"could not load pretrained weights for timm:{model_name} ({type(e).__name__}: {e}). Offline, "
                f"download them once elsewhere and pass weights='/path/to/{model_name}.safetensors', or copy "
                f"timm's Hugging Face cache to this machine (HF_HOME)"
            ) from e
        self.layers = tuple(layers)
        cfg = self.body.pretrained_cfg if hasattr(self.body, "pretrained_cfg") else {}
        self.mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
        # timm orders outputs by stage; map them back to the order the user asked for.
        order = sorted(range(len(layers)), key=lambda i: stages.index(layers[i]))
        self._positions = [order.index(i) for i in range(len(layers))]
        self.freeze()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(x)
        return [out[p] for p in self._positions]


def timm_normalization(extractor: TimmFeatures) -> Normalization:
    """The mean/std a timm extractor's pretrained config asks for."""
    return Normalization(mean=extractor.mean, std=extractor.std, name="timm")


def timm_spec(model_name: str) -> BackboneSpec:
    """The registry entry of ``timm:<model_name>``: timm loads its own weights (its hub cache, or a file)."""

    def create(layers: tuple[str, ...], weights) -> tuple[TimmFeatures, Normalization]:
        extractor = TimmFeatures(model_name, layers, weights=weights)
        return extractor, timm_normalization(extractor)

    return BackboneSpec(
        name=TIMM_PREFIX + model_name,
        layers=timm_stage_names(model_name),
        build=lambda layers: TimmFeatures(model_name, layers),
        load=lambda extractor, state: extractor.body.load_state_dict(state),
        description=f"timm {model_name} (features_only stages)",
        create=create,
    )


register_resolver(TIMM_PREFIX, timm_spec, "any timm model through features_only (pip install timm); weights: timm's")
