"""The per-snapshot evaluation of a training run (dfcvae.trajectory) on a tiny run."""
import csv
import json


from dfcvae import trajectory

from .helpers import make_celeba, train_tiny


def tiny_run(tmp_path, images: int, steps: int, keep_every: int, train_images: int, samples: int):
    """A tiny training run with snapshots, and the trajectory arguments for it: (run, out, args)."""
    data = make_celeba(tmp_path / "celeba", n_images=images, listed=images)
    run = tmp_path / "run"
    assert train_tiny(data, run, "--epochs", "1", "--max-steps", str(steps), "--keep-every", str(keep_every)) == 0
    out = tmp_path / "trajectory.md"
    args = ["--run", str(run), "--data", str(data), "--train-images", str(train_images), "--samples", str(samples),
            "--out", str(out)]
    return run, out, args


def test_every_kept_snapshot_is_evaluated_once_and_tabled(tmp_path, capsys):
    run, out, args = tiny_run(tmp_path, images=40, steps=5, keep_every=2, train_images=16, samples=20)
    assert trajectory.main(args) == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # two snapshots, then the newer checkpoint.pt
    first = rows[0]
    assert 0 <= float(first["face_paper"]) <= 1 and 0 <= float(first["face_released"]) <= 1
    assert abs(float(first["half_m2"]) - 0.5 * float(first["mean_norm"]) ** 2) <= 1e-4 * float(first["half_m2"])
    assert float(first["lr"]) == 5e-4 and float(first["log_kl"]) > 0
    assert "| 4 |" in out.read_text()
    # the snapshots' results are cached: a second run recomputes only checkpoint.pt, with the same numbers
    cache = run / "snapshots" / "step-000002.eval.json"
    assert json.loads(cache.read_text())["result"]["kl"] == float(first["kl"])
    capsys.readouterr()
    assert trajectory.main(args) == 0
    err = capsys.readouterr().err
    assert "step 2:" not in err and "step 4:" not in err and "step 5:" in err
    assert [r["kl"] for r in csv.DictReader(out.with_suffix(".csv").open())] == [r["kl"] for r in rows]


def test_a_run_without_snapshots_says_how_to_make_them(tmp_path, capsys):
    assert trajectory.main(["--run", str(tmp_path / "nothing")]) == 2
    assert "--keep-every" in capsys.readouterr().err


def test_a_cached_result_of_another_snapshot_file_is_recomputed(tmp_path, capsys):
    """A cache is keyed on the snapshot's content: a run started again in the folder (another step-2 file)
    gets its own numbers, and the stale entry is named."""
    run, out, args = tiny_run(tmp_path, images=16, steps=2, keep_every=1, train_images=8, samples=10)
    assert trajectory.main(args) == 0
    first = {int(r["step"]): r["kl"] for r in csv.DictReader(out.with_suffix(".csv").open())}
    snaps = run / "snapshots"
    (snaps / "step-000002.pt").unlink()  # only the cache of the old step-1 snapshot stays beside the new one
    (snaps / "step-000001.pt").write_bytes((run / "checkpoint.pt").read_bytes())  # step 2's weights now
    capsys.readouterr()
    assert trajectory.main(args) == 0
    again = {int(r["step"]): r["kl"] for r in csv.DictReader(out.with_suffix(".csv").open())}
    assert again[1] == first[2] != first[1]
    err = capsys.readouterr().err
    assert f"step 1: {snaps / 'step-000001.eval.json'} holds the result of another snapshot file" in err
