"""Command line: list backbones, layers and weights; fetch, convert and verify weights offline.

    python -m perceptloss list                  # backbones and presets
    python -m perceptloss layers vgg19          # layer names of a backbone
    python -m perceptloss weights [vgg19]       # weight entries and where they are (cached / source / missing)
    python -m perceptloss fetch vgg19 [--weights caffe] [--force]
    python -m perceptloss verify                # re-check every cached file against its sha256
"""
from __future__ import annotations

import argparse
import sys

from . import registry, weights


def _entries(backbone: str | None):
    names = [backbone] if backbone else registry.list_backbones()
    for name in names:
        spec = registry.get_backbone(name)
        for entry_name in registry.list_weights(name):
            yield spec, spec.weights[entry_name]


def _status(entry: weights.WeightEntry) -> str:
    cached = weights.cache_path(entry)
    if cached.is_file():
        return f"cached   {cached}"
    source = weights.find_source(entry)
    if source is not None:
        return f"source   {source} (converted on first use)"
    return "missing  (python -m perceptloss fetch " + entry.backbone + " --weights " + entry.name + " says how)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceptloss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
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
    args = parser.parse_args(argv)

    try:
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
            for spec, entry in _entries(args.backbone):
                default = "*" if entry.name == spec.default_weights else " "
                print(f"{default} {entry.key:20s} {_status(entry)}\n    {entry.description}")
        elif args.command == "fetch":
            spec = registry.get_backbone(args.backbone)
            name = args.weights or spec.default_weights
            if name not in spec.weights:
                raise KeyError(f"no weights {name!r} for {args.backbone}; choose from {registry.list_weights(args.backbone)}")
            entry = spec.weights[name]
            target = weights.cache_path(entry)
            if args.force and target.exists():
                target.unlink()
            weights.resolve(entry)
            print(f"{entry.key}: {target} (sha256 {target.with_name(target.name + '.sha256').read_text().split()[0]})")
        elif args.command == "verify":
            bad = 0
            for _, entry in _entries(None):
                path = weights.cache_path(entry)
                if not path.is_file():
                    continue
                try:
                    weights.load_checked(path)
                    print(f"ok       {path}")
                except weights.WeightsChecksumError as e:
                    bad += 1
                    print(f"CORRUPT  {e}")
            return 1 if bad else 0
    except (KeyError, FileNotFoundError, weights.WeightsChecksumError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
