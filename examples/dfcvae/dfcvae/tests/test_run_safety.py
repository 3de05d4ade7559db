"""Issue 28's example items: checkpoints are data (never unpickled), a run folder is never cut back or shared,
a diverged run keeps its last good checkpoint, float arguments are finite, checkpoints fit the model."""
import os
import shlex
import socket
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from perceptloss.weights import sha256_file

from dfcvae import files, objective, pretrained, report, train, vae
from dfcvae.training import loop, session

from .helpers import make_celeba, train_tiny

EXAMPLE = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path):
    return make_celeba(tmp_path / "celeba", n_images=16, listed=16)  # 2 steps of 8 per epoch


def _steps(out):
    return [int(line.split(",")[0]) for line in (out / "log.csv").read_text().splitlines()[1:]]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _last_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


# --------------------------------------------------------------------------- item 1: a checkpoint runs no code
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _crafted_checkpoint(folder: Path, preset="vae123"):
    """A checkpoint.pt of the right shape (model, config, step) whose pickle also calls os.system."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "code-ran"
    torch.save({"model": vae.VAE().state_dict(), "step": 1, "payload": RunsCode(marker),
                "config": {"preset": preset, "latent": 100, "crop": "released", "images": 8, "epochs": 1,
                           "steps_per_epoch": 1, "batch_size": 8}}, folder / "checkpoint.pt")
    return folder / "checkpoint.pt", marker


def test_a_crafted_checkpoint_runs_no_code_on_resume(data_dir, tmp_path, capsys):
    evil, marker = _crafted_checkpoint(tmp_path / "evil")
    assert train_tiny(data_dir, tmp_path / "run", "--preset", "pvae", "--resume", str(evil)) == 2
    assert not marker.exists()
    line = _last_error(capsys)
    assert line.startswith("error:") and "other than tensors" in line and "checkpoint.pt written by" in line


def test_a_crafted_checkpoint_runs_no_code_in_report(tmp_path, capsys):
    data = make_celeba(tmp_path / "celeba", n_images=20, listed=20, splits=[0] * 12 + [2] * 8)
    evil, marker = _crafted_checkpoint(tmp_path / "evil")
    assert report.main(["--vae123", str(evil), "--data", str(data), "--out", str(tmp_path / "rep")]) == 2
    assert not marker.exists() and "other than tensors" in _last_error(capsys)


def test_a_crafted_checkpoint_runs_no_code_on_export(tmp_path, capsys):
    evil, marker = _crafted_checkpoint(tmp_path / "evil")
    folder = tmp_path / "models"
    assert pretrained.main(["export", "--checkpoint", str(evil), "--name", "vae123", "--folder", str(folder)]) == 2
    assert not marker.exists() and "other than tensors" in _last_error(capsys)
    assert not folder.exists() or not any(folder.iterdir())


# --------------------------------------------------------------------------- item 7: resume into another run
def test_resuming_another_runs_checkpoint_into_a_folder_holding_a_run_needs_overwrite(data_dir, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_tiny(data_dir, a, "--max-steps", "4") == 0
    assert train_tiny(data_dir, b, "--max-steps", "1") == 0
    before = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    assert train_tiny(data_dir, a, "--max-steps", "4", "--resume", str(b / "checkpoint.pt")) == 2
    line = _last_error(capsys)
    assert f"{a} already holds a run" in line and "--overwrite" in line and str(b / "checkpoint.pt") in line
    assert {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()} == before  # not cut back to 1
    assert _load(a / "checkpoint.pt")["step"] == 4 and _steps(a) == [1, 2, 3, 4]
    # --overwrite: A's run is moved aside whole, then B's checkpoint continues in A
    assert train_tiny(data_dir, a, "--max-steps", "2", "--resume", str(b / "checkpoint.pt"), "--overwrite") == 0
    (aside,) = tmp_path.glob("a.previous-*")
    assert _load(aside / "checkpoint.pt")["step"] == 4 and _steps(aside) == [1, 2, 3, 4]
    assert _load(a / "checkpoint.pt")["step"] == 2 and _steps(a) == [2]
    assert _load(b / "checkpoint.pt")["step"] == 1  # the source run is only read
    # its own checkpoint, however spelled, still contradicts --overwrite
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(a), "--resume", str(a / "." / "checkpoint.pt"), "--overwrite"])


# --------------------------------------------------------------------------- item 8: one process per run folder
def test_a_second_run_on_the_same_out_fails_at_once(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shared"
    second = {}
    real_load_data = session.load_data

    def load_data_then_start_another(config, dist):  # the first run has passed its checks: a second one starts now
        if not second:
            second["code"] = train_tiny(data_dir, out, "--max-steps", "3")
            second["err"] = capsys.readouterr().err
        return real_load_data(config, dist)

    monkeypatch.setattr(session, "load_data", load_data_then_start_another)
    assert train_tiny(data_dir, out, "--max-steps", "2") == 0
    assert second["code"] == 2
    line = second["err"].strip().splitlines()[-1]
    assert line.startswith("error:") and f"{out} is in use by another train.py" in line
    assert f"PID {os.getpid()} on {socket.gethostname()}" in line
    assert _steps(out) == [1, 2]  # each step logged once, by the one run
    assert (out / "train.lock").read_text() == ""  # released (and emptied) at the end


@pytest.mark.slow
def test_the_lock_names_another_process_and_is_released_when_it_dies(data_dir, tmp_path, capsys):
    out = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from dfcvae.files import hold_lock\n"
         f"with hold_lock({str(out / 'train.lock')!r}):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=EXAMPLE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLE), *sys.path])))
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert train_tiny(data_dir, out, "--max-steps", "1") == 2
        line = _last_error(capsys)
        assert f"PID {holder.pid} on {socket.gethostname()}" in line and "another --out" in line
        assert not (out / "config.json").exists() and not (out / "log.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train_tiny(data_dir, out, "--max-steps", "1") == 0  # a dead holder's lock is gone with it


# --------------------------------------------------------------------------- item 9: divergence
def _nan_from_call(n):
    calls = {"n": 0}
    real = objective.pixel_sse

    def sse(recon, images):
        calls["n"] += 1
        value = real(recon, images)
        return value * float("nan") if calls["n"] >= n else value

    return sse


def test_nan_between_log_steps_never_reaches_a_checkpoint(data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "nan"
    monkeypatch.setattr(objective, "pixel_sse", _nan_from_call(3))
    assert train_tiny(data_dir, out, "--max-steps", "4", "--checkpoint-every", "1", "--log-every", "4") == 1
    line = _last_error(capsys)
    assert line.startswith("error: training diverged: the loss became nan at step 3")
    assert f"the last good checkpoint, {out / 'checkpoint.pt'} (step 2), is kept" in line
    state = _load(out / "checkpoint.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def _blow_up_weights_at(step):
    calls = {"n": 0}
    real = torch.optim.Adam.step

    def blown(self, *a, **k):
        result = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == step:  # as --lr 1000 does: the update leaves the weights non-finite
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("inf"))
        return result

    return blown


@pytest.mark.parametrize("extra, last_good", [
    (["--checkpoint-every", "1"], 1),         # the per-step checkpoint after the bad step is not written
    (["--checkpoint-every", "100"], None),    # nor the epoch-end one (step 2 ends the epoch)
], ids=["checkpoint-every", "epoch-end"])
def test_non_finite_weights_are_never_saved(data_dir, tmp_path, monkeypatch, capsys, extra, last_good):
    out = tmp_path / "inf"
    step = 2
    monkeypatch.setattr(torch.optim.Adam, "step", _blow_up_weights_at(step))
    assert train_tiny(data_dir, out, "--max-steps", "3", "--log-every", "100", *extra) == 1
    line = _last_error(capsys)
    assert line.startswith(f"error: training diverged: the model's weights became non-finite at step {step}")
    if last_good:
        assert _load(out / "checkpoint.pt")["step"] == last_good and f"(step {last_good}), is kept" in line
    else:
        assert not (out / "checkpoint.pt").exists() and "no checkpoint had been written" in line
    assert "a lower --lr" in line


def test_a_diverged_feature_loss_run_is_one_line_not_a_traceback(data_dir, tmp_path, monkeypatch, capsys):
    """VAE-123 (random VGG): non-finite weights give a non-finite reconstruction, which FeatureLoss's input
    check would reject with a traceback; the step's own check ends the run first."""
    out = tmp_path / "v123"
    calls = {"n": 0}
    real = torch.optim.Adam.step

    def nan_weights(self, *a, **k):
        result = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 1:
            with torch.no_grad():
                next(iter(self.param_groups[0]["params"])).fill_(float("nan"))  # the first conv only
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", nan_weights)
    for module in (loop, session):  # the loop's saves and the last one
        monkeypatch.setattr(module, "save_checkpoint", lambda *a, **k: pytest.fail("a checkpoint was written"))
    assert train_tiny(data_dir, out, "--preset", "vae123", "--weights", "none", "--max-steps", "3",
                      "--log-every", "100", "--checkpoint-every", "100") == 1
    line = _last_error(capsys)
    assert line.startswith("error: training diverged: the model's output became non-finite at step 2")


