"""``python -m perceptloss score`` with hostile folders and environments (issue 35, items 7-10): file names that
are not UTF-8, decompression bombs and fuzzed headers, symbolic links and hidden folders, devices that cannot
score, a broken torchrun environment, Ctrl-C, and images too small for a metric. Every case ends in scored
pairs or one line saying what to do, never a traceback; the CLI is called in this process."""
from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceptloss.__main__ import main as cli
from perceptloss.score import output, running
from perceptloss.score.decoding import DecodeError, decode, image_size

SCORED: list[tuple[int, ...]] = []  # the shape of each batch scored by MeanAbs or Interrupted


def scored_folder_images() -> list[tuple[int, ...]]:
    """The batches of the folders scored so far (not create_metric's check of a factory on 64x64 images)."""
    return [shape for shape in SCORED if shape[-1] != 64]


class MeanAbs(torch.nn.Module):
    """A metric without weights: the mean absolute pixel difference of each pair."""

    reduction = "none"

    def forward(self, x, y):
        SCORED.append(tuple(x.shape))
        return (x - y).abs().flatten(1).mean(1)


def mean_abs():
    return MeanAbs()


class Interrupted(torch.nn.Module):
    """A metric that is interrupted (Ctrl-C) on its second batch."""

    reduction = "none"

    def forward(self, x, y):
        SCORED.append(tuple(x.shape))
        if len(scored_folder_images()) == 2:  # Ctrl-C during the second batch
            raise KeyboardInterrupt
        return (x - y).abs().flatten(1).mean(1)


def interrupted():
    return Interrupted()


def deep_vgg():
    """A real loss with a smallest input size: VGG19 up to relu5_1 (random weights: no file needed)."""
    from perceptloss import FeatureLoss

    return FeatureLoss("vgg19", "dfc345", weights=None, reduction="none")


METRIC = f"{__name__}:mean_abs"


def run(argv, capsys):
    """(exit code, stdout, stderr) of the CLI called in this process, in float32 unless ``argv`` names a
    ``--dtype`` (values are compared with the library's float32 losses)."""
    argv = [*map(str, argv)]
    code = cli(["score", *argv, *([] if "--dtype" in argv else ["--dtype", "float32"])])
    out, err = capsys.readouterr()
    return code, out, err


def save(path, size=16, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, "PNG")


