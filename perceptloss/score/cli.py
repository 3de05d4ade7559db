"""The ``score`` subcommand: its arguments and the run from folders to CSV / JSON / screen."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .decoding import CROPS, DECODING_POLICY, RESIZE_FILTERS
from .errors import ScoreError
from .metrics import (DTYPES, build_metric, import_plugins, metric_descriptions, metric_help, parse_weights,
                      signature_of, weights_source_of)
from .output import printable

def batch_size_arg(text: str) -> int | str:
    """``--batch-size``: 'auto' (pairs per batch by image size, ``batching.auto_batch_size``) or an integer >= 1."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 1, got {text!r}")
    return n


EPILOG = """metrics (perceptloss.list_metrics(); in Python, perceptloss.create_metric(NAME, dtype="auto") builds the same loss):
{metrics}

pairing: REF/a/b.png is paired with DIST/a/b.<any image extension>; files without a partner are listed
and skipped (--strict: an error). Hidden files and folders (a name starting with ".", such as
.ipynb_checkpoints/) are not read; symbolic links to files and folders are followed, except a link to a
folder that contains it (a loop), which is named in a warning (--strict: an error).

skipped pairs: a pair with an unreadable file (damaged, truncated, a header claiming more pixels than Pillow
opens) or with images too small for a metric is named in a warning, counted in the JSON ("skipped") and left
out of every metric's values (--strict: an error, exit code 2).

decoding: {decoding}

sizes: two images of a pair with different sizes are an error unless --resize FILTER (the distorted image
resampled to the reference's size; the signature then records it) or --crop center.

output: --csv FILE (one row per pair, one column per metric), --json FILE (per metric n, mean, std, the 95%
t-interval and the signature); the summary is printed (on stderr when an output goes to stdout). FILE - is
the standard output (one of the two at most). File names are written as UTF-8: bytes of a name that are not
UTF-8 are written as \\xNN (caf\\xe9.png), in both files and in the messages. Sharded: torchrun
--nproc_per_node K -m perceptloss score ... (gloo on the CPU, NCCL on CUDA; rank 0 writes the files; the
values are those of one process; a rank that cannot reach the others within {rendezvous} stops with an error).
The output paths are checked before scoring; each file is written atomically (a failed write keeps the
previous file) and on its own: one that cannot be written is named on one line (exit code 1) and the others
are still written. Ctrl-C stops with exit code 130; files already written stay whole.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The epilog as written, and each option's default after its help (where it has one to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return f"{text} (default: %(default)s)"


def add_arguments(sub) -> None:
    """Add the ``score`` subparser to the subparsers of ``python -m perceptloss``."""
    from .running import RENDEZVOUS_TIMEOUT

    minutes = RENDEZVOUS_TIMEOUT.total_seconds() / 60
    p = sub.add_parser("score", help="perceptual metrics between two image folders (paired by relative path)",
                       description="Score every image of DIST against its partner in REF.",
                       epilog=EPILOG.format(metrics=metric_descriptions(), decoding=DECODING_POLICY,
                                            rendezvous=f"{minutes:g} minute{'' if minutes == 1 else 's'}"),
                       formatter_class=_HelpFormatter)
    p.add_argument("ref", type=Path, help="folder of reference images")
    p.add_argument("dist", type=Path, help="folder of distorted images (same relative paths, any image extension)")
    p.add_argument("--metric", action="append", required=True, metavar="NAME", help=metric_help() + "; repeatable")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: the metrics it registers (perceptloss.metric_table.register_metric) "
                        "become --metric names; repeatable")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE", help="write per-image values here (-: stdout)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="write the per-metric summary here (-: stdout)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write an HTML page to look at (DIR/index.html, thumbnails beside it): per metric the "
                        "paste-ready line and signature, a histogram, and the pairs with the largest and smallest "
                        "values side by side with their per-layer terms and difference maps")
    p.add_argument("--report-pairs", type=int, default=6, metavar="N",
                   help="pairs shown at each end of the ranking in --report")
    p.add_argument("--strict", action="store_true",
                   help="unmatched or unreadable files, images too small for a metric and skipped folders are "
                        "errors, not skipped")
    p.add_argument("--resize", choices=RESIZE_FILTERS, default=None, metavar="FILTER",
                   help=f"resample a distorted image of another size to the reference's size ({', '.join(RESIZE_FILTERS)})")
    p.add_argument("--crop", choices=CROPS, default=None, help="crop both images of a pair to their common size")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help="pairs per batch (batches hold images of one size); auto: by image size, 16 pairs at 64x64, "
                        "4 at 128x128, 1 from 182x182 on")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes decoding the images (0: none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun, cuda is cuda:<local rank>)")
    p.add_argument("--dtype", choices=list(DTYPES), default="auto",
                   help="network dtype; auto: bfloat16 where the device computes it natively (AVX512-BF16 or AMX "
                        "CPUs, CUDA compute capability 8.0+), float32 elsewhere, named in each signature's dtype "
                        "field; float32 for numbers that every machine reproduces")
    p.add_argument("--tile", type=int, default=None, metavar="N", help="evaluate in N x N tiles (perceptloss.tiling)")
    p.add_argument("--weights", action="append", default=[], metavar="METRIC=FILE",
                   help="trunk weights for a metric: a file (e.g. lpips-alex=alexnet-owt-7be5be79.pth) or an entry name")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary on screen")


def _warn(text: str) -> None:
    print(f"perceptloss: warning: {printable(' '.join(text.split()))}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Score the folders; returns 0, or 1 when an output file could not be written (ScoreError for misuse and
    bad files, raised before anything is scored where it can be)."""
    from .batching import PairImages, make_batches, plan_pairs
    from .html_report import check_report_dir, write_report
    from .output import check_outputs, csv_text, is_stdout, json_text, print_summary, summary_document, write_outputs
    from .pairing import describe_unmatched, pair_folders
    from .running import apply_tiling, rank_device, ranks_from_env, score_batches, start_ranks, stop_ranks
    from .statistics import summarize

    ranks = ranks_from_env()  # checked before anything else: a broken torchrun environment is named at once
    rank_device(args.device, ranks)
    from ..backends.cpu import retain_freed_memory

    retain_freed_memory()  # this command's own process: every batch reuses the last one's memory
    if ranks.is_main:  # the process that writes them (rank 0 under torchrun)
        check_outputs({"--csv": args.csv, "--json": args.json})
        if args.report is not None:
            check_report_dir(args.report)
            if isinstance(args.report_pairs, bool) or args.report_pairs < 1:
                raise ScoreError(f"--report-pairs must be an integer >= 1, got {args.report_pairs!r}")
    import_plugins(args.plugin)
    names = list(dict.fromkeys(args.metric))
    weights = parse_weights(args.weights, names)
    metrics = {n: build_metric(n, weights=weights.get(n), dtype=args.dtype) for n in names}  # name errors first
    pairing = pair_folders(args.ref, args.dist, strict=args.strict)
    plan = plan_pairs(pairing.pairs, resize=args.resize, crop=args.crop, strict=args.strict)
    batches = make_batches(plan, args.batch_size)
    ranks = start_ranks(args.device, ranks)
    try:
        device = rank_device(args.device, ranks)
        metrics = {n: m.to(device) for n, m in metrics.items()}
        signatures = {n: signature_of(n, m) + _size_policy(plan) for n, m in metrics.items()}
        if ranks.is_main:
            for line in pairing.skipped_folders:
                _warn(line)
            if pairing.unmatched:
                _warn(f"{describe_unmatched(pairing, args.ref, args.dist)} (skipped)")
            for reason in plan.failed.values():
                _warn(f"{reason} (pair skipped)")
        scoring = apply_tiling(metrics, args.tile)
        results = score_batches(plan, batches, scoring, device, workers=args.workers,
                                ranks=ranks, progress=not args.quiet)
        if not ranks.is_main:
            return 0
        failed = {plan.items[i].pair.key: reason for i, reason in sorted(results.failed.items())}
        too_small = {plan.items[i].pair.key: reason for i, reason in sorted(results.too_small.items())}
        if failed and args.strict:
            raise ScoreError(f"{next(iter(failed.values()))}; remove or replace the file, or drop --strict to skip "
                             "the pair")
        if too_small and args.strict:
            raise ScoreError(f"{next(iter(too_small.values()))}; remove the pair or use larger images, or drop "
                             "--strict to skip it")
        for reason in [*failed.values(), *too_small.values()]:
            _warn(f"{reason} (pair skipped)")
        scored = [i for i in range(len(plan.items)) if i not in results.failed and i not in results.too_small]
        if not scored:
            raise ScoreError("no pair could be scored: every pair has an unreadable file or images too small for a "
                             "metric (see the warnings)")
        values = {n: [results.values[n][i] for i in scored] for n in names}
        rows = [(plan.items[i].pair.key, str(plan.items[i].pair.ref), str(plan.items[i].pair.dist)) for i in scored]
        _warn_undecodable(rows)
        document = summary_document(
            {n: summarize(values[n]) for n in names}, signatures, ref=str(args.ref), dist=str(args.dist),
            pairs=len(scored), ref_only=pairing.ref_only, dist_only=pairing.dist_only, failed={**plan.failed, **failed},
            too_small=too_small, weights={n: weights_source_of(m) for n, m in metrics.items()},
        )
        outputs = {}
        if args.csv is not None:
            outputs["--csv"] = (args.csv, csv_text(rows, names, values))
        if args.json is not None:
            outputs["--json"] = (args.json, json_text(document))
        failures = write_outputs(outputs)
        if args.report is not None:
            images = PairImages(plan)

            def load_pair(j: int):
                item = images[scored[j]]
                if len(item) != 3:  # the file changed since it was scored
                    raise ScoreError(f"--report: {item[1]}")
                return item[1], item[2]

            try:
                page = write_report(args.report, document, scoring, values, [r[0] for r in rows], load_pair, device,
                                    pairs=args.report_pairs)
                if not args.quiet:
                    print(f"report: {page}", file=sys.stderr)
            except (OSError, ScoreError) as e:
                failures.append(f"could not write --report {args.report} ({e}); the other outputs are written")
        if not args.quiet:
            print_summary(document, sys.stderr if any(is_stdout(path) for path, _ in outputs.values()) else sys.stdout)
        for line in failures:
            print(f"perceptloss: error: {printable(line)}", file=sys.stderr)
        return 1 if failures else 0
    finally:
        stop_ranks(ranks)


def _warn_undecodable(rows: list[tuple[str, str, str]]) -> None:
    """One warning when file names are not UTF-8: how many, one of them, and how the outputs write them."""
    odd = [ref if printable(ref) != ref else dist for key, ref, dist in rows
           if printable(ref) != ref or printable(dist) != dist]
    if odd:
        _warn(f"{len(odd)} pair(s) have file names that are not UTF-8, e.g. {odd[0]}: scored, and written with "
              "their undecodable bytes as \\xNN")


def _size_policy(plan) -> str:
    """The signature fields the CLI adds when it changed sizes: ``|resize:<filter>`` or ``|crop:center``."""
    if plan.resized:
        return f"|resize:{plan.resize}"
    if plan.cropped:
        return f"|crop:{plan.crop}"
    return ""