def test_lr_1000_ends_with_one_line_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, capsys):
    """The issue's case, unpatched: VAE-123 (random VGG) with --lr 1000 and a checkpoint every step."""
    out = tmp_path / "lr"
    assert train_tiny(data_dir, out, "--preset", "vae123", "--weights", "none", "--amp", "off", "--lr", "1000",
                      "--max-steps", "8", "--log-every", "100", "--checkpoint-every", "1") == 1
    line = _last_error(capsys)
    assert line.startswith("error: training diverged: the ") and "a lower --lr" in line
    state = _load(out / "checkpoint.pt")
    assert f"{out / 'checkpoint.pt'} (step {state['step']}), is kept" in line and state["step"] < 8
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --------------------------------------------------------------------------- item 10: --overwrite copies
def test_overwrite_says_where_the_previous_runs_are_and_how_much_they_hold(data_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert train_tiny(data_dir, out, "--max-steps", "1") == 0
    for stamp in ("20200101-000000", "20200102-000000"):  # as left by two earlier --overwrite runs
        shutil.copytree(out, tmp_path / f"o.previous-{stamp}")
    capsys.readouterr()
    assert train_tiny(data_dir, out, "--max-steps", "1", "--overwrite") == 0
    copies = sorted(tmp_path.glob("o.previous-*"))
    assert len(copies) == 3
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("--overwrite:"))
    newest = copies[-1]  # named by date and time
    size = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())
    older = sum(p.stat().st_size for c in copies if c != newest for p in c.rglob("*") if p.is_file())
    assert f"to {newest} ({size / 1e6:.1f} MB" in line
    assert f"2 older previous runs beside it hold {older / 1e6:.1f} MB ({tmp_path / 'o'}.previous-*)" in line


