"""Command line: list backbones, layers and weights; fetch, convert and verify weights offline.

    python -m perceptloss list                  # backbones, presets and metrics
    python -m perceptloss layers vgg19          # layer names of a backbone
    python -m perceptloss weights [vgg19]       # catalogued weights and where they are (cached / source /
                                                # missing): trunks and heads ("weights lpips" for LPIPS')
    python -m perceptloss fetch vgg19.caffe [--force]     # by catalogue key (or: fetch vgg19 --weights caffe)
    python -m perceptloss verify                # re-check every cached file against its sha256
    python -m perceptloss info                  # torch, the fused operator's kernels, CPU level, threads
    python -m perceptloss score REF DIST --metric lpips-vgg --metric vgg19:dfc123 [--csv F] [--json F]
                                                # metrics between two image folders (score --help)
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator, NoReturn

from . import registry, weights
from .score.errors import ScoreError


class UsageError(Exception):
    """Misuse of the command line: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see python -m {self.prog.split()[0]} --help)")


def _entries(pattern: str | None) -> Iterator[tuple[weights.WeightEntry, bool]]:
    """(entry, is its group's default) for every catalogued entry whose key or group matches ``pattern``
    (a key, a group such as "vgg19" or "lpips-alex", a prefix such as "lpips", or a glob); all when None."""
    if pattern is None:
        found = weights.list_weight_entries()
    else:
        found = weights.list_weight_entries(pattern) or weights.list_weight_entries(pattern + "*")
    if not found:
        if pattern is not None:
            for prefix, description in registry.resolvers().items():
                if pattern.startswith(prefix):
                    raise UsageError(f"{pattern}: {description}; perceptloss keeps no weight entries for it")
        raise UsageError(
            f"no weights match {pattern!r}; catalogued groups: {', '.join(weights.weight_groups())}"
        )
    for entry in found:
        yield entry, weights.is_default(entry)


def _entry(name: str, entry_name: str | None) -> weights.WeightEntry:
    """The entry named on the command line: a key ("vgg19.caffe") or a group with an optional --weights."""
    for prefix, description in registry.resolvers().items():
        if name.startswith(prefix):
            raise UsageError(f"{name}: {description}; perceptloss keeps no weight entries for it")
    return weights.get_weights(name, entry_name)


def _content_problem(entry: weights.WeightEntry, state: dict) -> str | None:
    """Why a cached state dict cannot be the weights of ``entry`` (None when it fits the backbone it is for)."""
    if entry.backbone not in registry.list_backbones():
        return None if state else "it holds no tensors"
    spec = registry.get_backbone(entry.backbone)
    expected = spec.build(spec.layers).weight_tensors()
    missing = [k for k in expected if k not in state]
    if missing:
        return f"it lacks {len(missing)} tensors of {spec.name}, e.g. {missing[:3]}"
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        return f"tensors have the wrong shape for {spec.name}, e.g. {wrong[:3]}"
    return None


def _status(entry: weights.WeightEntry) -> str:
    """'cached', 'source' or 'missing', with the path or what to do."""
    cached = weights.cache_path(entry)
    if cached.is_file():
        return f"cached   {cached}"
    source = weights.find_source(entry)
    if source is not None:
        return f"source   {source} (converted on first use)"
    return f"missing  (python -m perceptloss fetch {entry.key} says how)"


