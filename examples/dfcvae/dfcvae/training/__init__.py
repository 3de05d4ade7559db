"""The parts of the training program (:mod:`dfcvae.train` is its command line), one job per module.

``config`` (the run's settings), ``folder`` (the --out folder), ``data`` (faces and batches), ``state`` (model,
objective, optimiser, schedule), ``step`` (one optimisation step), ``logs`` (log, progress, grids),
``checkpoints`` (resume, save, snapshots), ``loop`` (the epochs), ``signals`` (SIGTERM), ``session`` (a run from
its checks to its last save) and ``errors``.
"""
