"""The test command's tiers (scripts/test.sh): `make test` (what CI runs) skips the tests marked slow, TEST_TIER=all
runs them; a wrong tier is refused before anything is installed or built."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_tier_is_refused_before_the_set_up(tmp_path):
    venv = tmp_path / "venv-never-made"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "test.sh")], capture_output=True, text=True,
                          env={**os.environ, "TEST_TIER": "fast", "VENV": str(venv)}, timeout=60)
    assert proc.returncode == 2
    assert "TEST_TIER must be quick (the default: no test marked slow) or all, got 'fast'" in proc.stderr
    assert not venv.exists()


def test_the_quick_tier_deselects_the_slow_marker_and_all_keeps_it():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert 'quick) tier=(-m "not slow")' in script and "all) tier=()" in script
    assert '"${tier[@]}" "$@"' in script  # the caller's own -m comes last and wins
    assert '"slow: ' in (ROOT / "pyproject.toml").read_text()  # registered, with what it means
