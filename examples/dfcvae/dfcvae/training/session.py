"""One training run from the checks of its --out to its last save, and the lines it ends with."""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from ..distributed import Distributed
from ..files import write_text_atomic
from .checkpoints import clear_leftovers, read_resume, restore_snapshots, resume, save_checkpoint
from .config import RunFolder, TrainConfig
from .data import Faces, load_data
from .folder import move_previous_run, moved_note, prepare_output
from .logs import Logger, grid_inputs, save_grids
from .loop import train_loop
from .state import Training, build


@dataclass
class Session:
    """A run's parts as they come into being (whatever exists when it is stopped is saved or closed)."""

    folder: RunFolder
    dist: Distributed
    #: The --out lock, released last.
    held: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    config: TrainConfig | None = None
    faces: Faces | None = None
    run: Training | None = None
    logger: Logger | None = None

    def open(self) -> dict[str, Any] | None:
        """Check and lock --out, then read the checkpoint to resume (None when the run starts afresh)."""
        prepare_output(self.folder, self.dist.main, self.held)
        return read_resume(self.folder.resume) if self.folder.resume is not None else None

    def start(self, config: TrainConfig, saved: dict[str, Any] | None) -> None:
        """Load the faces, build the run (resuming ``saved``), move a previous run aside (--overwrite), write
        config.json and open the log."""
        self.config = config
        if self.dist.main:
            print(f"amp: {config.amp} ({config.amp_reason})", file=sys.stderr)
        self.faces = load_data(config, self.dist)
        record = config.record(self.faces.record(), self.dist.world)
        self.run = build(config, record, self.dist.rank)
        if saved is not None and self.folder.resume is not None:
            resume(self.run, self.folder.resume, saved, self.dist, config.seed)
            if self.folder.continues_own_run:
                self.run.saved_step = self.run.step
        if self.dist.main:
            self.tidy_up()
            if self.folder.overwrite and (aside := move_previous_run(self.folder.out)) is not None:
                print(moved_note(self.folder.out, aside), file=sys.stderr)
            write_text_atomic(self.folder.out / "config.json", json.dumps(record, indent=2))
        self.logger = Logger(self.folder.out, self.dist.main, self.run.step)

    def tidy_up(self) -> None:
        """What a killed run left in --out (main process, lock held): its temporary files are removed, and when
        this run continues there, the snapshot whose copy was cut short is re-created (or named as lost)."""
        assert self.config is not None and self.run is not None
        lines, interrupted = clear_leftovers(self.folder.out)
        if self.folder.continues_own_run:
            lines += restore_snapshots(self.folder.out, self.run.step, self.config.keep_every, interrupted)
        for line in lines:
            print(line, file=sys.stderr)

    def train(self) -> str:
        """Train to the end; what stopped the run before it ('' when nothing did)."""
        assert self.config is not None and self.run is not None and self.faces is not None and self.logger is not None
        if train_loop(self.config, self.run, self.faces, self.dist, self.logger):
            return f"the time budget (--time-budget {self.config.time_budget:g} s)"
        return ""

    def finish(self, interrupted: bool) -> None:
        """The last checkpoint (only rank 0's random state when ``interrupted``) and the grids tagged 'last'."""
        assert self.run is not None and self.faces is not None
        save_checkpoint(self.run, self.folder.checkpoint, self.dist, interrupted=interrupted)
        if self.dist.main:
            save_grids(self.run.model, *grid_inputs(self.run.model, self.faces.images), self.folder.out / "grids",
                       "last")

    def close(self) -> None:
        """Close the log, release --out's lock and leave the process group."""
        if self.logger is not None:
            self.logger.close()
        self.held.close()
        self.dist.close()

    def diverged(self, error: FloatingPointError) -> str:
        """The error line of a run that diverged: nothing non-finite was saved, the last good checkpoint is kept."""
        good = self.run.saved_step if self.run is not None else None
        kept = (f"the last good checkpoint, {self.folder.checkpoint} (step {good}), is kept" if good is not None
                else f"no checkpoint had been written in {self.folder.out}")
        return (f"error: training diverged: {error}; {kept}; start a new run with --amp off or a lower --lr "
                "(another --out, or --overwrite)")

    def summary(self, stopped_by: str) -> str:
        """The last line of a run that ended normally or was stopped (by a signal or the time budget)."""
        assert self.config is not None and self.run is not None and self.faces is not None
        out, step = self.folder.out, self.run.step
        total = self.faces.steps_per_epoch * self.config.epochs
        return (f"{'stopped by ' + stopped_by if stopped_by else 'stopped'} at step {step}/{total}; checkpoint "
                f"{out / 'checkpoint.pt'}, grids in {out / 'grids'}, log {out / 'log.csv'}"
                f"{'; continue with --resume' if step < total else ''}")