def _print_info() -> None:
    """What runs where: for bug reports and for checking that the fast paths are in use."""
    import torch

    from . import _ops
    from .backends import cpu

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    kernels = [d for d in ("cpu", "cuda") if _ops.has_kernel(d)]
    print(f"fused operator: {'kernels for ' + ', '.join(kernels) if kernels else _ops.unavailable_reason(torch.device('cpu'))}")
    if _ops.has_kernel("cpu"):
        print(f"CPU kernel level: {cpu.kernel_level()} (built and runnable here: "
              f"{', '.join(cpu.kernel_levels())}; ATEN_CPU_CAPABILITY lowers it)")
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")
    from .hardware import auto_dtype, bf16_native

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        native, reason = bf16_native(device)
        print(f"dtype='auto' on {device}: {str(auto_dtype(device)).replace('torch.', '')} ({reason})")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 corrupt cached files, 2 misuse or missing weights)."""
    parser = _Parser(prog="perceptloss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="registered backbones, layer presets and metrics")
    p = sub.add_parser("layers", help="layer names of a backbone")
    p.add_argument("backbone")
    p = sub.add_parser("weights", help="catalogued weights (trunks and heads) and their status")
    p.add_argument("backbone", nargs="?", help="a key (vgg19.caffe), a group (vgg19, lpips-alex) or a prefix (lpips)")
    p = sub.add_parser("fetch", help="find/convert (or download where online) weights into the cache")
    p.add_argument("backbone", metavar="backbone|key", help="a catalogue key such as vgg19.caffe or lpips-alex.v0.1, or a group")
    p.add_argument("--weights", default=None, help="entry name within the group (default: the group's default)")
    p.add_argument("--force", action="store_true", help="rebuild the cached file")
    sub.add_parser("verify", help="check every cached weights file against its recorded sha256")
    sub.add_parser("info", help="torch version, fused operator kernels, the CPU kernel level in use, threads")
    from .score.cli import add_arguments as add_score_arguments

    add_score_arguments(sub)
    try:
        args = parser.parse_args(argv)
        if args.command == "list":
            for name in registry.list_backbones():
                spec = registry.get_backbone(name)
                print(f"{name:8s} {len(spec.layers):3d} layers  weights: {', '.join(registry.list_weights(name))}  {spec.description}")
            for prefix, description in registry.resolvers().items():
                print(f"{prefix}<model>  {description}")
            print("presets:")
            for name, layers in registry.PRESETS.items():
                print(f"  {name:8s} {', '.join(layers)}")
            from .score.metrics import metric_descriptions

            print("metrics (score --metric NAME, perceptloss.create_metric(NAME)):")
            print(metric_descriptions())
        elif args.command == "layers":
            print("\n".join(registry.list_layers(args.backbone)))
        elif args.command == "weights":
            for entry, is_default in _entries(args.backbone):
                default = "*" if is_default else " "
                print(f"{default} {entry.key:22s} {_status(entry)}\n    {entry.description}")
        elif args.command == "fetch":
            entry = _entry(args.backbone, args.weights)
            target = weights.cache_path(entry)
            weights.resolve(entry, force=args.force, require_cache=True)
            print(f"{entry.key}: {target} (sha256 {weights.sha256_file(target)})")
        elif args.command == "info":
            _print_info()
        elif args.command == "score":
            from .score.cli import run as run_score

            return run_score(args)
        elif args.command == "verify":
            bad = 0
            for entry, _ in _entries(None):
                path = weights.cache_path(entry)
                if not path.is_file():
                    continue
                try:
                    try:
                        state = weights.load_checked(path, weights.fetch_command(entry))
                    except weights.WeightsChecksumError:
                        with weights.cache_lock(path):  # not caught mid-update by another process
                            state = weights.load_checked(path, weights.fetch_command(entry))
                    problem = _content_problem(entry, state)
                    if problem:
                        raise weights.WeightsChecksumError(
                            f"{path} matches its checksum but {problem}; rebuild it with `{weights.fetch_command(entry)}`"
                        )
                    print(f"ok       {path}")
                except weights.WeightsChecksumError as e:
                    bad += 1
                    print(f"CORRUPT  {e}")
            return 1 if bad else 0
    except (UsageError, ScoreError, KeyError, ValueError, FileNotFoundError, weights.WeightsChecksumError, weights.WeightsCacheError) as e:
        text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if not isinstance(e, weights.WeightsNotFoundError):  # that one lists the ways to get the weights
            text = " ".join(text.split())  # one line
        print(f"perceptloss: error: {text}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
