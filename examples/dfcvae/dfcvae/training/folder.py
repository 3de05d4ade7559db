"""The run folder (--out): checked and locked before any work, and a previous run moved aside by --overwrite."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from ..files import LockHeld, hold_lock, tree_bytes, unwritable_reason
from .config import RunFolder
from .errors import SetupError

RUN_FILES = ("checkpoint.pt", "config.json", "log.csv")
#: Everything a run writes in --out (moved aside together by --overwrite): snapshots/ (--keep-every) included, so
#: that neither the new run nor ``dfcvae.trajectory`` mixes the old run's snapshots with its own.
RUN_ITEMS = RUN_FILES + ("grids", "tb", "snapshots")
#: The lock file in --out that the main process holds for the whole run (it stays in --out, empty when free).
LOCK_FILE = "train.lock"


def prepare_output(folder: RunFolder, main: bool, held: contextlib.ExitStack) -> None:
    """Check --out before any expensive work: writable, not in use by another train.py, and never an existing run
    unless --resume continues it or --overwrite moves it aside.

    The main process takes an exclusive lock on ``--out/train.lock`` (:func:`files.hold_lock`) into ``held`` first,
    so that the check and the whole run are one process's: a second train.py on the same --out fails at once,
    naming the PID and host that hold it."""
    if main:
        lock_output(folder.out, held)
    existing = [name for name in RUN_FILES if (folder.out / name).exists()]
    if existing and not folder.overwrite:
        if folder.resume is None:
            raise SetupError(f"{folder.out} already holds a run ({', '.join(existing)}); use --resume to continue it, "
                             "--overwrite to start over (the old run is moved aside), or another --out")
        if not folder.continues_own_run:
            raise SetupError(f"{folder.out} already holds a run ({', '.join(existing)}) and --resume {folder.resume} "
                             f"is another run's checkpoint: continuing it there would replace that run; add "
                             f"--overwrite (the run in {folder.out} is moved aside first), or resume into another --out")


def lock_output(out: Path, held: contextlib.ExitStack) -> None:
    """Check that ``out`` is writable and take its lock file into ``held`` (SetupError naming the holder if taken)."""
    if reason := unwritable_reason(out):
        raise SetupError(f"cannot write to --out {out} ({reason}); choose a writable folder")
    try:
        held.enter_context(hold_lock(out / LOCK_FILE))
    except LockHeld as e:
        holder = e.holder or "a process that has not written its PID yet"
        raise SetupError(f"{out} is in use by another train.py ({holder}); wait for it to end (or stop it), "
                         "or choose another --out") from None
    except OSError as e:
        raise SetupError(f"cannot lock {out / LOCK_FILE} ({e.strerror or e}); choose an --out on a file system "
                         "with file locks") from None


def move_previous_run(out: Path) -> Path | None:
    """For --overwrite, once the new run has started (everything checked, data loaded, model built): move the
    previous run's files out of ``out`` into a sibling ``<out>.previous-<date>-<time>`` and return it (None when
    ``out`` held no run). Nothing is deleted."""
    items = [out / name for name in RUN_ITEMS if (out / name).exists()]
    if not items:
        return None
    base = out.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = base.parent / f"{base.name}.previous-{stamp}"
    for n in range(2, 1000):
        if not aside.exists():
            break
        aside = base.parent / f"{base.name}.previous-{stamp}-{n}"
    aside.mkdir(parents=True)
    for item in items:
        os.replace(item, aside / item.name)
    return aside


def moved_note(out: Path, aside: Path) -> str:
    """The line --overwrite prints: where the previous run went, its size, and the older copies beside it."""
    note = (f"--overwrite: moved the previous run in {out} to {aside} ({tree_bytes(aside) / 1e6:.1f} MB; delete it "
            "when you no longer need it)")
    pattern = f"{out.resolve().name}.previous-*"
    older = [p for p in aside.parent.glob(pattern) if p.is_dir() and p != aside]
    if older:
        size = sum(tree_bytes(p) for p in older)
        note += (f"; {len(older)} older previous run{'s' if len(older) != 1 else ''} beside it "
                 f"hold{'s' if len(older) == 1 else ''} {size / 1e6:.1f} MB ({aside.parent / pattern})")
    return note
