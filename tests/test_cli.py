"""The command line: misuse gives one line and exit code 2; listings include the LPIPS heads."""
from __future__ import annotations

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
