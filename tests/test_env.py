"""The PERCEPTLOSS_* environment variables: at most six read at run time, each in perceptloss._env's one table,
and no message or docstring of the package names a variable that nothing reads."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from perceptloss import _env

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"PERCEPTLOSS_[A-Z0-9_]*[A-Z0-9]")


def _table(section: str) -> set[str]:
    """The variables in the first column of the table after the ``**At <section>**`` heading."""
    doc = _env.__doc__ or ""
    start = doc.index(f"**At {section}**")
    end = doc.find("**At ", start + 1)
    rows = [line for line in doc[start:end if end > 0 else None].splitlines() if line.startswith("| ``")]
    return {re.match(r"\| ``(\w+)``", row).group(1) for row in rows}


RUNTIME, BUILD = _table("run time"), _table("build time")


def _name_literals(path: Path) -> set[str]:
    """String constants that are exactly a variable name: what the code reads, e.g. os.environ.get("...")."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and NAME.fullmatch(n.value)}


def _read_by_the_package() -> set[str]:
    names = set()
    for path in (ROOT / "perceptloss").rglob("*.py"):
        names |= _name_literals(path)
    for path in (ROOT / "csrc").rglob("*"):
        if path.suffix in (".cpp", ".cu", ".h", ".cuh"):
            names |= set(re.findall(r'getenv\("(PERCEPTLOSS_\w+)"\)', path.read_text()))
    return names


def test_at_most_six_variables_at_run_time_all_in_the_table():
    read = _read_by_the_package()
    assert read == RUNTIME, f"read but not in the table: {read - RUNTIME}; in the table but not read: {RUNTIME - read}"
    assert len(RUNTIME) <= 6


def _setup_py_reads() -> set[str]:
    """The variables setup.py reads: ``os.environ.get("...")`` / ``_flag("...")`` (not its C macro names)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {n.args[0].value for n in ast.walk(tree)
            if isinstance(n, ast.Call) and ast.unparse(n.func) in ("os.environ.get", "os.getenv", "_flag")
            and n.args and isinstance(n.args[0], ast.Constant) and NAME.fullmatch(str(n.args[0].value))}


def test_the_build_table_is_what_setup_py_reads():
    assert _setup_py_reads() == BUILD
    assert not RUNTIME & BUILD


def test_every_variable_the_package_or_scripts_name_exists():
    """A docstring or message that says "set PERCEPTLOSS_X" names a variable that is read somewhere."""
    documented = RUNTIME | BUILD | {"PERCEPTLOSS_NO_CUDA"}  # the scripts' own, in the table's last paragraph
    assert "PERCEPTLOSS_NO_CUDA" in (_env.__doc__ or "")
    sources = list((ROOT / "perceptloss").rglob("*.py")) + list((ROOT / "scripts").glob("*.sh"))
    named = {(p.relative_to(ROOT).as_posix(), n) for p in sources for n in NAME.findall(p.read_text())}
    assert sorted((p, n) for p, n in named if n not in documented) == []


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("0", False), ("false", False), ("False", False), (" 0 ", False),
    ("1", True), ("true", True), ("yes", True),
])
def test_flag(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("PERCEPTLOSS_DISABLE_EXT", raising=False)
    else:
        monkeypatch.setenv("PERCEPTLOSS_DISABLE_EXT", value)
    assert _env.flag("PERCEPTLOSS_DISABLE_EXT") is expected