def test_overwrite_moves_the_snapshots_aside_with_the_rest_of_the_run(data_dir, tmp_path, capsys):
    """Issue 35: the old run's snapshots/ would otherwise stay beside the new run's (and dfcvae.trajectory would
    table them as the new run's)."""
    out = tmp_path / "o"
    assert train_tiny(data_dir, out, "--max-steps", "1", "--keep-every", "1") == 0
    old = (out / "snapshots" / "step-000001.pt").read_bytes()
    assert train_tiny(data_dir, out, "--max-steps", "1", "--overwrite") == 0
    assert not (out / "snapshots").exists()
    (aside,) = tmp_path.glob("o.previous-*")
    assert (aside / "snapshots" / "step-000001.pt").read_bytes() == old


def test_resume_after_a_kill_removes_temporaries_and_recreates_the_snapshot(data_dir, tmp_path, capsys):
    """Issue 35: a kill while a snapshot was copied (or a checkpoint written) leaves a half-size temporary file and
    no snapshot; the resume removes the files, one line each, re-creates the snapshot of the checkpoint's step and
    names the one that is lost."""
    out = tmp_path / "o"
    assert train_tiny(data_dir, out, "--max-steps", "2", "--keep-every", "1") == 0
    snaps = out / "snapshots"
    for step in (1, 2):  # both copies killed halfway (step 1's as if the checkpoint had moved on since)
        whole = (snaps / f"step-{step:06d}.pt").read_bytes()
        (snaps / f"step-{step:06d}.pt").unlink()
        (snaps / f".step-{step:06d}.pt.k1ll3d.tmp").write_bytes(whole[: len(whole) // 2])
    (out / ".checkpoint.pt.x9y8z7.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert train_tiny(data_dir, out, "--max-steps", "3", "--keep-every", "1", "--resume") == 0
    err = capsys.readouterr().err.splitlines()
    for leftover in (out / ".checkpoint.pt.x9y8z7.tmp", snaps / ".step-000001.pt.k1ll3d.tmp",
                     snaps / ".step-000002.pt.k1ll3d.tmp"):
        assert any(line.startswith(f"removed {leftover} (") for line in err), err
    assert f"re-created {snaps / 'step-000002.pt'} from {out / 'checkpoint.pt'} (step 2): its copy had not finished" in err
    assert any(line.startswith(f"lost {snaps / 'step-000001.pt'}: ") for line in err), err
    assert sorted(p.name for p in snaps.iterdir()) == ["step-000002.pt", "step-000003.pt"]
    assert _load(snaps / "step-000002.pt")["step"] == 2
    assert not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------- item 11: finite float arguments
@pytest.mark.parametrize("flag", ["--lr", "--beta1", "--alpha", "--beta", "--time-budget"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_train_float_arguments_must_be_finite(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args([f"{flag}={value}"])  # -inf would read as an option otherwise
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and lines[-1].endswith(f"argument {flag}: must be a finite number, got {value}")


@pytest.mark.parametrize("args, message", [
    (["--time-budget", "-1"], "--time-budget must be >= 0"), (["--alpha", "-0.5"], "--alpha and --beta must be >= 0"),
    (["--lr", "0"], "--lr must be positive"), (["--beta1", "1"], "--beta1 must be in [0, 1)"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
])
def test_train_float_arguments_keep_their_ranges(args, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(args)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- item 13: checkpoint against model
def _foreign_checkpoint(path: Path, model_state, **config):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model_state, "step": 1,
                "config": dict({"preset": "vae123", "latent": 100, "crop": "released", "images": 8, "epochs": 1,
                                "steps_per_epoch": 1, "batch_size": 8, "world_size": 1}, **config)}, path)
    return path


OTHER_MODELS = {
    "another network": lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 2)).state_dict(),
    "another latent size": lambda: vae.VAE(64).state_dict(),     # the config says 100
    "non-finite weights": lambda: {k: v.fill_(float("nan")) if v.is_floating_point() else v
                                   for k, v in vae.VAE().state_dict().items()},
}


@pytest.mark.parametrize("kind", list(OTHER_MODELS))
def test_report_refuses_a_checkpoint_that_does_not_fit_the_model(tmp_path, capsys, kind):
    data = make_celeba(tmp_path / "celeba", n_images=20, listed=20, splits=[0] * 12 + [2] * 8)
    ckpt = _foreign_checkpoint(tmp_path / "x" / "checkpoint.pt", OTHER_MODELS[kind]())
    assert report.main(["--vae123", str(ckpt), "--data", str(data), "--out", str(tmp_path / "rep")]) == 2
    line = _last_error(capsys)
    assert line.startswith(f"error: {ckpt}") and ("non-finite" in line if "finite" in kind else "does not fit" in line)


@pytest.mark.parametrize("kind", list(OTHER_MODELS))
def test_export_refuses_a_checkpoint_that_does_not_fit_the_model(tmp_path, capsys, kind):
    ckpt = _foreign_checkpoint(tmp_path / "x" / "checkpoint.pt", OTHER_MODELS[kind]())
    folder = tmp_path / "models"
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder", str(folder)]) == 2
    assert _last_error(capsys).startswith(f"error: {ckpt}")
    assert not (folder / "vae123.safetensors").exists() and not (folder / "vae123.json").exists()


def test_export_refuses_weights_beyond_float16(tmp_path, capsys):
    state = vae.VAE().state_dict()
    state["decoder.fc.0.bias"][0] = 1e6  # exported as fp16: inf
    ckpt = _foreign_checkpoint(tmp_path / "x" / "checkpoint.pt", state)
    assert pretrained.main(["export", "--checkpoint", str(ckpt), "--name", "vae123", "--folder",
                            str(tmp_path / "m")]) == 2
    assert "float16" in _last_error(capsys) and not (tmp_path / "m" / "vae123.safetensors").exists()


def test_load_pretrained_explains_weights_of_another_model(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "models"
    folder.mkdir()
    save_file({k: v.half() if v.is_floating_point() else v for k, v in vae.VAE(64).state_dict().items()},
              str(folder / "vae123.safetensors"))
    files.write_text_atomic(folder / "vae123.json", '{"latent": 100, "steps": 1, "epochs": 1, "sha256": "%s"}'
                            % sha256_file(folder / "vae123.safetensors"))
    with pytest.raises(pretrained.PretrainedError, match="does not fit"):
        pretrained.load_pretrained("vae123", folder)
