"""``xmedgpt models add|list|remove|default``: manage local model folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.models.registry import ModelRegistry, describe_size
from inference.resources import DEMO_MODEL_DIR


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="register and choose local model folders")
    p.add_argument("--registry", type=Path, help=argparse.SUPPRESS)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    a = msub.add_parser("add", help="check a model folder and register it (records the weights' SHA-256)")
    a.add_argument("folder", type=Path)
    a.add_argument("--name", help="name to register it under (default: the folder name)")
    a.set_defaults(func=_add)
    ls = msub.add_parser("list", help="list registered models")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)
    r = msub.add_parser("remove", help="forget a model (its folder is left untouched)")
    r.add_argument("name")
    r.set_defaults(func=_remove)
    d = msub.add_parser("default", help="make a registered model the default")
    d.add_argument("name")
    d.set_defaults(func=_default)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    reg = ModelRegistry(args.registry)
    for problem in reg.problems:
        print(f"warning: {problem}")
    return reg


def _add(args: argparse.Namespace) -> int:
    reg = _registry(args)
    info = reg.add(args.folder, args.name)
    print(f"Added '{info.name}': {info.architecture or info.model_type}, {describe_size(info)}, "
          f"weights SHA-256 {info.weights_sha256[:16]}…")
    if info.needs_conversion:
        print("This is an original InternVL2/XMedGPT checkpoint. Convert it before use:\n"
              f"  xmedgpt convert-checkpoint {info.path} {info.path}-native\n"
              f"  xmedgpt models add {info.path}-native")
    elif reg.default == info.name:
        print(f"'{info.name}' is the default model.")
    return 0


def _list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.json:
        rows = [{"name": m.name, "path": m.path, "format": m.format, "size_bytes": m.size_bytes,
                 "weights_sha256": m.weights_sha256, "default": m.name == reg.default}
                for m in reg.models.values()]
        print(json.dumps({"models": rows, "embedded_demo": str(DEMO_MODEL_DIR) if DEMO_MODEL_DIR.exists() else None},
                         indent=2))
        return 0
    if not reg.models:
        print("No models registered.")
    for m in reg.models.values():
        mark = "*" if m.name == reg.default else " "
        note = "  (needs conversion)" if m.needs_conversion else ""
        print(f"{mark} {m.name:<24} {describe_size(m):>10}  {m.weights_sha256[:12]}  {m.path}{note}")
    if DEMO_MODEL_DIR.exists():
        print(f"  (embedded demo model: {DEMO_MODEL_DIR}{'' if reg.default else ', used when no default is set'})")
    return 0


def _remove(args: argparse.Namespace) -> int:
    info = _registry(args).remove(args.name)
    print(f"Removed '{info.name}' from the list; {info.path} was not touched.")
    return 0


def _default(args: argparse.Namespace) -> int:
    info = _registry(args).set_default(args.name)
    print(f"'{info.name}' is now the default model.")
    return 0
