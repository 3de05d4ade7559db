"""timm models as backbones through ``features_only``: layers are the feature stages' module names."""
from __future__ import annotations

from pathlib import Path

import torch

from .base import FeatureExtractor
from .._validation import unknown_name_error


def _timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("timm backbones need timm: pip install timm") from e
    return timm


def timm_stage_names(model_name: str) -> tuple[str, ...]:
    """The feature stage names timm reports for ``model_name`` (e.g. resnet50: act1, layer1 ... layer4)."""
    timm = _timm()
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