@pytest.fixture
def pairs(tmp_path):
    """REF and DIST with three 16x16 PNG pairs a, b, c."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    for k, folder in enumerate((ref, dist)):
        folder.mkdir()
        for i, name in enumerate("abc"):
            save(folder / f"{name}.png", seed=10 * k + i)
    SCORED.clear()
    return ref, dist


def one_line(err: str) -> str:
    """The stderr of a failed run: exactly one line, an error, no traceback."""
    assert err.count("\n") == 1 and err.startswith("perceptloss: error:") and "Traceback" not in err, err
    return err


def read_csv_bytes(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"))))  # strict UTF-8


# --------------------------------------------------------------------------------- 35.7: names that are not UTF-8


def test_a_non_utf8_file_name_is_scored_and_written(pairs, tmp_path, capsys):
    """``caf\\xe9.png`` (a Latin-1 name) on both sides is scored; the CSV and the JSON are written, valid UTF-8,
    the name's undecodable byte as ``\\xe9``; a warning says so once. An unreadable file of such a name is named
    the same way in the JSON's skipped pairs and in the warning."""
    ref, dist = pairs
    try:
        for folder, seed in ((ref, 1), (dist, 2)):
            save(os.fsencode(folder) + b"/caf\xe9.png", seed=seed)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    (dist / "c.png").write_bytes(b"not an image")
    (ref / os.fsdecode(b"d\xff.png")).write_bytes(b"not an image either")
    (dist / os.fsdecode(b"d\xff.png")).write_bytes(b"nor this")
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet",
                          "--csv", tmp_path / "s.csv", "--json", tmp_path / "s.json"], capsys)
    assert code == 0, err
    rows = {r["pair"]: r for r in read_csv_bytes(tmp_path / "s.csv")}
    assert sorted(rows) == ["a", "b", "caf\\xe9"]
    assert rows["caf\\xe9"]["ref"] == str(ref / "caf\\xe9.png")
    ref_img = np.asarray(Image.open(os.fsencode(ref) + b"/caf\xe9.png"), dtype=np.float32) / 255
    dist_img = np.asarray(Image.open(os.fsencode(dist) + b"/caf\xe9.png"), dtype=np.float32) / 255
    assert float(rows["caf\\xe9"][METRIC]) == pytest.approx(float(np.abs(dist_img - ref_img).mean()), rel=1e-6)
    document = json.loads((tmp_path / "s.json").read_bytes().decode("utf-8"))
    assert document["pairs_scored"] == 3
    assert sorted(document["skipped"]["unreadable"]) == ["c", "d\\xff"]
    assert "\\udc" not in (tmp_path / "s.json").read_text() and "\\udc" not in err
    assert "not UTF-8, e.g." in err and "caf\\xe9.png" in err and "d\\xff.png" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- 35.8: bombs and fuzzed headers


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR chunk claiming width x height RGB, an empty IDAT and IEND: ~60 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_skipped_with_a_warning(pairs, tmp_path, capsys):
    """A 20000x20000 PNG header in a few bytes (Pillow's DecompressionBombError) is an unreadable file: named in a
    warning, its pair skipped and counted; --strict makes it a one-line error."""
    ref, dist = pairs
    bomb = png_header(20000, 20000)
    assert len(bomb) < 200
    (dist / "b.png").write_bytes(bomb)
    with pytest.raises(DecodeError, match="more pixels than Pillow opens"):
        image_size(dist / "b.png")
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--json", tmp_path / "s.json"],
                         capsys)
    assert code == 0 and "Traceback" not in err and str(dist / "b.png") in err and "pair skipped" in err, err
    document = json.loads((tmp_path / "s.json").read_text())
    assert document["pairs_scored"] == 2 and list(document["skipped"]["unreadable"]) == ["b"]
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--strict"], capsys)
    assert code == 2 and str(dist / "b.png") in one_line(err) and "--strict" in err


def fuzzed_bmps(count: int, seed: int = 0):
    """``count`` copies of an 8x8 BMP with 1 to 6 random bytes of its 54-byte header replaced (seeded)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "BMP")
    good, rng = buf.getvalue(), random.Random(seed)
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(54)] = rng.randrange(256)
        yield bytes(data)


def test_fuzzed_bmp_headers_are_read_or_refused_never_crash(tmp_path):
    """150 fuzzed BMP headers (seed 0): each is read as an (H, W, 3) image in [0, 1] or refused with a
    DecodeError naming the file; decompression bombs among them included."""
    outcomes = {"read": 0, "refused": 0}
    for k, data in enumerate(fuzzed_bmps(150)):
        path = tmp_path / f"f{k}.bmp"
        path.write_bytes(data)
        try:
            height, width = image_size(path)
            image = decode(path)
        except DecodeError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
            continue
        assert image.shape == (height, width, 3) and 0 <= image.min() and image.max() <= 1
        outcomes["read"] += 1
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


def test_a_folder_of_fuzzed_bmps_is_scored_without_a_traceback(tmp_path, capsys):
    """The CLI over 40 fuzzed distorted files (and their intact references): exit 0, every refused file named
    in a warning, the others scored."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    ref.mkdir()
    dist.mkdir()
    for k, data in enumerate(fuzzed_bmps(40, seed=1)):
        (dist / f"f{k:02d}.bmp").write_bytes(data)
        save(ref / f"f{k:02d}.png", size=8, seed=k)
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--resize", "nearest",
                          "--json", tmp_path / "s.json"], capsys)
    assert code == 0 and "Traceback" not in err, err
    document = json.loads((tmp_path / "s.json").read_text())
    refused = document["skipped"]["unreadable"]
    assert document["pairs_scored"] + len(refused) == 40 and refused
    assert all(str(dist / f"{key}.bmp") in err for key in refused)


