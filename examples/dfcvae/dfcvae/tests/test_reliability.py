"""DFC-VAE example under misuse and accidents: existing runs, signals, damaged files, bad arguments, caches."""
import errno
import os
import shutil
import signal

import pytest
import torch

from dfcvae import celeba, checkpointing, report, train, vae
from dfcvae.training.folder import LOCK_FILE

from .helpers import make_celeba, train_tiny


@pytest.fixture
def data_dir(tmp_path):
    return make_celeba(tmp_path / "celeba", n_images=40, listed=40)


def _steps(out):
    return [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]


def test_a_new_run_never_overwrites_an_existing_one(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert train_tiny(data_dir, out, "--max-steps", "3") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == before and _steps(out) == [1, 2]
    assert train_tiny(data_dir, out, "--max-steps", "3", "--overwrite") == 0
    assert _steps(out) == [1, 2, 3] and torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    with pytest.raises(SystemExit):
        train_tiny(data_dir, out, "--resume", "--overwrite")


def test_sigterm_saves_a_checkpoint_like_ctrl_c(data_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread's handler right here
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    previous = signal.getsignal(signal.SIGTERM)
    assert train_tiny(data_dir, tmp_path / "t", "--max-steps", "6") == 143
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is restored
    assert torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["step"] in (2, 3)
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_resume_after_a_kill_does_not_repeat_log_rows(data_dir, tmp_path):
    out = tmp_path / "k"
    assert train_tiny(data_dir, out, "--max-steps", "4") == 0
    saved = (out / "checkpoint.pt").read_bytes()
    assert train_tiny(data_dir, out, "--max-steps", "6", "--resume") == 0
    (out / "checkpoint.pt").write_bytes(saved)  # as if killed after step 6 was logged, with the checkpoint at 4
    assert train_tiny(data_dir, out, "--max-steps", "7", "--resume") == 0
    assert _steps(out) == [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", "pickle"])
def test_damaged_or_foreign_resume_checkpoints_get_one_line(data_dir, tmp_path, capsys, content):
    out = tmp_path / "r"
    assert train_tiny(data_dir, out, "--max-steps", "1") == 0
    if content == "pickle":
        torch.save({"weights": torch.zeros(2)}, out / "checkpoint.pt")  # a foreign, config-less file
        expected = "not a DFC-VAE training checkpoint"
    else:
        (out / "checkpoint.pt").write_bytes(content)
        expected = "not a readable checkpoint"
    assert train_tiny(data_dir, out, "--max-steps", "2", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert expected in err[-1] and err[-1].startswith("error:")


def test_unwritable_out_is_found_before_the_work(data_dir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setattr(celeba, "load_celeba", lambda *a, **k: pytest.fail("data loaded before --out was checked"))
    assert train_tiny(data_dir, blocker / "run") == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_disk_full_while_saving_keeps_the_previous_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "d"
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    before = (out / "checkpoint.pt").read_bytes()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpointing.torch, "save", full)
    assert train_tiny(data_dir, out, "--max-steps", "4", "--resume") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "previous checkpoint is intact" in err
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["--device", "gpu"], "unknown --device"), (["--workers", "-1"], "--workers must be positive"),
    (["--lr", "-1"], "--lr must be positive"), (["--subset", "-5"], "--subset must be >= 0"),
    (["--max-steps", "-1"], "--max-steps must be >= 0"), (["--epochs", "0"], "--epochs must be positive"),
])
def test_bad_arguments_exit_2_with_the_fix(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_read_only_cache_dir_is_an_error_not_ignored(data_dir, tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert train.main(["--preset", "pvae", "--data", str(data_dir), "--out", str(tmp_path / "o"), "--no-progress",
                       "--batch-size", "8", "--cache-dir", str(not_a_dir / "cache")]) == 2
    assert "--cache-dir" in capsys.readouterr().err


@pytest.mark.parametrize("damage, expected", [
    (lambda t: t[: t.rindex(" ", 0, len(t) - 30)], "line"),                     # cut mid-line
    (lambda t: t.replace(" 1 ", " x ", 1), "garbled"),                          # a value that is not 1/-1
    (lambda t: "\x00\x01binary\n" * 3, "attribute-name header"),                # not the file at all
])
def test_damaged_annotation_files_are_explained(tmp_path, damage, expected):
    root = make_celeba(tmp_path / "c", n_images=6, listed=6)
    path = root / "list_attr_celeba.txt"
    path.write_text(damage(path.read_text()))
    with pytest.raises(celeba.CelebAError, match=expected):
        celeba.load_celeba(root, verbose=False)
    part = make_celeba(tmp_path / "p", n_images=6, listed=6) / "list_eval_partition.txt"
    part.write_text(part.read_text().replace(" 0\n", " zero\n", 1))
    with pytest.raises(celeba.CelebAError, match="not an integer"):
        celeba.load_celeba(part.parent, verbose=False)


def test_face_cache_follows_the_files_and_the_folder(tmp_path, capsys):
    root = make_celeba(tmp_path / "a" / "celeba", n_images=6, listed=6, corrupt=(2,))
    cache_dir = tmp_path / "cache"
    first = celeba.build_cache(celeba.load_celeba(root, verbose=False), cache_dir=cache_dir, workers=1, progress=False)
    assert len(first.bad) == 1 and (first.path.stat().st_mode & 0o777) == 0o666 & ~_umask()
    again = celeba.build_cache(celeba.load_celeba(root, verbose=False), cache_dir=cache_dir, workers=1, progress=True)
    assert again.path == first.path and "reusing 5 decoded faces" in capsys.readouterr().err
    copy = tmp_path / "b" / "celeba"
    shutil.copytree(root, copy)
    other = celeba.build_cache(celeba.load_celeba(copy, verbose=False), cache_dir=cache_dir, workers=1, progress=False)
    assert other.path != first.path  # a sibling copy never reuses another folder's cache
    shutil.copy(root / "img_align_celeba" / "000001.jpg", root / "img_align_celeba" / "000003.jpg")  # repaired
    repaired = celeba.build_cache(celeba.load_celeba(root, verbose=False), cache_dir=cache_dir, workers=1, progress=False)
    assert repaired.path != first.path and repaired.bad == [] and len(repaired.images) == 6


def test_default_face_cache_is_the_user_cache_never_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path / "home"))
    root = make_celeba(tmp_path / "data" / "celeba", n_images=4, listed=4)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*"))
    cache = celeba.build_cache(celeba.load_celeba(root, verbose=False), workers=1, progress=False)
    assert cache.path.parent == tmp_path / "home" / "celeba"
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "data").rglob("*")) == before


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tiny_checkpoint(path, preset):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": vae.VAE().state_dict(), "step": 1,
                "config": {"preset": preset, "latent": 100, "crop": "released", "images": 8, "epochs": 1,
                           "steps_per_epoch": 1, "batch_size": 8}}, path)
    return path


