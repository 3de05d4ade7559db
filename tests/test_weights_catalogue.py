"""The weights catalogue: one key per entry for trunks and heads, every printed fix works as printed, a weights
file's preprocessing comes from its provenance (never a guess), LPIPS v0.0."""
import re
import shlex
import subprocess
import sys

import pytest
import torch

import perceptloss
from perceptloss import FeatureLoss, LPIPS
from perceptloss.__main__ import main as cli
from perceptloss.weights import (
    WeightsChecksumError,
    cache_path,
    entry_for_file,
    get_weights,
    list_weight_entries,
    resolve,
)

from .helpers import standin_entries


def printed_commands(text: str) -> list[list[str]]:
    """The `python -m perceptloss ...` commands a message prints, as argument lists for the CLI."""
    found = re.findall(r"python -m perceptloss ([^`\n]+?)(?:`|$| says)", text)
    return [shlex.split(c) for c in found]


def test_one_catalogue_for_trunks_and_heads():
    keys = {e.key for e in list_weight_entries()}
    assert {"vgg19.caffe", "vgg19.torchvision", "vgg16.torchvision", "alexnet.torchvision",
            "lpips-alex.v0.1", "lpips-vgg.v0.0", "lpips-squeeze.v0.1"} <= keys
    assert get_weights("vgg19") is get_weights("vgg19.caffe")  # a group's name selects its default
    assert get_weights("lpips-alex") is get_weights("lpips-alex", "v0.1")
    with pytest.raises(KeyError, match="Did you mean"):
        get_weights("vgg19.cafe")


def test_fetch_by_key_and_by_group(home, caffe_weights, capsys):
    for argv in (["fetch", "lpips-alex", "--weights", "v0.1"], ["fetch", "lpips-alex.v0.0"], ["fetch", "vgg19.caffe"]):
        assert cli(argv) == 0, argv
        assert "sha256" in capsys.readouterr().out
    assert cli(["weights", "lpips"]) == 0
    out = capsys.readouterr().out
    assert "lpips-alex.v0.1" in out and "lpips-vgg.v0.0" in out
    assert cli(["weights", "timm:resnet18"]) == 2
    assert "timm" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["vgg19.caffe", "lpips-alex.v0.1"])
def test_the_checksum_error_fix_works_as_printed(home, caffe_weights, key, capsys):
    entry = get_weights(key)
    resolve(entry)
    path = cache_path(entry)
    path.write_bytes(path.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(WeightsChecksumError) as info:
        if key.startswith("vgg19"):
            FeatureLoss("vgg19", "dfc123")
        else:
            LPIPS("alex", weights=None)
    commands = printed_commands(str(info.value))
    assert commands, str(info.value)
    for argv in commands:
        assert cli(argv) == 0, argv
    capsys.readouterr()
    assert cli(["verify"]) == 0


def test_a_wrong_file_with_a_matching_checksum_is_named(home, caffe_weights, capsys):
    from perceptloss.weights import save_checked

    entry = get_weights("vgg19.caffe")
    save_checked({"something.else": torch.zeros(3)}, cache_path(entry))
    with pytest.raises(WeightsChecksumError, match="matches its checksum but it lacks") as info:
        FeatureLoss("vgg19", "dfc123")
    assert str(cache_path(entry)) in str(info.value)
    assert cli(["verify"]) == 1
    assert "lacks" in capsys.readouterr().out
    for argv in printed_commands(str(info.value)):
        assert cli(argv) == 0
    FeatureLoss("vgg19", "dfc123")


def test_missing_weights_status_command_says_how(home, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    assert cli(["weights", "alexnet"]) == 0
    commands = printed_commands(capsys.readouterr().out)
    assert commands == [["fetch", "alexnet.torchvision"]]
    assert cli(commands[0]) == 2  # offline: the message lists where to put which file
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err and "weights='/path/to/file'" in err


@pytest.mark.slow
def test_module_entry_point_runs_as_printed(home):
    proc = subprocess.run([sys.executable, "-m", "perceptloss", "fetch", "lpips-squeeze.v0.1"],
                          capture_output=True, text=True, env={**__import__("os").environ, "PERCEPTLOSS_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert "lpips-squeeze.v0.1" in proc.stdout


# ------------------------------------------------------------------------------------------ provenance


def _torchvision_like_vgg19(path):
    torch.manual_seed(0)
    net = FeatureLoss("vgg19", "dfc123", weights=None).net
    torch.save({f"{k}": v for k, v in net.state_dict().items()}, path)
    return net


def test_a_known_published_file_name_gives_its_preprocessing(tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"  # torchvision's published file
    _torchvision_like_vgg19(path)
    with standin_entries(path):  # a stand-in: its sha256 prefix is not dcbb9e9d
        loss = FeatureLoss("vgg19", "dfc123", weights=path)
        assert loss.preprocess.norm is perceptloss.preprocessing.IMAGENET
        assert entry_for_file(path).key == "vgg19.torchvision"


def test_an_unknown_file_asks_for_normalization(tmp_path):
    path = tmp_path / "my-vgg19.pth"
    net = _torchvision_like_vgg19(path)
    with pytest.raises(ValueError, match="normalization='imagenet'") as info:
        FeatureLoss("vgg19", "dfc123", weights=path)
    assert "normalization='caffe'" in str(info.value)
    loss = FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")  # the fix, as printed
    assert loss.preprocess.norm is perceptloss.preprocessing.IMAGENET
    assert torch.equal(loss.net.features[0].weight, net.features[0].weight)
    with pytest.raises(ValueError, match="normalization must be"):
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="bgr")


def test_a_file_perceptloss_wrote_carries_its_entry(home, caffe_weights):
    entry = get_weights("vgg19.caffe")
    resolve(entry)
    copy = home / "elsewhere.safetensors"
    copy.write_bytes(cache_path(entry).read_bytes())
    loss = FeatureLoss("vgg19", "dfc123", weights=copy)
    assert loss.preprocess.norm is perceptloss.preprocessing.CAFFE


# ------------------------------------------------------------------------------------------ LPIPS v0.0


def test_lpips_v00_parity(home):
    lpips = pytest.importorskip("lpips")
    from .helpers import lpips_trunk_state as trunk_state, relative

    for net in ("alex", "vgg"):
        torch.manual_seed(0)
        ref = lpips.LPIPS(pretrained=True, net=net, version="0.0", pnet_rand=True, verbose=False)
        ours = LPIPS(net, version="0.0", weights=None)
        ours.net.load_trunk_state_dict(trunk_state(ref))
        x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            expected = ref(2 * x - 1, 2 * y - 1).flatten()
            assert relative(ours(x, y), expected) <= 1e-5
            v01 = LPIPS(net, weights=None)
            v01.net.load_trunk_state_dict(trunk_state(ref))
            assert relative(v01(x, y), expected) > 1e-3  # the versions really differ
