"""``python -m perceptloss score`` on real CelebA images (64x64 crops of the test split, JPEG-compressed and
blurred copies made here): pairing, unmatched and unreadable files, sizes, the decoding policy, every metric's
per-image value equal to the library called directly, stronger distortion scoring worse, the summary
statistics, and a 2-process torchrun (gloo) run equal to one process."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perceptloss.__main__ import main as cli
from perceptloss.score.decoding import decode
from perceptloss.score.statistics import summarize, t_quantile

from .helpers import relative, save_features_checkpoint, standin_entries
from .score_images import SIZE, load_rgb, make_folders

ROOT = Path(__file__).resolve().parents[1]
#: float32 values of one image computed in batches of different sizes agree to this (relative, norm-wise).
TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("celeba"))


@pytest.fixture(scope="module")
def _trunk_files(tmp_path_factory):
    """Random-init trunks saved under torchvision's published file names (their ImageNet files are not
    available offline): AlexNet and SqueezeNet 1.1 whole, VGG16 its ``features.*`` only."""
    import torchvision

    base = tmp_path_factory.mktemp("trunks")
    torch.manual_seed(0)
    files = {
        "alex": base / "alexnet-owt-7be5be79.pth",
        "squeeze": base / "squeezenet1_1-b8a52dc0.pth",
        "vgg16": base / "vgg16-397923af.pth",
    }
    torch.save(torchvision.models.alexnet().state_dict(), files["alex"])
    torch.save(torchvision.models.squeezenet1_1().state_dict(), files["squeeze"])
    vgg16_trunk = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16().features only
    save_features_checkpoint(vgg16_trunk, files["vgg16"])
    return files


@pytest.fixture
def trunk_files(_trunk_files):
    """``_trunk_files``, accepted under torchvision's names while a test runs (``standin_entries``)."""
    with standin_entries(*_trunk_files.values()):
        yield _trunk_files


def run(argv, capsys):
    """(exit code, stdout, stderr) of the CLI called in this process, in float32 unless ``argv`` names a
    ``--dtype`` (the values are compared with the library's float32 losses)."""
    argv = [*map(str, argv)]
    code = cli(["score", *argv, *([] if "--dtype" in argv else ["--dtype", "float32"])])
    out, err = capsys.readouterr()
    return code, out, err


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["pair"]: row for row in csv.DictReader(f)}


def stacked(folder: Path, keys: list[str], suffix: str) -> torch.Tensor:
    return torch.stack([load_rgb(folder / f"{k}{suffix}") for k in keys])


# ------------------------------------------------------------------------------------------------- values


def test_every_metric_equals_the_library(folders, trunk_files, tmp_path, capsys, caffe_weights):
    """Each metric's per-image value in the CSV is the library's loss(dist, ref) on the same pixels (batches of 5
    in the CLI vs one batch of 10 here: within TOL), decoded in 2 worker processes; the summary is of those values."""
    from perceptloss import DISTS, LPIPS, FeatureLoss

    ref_dir, dist_dir = tmp_path / "ref", tmp_path / "dist"  # 10 of the 24 pairs: five networks run on them
    ref_dir.mkdir()
    dist_dir.mkdir()
    for path in sorted(folders["ref"].iterdir())[:10]:
        shutil.copy(path, ref_dir / path.name)
        shutil.copy(folders["jpeg10"] / f"{path.stem}.jpg", dist_dir / f"{path.stem}.jpg")

    metrics = {
        "vgg19:dfc123": lambda: FeatureLoss("vgg19", "dfc123", reduction="none"),
        "lpips-alex": lambda: LPIPS("alex", weights=trunk_files["alex"]),
        "lpips-squeeze-v0.0": lambda: LPIPS("squeeze", "0.0", weights=trunk_files["squeeze"]),
        "lpips-vgg": lambda: LPIPS("vgg", weights=trunk_files["vgg16"]),
        "dists": lambda: DISTS(weights=trunk_files["vgg16"]),
    }
    weights = ["lpips-alex=" + str(trunk_files["alex"]), "lpips-squeeze-v0.0=" + str(trunk_files["squeeze"]),
               "lpips-vgg=" + str(trunk_files["vgg16"]), "dists=" + str(trunk_files["vgg16"])]
    argv = [ref_dir, dist_dir, "--csv", tmp_path / "v.csv", "--json", tmp_path / "v.json",
            "--workers", "2", "--batch-size", "5", "--quiet"]
    for name in metrics:
        argv += ["--metric", name]
    for w in weights:
        argv += ["--weights", w]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    rows = read_csv(tmp_path / "v.csv")
    keys = sorted(rows)
    assert len(keys) == 10
    ref, dist = stacked(ref_dir, keys, ".png"), stacked(dist_dir, keys, ".jpg")
    summary = json.loads((tmp_path / "v.json").read_text())
    for name, make in metrics.items():
        loss = make()
        with torch.no_grad():
            expected = loss(dist, ref)
        got = torch.tensor([float(rows[k][name]) for k in keys])
        assert relative(got, expected) < TOL, name
        s = summary["metrics"][name]
        assert s["n"] == 10
        assert s["mean"] == pytest.approx(float(np.mean([float(rows[k][name]) for k in keys])), rel=1e-12)
        assert s["signature"] == loss.signature  # no resize: the library's own signature
        assert s["weights"] == loss.weights_source != "unknown"  # where the tensors came from, beside it