def test_any_error_of_the_image_parser_is_an_unreadable_file(tmp_path, monkeypatch):
    """Whatever Pillow raises on a hostile file (struct.error, ZeroDivisionError, MemoryError, ...) is a
    DecodeError naming the file and the error."""
    path = tmp_path / "x.png"
    save(path)
    import PIL.Image

    for error in (struct.error("unpack requires a buffer of 4 bytes"), ZeroDivisionError("division by zero"),
                  MemoryError()):
        def broken(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(PIL.Image, "open", broken)
        with pytest.raises(DecodeError) as info:
            image_size(path)
        assert str(path) in str(info.value) and type(error).__name__ in str(info.value)
        monkeypatch.undo()
        monkeypatch.setattr(PIL.Image.Image, "load", broken)
        with pytest.raises(DecodeError) as info:
            decode(path)
        assert str(path) in str(info.value) and type(error).__name__ in str(info.value)
        monkeypatch.undo()


# --------------------------------------------------------------------------------- 35.9: links and hidden folders


def test_symlinked_subfolders_are_scored_and_loops_named(pairs, tmp_path, capsys):
    """A symbolic link to a folder is followed on both sides (as a link to a file is); a link back to a folder
    that contains it is not followed, and a warning names it (--strict: an error)."""
    ref, dist = pairs
    for side, seed in (("ref", 5), ("dist", 6)):
        elsewhere = tmp_path / f"elsewhere-{side}" / "deep"
        elsewhere.mkdir(parents=True)
        save(elsewhere / "x.png", seed=seed)
        (tmp_path / side / "linked").symlink_to(elsewhere.parent, target_is_directory=True)
    (ref / "loop").symlink_to(ref, target_is_directory=True)
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--csv", tmp_path / "s.csv"],
                         capsys)
    assert code == 0, err
    assert sorted(r["pair"] for r in read_csv_bytes(tmp_path / "s.csv")) == ["a", "b", "c", "linked/deep/x"]
    assert f"{ref / 'loop'} links to a folder that contains it (a loop): not followed" in err
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--strict"], capsys)
    assert code == 2 and "(a loop)" in one_line(err) and "--strict" in err


def test_hidden_folders_are_skipped_like_hidden_files(pairs, tmp_path, capsys):
    """A notebook's ``.ipynb_checkpoints/`` (on one side only) and a hidden file are not read, so --strict does
    not stop on them; a link to nothing is a named unreadable file."""
    ref, dist = pairs
    (ref / ".ipynb_checkpoints").mkdir()
    save(ref / ".ipynb_checkpoints" / "a-checkpoint.png")
    save(ref / ".hidden.png")
    (ref / ".cache").mkdir()
    (ref / ".cache" / "sub").mkdir()
    save(ref / ".cache" / "sub" / "a.png")
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--strict",
                          "--csv", tmp_path / "s.csv"], capsys)
    assert code == 0 and err == "", err
    assert sorted(r["pair"] for r in read_csv_bytes(tmp_path / "s.csv")) == ["a", "b", "c"]
    (dist / "c.png").unlink()
    (dist / "c.png").symlink_to(tmp_path / "gone.png")
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet"], capsys)
    assert code == 0 and str(dist / "c.png") in err and "pair skipped" in err and "Traceback" not in err


# --------------------------------------------------------------------------------- 35.10: devices, torchrun, Ctrl-C


