"""The test command's tiers (scripts/test.sh): `make test` (what CI runs) skips the tests marked slow, TEST_TIER=all
runs them; a wrong tier is refused before anything is installed or built. (The tier itself shows in every run's
count: the quick tier collects the suite less the tests marked slow.)"""
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