def test_the_default_precision_is_the_hardwares_and_the_signature_names_it(folders, tmp_path, capsys, caffe_weights):
    """Without --dtype the network runs in what ``dtype="auto"`` picks on this machine (bfloat16 on AVX512-BF16 /
    AMX CPUs, float32 elsewhere; also under the AVX2 emulation), the signature's dtype field names it, and the
    values are the library's ``dtype="auto"`` loss's on the same batches (bfloat16: within 1e-3, its rounding)."""
    import perceptloss

    out = tmp_path / "s.json"
    argv = ["score", str(folders["ref"]), str(folders["jpeg10"]), "--metric", "vgg19:dfc123", "--batch-size", "8",
            "--workers", "0", "--quiet", "--json", str(out), "--csv", str(tmp_path / "s.csv")]
    assert cli(argv) == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())["metrics"]["vgg19:dfc123"]
    picked = str(perceptloss.auto_dtype("cpu")).replace("torch.", "")
    assert f"|dtype:{picked}|" in summary["signature"]
    rows = read_csv(tmp_path / "s.csv")
    keys = sorted(rows)
    ref, dist = stacked(folders["ref"], keys, ".png"), stacked(folders["jpeg10"], keys, ".jpg")
    loss = perceptloss.FeatureLoss("vgg19", "dfc123", reduction="none", dtype="auto")
    with torch.inference_mode():
        expected = torch.cat([loss(dist[i:i + 8], ref[i:i + 8]) for i in range(0, len(keys), 8)])
    got = torch.tensor([float(rows[k]["vgg19:dfc123"]) for k in keys])
    assert relative(got, expected) < (TOL if picked == "float32" else 1e-3)
    assert summary["signature"] == loss.signature


def test_stronger_distortion_scores_worse(folders, tmp_path, capsys, caffe_weights):
    """With VGG19's published (Caffe) weights: JPEG quality 10 scores worse than 60, blur radius 3 worse than 1,
    in the mean and for most images."""
    means = {}
    for name in ("jpeg10", "jpeg60", "blur1", "blur3"):
        code, out, err = run([folders["ref"], folders[name], "--metric", "vgg19:dfc123", "--workers", "0",
                              "--csv", tmp_path / f"{name}.csv", "--json", tmp_path / f"{name}.json", "--quiet"], capsys)
        assert code == 0, err
        means[name] = json.loads((tmp_path / f"{name}.json").read_text())["metrics"]["vgg19:dfc123"]["mean"]
    assert means["jpeg10"] > means["jpeg60"] > 0
    assert means["blur3"] > means["blur1"] > 0
    strong, mild = read_csv(tmp_path / "blur3.csv"), read_csv(tmp_path / "blur1.csv")
    assert all(float(strong[k]["vgg19:dfc123"]) > float(mild[k]["vgg19:dfc123"]) for k in strong)