@pytest.mark.parametrize("device, text", [
    ("meta", "--device meta: meta tensors hold no values; use --device cpu"),
    ("xla", "--device xla: perceptloss does not compute on xla; use --device cpu"),
    ("nonsense", "--device must be a torch device such as cpu, cuda or cuda:1, got 'nonsense'"),
    ("cuda:99", "--device cuda:99: "),
    ("mps", "--device mps: "),
])
def test_devices_that_cannot_score_are_one_line_errors(pairs, capsys, device, text):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", "--quiet", "--device", device], capsys)
    assert code == 2 and text in one_line(err) and scored_folder_images() == []


@pytest.mark.parametrize("env, text", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not: a sharded run is started "
                          "by torchrun, which sets them all (torchrun --nproc_per_node 2 -m perceptloss score ...); "
                          "to score in this one process, unset WORLD_SIZE"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "WORLD_SIZE=2 is set but MASTER_PORT is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=2 is not a rank of WORLD_SIZE=2 (0 to 1)"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
])
def test_a_broken_torchrun_environment_names_what_is_missing(pairs, capsys, monkeypatch, env, text):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", "--quiet"], capsys)
    assert code == 2 and text in one_line(err) and scored_folder_images() == []
    monkeypatch.delenv("WORLD_SIZE")  # the fix, as printed
    assert run([*pairs, "--metric", METRIC, "--workers", "0", "--quiet"], capsys)[0] == 0


def test_a_job_without_rank_0_stops_with_an_error_not_a_hang(pairs, capsys, monkeypatch):
    """Rank 1 of 2 with nobody at MASTER_ADDR:MASTER_PORT (rank 0 never started) gives up after the rendezvous
    timeout (2 s here) with a line naming the address and what to start; nothing is scored."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setattr(running, "RENDEZVOUS_TIMEOUT", timedelta(seconds=2))
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", "--quiet"], capsys)
    last = err.strip().splitlines()[-1]  # (torch's C++ layer logs its retries first)
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith(f"perceptloss: error: rank 1 of 2 could not join the job at 127.0.0.1:{port} within 2 s")
    assert "torchrun --nproc_per_node 2 -m perceptloss score" in last and scored_folder_images() == []
    assert not torch.distributed.is_initialized()


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_outputs(pairs, tmp_path, capsys, monkeypatch):
    """Ctrl-C while scoring: exit code 130, one line, the previous CSV as it was; Ctrl-C while the CSV is
    written: the previous CSV whole and no temporary file left."""
    ref, dist = pairs
    save(ref / "d.png", size=8)
    save(dist / "d.png", size=8, seed=3)  # a second size: a second batch
    csv_path = tmp_path / "out" / "s.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("pair,previous\nkept,1\n")
    code, out, err = run([ref, dist, "--metric", f"{__name__}:interrupted", "--workers", "0", "--quiet",
                          "--csv", csv_path], capsys)
    assert code == 130 and err == "perceptloss: interrupted\n" and out == ""
    assert csv_path.read_text() == "pair,previous\nkept,1\n"

    real_write = os.write

    def interrupt_the_csv(fd, data):
        if ".s.csv." in os.readlink(f"/proc/self/fd/{fd}"):
            real_write(fd, bytes(data[:10]))
            raise KeyboardInterrupt
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", interrupt_the_csv)
    code, out, err = run([ref, dist, "--metric", METRIC, "--workers", "0", "--quiet", "--csv", csv_path], capsys)
    monkeypatch.undo()
    assert code == 130 and err == "perceptloss: interrupted\n"
    assert csv_path.read_text() == "pair,previous\nkept,1\n" and os.listdir(csv_path.parent) == ["s.csv"]


class Slow(torch.nn.Module):
    """A metric that marks the file $SCORE_STARTED once it scores the folders, and takes its time per batch."""

    reduction = "none"

    def forward(self, x, y):
        if x.shape[-1] != 64:  # not create_metric's check
            Path(os.environ["SCORE_STARTED"]).touch()
            time.sleep(0.2)
        return (x - y).abs().flatten(1).mean(1)


def slow():
    return Slow()


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_with_worker_processes(tmp_path):
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group: the CLI and its 2 DataLoader workers):
    exit code 130, the one line on stderr and no traceback from any process; the previous CSV stays."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    ref.mkdir()
    dist.mkdir()
    for k in range(40):
        save(ref / f"{k:02d}.png", seed=k)
        save(dist / f"{k:02d}.png", seed=100 + k)
    csv_path, started = tmp_path / "s.csv", tmp_path / "started"
    csv_path.write_text("pair,previous\nkept,1\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "SCORE_STARTED": str(started), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "perceptloss", "score", str(ref), str(dist), "--metric",
                             f"{__name__}:slow", "--workers", "2", "--batch-size", "2", "--csv", str(csv_path)],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for _ in range(1200):
            if started.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert started.exists(), proc.communicate()[1]
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.replace("\r", "\n").strip().splitlines()[-1] == "perceptloss: interrupted"
    assert csv_path.read_text() == "pair,previous\nkept,1\n" and sorted(os.listdir(tmp_path)) == [
        "dist", "ref", "s.csv", "started"]


def test_images_too_small_for_a_metric_are_skipped_and_counted(tmp_path, capsys):
    """The policy for a pair too small for a metric is the one for an unreadable file: a warning naming the pair,
    its size and the smallest the metric takes, the pair left out of every metric and counted in the JSON's
    ``skipped.too_small``; --strict: a one-line error."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    ref.mkdir()
    dist.mkdir()
    for name, size in (("big1", 32), ("big2", 32), ("tiny", 8)):
        save(ref / f"{name}.png", size=size, seed=1)
        save(dist / f"{name}.png", size=size, seed=2)
    argv = [ref, dist, "--metric", f"{__name__}:deep_vgg", "--metric", METRIC, "--workers", "0", "--quiet"]
    code, out, err = run([*argv, "--csv", tmp_path / "s.csv", "--json", tmp_path / "s.json"], capsys)
    assert code == 0 and "Traceback" not in err, err
    assert "pair 'tiny' (8x8) is too small for metric tests.test_score_robustness:deep_vgg, which takes at least" in err
    assert [r["pair"] for r in read_csv_bytes(tmp_path / "s.csv")] == ["big1", "big2"]
    document = json.loads((tmp_path / "s.json").read_text())
    assert list(document["skipped"]["too_small"]) == ["tiny"] and document["pairs_scored"] == 2
    assert {m["n"] for m in document["metrics"].values()} == {2}
    code, out, err = run([*argv, "--strict"], capsys)
    assert code == 2 and "'tiny' (8x8) is too small" in one_line(err) and "--strict" in err


