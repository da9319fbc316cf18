"""The ``frameserve`` command line: ``serve``, ``models`` and ``infer``.

This is the one place that maps flags to settings and sets up logging handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from frameserve import __version__
from frameserve.catalogue.entries import CatalogueEntry, FailedModel, ModelEntry
from frameserve.catalogue.registry import ModelRegistry
from frameserve.cli.flags import add_model_flags, registry_from_flags
from frameserve.cli.package import add_package_parsers
from frameserve.cli.retime import add_retime_parser
from frameserve.cli.run import add_run_parser
from frameserve.cli.serve import add_serve_flags, serve_command
from frameserve.cli.token import add_token_parser
from frameserve.cli.train import add_train_parsers
from frameserve.engine.devices import AUTO
from frameserve.errors import ConfigError, FrameServeError
from frameserve.plugin.licences import WeightsLicence
from frameserve.plugin.model import ImageSpec

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(
        verbose=args.verbose, default=logging.INFO if args.command == "serve" else logging.WARNING
    )
    try:
        return int(args.run(args))
    except FrameServeError as exc:
        print(f"frameserve {args.command}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frameserve",
        description="A deep-learning frame server for compositing (Nuke MLClient compatible).",
    )
    parser.add_argument("--version", action="version", version=f"frameserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the server")
    add_serve_flags(serve)
    serve.set_defaults(run=serve_command)

    models = commands.add_parser("models", help="list the models, without starting a server")
    models.add_argument("--json", action="store_true", help="print JSON instead of text")
    models.set_defaults(run=_models)

    infer = commands.add_parser("infer", help="run one image file through a model, in-process")
    infer.add_argument("model", help="model id (see 'frameserve models')")
    infer.add_argument(
        "input", help="image file for the model's first input (PNG, JPEG, TIFF, EXR)"
    )
    infer.add_argument("output", help="image file to write the first output to")
    infer.add_argument(
        "--input",
        dest="more_inputs",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="image file for another input, by input name (repeatable)",
    )
    infer.add_argument(
        "--knob", action="append", default=[], metavar="NAME=VALUE", help="knob value (repeatable)"
    )
    infer.add_argument(
        "--device", default=AUTO, help=f"torch device: {AUTO} (CUDA if there is one), cpu, cuda"
    )
    infer.add_argument(
        "--colourspace",
        "--colorspace",
        dest="colourspace",
        metavar="NAME",
        help="colourspace the input files are in (default: what each file declares, else "
        "sRGB for 8/16-bit integer files and scene-linear for float ones, as Nuke's Read)",
    )
    infer.add_argument(
        "--output-colourspace",
        "--output-colorspace",
        dest="output_colourspace",
        metavar="NAME",
        help="colourspace to write the outputs in (default: sRGB for PNG, JPEG, TIFF and DPX, "
        "scene-linear for EXR)",
    )
    infer.set_defaults(run=_infer)

    add_run_parser(commands)  # adds its own --models, --no-builtins and -v
    add_retime_parser(commands)  # the same flags as run's, and --speed / --curve
    add_package_parsers(commands)  # package and check; their own --device, --json and -v
    add_train_parsers(commands)  # train, jobs, cancel, resume, export; their own --server, -v
    add_token_parser(commands)  # token add/list/remove; their own --tokens and -v

    add_model_flags(serve, jobs_folder=False)  # serve has its own --jobs-folder
    for sub in (models, infer):
        add_model_flags(sub)
    return parser


def _configure_logging(*, verbose: bool, default: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else default,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _registry(args: argparse.Namespace) -> ModelRegistry:
    return registry_from_flags(args)


def _models(args: argparse.Namespace) -> int:
    entries = _registry(args).entries()
    if args.json:
        print(json.dumps([_entry_data(e) for e in entries], indent=2))
    else:
        print("\n".join(_entry_text(e) for e in entries))
    return 0


def _entry_data(entry: CatalogueEntry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": entry.id,
        "version": entry.version,
        "source": entry.source,
        "builtin": entry.builtin,
    }
    if isinstance(entry, ModelEntry):
        data.update(entry.spec.describe())
    data["error"] = entry.error
    return data


def _entry_text(entry: CatalogueEntry) -> str:
    where = "built-in" if entry.builtin else entry.source
    if isinstance(entry, FailedModel):
        return (
            f"{entry.id}  FAILED TO LOAD  version {entry.version}  ({where})\n"
            f"    error: {entry.error}\n"
        )
    spec = entry.spec
    lines = [f"{spec.id}  {spec.label!r}  version {entry.version}  ({where})"]
    if spec.description:
        lines.append(f"    {spec.description}")
    lines.append("    inputs:  " + ", ".join(_image_text(i) for i in spec.inputs))
    lines.append("    outputs: " + ", ".join(_image_text(o) for o in spec.outputs))
    if spec.output_scale > 1:
        lines.append(f"    output scale: x{spec.output_scale}")
    lines += _weights_lines(spec.weights)
    for knob in spec.knobs:
        info = knob.describe()
        bounds = ""
        low, high = info.get("min"), info.get("max")
        if low is not None or high is not None:
            bounds = f" [{'' if low is None else low}..{'' if high is None else high}]"
        if info.get("choices"):
            bounds = " {" + ", ".join(info["choices"]) + "}"
        lines.append(
            f"    knob {knob.name}: {knob.kind} = {knob.default!r}{bounds}  {knob.help}".rstrip()
        )
    return "\n".join(lines) + "\n"


def _weights_lines(weights: tuple[WeightsLicence, ...] | None) -> list[str]:
    if weights is None:
        return ["    weights: licence not declared (not cleared for commercial use)"]
    if not weights:
        return ["    weights: none (no learned weights); commercial use: yes"]
    lines = []
    for item in weights:
        use = "yes" if item.commercial else "NO"
        lines.append(f"    weights: {item.name}; {item.licence}; commercial use: {use}")
        lines.append(f"      from: {item.source}")
        if item.note:
            lines.append(f"      {item.note}")
    return lines


def _infer(args: argparse.Namespace) -> int:
    from frameserve.cli.infer import run_infer

    return run_infer(
        _registry(args),
        model_id=args.model,
        first_input=args.input,
        more_inputs=args.more_inputs,
        output=args.output,
        knob_texts=args.knob,
        device=args.device,
        colourspace=args.colourspace,
        output_colourspace=args.output_colourspace,
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


def _image_text(image: ImageSpec) -> str:
    """``name (3 ch)``, with channel names and ``optional`` where declared."""
    detail = f"{image.channels} ch"
    if image.channel_names:
        detail += ": " + " ".join(image.channel_names)
    if image.optional:
        detail += ", optional"
    return f"{image.name} ({detail})"