def test_summary_on_screen_and_t_interval(folders, tmp_path, capsys, caffe_weights):
    """The screen shows n, mean, std, the t-interval and the signature; the JSON interval is the Student-t one."""
    code, out, err = run([folders["ref"], folders["blur1"], "--metric", "vgg19:dfc123", "--workers", "0",
                          "--csv", tmp_path / "s.csv", "--json", tmp_path / "s.json"], capsys)
    assert code == 0, err
    values = [float(r["vgg19:dfc123"]) for r in read_csv(tmp_path / "s.csv").values()]
    s = json.loads((tmp_path / "s.json").read_text())["metrics"]["vgg19:dfc123"]
    std = float(np.std(values, ddof=1))
    half = 2.0686576104190406 * std / np.sqrt(24)  # t(0.975, 23)
    assert s["std"] == pytest.approx(std, rel=1e-12)
    assert s["ci95"] == pytest.approx([s["mean"] - half, s["mean"] + half], rel=1e-9)
    assert "vgg19:dfc123" in out and "95% CI (t)" in out and s["signature"] in out
    assert f"{s['mean']:.6g}" in out


def test_t_quantile():
    """Student-t quantiles against published table values (and scipy where installed)."""
    assert t_quantile(0.975, 1) == pytest.approx(12.706204736174707, rel=1e-9)
    assert t_quantile(0.975, 23) == pytest.approx(2.0686576104190406, rel=1e-9)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, rel=1e-6)
    scipy_stats = pytest.importorskip("scipy.stats")
    for dof in (2, 5, 30, 999):
        assert t_quantile(0.975, dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=1e-9)
    assert summarize([1.0]) == {"n": 1, "mean": 1.0, "std": None, "ci95": None}


# ------------------------------------------------------------------------------------------------- pairing