def test_report_checks_its_arguments_before_any_work(tmp_path, capsys, monkeypatch):
    data = make_celeba(tmp_path / "celeba", n_images=20, listed=20, splits=[0] * 12 + [2] * 8)
    v123 = _tiny_checkpoint(tmp_path / "a" / "checkpoint.pt", "vae123")
    out = str(tmp_path / "rep")
    assert report.main(["--vae345", str(v123), "--data", str(data), "--out", out]) == 2
    assert "preset 'vae123', not 'vae345'" in capsys.readouterr().err
    monkeypatch.setattr(report, "load_models", lambda *a: pytest.fail("models loaded before the attributes were checked"))
    assert report.main(["--vae123", str(v123), "--data", str(data), "--out", out, "--attributes", "Smilling"]) == 2
    assert "did you mean Smiling" in capsys.readouterr().err
    monkeypatch.undo()
    no_test = make_celeba(tmp_path / "c2", n_images=10, listed=10)
    assert report.main(["--vae123", str(v123), "--data", str(no_test), "--out", out]) == 2
    assert "no test images" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert report.main(["--vae123", str(tmp_path / "junk.pt"), "--data", str(data), "--out", out]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["--vae123", str(v123), "--svm-train", "-1"])


def test_a_diverged_run_keeps_its_last_good_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    from dfcvae import objective

    out = tmp_path / "nan"
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    before = (out / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(objective, "pixel_sse", lambda r, x: torch.full((r.shape[0],), float("nan")))
    assert train_tiny(data_dir, out, "--max-steps", "4", "--resume") == 1
    err = capsys.readouterr().err
    assert "loss became nan" in err and "--amp off or a lower --lr" in err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_overwrite_with_a_bad_argument_keeps_the_previous_run(data_dir, tmp_path, capsys):
    out = tmp_path / "x"
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert train_tiny(tmp_path / "typo", out, "--max-steps", "3", "--overwrite") == 2  # a mistyped --data
    assert "--data" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob("x.previous-*"))
    assert train_tiny(data_dir, out, "--max-steps", "3", "--overwrite") == 0  # now the run starts: moved aside
    (aside,) = tmp_path.glob("x.previous-*")
    assert f"moved the previous run in {out} to {aside}" in capsys.readouterr().err
    run_files = {k: v for k, v in before.items() if str(k) != LOCK_FILE}  # the lock file stays in --out
    assert {p.relative_to(aside): p.read_bytes() for p in aside.rglob("*") if p.is_file()} == run_files
    assert _steps(out) == [1, 2, 3] and torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3


def test_checkpoints_and_logs_get_normal_permissions(data_dir, tmp_path):
    out = tmp_path / "perm"
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    for name in ("checkpoint.pt", "config.json", "log.csv"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name


def _no_temp_files(folder):
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_before_decoding_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(celeba, "free_bytes", lambda folder: 100_000)  # 40 faces need 0.47 MB
    monkeypatch.setattr(celeba, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("decoding started"))
    assert train_tiny(data_dir, tmp_path / "o", "--max-steps", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left in ") and "free 1 MB or use --cache-dir" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not _no_temp_files(data_dir.parent / "cache")


def test_disk_full_while_writing_the_cache_is_an_error_not_a_crash(data_dir, tmp_path, monkeypatch, capsys):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(celeba.os, "posix_fallocate", full)
    assert train_tiny(data_dir, tmp_path / "o", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "no space left in" in err and "or use --cache-dir" in err
    assert not _no_temp_files(data_dir.parent / "cache") and not list((data_dir.parent / "cache").glob("faces-*"))


def test_decoding_workers_leave_sigterm_and_ctrl_c_to_the_parent():
    import concurrent.futures

    with concurrent.futures.ProcessPoolExecutor(1, initializer=celeba._ignore_signals_in_worker) as pool:
        handlers = pool.submit(_signal_handlers).result()
    assert handlers == (signal.SIG_IGN, signal.SIG_DFL)


def _signal_handlers():
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
