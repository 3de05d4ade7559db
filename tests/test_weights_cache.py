"""The weights cache: concurrent first fills of an empty cache, deterministic bytes, readers caught
mid-update, an unwritable cache, damaged checksum files (each message names its fix)."""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch

from perceptloss import FeatureLoss
from perceptloss.__main__ import main as cli
from perceptloss.preprocessing import IDENTITY
from perceptloss.weights import WeightEntry, WeightsChecksumError, load_checked, resolve, save_checked


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


@pytest.mark.slow
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
    from perceptloss.backbones.vgg import VGG19_CAFFE

    results.put(("bytes", ""))
    for home in homes:
        barrier.wait(timeout=300)
        os.environ["PERCEPTLOSS_HOME"] = home
        try:
            state = resolve(VGG19_CAFFE)
            results.put(("ok" if len(state) == 32 else "wrong", home))
        except Exception as e:
            results.put((f"{type(e).__name__}: {e}", home))


@pytest.mark.slow
def test_concurrent_first_use_with_the_real_vgg19_conversion(tmp_path, caffe_weights):
    out = _run_race(tmp_path, tmp_path, workers=2, trials=1, worker=_real_race_worker)
    assert [r[0] for r in out if r[0] != "bytes"] == ["ok"] * 2, out
    from perceptloss.backbones.vgg import VGG19_CAFFE

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
    import perceptloss.weights._files as w

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
    from perceptloss.backbones.vgg import VGG19_CAFFE

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
