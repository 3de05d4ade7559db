"""Command line: list backbones, layers and weights; fetch, convert and verify weights offline.

    python -m perceptloss list                  # backbones and presets
    python -m perceptloss layers vgg19          # layer names of a backbone
    python -m perceptloss weights [vgg19]       # weight entries and where they are (cached / source / missing),
                                                # LPIPS' heads included ("weights lpips" for those alone)
    python -m perceptloss fetch vgg19 [--weights caffe] [--force]
    python -m perceptloss verify                # re-check every cached file against its sha256
    python -m perceptloss info                  # torch, the fused operator's kernels, CPU level, threads
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator, NoReturn

from . import registry, weights


class UsageError(Exception):
    """Misuse of the command line: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage block and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see python -m {self.prog.split()[0]} --help)")


LPIPS_HEADS = ("alex", "vgg", "squeeze")


def _entries(backbone: str | None) -> Iterator[tuple[weights.WeightEntry, bool]]:
    """(entry, is the default) for every weight entry of ``backbone``: of every registered backbone and LPIPS'
    heads when None; "lpips" or "lpips-<net>" for the heads alone."""
    from .lpips_heads import head_entry

    if backbone is None or not backbone.startswith("lpips"):
        for name in [backbone] if backbone else registry.list_backbones():
            spec = registry.get_backbone(name)
            for entry_name in registry.list_weights(name):
                yield spec.weights[entry_name], entry_name == spec.default_weights
    if backbone is None or backbone.startswith("lpips"):
        nets = [n for n in LPIPS_HEADS if backbone in (None, "lpips", f"lpips-{n}")]
        if not nets:
            raise UsageError(f"unknown LPIPS heads {backbone!r}; choose lpips, {', '.join('lpips-' + n for n in LPIPS_HEADS)}")
        for net in nets:
            yield head_entry(net), True


def _status(entry: weights.WeightEntry) -> str:
    """'cached', 'source' or 'missing', with the path or what to do."""
    cached = weights.cache_path(entry)
    if cached.is_file():
        return f"cached   {cached}"
    source = weights.find_source(entry)
    if source is not None:
        return f"source   {source} (converted on first use)"
    return "missing  (python -m perceptloss fetch " + entry.backbone + " --weights " + entry.name + " says how)"


def _print_info() -> None:
    """What runs where: for bug reports and for checking that the fast paths are in use."""
    import torch

    from . import _ops, cpu_kernels

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"ATen CPU capability {torch.backends.cpu.get_cpu_capability()}")
    kernels = [d for d in ("cpu", "cuda") if _ops.has_kernel(d)]
    print(f"fused operator: {'kernels for ' + ', '.join(kernels) if kernels else _ops.unavailable_reason(torch.device('cpu'))}")
    if _ops.has_kernel("cpu"):
        print(f"CPU kernel level: {cpu_kernels.cpu_kernel_level()} (built and runnable here: "
              f"{', '.join(cpu_kernels.cpu_kernel_levels())}; ATEN_CPU_CAPABILITY lowers it)")
        print(f"CPU gradient cache: {cpu_kernels.cpu_cache_bytes() / 2**20:.0f} MiB held "
              "(PERCEPTLOSS_CPU_GRAD_CACHE=0 turns it off)")
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 corrupt cached files, 2 misuse or missing weights)."""
    parser = _Parser(prog="perceptloss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="registered backbones and layer presets")
    p = sub.add_parser("layers", help="layer names of a backbone")
    p.add_argument("backbone")
    p = sub.add_parser("weights", help="weight entries and their status")
    p.add_argument("backbone", nargs="?")
    p = sub.add_parser("fetch", help="find/convert (or download where online) weights into the cache")
    p.add_argument("backbone")
    p.add_argument("--weights", default=None, help="entry name (default: the backbone's default)")
    p.add_argument("--force", action="store_true", help="rebuild the cached file")
    sub.add_parser("verify", help="check every cached weights file against its recorded sha256")
    sub.add_parser("info", help="torch version, fused operator kernels, the CPU kernel level in use, threads")
    try:
        args = parser.parse_args(argv)
        if args.command == "list":
            for name in registry.list_backbones():
                spec = registry.get_backbone(name)
                print(f"{name:8s} {len(spec.layers):3d} layers  weights: {', '.join(registry.list_weights(name))}  {spec.description}")
            print("timm:<model>  any timm model through features_only (pip install timm)")
            print("presets:")
            for name, layers in registry.PRESETS.items():
                print(f"  {name:8s} {', '.join(layers)}")
        elif args.command == "layers":
            print("\n".join(registry.list_layers(args.backbone)))
        elif args.command == "weights":
            for entry, is_default in _entries(args.backbone):
                default = "*" if is_default else " "
                print(f"{default} {entry.key:20s} {_status(entry)}\n    {entry.description}")
        elif args.command == "fetch":
            spec = registry.get_backbone(args.backbone)
            if not spec.weights:
                raise UsageError(
                    f"{args.backbone} has no weight entries managed by perceptloss (timm models use timm's own "
                    f"cache); choose one of {', '.join(b for b in registry.list_backbones() if registry.get_backbone(b).weights)}"
                )
            name = args.weights or spec.default_weights
            if name not in spec.weights:
                raise UsageError(f"no weights {name!r} for {args.backbone}; choose from {', '.join(registry.list_weights(args.backbone))}")
            entry = spec.weights[name]
            target = weights.cache_path(entry)
            weights.resolve(entry, force=args.force)
            print(f"{entry.key}: {target} (sha256 {weights.sha256_file(target)})")
        elif args.command == "info":
            _print_info()
        elif args.command == "verify":
            bad = 0
            for entry, _ in _entries(None):
                path = weights.cache_path(entry)
                if not path.is_file():
                    continue
                try:
                    try:
                        weights.load_checked(path, weights.fetch_command(entry))
                    except weights.WeightsChecksumError:
                        with weights.cache_lock(path):  # not caught mid-update by another process
                            weights.load_checked(path, weights.fetch_command(entry))
                    print(f"ok       {path}")
                except weights.WeightsChecksumError as e:
                    bad += 1
                    print(f"CORRUPT  {e}")
            return 1 if bad else 0
    except (UsageError, KeyError, ValueError, FileNotFoundError, weights.WeightsChecksumError) as e:
        text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        if not isinstance(e, weights.WeightsNotFoundError):  # that one lists the ways to get the weights
            text = " ".join(text.split())  # one line
        print(f"perceptloss: error: {text}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
