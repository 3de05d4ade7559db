"""The command line: misuse gives one line and exit code 2; listings include the LPIPS heads."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from perceptloss.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
def test_cli_misuse_exit_code_of_the_module(home):
    proc = subprocess.run(
        [sys.executable, "-m", "perceptloss", "fetch"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # (torch may log its own lines first)
    assert last.startswith("perceptloss: error:") and "backbone" in last, proc.stderr


# ---------------------------------------------------------------------------------- rough edges (issue 36)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["--version"])
    assert info.value.code == 0
    from perceptloss import __version__

    assert capsys.readouterr().out.startswith(f"perceptloss {__version__} (torch ")


def test_score_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        cli(["score", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option, default in (("--batch-size", "auto"), ("--workers", "2"), ("--device", "cpu"), ("--dtype", "auto")):
        start = text.index(f"{option} ", text.index("options:"))
        assert f"(default: {default})" in text[start:text.index(" --", start + len(option))], option
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    assert ".ipynb_checkpoints/" in text and "symbolic links" in text and "too small for a metric" in text


@pytest.mark.parametrize("argv, suggested", [
    (["score", "r", "d", "--metric", "lpips"], ["'lpips-alex'", "'lpips-vgg'"]),
    (["score", "r", "d", "--metric", "vgg19"], ["'vgg19:dfc123'", "'vgg19:dfc345'"]),
    (["score", "r", "d", "--metric", "vgg91:dfc123"], ["'vgg19:dfc123'"]),
    (["score", "r", "d", "--metric", "DISTS"], ["'dists'"]),
    (["layers", "vgg91"], ["'vgg19'"]),
])
def test_unknown_metric_and_backbone_names_get_did_you_mean(home, capsys, argv, suggested):
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Did you mean" in err and all(s in err for s in suggested), err


def test_a_layer_or_preset_typo_is_a_value_error_with_the_closest_names(home, capsys):
    """Not a KeyError listing 37 layer names: a ValueError (still a KeyError for old callers) with the closest
    names and where the full list is; on the command line one line, the same."""
    from perceptloss import FeatureLoss

    with pytest.raises(ValueError) as info:
        FeatureLoss("vgg19", "relu9_9", weights=None)
    text = str(info.value)
    assert text.startswith("unknown layer 'relu9_9' of vgg19. Did you mean 'relu5_4', 'relu5_3', 'relu5_2'?")
    assert "`python -m perceptloss layers vgg19`" in text and "conv1_1" not in text
    with pytest.raises(ValueError, match="Did you mean 'dfc123', 'dfc345'"):
        FeatureLoss("vgg19", "dfc124", weights=None)
    assert cli(["score", "r", "d", "--metric", "vgg19:relu3-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'relu3_1'" in err and "conv1_1" not in err
    with pytest.raises(ValueError, match="preset 'dfc123' names layers of the VGG backbones"):
        FeatureLoss("alexnet", "dfc123", weights=None)


def test_one_did_you_mean_rule():
    """Every suggestion comes from perceptloss._validation.closest: no other module asks difflib."""
    from perceptloss._validation import closest

    users = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "perceptloss").rglob("*.py")
                   if "difflib" in p.read_text())
    assert users == ["perceptloss/_validation.py"]
    assert closest("lpips", ["lpips-alex", "lpips-alex-v0.0", "lpips-vgg", "lpips-squeeze"]) == \
        ["lpips-alex", "lpips-vgg", "lpips-squeeze"]
    assert closest("LPIPS-VGG", ["lpips-vgg-v0.0", "lpips-vgg"])[0] == "lpips-vgg"
    assert closest("relu3-1", ["relu3_1", "relu3_2", "conv1_1"])[0] == "relu3_1"
    assert closest("", ["a"]) == [] and closest("zzz", ["abc"]) == []


def test_list_columns_are_aligned(capsys):
    import perceptloss

    assert cli(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    assert header.split() == ["backbone", "layers", "weights", "description"]
    for name in perceptloss.list_backbones():
        line = next(line for line in lines if line.startswith(name + " "))
        assert line[header.index("layers"):].startswith(f"{len(perceptloss.list_layers(name))} layers")
        assert line[header.index("weights"):].startswith(", ".join(perceptloss.list_weights(name)) + "  ")
        assert line[header.index("description") - 2:header.index("description")] == "  "
    first, second = (i for i, line in enumerate(lines) if not line)  # presets, then the metric table
    presets = [line for line in lines[first:second] if line.startswith("  ")]
    assert len(presets) == len(perceptloss.registry.PRESETS) and len({line.index("relu") for line in presets}) == 1
    metrics = [line[2:].split("  ")[0] for line in lines[second:] if line.startswith("  ")]
    assert metrics == perceptloss.list_metrics()


def test_weights_star_has_a_legend_and_aligned_columns(home, capsys):
    assert cli(["weights"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == '* marks the default entry of its group: what weights="default" loads'
    entries = [line for line in lines[:-1] if not line.startswith("    ")]
    assert len(entries) > 5 and any(line.startswith("* ") for line in entries)
    assert len({max(line.find(w) for w in ("cached ", "source ", "missing ")) for line in entries}) == 1


def test_batch_size_auto_follows_the_image_size():
    """--batch-size auto (the default): pairs per batch by image size, from the images alone (so the same on every
    machine and for any number of torchrun ranks); an integer keeps its meaning; anything else is one-line error."""
    from perceptloss.score.batching import Plan, Planned, auto_batch_size, make_batches
    from perceptloss.score.cli import batch_size_arg

    assert [auto_batch_size(s) for s in ((64, 64), (128, 128), (181, 181), (182, 182), (512, 512), (8, 8))] == [
        16, 4, 2, 1, 1, 64]
    plan = Plan([Planned(pair=None, size=(64, 64) if i < 20 else (256, 256)) for i in range(23)], {})
    assert [len(b) for b in make_batches(plan, "auto")] == [16, 4, 1, 1, 1]
    assert [len(b) for b in make_batches(plan, 8)] == [8, 8, 4, 3]
    assert batch_size_arg("auto") == "auto" and batch_size_arg("3") == 3
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="'auto' or an integer >= 1"):
            batch_size_arg(bad)