def test_pairing_by_relative_stem_and_unmatched(folders, tmp_path, capsys, caffe_weights):
    """ref/a/b.png pairs with dist/a/b.jpg whatever the sort order; a file without a partner on either side is
    listed by name and skipped, and --strict makes it an error (exit 2, one line, no traceback)."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    shutil.copytree(folders["ref"], ref)
    shutil.copytree(folders["jpeg10"], dist)
    names = sorted(p.stem for p in ref.iterdir())
    (ref / "sub").mkdir()
    (dist / "sub").mkdir()
    shutil.move(ref / f"{names[0]}.png", ref / "sub" / f"{names[0]}.png")
    shutil.move(dist / f"{names[0]}.jpg", dist / "sub" / f"{names[0]}.jpg")
    (dist / f"{names[1]}.jpg").unlink()  # a missing file: no later pair may shift
    shutil.copy(dist / f"{names[2]}.jpg", dist / "zz_extra.jpg")
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--workers", "0", "--csv", tmp_path / "p.csv",
                          "--json", tmp_path / "p.json", "--quiet"], capsys)
    assert code == 0, err
    assert f"1 image(s) in {ref} have no partner in {dist}: {names[1]}" in err
    assert f"1 image(s) in {dist} have no partner in {ref}: zz_extra" in err
    rows = read_csv(tmp_path / "p.csv")
    assert sorted(rows) == sorted([f"sub/{names[0]}"] + names[2:])
    assert rows[f"sub/{names[0]}"]["dist"] == str(dist / "sub" / f"{names[0]}.jpg")
    from perceptloss import FeatureLoss

    loss = FeatureLoss("vgg19", "dfc123", reduction="none")
    for key in (names[2], names[-1]):  # each row is its own pair, not its neighbour's
        with torch.no_grad():
            expected = loss(load_rgb(dist / f"{key}.jpg")[None], load_rgb(ref / f"{key}.png")[None])
        assert relative(torch.tensor([float(rows[key]["vgg19:dfc123"])]), expected) < TOL
    skipped = json.loads((tmp_path / "p.json").read_text())["skipped"]
    assert skipped["ref_only"] == [names[1]] and skipped["dist_only"] == ["zz_extra"]
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--strict"], capsys)
    assert code == 2 and err.count("\n") == 1 and names[1] in err and "--strict" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["empty", "missing", "no_pairs"])
def test_folder_errors_are_one_line(tmp_path, capsys, case):
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    ref.mkdir()
    dist.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(ref / "a.png")
    if case == "missing":
        dist = tmp_path / "nope"
    if case == "no_pairs":
        Image.new("RGB", (8, 8)).save(dist / "b.png")
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(dist) in err
    assert {"empty": "holds no images", "missing": "does not exist", "no_pairs": "no image of"}[case] in err


def test_unreadable_files_are_named_and_skipped(folders, tmp_path, capsys, caffe_weights):
    """A garbage file (caught from its header) and a truncated JPEG (caught while decoding in a worker process)
    are named in a warning and their pairs skipped; --strict makes either an error, never a traceback."""
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    shutil.copytree(folders["ref"], ref)
    shutil.copytree(folders["jpeg60"], dist)
    names = sorted(p.stem for p in ref.iterdir())
    (dist / f"{names[3]}.jpg").write_bytes(b"not an image at all")
    whole = (dist / f"{names[5]}.jpg").read_bytes()
    (dist / f"{names[5]}.jpg").write_bytes(whole[: len(whole) // 2])
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--workers", "2", "--csv", tmp_path / "c.csv",
                          "--json", tmp_path / "c.json", "--quiet"], capsys)
    assert code == 0, err
    assert str(dist / f"{names[3]}.jpg") in err and str(dist / f"{names[5]}.jpg") in err and "Traceback" not in err
    assert sorted(read_csv(tmp_path / "c.csv")) == [n for n in names if n not in (names[3], names[5])]
    unreadable = json.loads((tmp_path / "c.json").read_text())["skipped"]["unreadable"]
    assert sorted(unreadable) == sorted([names[3], names[5]])
    (dist / f"{names[3]}.jpg").write_bytes(whole)  # only the truncated one left: found by the decoder
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--workers", "0", "--strict", "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and str(dist / f"{names[5]}.jpg") in err and "--strict" in err


# ------------------------------------------------------------------------------------------------- sizes


def test_size_mismatch_is_an_error_naming_the_pair_and_the_options(folders, tmp_path, capsys, caffe_weights):
    from PIL import Image

    from perceptloss import FeatureLoss
    from perceptloss.score.decoding import resample

    ref, dist = tmp_path / "ref", tmp_path / "dist"
    shutil.copytree(folders["ref"], ref)
    shutil.copytree(folders["blur1"], dist)
    key = sorted(p.stem for p in ref.iterdir())[4]
    with Image.open(dist / f"{key}.png") as img:
        img.resize((72, 80), Image.Resampling.BICUBIC).save(dist / f"{key}.png")
    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert repr(key) in err and "64x64" in err and "72x80" in err and "--resize bicubic" in err and "--crop center" in err

    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--resize", "bicubic", "--workers", "0",
                          "--csv", tmp_path / "r.csv", "--json", tmp_path / "r.json", "--quiet"], capsys)
    assert code == 0, err
    loss = FeatureLoss("vgg19", "dfc123", reduction="none")
    resized = torch.from_numpy(resample(decode(dist / f"{key}.png"), (SIZE, SIZE), "bicubic").transpose(2, 0, 1).copy())
    with torch.no_grad():
        expected = loss(resized[None], load_rgb(ref / f"{key}.png")[None])
    got = float(read_csv(tmp_path / "r.csv")[key]["vgg19:dfc123"])
    assert relative(torch.tensor([got]), expected) < TOL
    signature = json.loads((tmp_path / "r.json").read_text())["metrics"]["vgg19:dfc123"]["signature"]
    assert signature == loss.signature + "|resize:bicubic"

    code, out, err = run([ref, dist, "--metric", "vgg19:dfc123", "--crop", "center", "--workers", "0",
                          "--csv", tmp_path / "k.csv", "--quiet"], capsys)
    assert code == 0, err
    assert len(read_csv(tmp_path / "k.csv")) == 24


# ------------------------------------------------------------------------------------------------- decoding


def test_decoding_policy(tmp_path):
    """Grey copied to R, G, B; 16-bit grey / 65535; alpha dropped (not composited); palette expanded; float refused."""
    from PIL import Image

    from perceptloss.score.decoding import DecodeError

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = decode(tmp_path / "g.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    assert np.array_equal(out, np.repeat((grey.astype(np.float32) / 255)[..., None], 3, axis=2))

    deep = rng.integers(0, 65536, (5, 7)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "g16.png")
    assert np.allclose(decode(tmp_path / "g16.png"), np.repeat((deep / 65535.0)[..., None], 3, axis=2), atol=1e-7)

    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the colour is still what is stored
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    assert np.array_equal(decode(tmp_path / "a.png"), rgba[..., :3].astype(np.float32) / 255)

    palette = Image.fromarray(rng.integers(0, 4, (5, 7), dtype=np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    palette.save(tmp_path / "p.png")
    expected = np.asarray(palette.convert("RGB"), dtype=np.float32) / 255
    assert np.array_equal(decode(tmp_path / "p.png"), expected)

    Image.fromarray(rng.random((5, 7), dtype=np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(DecodeError, match="floating-point"):
        decode(tmp_path / "f.tiff")


# ------------------------------------------------------------------------------------------------- options


def test_missing_lpips_trunk_says_where_to_put_it_and_both_fixes_work(folders, trunk_files, tmp_path, capsys, monkeypatch):
    """Without AlexNet's file the error names the hub path and --weights; putting the file there works, as printed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PERCEPTLOSS_HOME", str(tmp_path / "home"))
    argv = [folders["ref"], folders["jpeg60"], "--metric", "lpips-alex", "--workers", "0", "--quiet"]
    code, out, err = run(argv, capsys)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert code == 2 and f"put it at {hub}" in err and "--weights lpips-alex=/path/to/file" in err
    assert "weights='" not in err
    hub.parent.mkdir(parents=True)
    shutil.copy(trunk_files["alex"], hub)
    code, out, err = run(argv + ["--json", tmp_path / "l.json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "l.json").read_text())["metrics"]["lpips-alex"]["n"] == 24


@pytest.mark.parametrize("argv, text", [
    (["--metric", "nonsense"], "unknown metric 'nonsense'"),
    (["--metric", "vgg19:relu9_9"], "relu9_9"),
    (["--metric", "vgg19:dfc123", "--weights", "dists=x.pth"], "not among the requested metrics"),
    (["--metric", "vgg19:dfc123", "--weights", "x.pth"], "METRIC=FILE"),
    (["--metric", "vgg19:dfc123", "--resize", "bicubic", "--crop", "center"], "either --resize or --crop"),
    (["--metric", "vgg19:dfc123", "--device", "cuda:7"] if not torch.cuda.is_available() else ["--metric", "x"], ""),
])
def test_option_errors_are_one_line(folders, capsys, argv, text):
    code, out, err = run([folders["ref"], folders["jpeg60"], *argv, "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and text in err and "Traceback" not in err


def test_tile_option(folders, tmp_path, capsys, caffe_weights):
    """--tile N goes through perceptloss.tiling.tiled: the whole-image values (within TOL) from 40-pixel crops
    of the 64x64 images; a tile too small for the layers is a one-line error saying the smallest."""
    argv = [folders["ref"], folders["jpeg60"], "--metric", "vgg19:dfc123", "--workers", "0", "--quiet"]
    code, out, err = run(argv + ["--tile", "24"], capsys)
    assert code == 2 and "use tile >= 26" in err and "Traceback" not in err
    assert run(argv + ["--csv", tmp_path / "w.csv"], capsys)[0] == 0
    assert run(argv + ["--tile", "40", "--csv", tmp_path / "t.csv"], capsys)[0] == 0
    whole, tiled = read_csv(tmp_path / "w.csv"), read_csv(tmp_path / "t.csv")
    a = torch.tensor([float(whole[k]["vgg19:dfc123"]) for k in sorted(whole)])
    b = torch.tensor([float(tiled[k]["vgg19:dfc123"]) for k in sorted(whole)])
    assert relative(b, a) < TOL


# ------------------------------------------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(folders, tmp_path, capsys, caffe_weights):
    """torchrun --nproc_per_node 2 (gloo, one thread per rank) writes the same CSV and JSON, byte for byte, as
    one process (this one, with its own thread count)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PERCEPTLOSS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = [str(folders["ref"]), str(folders["jpeg10"]), "--metric", "vgg19:dfc123", "--batch-size", "5",
              "--workers", "0", "--quiet", "--dtype", "float32"]
    code, out, err = run([*common, "--csv", tmp_path / "1.csv", "--json", tmp_path / "1.json"], capsys)
    assert code == 0, err
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "perceptloss", "score", *common, "--csv", str(tmp_path / "2.csv"),
                          "--json", str(tmp_path / "2.json")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "2.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()
    assert (tmp_path / "2.json").read_bytes() == (tmp_path / "1.json").read_bytes()
    assert len(read_csv(tmp_path / "2.csv")) == 24


# ------------------------------------------------------------------------------------------------- outputs (issue 35)
SCORED = []  # one entry per batch scored by mean_abs


class MeanAbs(torch.nn.Module):
    """A metric without weights for the output tests: the mean absolute pixel difference of each pair."""

    reduction = "none"

    def forward(self, x, y):
        SCORED.append(len(x))
        return (x - y).abs().flatten(1).mean(1)


def mean_abs():
    return MeanAbs()


@pytest.fixture
def tiny_pairs(tmp_path):
    """Three 16x16 PNG pairs (REF, DIST) and the --metric that scores them without weights."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ref, dist = tmp_path / "ref", tmp_path / "dist"
    for folder in (ref, dist):
        folder.mkdir()
        for name in "abc":
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    SCORED.clear()
    return [ref, dist, "--metric", f"{__name__}:mean_abs", "--workers", "0", "--quiet"]


@pytest.mark.parametrize("case", ["missing_folder", "folder_is_a_file", "path_is_a_folder", "read_only", "same_path"])
def test_output_paths_are_checked_before_scoring(tiny_pairs, tmp_path, capsys, monkeypatch, case):
    """Each is a one-line error (exit 2) before any pair is scored, and the valid output is not written either."""
    good = tmp_path / "summary.json"
    bad = {"missing_folder": tmp_path / "nope" / "s.csv", "folder_is_a_file": good.with_suffix(".txt") / "s.csv",
           "path_is_a_folder": tmp_path, "read_only": tmp_path / "ro" / "s.csv", "same_path": good}[case]
    if case == "folder_is_a_file":
        bad.parent.write_text("a file")
    if case == "read_only":
        bad.parent.mkdir()
        bad.parent.chmod(0o555)
        if os.geteuid() == 0:  # root writes anyway: the OS's refusal, as a non-root user gets it
            import errno
            import tempfile

            real = tempfile.TemporaryFile

            def refused(*args, dir=None, **kwargs):
                if Path(dir) == bad.parent:
                    raise PermissionError(errno.EACCES, "Permission denied")
                return real(*args, dir=dir, **kwargs)

            monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    code, out, err = run([*tiny_pairs, "--csv", bad, "--json", good], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and str(bad) in err, err
    assert SCORED == [] and not good.exists()
    assert {"missing_folder": "does not exist; create the folder (mkdir -p", "folder_is_a_file": "is not a folder",
            "path_is_a_folder": "is a folder; give a file path", "read_only": "Permission denied",
            "same_path": f"--csv and --json both name {good}; give each its own file, e.g. --csv "
                         f"{good.with_suffix('.csv')}"}[case] in err
    if case == "missing_folder":  # the fix, as printed
        bad.parent.mkdir(parents=True)
        code, out, err = run([*tiny_pairs, "--csv", bad, "--json", good], capsys)
        assert code == 0 and sorted(read_csv(bad)) == ["a", "b", "c"] and good.is_file()


def test_a_full_disk_keeps_the_previous_csv_and_still_writes_the_json(tiny_pairs, tmp_path, capsys, monkeypatch):
    """The disk fills halfway through the CSV: the previous CSV stays whole, no temporary file is left, the JSON
    is written, the failure is one line and the exit code is not 0."""
    import errno

    from perceptloss.score import output

    csv_path, json_path = tmp_path / "out" / "per_image.csv", tmp_path / "out" / "summary.json"
    csv_path.parent.mkdir()
    csv_path.write_text("pair,ref,dist,previous\nkept,a,b,1.0\n")
    real_write, calls = os.write, []

    def filling(fd, data):
        if ".per_image.csv." not in os.readlink(f"/proc/self/fd/{fd}"):  # the CSV's temporary file only
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:  # half of it fits, then the disk is full
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output.os, "write", filling)
    code, out, err = run([*tiny_pairs, "--csv", csv_path, "--json", json_path], capsys)
    monkeypatch.undo()
    assert code == 1 and len(calls) == 2, err
    assert csv_path.read_text() == "pair,ref,dist,previous\nkept,a,b,1.0\n"
    assert err.count("\n") == 1 and "Traceback" not in err and f"could not write --csv {csv_path}" in err
    assert "No space left on device" in err and "is unchanged" in err
    assert json.loads(json_path.read_text())["pairs_scored"] == 3
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["per_image.csv", "summary.json"]
    code, out, err = run([*tiny_pairs, "--csv", csv_path], capsys)  # with space again, as the message says
    assert code == 0 and sorted(read_csv(csv_path)) == ["a", "b", "c"]