# --------------------------------------------------------------------------------- issue 36: - is the standard output


@pytest.mark.parametrize("flag", ["--csv", "--json"])
def test_dash_writes_to_stdout_and_the_summary_moves_to_stderr(pairs, tmp_path, capsys, monkeypatch, flag):
    """``--csv -`` / ``--json -`` write to the standard output (no file named "-"), the summary then goes to
    stderr; both to "-" is a one-line error before scoring."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", flag, "-"], capsys)
    assert code == 0 and not (tmp_path / "-").exists(), err
    if flag == "--csv":
        assert [r["pair"] for r in csv.DictReader(io.StringIO(out))] == ["a", "b", "c"]
    else:
        assert json.loads(out)["pairs_scored"] == 3
    assert "95% CI (t)" in err and "95% CI (t)" not in out  # the summary table moved to stderr
    SCORED.clear()
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", "--csv", "-", "--json", "-"], capsys)
    assert code == 2 and "--csv and --json both write to the standard output (-)" in one_line(err)
    assert scored_folder_images() == [] and out == ""
    code, out, err = run([*pairs, "--metric", METRIC, "--workers", "0", "--quiet", "--csv", "-", "--json",
                          "scores.json"], capsys)  # the fix, as printed
    assert code == 0 and (tmp_path / "scores.json").is_file() and out.startswith("pair,ref,dist,")
