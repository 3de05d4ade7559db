"""Reliability of the library (issue 13): concurrent weight-cache fills, damaged checksum files, value checks
under torch.compile, offline timm, and a clear message for every bad input or CLI misuse."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import perceptloss
from perceptloss import IDENTITY, FeatureLoss
from perceptloss.__main__ import main as cli
from perceptloss.weights import WeightEntry, WeightsChecksumError, load_checked, resolve, save_checked

ROOT = Path(__file__).resolve().parents[1]


def tiny_loss(net, **kw):
    return FeatureLoss(net, ["act1", "act2"], layer_weights=[1.0, 0.5], normalization=IDENTITY, **kw)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path))
    return tmp_path / "weights"


# ------------------------------------------------------------------ (2) concurrent fills of an empty cache


def _race_convert(path: Path) -> dict[str, torch.Tensor]:
    """A small but not trivial conversion (a few MB), so that the publish steps of the processes overlap."""
    g = torch.Generator().manual_seed(int(path.read_text()))
    return {f"features.{i}.weight": torch.randn(64, 64, 3, 3, generator=g) for i in range(0, 24, 2)}


def _race_entry(source: Path) -> WeightEntry:
    return WeightEntry(
        backbone="racenet",
        name="test",
        description="a tiny test entry",
        normalization=IDENTITY,
        filename="racenet-test.safetensors",
        convert=_race_convert,
        finders=(lambda: source,),
        # three metadata keys, like the real VGG19 entry: their order used to vary between processes
        meta={"quantization": "none", "origin": "tests", "purpose": "race"},
    )


def _race_worker(homes: list[str], source: str, barrier, results) -> None:
    """Fill each (empty) cache in ``homes`` at the same moment as the other workers; report what happened."""
    torch.set_num_threads(1)
    entry = _race_entry(Path(source))
    state = _race_convert(Path(source))
    own = Path(homes[0]).parent / f"own-{os.getpid()}.safetensors"  # this process's own conversion
    results.put(("bytes", save_checked(state, own, {"entry": entry.key, "source": Path(source).name, **entry.meta})))
    for home in homes:
        barrier.wait(timeout=120)
        os.environ["PERCEPTLOSS_HOME"] = home
        try:
            got = resolve(entry)
            same = got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
            results.put(("ok" if same else "wrong values", home))
        except Exception as e:  # reported, not raised: the parent counts the failures
            results.put((f"{type(e).__name__}: {e}", home))


def _run_race(tmp_path: Path, entry_source: Path, workers: int, trials: int, worker=_race_worker) -> list[tuple]:
    ctx = mp.get_context("spawn")
    homes = [str(tmp_path / f"trial{t}") for t in range(trials)]
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(homes, str(entry_source), barrier, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    out = [results.get(timeout=300) for _ in range(workers * (trials + 1))]
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    return out


def test_concurrent_first_use_of_an_empty_cache_never_fails(tmp_path):
    """Several processes filling the same empty cache at once (a fresh torchrun job): every one gets the
    weights, none is told that a good file is corrupt, and the cache ends up consistent."""
    source = tmp_path / "source.txt"
    source.write_text("7")
    workers, trials = 3, 12  # before the fix, 55-57 of 100 loads failed (4 workers x 25 trials)
    out = _run_race(tmp_path, source, workers, trials)
    failures = [r for r in out if r[0] not in ("ok", "bytes")]
    assert not failures, f"{len(failures)} of {workers * trials} loads failed, e.g. {failures[:3]}"
    digests = {d for kind, d in out if kind == "bytes"}
    assert len(digests) == 1, "the conversion must give the same bytes in every process"
    for t in range(trials):
        cache = tmp_path / f"trial{t}" / "weights"
        load_checked(cache / "racenet-test.safetensors")  # consistent pair
        assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp")], "temporary files left behind"


def _real_race_worker(homes: list[str], source: str, barrier, results) -> None:
    torch.set_num_threads(1)
    from perceptloss.registry import VGG19_CAFFE

    results.put(("bytes", ""))
    for home in homes:
        barrier.wait(timeout=300)
        os.environ["PERCEPTLOSS_HOME"] = home
        try:
            state = resolve(VGG19_CAFFE)
            results.put(("ok" if len(state) == 32 else "wrong", home))
        except Exception as e:
            results.put((f"{type(e).__name__}: {e}", home))


def test_concurrent_first_use_with_the_real_vgg19_conversion(tmp_path, caffe_weights):
    out = _run_race(tmp_path, tmp_path, workers=2, trials=1, worker=_real_race_worker)
    assert [r[0] for r in out if r[0] != "bytes"] == ["ok"] * 2, out
    from perceptloss.registry import VGG19_CAFFE

    load_checked(tmp_path / "trial0" / "weights" / VGG19_CAFFE.filename)


def test_safetensors_bytes_are_deterministic_and_readable(home):
    from safetensors.torch import load_file, safe_open

    state = {"b": torch.arange(6.0).view(2, 3), "a": torch.ones(3, dtype=torch.float16), "c": torch.zeros(0)}
    state["d"] = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    path = home / "x.safetensors"
    d1 = save_checked(state, path, {"z": "1", "a": "2", "m": "3"})
    d2 = save_checked(dict(reversed(list(state.items()))), home / "y.safetensors", {"m": "3", "a": "2", "z": "1"})
    assert d1 == d2, "key and metadata order must not change the bytes"
    loaded = load_file(str(path))
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"z": "1", "a": "2", "m": "3"}


def test_reader_caught_mid_update_looks_again_under_the_lock(home, tmp_path):
    """A reader that finds a sidecar not matching the weights while another process is publishing (it holds
    the lock) waits for it and gets the weights, instead of calling the file corrupt."""
    import threading

    from perceptloss.weights import cache_lock

    source = tmp_path / "source.txt"
    source.write_text("3")
    entry = _race_entry(source)
    path = home / entry.filename
    expected = _race_convert(source)
    save_checked(expected, path, {"entry": entry.key})
    good = (home / (entry.filename + ".sha256")).read_text()
    result = {}
    with cache_lock(path):  # "another process" is publishing: new sidecar already there, weights not yet
        (home / (entry.filename + ".sha256")).write_text("0" * 64 + "  " + entry.filename + "\n")
        reader = threading.Thread(target=lambda: result.update(state=resolve(entry)))
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive() and not result, "the reader must wait for the lock, not fail"
        (home / (entry.filename + ".sha256")).write_text(good)  # the publisher finishes
    reader.join(timeout=60)
    assert torch.equal(result["state"]["features.0.weight"], expected["features.0.weight"])


def test_unwritable_cache_warns_and_uses_the_converted_weights(home, tmp_path, monkeypatch):
    import perceptloss.weights as w

    source = tmp_path / "source.txt"
    source.write_text("5")

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(w, "_atomic_write", refuse)
    with pytest.warns(UserWarning, match="PERCEPTLOSS_HOME"):
        state = resolve(_race_entry(source))
    assert torch.equal(state["features.2.weight"], _race_convert(source)["features.2.weight"])


# --------------------------------------------------------------------- damaged or foreign .sha256 sidecars


@pytest.mark.parametrize("content", ["", "\n", "garbage", "zz" * 32 + "  x.safetensors\n"])
def test_empty_or_garbled_checksum_file_names_the_fix(home, content):
    path = home / "x.safetensors"
    save_checked({"w": torch.zeros(3)}, path)
    (home / "x.safetensors.sha256").write_text(content)
    with pytest.raises(WeightsChecksumError) as info:
        load_checked(path)
    msg = str(info.value)
    assert "x.safetensors.sha256" in msg and "delete" in msg


def test_empty_checksum_file_through_feature_loss_and_verify(home, caffe_weights, capsys):
    from perceptloss.registry import VGG19_CAFFE

    resolve(VGG19_CAFFE)
    sidecar = home / (VGG19_CAFFE.filename + ".sha256")
    sidecar.write_text("")
    with pytest.raises(WeightsChecksumError) as info:
        FeatureLoss("vgg19", ["relu1_1"])
    assert "fetch vgg19.caffe --force" in str(info.value)
    assert cli(["verify"]) == 1
    assert "fetch vgg19.caffe --force" in capsys.readouterr().out
    assert cli(["fetch", "vgg19", "--force"]) == 0  # the named fix works
    assert cli(["verify"]) == 0
    FeatureLoss("vgg19", ["relu1_1"])


# --------------------------------------------------------------------------- (5) value checks when compiled


def test_compiled_loss_reports_0_255_images_and_nan(tiny_net):
    loss = tiny_loss(tiny_net)
    compiled = torch.compile(loss, fullgraph=True)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(compiled(x, y), loss(x, y), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="input_range"):
        compiled(x * 255, y)
    with pytest.raises(ValueError, match="NaN"):
        compiled(x, torch.full_like(y, float("nan")))
    warn = torch.compile(tiny_loss(tiny_net, check_range="warn"), fullgraph=True)
    with pytest.warns(UserWarning, match="input_range"):
        warn(x * 255, y)


def test_compiled_training_step_reports_0_255_images(tiny_net):
    loss = tiny_loss(tiny_net)
    head = torch.nn.Conv2d(3, 3, 1)

    def step(x, y):
        return loss(head(x), y)

    compiled = torch.compile(step, fullgraph=True)
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    compiled(x, y).backward()
    assert head.weight.grad is not None
    with pytest.raises(ValueError, match="input_range"):
        compiled(x, y * 255)


# ---------------------------------------------------------------------------- (8) offline timm / HF hub


def test_perceptloss_offline_makes_timm_and_hf_hub_offline(monkeypatch):
    timm = pytest.importorskip("timm")
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("PERCEPTLOSS_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # as if imported while online
    seen = {}
    real_create = timm.create_model

    def create_model(name, pretrained=False, **kw):
        if pretrained:
            seen.update(env=os.environ.get("HF_HUB_OFFLINE"), hub=hf_constants.is_offline_mode())
            raise OSError("no network")  # what timm raises once the hub refuses to connect
        return real_create(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(FileNotFoundError, match="weights="):
        FeatureLoss("timm:resnet18", ["layer1"])
    assert seen == {"env": "1", "hub": True}
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False  # restored afterwards


# ------------------------------------------------------------------------ bad inputs: a message, not a trace


def test_empty_batch_is_a_clear_error(tiny_net):
    with pytest.raises(ValueError, match="empty batch"):
        tiny_loss(tiny_net)(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_half_and_double_images_without_autocast_are_computed(tiny_net, dtype):
    loss = tiny_loss(tiny_net)
    x = torch.rand(2, 3, 8, 8).to(dtype).requires_grad_()
    y = torch.rand(2, 3, 8, 8).to(dtype)
    out = loss(x, y)
    torch.testing.assert_close(out, loss(x.detach().float(), y.float()))
    out.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    vgg = FeatureLoss("vgg19", ["relu1_1"], weights=None)  # the reported case: a conv with a bias
    assert torch.isfinite(vgg(x.detach(), y))


def test_double_loss_casts_float_images_up(tiny_net):
    loss = tiny_loss(tiny_net).double()
    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(loss(x, y), loss(x.double(), y.double()))


def test_numpy_arrays_get_a_clear_type_error(tiny_net):
    x = np.random.rand(2, 8, 8, 3).astype(np.float32)
    with pytest.raises(TypeError, match="torch.from_numpy"):
        tiny_loss(tiny_net)(x, x)
    with pytest.raises(TypeError, match=r"\(N, 3, H, W\)"):
        tiny_loss(tiny_net)(torch.rand(2, 3, 8, 8), x)


def test_train_keeps_every_submodule_in_eval(tiny_net):
    loss = FeatureLoss("vgg19", "dfc123", weights=None)
    parent = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), loss)
    for obj in (loss, parent):
        obj.train()
        assert all(not m.training for m in loss.modules())
        assert not loss.preprocess.training
    assert parent[0].training  # the model around the loss does train


# ---------------------------------------------------------------------------------- CLI misuse: exit code 2


@pytest.mark.parametrize(
    "argv, text",
    [
        ([], "command"),
        (["bogus"], "bogus"),
        (["layers"], "backbone"),
        (["fetch", "vgg19", "--weights", "nope"], "caffe"),
        (["layers", "vgg91"], "Did you mean"),
        (["layers", "timm:no_such_model_xyz"], "no_such_model_xyz"),
        (["fetch", "timm:resnet18"], "timm"),
        (["weights", "vgg91"], "vgg19"),
        (["weights", "lpips-foo"], "lpips-vgg"),
    ],
)
def test_cli_misuse_exits_2_with_one_line(home, capsys, argv, text):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("perceptloss: error:") and text in err, err


def test_cli_weights_lists_the_lpips_heads(home, capsys):
    assert cli(["weights"]) == 0
    listed = capsys.readouterr().out
    assert "vgg19.caffe" in listed and all(f"lpips-{n}.v0.1" in listed for n in ("alex", "vgg", "squeeze"))
    assert cli(["weights", "lpips-vgg"]) == 0
    only = capsys.readouterr().out
    assert "lpips-vgg.v0.1" in only and "lpips-alex" not in only and "vgg19" not in only


def test_cli_misuse_exit_code_of_the_module(home):
    proc = subprocess.run(
        [sys.executable, "-m", "perceptloss", "fetch"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # (torch may log its own lines first)
    assert last.startswith("perceptloss: error:") and "backbone" in last, proc.stderr
