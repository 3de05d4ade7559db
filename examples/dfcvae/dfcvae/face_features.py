"""A face feature space the DFC-VAE models were not trained on: MTCNN's output network (ONet, Zhang et al. 2016).

ONet is the last stage of the MTCNN face detector: it sees a 48x48 face crop and predicts face / not face, the
box and five landmarks from a 256-d feature vector. Its weights ship inside the ``facenet-pytorch`` wheel (MIT
licence; ``pip install --no-deps facenet-pytorch``) as ``facenet_pytorch/data/onet.pt``; only that data file
is read (located through the package metadata, sha256-checked), none of the package's code is imported.
The report uses the 256-d features for a second Fréchet distance beside VGG19's (which is also the training
loss of VAE-123/345, and so favours them).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from perceptloss.weights import sha256_file

ONET_SHA256 = "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"  # facenet-pytorch 2.6.0


class FaceFeaturesUnavailable(RuntimeError):
    """The ONet weights are not installed or do not match (the message says what to do)."""


def onet_weights_path() -> Path:
    """The installed ``facenet_pytorch/data/onet.pt``, checked against its known sha256."""
    try:
        dist = importlib.metadata.distribution("facenet-pytorch")
    except importlib.metadata.PackageNotFoundError:
        raise FaceFeaturesUnavailable("the ONet face features need the weights of the facenet-pytorch wheel: "
                                      "pip install --no-deps facenet-pytorch==2.6.0") from None
    files = [f for f in (dist.files or []) if f.name == "onet.pt"]
    if not files:
        raise FaceFeaturesUnavailable("facenet-pytorch is installed without data/onet.pt; reinstall it")
    path = Path(dist.locate_file(files[0]))
    digest = sha256_file(path)
    if digest != ONET_SHA256:
        raise FaceFeaturesUnavailable(f"{path} has sha256 {digest[:12]}…, not the known facenet-pytorch 2.6.0 file; "
                                      "pip install --no-deps --force-reinstall facenet-pytorch==2.6.0")
    return path


class ONet(nn.Module):
    """MTCNN's ONet. ``features(x)``: (N, 3, H, W) RGB in [0, 1] -> (N, 256); ``face_probability(x)``: (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(48, 48), mode="bilinear", antialias=True, align_corners=False)
        x = (x * 255.0 - 127.5) * 0.0078125
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        # the converted Caffe weights expect (W, H, C) flattening order
        return self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))

    def face_probability(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense6_1(self.features(x)).softmax(1)[:, 1]


def load_onet() -> ONet:
    """ONet with the shipped weights, frozen, in eval mode (raises :class:`FaceFeaturesUnavailable`)."""
    net = ONet()
    net.load_state_dict(torch.load(onet_weights_path(), map_location="cpu", weights_only=True))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def onet_features(net: ONet, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N, 256) float32 features of (N, 3, H, W) RGB images in [0, 1]."""
    return torch.cat([net.features(images[i:i + batch]) for i in range(0, len(images), batch)])


#: ONet's face probability above which an image counts as a face (MTCNN's threshold for its last stage).
FACE_THRESHOLD = 0.7


@torch.no_grad()
def face_probabilities(net: ONet, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """ONet's face probability (N,) of each of ``images``: (N, 3, H, W) RGB in [0, 1]."""
    return torch.cat([net.face_probability(images[i:i + batch]) for i in range(0, len(images), batch)])


def face_rate(net: ONet, images: torch.Tensor, threshold: float = FACE_THRESHOLD) -> float:
    """The fraction of ``images`` ((N, 3, H, W) RGB in [0, 1]) whose face probability exceeds ``threshold``."""
    return float((face_probabilities(net, images) > threshold).float().mean())
