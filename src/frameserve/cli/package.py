"""``frameserve package`` and ``frameserve check``: model packages from the command line.

::

    frameserve package soften.onnx --out studio_models/soften --id soften --version 1.0.0 \\
        --input image:3 --output image:3 --knob strength=float:0.5:-1:1 \\
        --knob gain=float:1:0:8 --feed gain=gain:image --fully-convolutional --overlap 2
    frameserve check studio_models/soften

``package`` writes a package (the network file copied in, a ``model.toml`` written from the
flags), runs the network once on a test frame and refuses, leaving nothing behind, when what it
returns does not match the declared outputs. For what the flags do not cover (value ranges,
normalisation, output ``use``), edit ``model.toml`` and run ``check``. ``check`` validates an
existing package the same way and prints a summary. Both exit 0 when the package is sound, 1
when it is not (the message says what is wrong, with expected and actual shapes), 2 for wrong
flags. The manifest's reference is ``docs/packages.md``; the work is done by
:mod:`frameserve.packaging`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from frameserve.catalogue.packages import SCHEMA
from frameserve.errors import ConfigError
from frameserve.packaging import CheckReport, check_package, write_package
from frameserve.plugin.knobs import KNOB_KINDS, ButtonKnob

__all__ = ["add_package_parsers", "parse_image_flag", "parse_knob_flag"]

_KIND_NAMES = ", ".join(list(KNOB_KINDS)[:-1]) + f" or {list(KNOB_KINDS)[-1]}"


def add_package_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``package`` and ``check`` subcommands on ``commands``; they set ``args.run``."""
    package = commands.add_parser(
        "package",
        help="make a model package from a network file (.pt, .pt2, .onnx), checked by a test run",
        description=(
            "Write a model package: NET_FILE copied into --out with a model.toml written from "
            "these flags. The network runs once on a test frame first; when its inputs or "
            "outputs do not match the declaration, nothing is written."
        ),
    )
    package.add_argument("network", metavar="NET_FILE", help="TorchScript .pt, .pt2 or .onnx")
    package.add_argument("--out", required=True, metavar="DIR", help="the package folder to write")
    package.add_argument("--id", help="model id (default: the network file's name)")
    package.add_argument("--label", help="what artists see (default: the id)")
    package.add_argument("--version", default="1.0.0", help="package version (default 1.0.0)")
    package.add_argument("--description", default="", help="one paragraph for TDs")
    package.add_argument("--author", default="", help="who made the network")
    package.add_argument("--licence", "--license", dest="licence", default="", help="its licence")
    package.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME:CHANNELS[:USE]",
        help="an image input, e.g. image:3 or image:4:0,1,2 (channels 0-2 of 4 feed the "
        "network); repeatable, in network order (default: image:3)",
    )
    package.add_argument(
        "--output",
        dest="outputs",
        action="append",
        default=[],
        metavar="NAME:CHANNELS[:USE]",
        help="an image output, e.g. image:3, or matte:1:3 (channel 3 of the network's tensor); "
        "repeatable, in the order the network returns them (default: image:3)",
    )
    package.add_argument(
        "--tensor",
        action="append",
        default=[],
        metavar="INPUT=NETWORK_INPUT",
        help="the network input an image input is passed as (default: its own name)",
    )
    package.add_argument(
        "--knob",
        dest="knobs",
        action="append",
        default=[],
        metavar="NAME=TYPE:DEFAULT[:MIN:MAX]",
        help="a knob: strength=float:0.5:0:1, steps=int:4:1:16, invert=bool:false, "
        "mode=choice:soft:soft,hard, reset=button, tag=string:text (repeatable)",
    )
    package.add_argument(
        "--knob-help", action="append", default=[], metavar="NAME=TEXT", help="a knob's help text"
    )
    package.add_argument(
        "--feed",
        action="append",
        default=[],
        metavar="NAME=FEED[:TARGET]",
        help="how a knob reaches the network: input[:NETWORK_INPUT] (the default), "
        "attribute[:ATTRIBUTE] (TorchScript), gain[:IMAGE_INPUT], offset[:IMAGE_INPUT]",
    )
    package.add_argument("--colourspace-in", "--colorspace-in", dest="colourspace_in")
    package.add_argument("--colourspace-out", "--colorspace-out", dest="colourspace_out")
    package.add_argument(
        "--output-scale", type=int, default=1, help="outputs are N times the input size"
    )
    package.add_argument(
        "--fully-convolutional",
        action="store_true",
        help="big frames may be cut into overlapping tiles",
    )
    package.add_argument("--size-multiple", type=int, default=1, metavar="N")
    package.add_argument("--overlap", type=int, default=0, metavar="PIXELS")
    package.add_argument("--max-size", type=int, metavar="PIXELS")
    package.add_argument("--half-precision", action="store_true", help="float16 is safe on a GPU")
    package.add_argument("--temporal-window", metavar="BEFORE:AFTER", help="neighbouring frames")
    package.add_argument("--max-batch-size", type=int, default=1, metavar="N")
    package.add_argument(
        "--not-cacheable", action="store_true", help="the answer changes between calls"
    )
    package.add_argument("--force", action="store_true", help="replace an existing --out folder")
    package.set_defaults(run=_package)

    check = commands.add_parser(
        "check",
        help="check a model package: its manifest, then its network on a test frame",
        description=(
            "Validate the model package in DIR: read model.toml, load the network, run it on a "
            "test frame and compare its inputs and outputs with the declaration. Exits 1 on "
            "any problem."
        ),
    )
    check.add_argument("folder", metavar="DIR", help="the package folder (holding model.toml)")
    check.add_argument(
        "--strict", action="store_true", help="warnings (a knob that changed nothing) fail too"
    )
    check.set_defaults(run=_check)

    for sub in (package, check):
        sub.add_argument("--device", default="cpu", help="torch device for the test run")
        sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        sub.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def parse_image_flag(text: str, *, flag: str) -> dict[str, Any]:
    """Return the manifest item ``--input``/``--output`` text (``NAME:CHANNELS[:USE]``) means.

    Raises:
        ConfigError: not of that form.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].strip().isdigit():
        raise ConfigError(f"{flag} {text!r}: write NAME:CHANNELS or NAME:CHANNELS:USE (image:3)")
    item: dict[str, Any] = {"name": parts[0], "channels": int(parts[1])}
    if len(parts) == 3:
        try:
            item["use"] = [int(n) for n in parts[2].split(",")]
        except ValueError:
            raise ConfigError(
                f"{flag} {text!r}: USE is a comma list of channel indices, such as 0,1,2"
            ) from None
    return item


def parse_knob_flag(text: str) -> dict[str, Any]:
    """Return the manifest item ``--knob`` text (``NAME=TYPE:DEFAULT[:MIN:MAX]``) means.

    Raises:
        ConfigError: not of that form, or a value that is not of the knob's type.
    """
    name, sep, rest = text.partition("=")
    kind, _, tail = rest.partition(":")
    if not sep or not name or not kind:
        raise ConfigError(f"--knob {text!r}: write NAME=TYPE:DEFAULT[:MIN:MAX]")
    cls = KNOB_KINDS.get(kind)
    if cls is None:
        raise ConfigError(f"--knob {text!r}: unknown type {kind!r}; use {_KIND_NAMES}")
    item: dict[str, Any] = {"name": name, "type": kind}
    options = cls.option_names()
    if issubclass(cls, ButtonKnob):  # a button's default is always false
        return item
    if "choices" in options:
        parts = tail.split(":")
        if len(parts) != 2 or not parts[1]:
            raise ConfigError(f"--knob {text!r}: write NAME={kind}:DEFAULT:A,B,C")
        item["default"], item["choices"] = parts[0], parts[1].split(",")
        return item
    if cls.value_types[0] is str:  # free text: everything after the first ':'
        item["default"] = tail
        return item
    parts = tail.split(":")
    bounded = "min" in options
    if not parts[0] or len(parts) not in ((1, 3) if bounded else (1,)):
        bounds = "[:MIN:MAX]" if bounded else ""
        raise ConfigError(f"--knob {text!r}: write NAME={kind}:DEFAULT{bounds}")
    try:
        item["default"] = cls.value_from_text(parts[0])
        if len(parts) == 3:
            for key, value in (("min", parts[1]), ("max", parts[2])):
                if value:
                    item[key] = cls.value_from_text(value)
    except ValueError:
        raise ConfigError(f"--knob {text!r}: {parts} are not all {kind} values") from None
    return item


def _pairs(texts: list[str], flag: str, form: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} {text!r}: write {form}")
        pairs[name] = value
    return pairs


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """Return the manifest the ``package`` flags describe, as plain data."""
    model_id = args.id or re.sub(r"[^A-Za-z0-9_.\-]", "_", Path(args.network).stem)
    inputs = [parse_image_flag(t, flag="--input") for t in args.inputs or ["image:3"]]
    outputs = [parse_image_flag(t, flag="--output") for t in args.outputs or ["image:3"]]
    for name, tensor in _pairs(args.tensor, "--tensor", "INPUT=NETWORK_INPUT").items():
        item = next((i for i in inputs if i["name"] == name), None)
        if item is None:
            raise ConfigError(f"--tensor {name}={tensor}: there is no --input named {name!r}")
        item["tensor"] = tensor
    knobs = [parse_knob_flag(t) for t in args.knobs]
    by_name = {knob["name"]: knob for knob in knobs}
    for flag, form, key in (("--knob-help", "NAME=TEXT", "help"), ("--feed", "NAME=FEED", "feed")):
        texts = args.knob_help if key == "help" else args.feed
        for name, value in _pairs(texts, flag, form).items():
            if name not in by_name:
                raise ConfigError(f"{flag} {name}={value}: there is no --knob named {name!r}")
            if key == "feed":
                feed, _, target = value.partition(":")
                by_name[name]["feed"] = feed
                if target:
                    by_name[name]["target"] = target
            else:
                by_name[name]["help"] = value
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "id": model_id,
        "label": args.label or model_id,
        "version": args.version,
        "description": args.description,
        "author": args.author,
        "licence": args.licence,
    }
    if args.colourspace_in:
        document["colourspace_in"] = args.colourspace_in
    if args.colourspace_out:
        document["colourspace_out"] = args.colourspace_out
    document["output_scale"] = args.output_scale
    document["half_precision"] = args.half_precision
    document["max_batch_size"] = args.max_batch_size
    if args.not_cacheable:
        document["cacheable"] = False
    if args.temporal_window:
        before, sep, after = args.temporal_window.partition(":")
        if not sep or not before.isdigit() or not after.isdigit():
            raise ConfigError(f"--temporal-window {args.temporal_window!r}: write BEFORE:AFTER")
        document["temporal_window"] = [int(before), int(after)]
    spatial: dict[str, Any] = {
        "fully_convolutional": args.fully_convolutional,
        "size_multiple": args.size_multiple,
        "overlap": args.overlap,
    }
    if args.max_size is not None:
        spatial["max_size"] = args.max_size
    document["spatial"] = spatial
    document["inputs"] = inputs
    document["outputs"] = outputs
    if knobs:
        document["knobs"] = knobs
    return document


def _package(args: argparse.Namespace) -> int:
    report = write_package(
        args.network, args.out, _document(args), force=args.force, device=args.device
    )
    if args.json:
        print(json.dumps(report.describe(), indent=2))
    else:
        print(f"wrote {args.out}")
        print(report.summary())
    return 0


def _check(args: argparse.Namespace) -> int:
    report: CheckReport = check_package(args.folder, device=args.device)
    if args.json:
        print(json.dumps(report.describe(), indent=2))
    else:
        print(report.summary())
    return 1 if args.strict and report.warnings else 0
