"""Reading a model package's manifest (``model.toml``): every key checked, nothing loaded.

Reading a manifest imports nothing and loads no network: it parses the TOML, checks every key
and resolves the network file's path against the manifest's own folder. Every problem is a
:class:`~frameserve.errors.ModelLoadError` whose message names the file, the key (dotted, with
list indices from 0: ``inputs[0].channels``) and what is allowed there. The schema is
documented, with a full example, in ``docs/packages.md``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any

from frameserve.catalogue.packages._schema import (
    FEEDS,
    MANIFEST_FILE,
    NETWORK_FORMATS,
    SCHEMA,
    InputDecl,
    KnobDecl,
    Manifest,
    OutputDecl,
)
from frameserve.catalogue.packages._tables import (
    NON_EMPTY,
    Table,
    as_bool,
    as_choices,
    as_int,
    as_number,
    as_str,
    is_int,
    show,
)
from frameserve.errors import ConfigError, ModelLoadError
from frameserve.plugin.knobs import KNOB_KINDS, ButtonKnob, KnobSpec
from frameserve.plugin.model import MAX_CHANNELS, SCENE_LINEAR, SpatialNeeds

__all__ = ["read_manifest"]


def _feed_takes(feed: str, cls: type[KnobSpec]) -> bool:
    """Whether ``feed`` can carry the values of a knob of class ``cls``."""
    if feed == "input":  # a scalar network input
        return cls.number_type is not None
    if feed in ("gain", "offset"):  # arithmetic on an image
        return cls.value_types[0] in (int, float)
    return True  # an attribute of one of the kind's value types


#: The knob types each feed accepts.
_FEED_TYPES: Mapping[str, tuple[str, ...]] = {
    feed: tuple(kind for kind, cls in KNOB_KINDS.items() if _feed_takes(feed, cls))
    for feed in FEEDS
}
#: How a value of each Python type is read from TOML, and what the message says is allowed.
_TOML_VALUES: Mapping[type, tuple[Callable[[object], Any], str]] = {
    bool: (as_bool, "true or false"),
    int: (as_int, "a whole number"),
    float: (as_number, "a finite number"),
    str: (as_str, "a string"),
}
_WEIGHTS_ONLY = {".pth", ".ckpt", ".safetensors", ".bin", ".pkl"}

_TOP_KEYS = (
    "schema",
    "id",
    "label",
    "version",
    "description",
    "author",
    "licence",
    "commercial_use",
    "network",
    "colourspace_in",
    "colourspace_out",
    "half_precision",
    "cacheable",
    "max_batch_size",
    "batch_window_ms",
    "timeout_s",
    "memory_limit_mb",
    "output_scale",
    "temporal_window",
    "spatial",
    "inputs",
    "outputs",
    "knobs",
)
_SPATIAL_KEYS = ("fully_convolutional", "size_multiple", "overlap", "max_size")
_INPUT_KEYS = ("name", "channels", "use", "range", "normalise", "tensor")
_OUTPUT_KEYS = ("name", "channels", "use", "range", "normalise")
_KNOB_KEYS = ("name", "type", "default", "help", "label", "feed", "target")
#: The options any knob type takes (``min``, ``max``, ``choices``).
_KNOB_OPTIONS = tuple(dict.fromkeys(o for c in KNOB_KINDS.values() for o in c.option_names()))

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}\Z")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_MAX_TEMPORAL = 16


def read_manifest(path: str | Path) -> Manifest:
    """Read and check the manifest at ``path`` (a ``model.toml``); load nothing else.

    ::

        manifest = read_manifest("studio_models/soften/model.toml")
        manifest.network          # Path(".../studio_models/soften/soften.onnx")

    Raises:
        ModelLoadError: the file is missing or not TOML, a key is unknown, missing or of the
            wrong type or value, or the network file is missing or of an unsupported kind;
            the message names the file, the key and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path}: no such file; a model package is a folder holding {MANIFEST_FILE} and a "
            "network file (.pt, .pt2 or .onnx)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read the manifest: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid TOML: {exc}") from None
    return _read(path, data)


def _read(path: Path, data: dict[str, Any]) -> Manifest:
    top = Table(path, "", data, _TOP_KEYS, what="the manifest")
    schema = top.whole("schema", SCHEMA, low=1)
    if schema != SCHEMA:
        raise ModelLoadError(
            f"{path}: schema = {schema} is not allowed; this frameserve reads manifest schema "
            f"{SCHEMA} (a newer frameserve may read this package)"
        )
    model_id = top.text(
        "id",
        pattern=_MODEL_ID,
        allowed="a model id: letters, digits, '_', '.' or '-', starting with a letter or digit",
    )
    version = top.text(
        "version",
        pattern=_VERSION,
        allowed="a version string such as \"1.0.0\" (up to 64 letters, digits, '.', '_', '+', '-')",
    )
    network, network_format = _network(top)
    spatial = _spatial(path, data.get("spatial", {}))
    output_scale = top.whole("output_scale", 1, low=1, high=16)
    if output_scale > 1 and spatial.fully_convolutional:
        raise ModelLoadError(
            f"{path}: output_scale = {output_scale} is not allowed with "
            "spatial.fully_convolutional = true: the engine cuts frames into tiles only for "
            "networks whose outputs are the size of their inputs; expected output_scale = 1, "
            "or fully_convolutional = false"
        )
    inputs = _inputs(top)
    outputs = _outputs(top)
    knobs = _knobs(top, inputs, network_format)
    _check_bindings(path, inputs, knobs)
    return Manifest(
        path=path,
        id=model_id,
        label=top.text("label", model_id),
        version=version,
        description=top.text("description", ""),
        author=top.text("author", ""),
        licence=top.text("licence", ""),
        commercial_use=top.flag("commercial_use", None),
        network=network,
        network_format=network_format,
        colourspace_in=top.text(
            "colourspace_in", SCENE_LINEAR, pattern=NON_EMPTY, allowed="a colourspace name"
        ),
        colourspace_out=top.text(
            "colourspace_out", SCENE_LINEAR, pattern=NON_EMPTY, allowed="a colourspace name"
        ),
        half_precision=top.flag("half_precision", False),
        cacheable=top.flag("cacheable", True),
        max_batch_size=top.whole("max_batch_size", 1, low=1, high=1024),
        batch_window_ms=top.number("batch_window_ms", 2.0, low=0.0),
        timeout_s=_timeout(top),
        memory_limit_mb=top.whole("memory_limit_mb", low=1) if top.has("memory_limit_mb") else None,
        output_scale=output_scale,
        temporal_window=_temporal_window(top),
        spatial=spatial,
        inputs=inputs,
        outputs=outputs,
        knobs=knobs,
    )


def _timeout(top: Table) -> float | None:
    if not top.has("timeout_s"):
        return None

    def convert(value: object) -> float | None:
        number = as_number(value)
        return number if number is not None and number > 0 else None

    return top.get("timeout_s", convert, "a number of seconds above 0")


def _network(top: Table) -> tuple[Path, str]:
    allowed = (
        "a file name in the package folder ending .pt (TorchScript), .pt2 (torch.export) or .onnx"
    )
    text = top.text("network", pattern=NON_EMPTY, allowed=allowed)
    relative = PurePath(text)
    if relative.is_absolute() or ".." in relative.parts:
        raise top.error("network", text, f"{allowed}; paths resolve against the manifest's folder")
    suffix = relative.suffix.lower()
    if suffix not in NETWORK_FORMATS:
        hint = ""
        if suffix in _WEIGHTS_ONLY:
            hint = (
                f" ({suffix} files hold weights, not a network: save the network with "
                "torch.jit.script(...).save, torch.export.save or torch.onnx.export)"
            )
        raise top.error("network", text, f"{allowed}{hint}")
    path = top.file.parent / relative
    if not path.is_file():
        raise ModelLoadError(
            f"{top.file}: network = {show(text)}: no such file {str(path)!r}; expected the "
            "network file in the package folder"
        )
    return path, NETWORK_FORMATS[suffix]


def _spatial(path: Path, data: object) -> SpatialNeeds:
    table = Table(path, "spatial", data, _SPATIAL_KEYS, what="[spatial]")
    max_size = table.whole("max_size", low=1) if table.has("max_size") else None
    try:
        return SpatialNeeds(
            fully_convolutional=table.flag("fully_convolutional", False),
            size_multiple=table.whole("size_multiple", 1, low=1, high=4096),
            overlap=table.whole("overlap", 0, low=0, high=4096),
            max_size=max_size,
        )
    except ConfigError as exc:
        raise ModelLoadError(f"{path}: [spatial]: {exc}") from None


def _temporal_window(top: Table) -> tuple[int, int]:
    def convert(value: object) -> tuple[int, int] | None:
        if not isinstance(value, list) or len(value) != 2:
            return None
        if not all(is_int(n) and 0 <= n <= _MAX_TEMPORAL for n in value):
            return None
        return int(value[0]), int(value[1])

    allowed = f"[before, after]: two whole numbers from 0 to {_MAX_TEMPORAL}"
    return top.get("temporal_window", convert, allowed, (0, 0))


def _tables(top: Table, name: str, *, required: bool) -> list[object]:
    allowed = f"a list of tables: one [[{name}]] section per item"
    if not top.has(name):
        if required:
            raise top.missing(name, f"{allowed}, at least one")
        return []
    value = top.data[name]
    if not isinstance(value, list) or (required and not value):
        raise top.error(name, value, f"{allowed}" + (", at least one" if required else ""))
    return value


def _inputs(top: Table) -> tuple[InputDecl, ...]:
    inputs: list[InputDecl] = []
    for index, data in enumerate(_tables(top, "inputs", required=True)):
        table = Table(top.file, f"inputs[{index}]", data, _INPUT_KEYS, what="an [[inputs]] item")
        name = table.text(
            "name",
            pattern=_IMAGE_NAME,
            allowed="an input name: letters, digits, '_', '.' or '-' (no '@')",
        )
        if any(i.name == name for i in inputs):
            raise table.error("name", name, "a name no other input has")
        channels = table.whole("channels", low=1, high=MAX_CHANNELS)
        use = _channel_list(table, "use", limit=channels, unique=False)
        decl_range, normalise = _range(table)
        inputs.append(
            InputDecl(
                name=name,
                channels=channels,
                use=tuple(range(channels)) if use is None else use,
                range=decl_range,
                normalise=normalise,
                tensor=table.text(
                    "tensor", name, pattern=NON_EMPTY, allowed="a network input name"
                ),
            )
        )
    return tuple(inputs)


def _outputs(top: Table) -> tuple[OutputDecl, ...]:
    outputs: list[OutputDecl] = []
    for index, data in enumerate(_tables(top, "outputs", required=True)):
        table = Table(top.file, f"outputs[{index}]", data, _OUTPUT_KEYS, what="an [[outputs]] item")
        name = table.text(
            "name", pattern=_IMAGE_NAME, allowed="an output name: letters, digits, '_', '.' or '-'"
        )
        if any(o.name == name for o in outputs):
            raise table.error("name", name, "a name no other output has")
        channels = table.whole("channels", low=1, high=MAX_CHANNELS)
        use = _channel_list(table, "use", limit=None, unique=True)
        if use is not None and len(use) != channels:
            raise table.error(
                "use", list(use), f"{channels} channel indices, one per channel of the output"
            )
        decl_range, normalise = _range(table)
        outputs.append(
            OutputDecl(name=name, channels=channels, use=use, range=decl_range, normalise=normalise)
        )
    return tuple(outputs)


def _channel_list(
    table: Table, name: str, *, limit: int | None, unique: bool
) -> tuple[int, ...] | None:
    if not table.has(name):
        return None
    top = MAX_CHANNELS - 1 if limit is None else limit - 1
    allowed = f"a non-empty list of channel indices from 0 to {top}"
    if unique:
        allowed += ", each once"

    def convert(value: object) -> tuple[int, ...] | None:
        if not isinstance(value, list) or not value:
            return None
        if not all(is_int(n) and 0 <= n <= top for n in value):
            return None
        if unique and len(set(value)) != len(value):
            return None
        return tuple(int(n) for n in value)

    return table.get(name, convert, allowed)


def _range(table: Table) -> tuple[tuple[float, float] | None, bool]:
    decl_range: tuple[float, float] | None = None
    if table.has("range"):

        def convert(value: object) -> tuple[float, float] | None:
            if not isinstance(value, list) or len(value) != 2:
                return None
            low, high = (as_number(n) for n in value)
            if low is None or high is None or not low < high:
                return None
            return low, high

        decl_range = table.get("range", convert, "[low, high]: two finite numbers, low < high")
    normalise = table.flag("normalise", False)
    if normalise and decl_range is None:
        raise table.error(
            "normalise", True, "false unless a range is declared: normalise maps 0..1 onto range"
        )
    return decl_range, normalise


def _knobs(top: Table, inputs: tuple[InputDecl, ...], network_format: str) -> tuple[KnobDecl, ...]:
    knobs: list[KnobDecl] = []
    for index, data in enumerate(_tables(top, "knobs", required=False)):
        knobs.append(_knob(top.file, index, data, inputs, network_format))
        if any(k.spec.name == knobs[-1].spec.name for k in knobs[:-1]):
            raise ModelLoadError(
                f"{top.file}: knobs[{index}].name = {show(knobs[-1].spec.name)} is not "
                "allowed; expected a name no other knob has"
            )
    return tuple(knobs)


def _knob(
    file: Path, index: int, data: object, inputs: tuple[InputDecl, ...], network_format: str
) -> KnobDecl:
    where = f"knobs[{index}]"
    first = Table(file, where, data, (*_KNOB_KEYS, *_KNOB_OPTIONS), what="a [[knobs]] item")
    kind = first.text(
        "type",
        pattern=re.compile(f"(?:{'|'.join(KNOB_KINDS)})\\Z"),
        allowed=f"a knob type: {', '.join(repr(t) for t in KNOB_KINDS)}",
    )
    cls = KNOB_KINDS[kind]
    options = cls.option_names()
    table = Table(file, where, data, _KNOB_KEYS + options, what=f"a {kind} knob")
    name = table.text("name", pattern=NON_EMPTY, allowed="a knob name")
    arguments: dict[str, Any] = {
        "help": table.text("help", ""),
        "label": table.text("label", ""),
    }
    convert, allowed = _TOML_VALUES[cls.value_types[0]]
    if "choices" in options:  # the default may be left out: the first choice
        choices = table.get("choices", as_choices, "a non-empty list of strings")
        arguments["choices"] = choices
        arguments["default"] = table.get("default", convert, "one of the choices", choices[0])
    elif table.has("default") or not issubclass(cls, ButtonKnob):  # a button's is always false
        arguments["default"] = table.get("default", convert, allowed)
    for bound in ("min", "max"):
        if bound in options and table.has(bound):
            arguments[bound] = table.get(bound, convert, allowed)
    try:
        spec = cls(name, **arguments)
    except ConfigError as exc:
        raise ModelLoadError(f"{file}: {where}: {exc}") from None
    feed = table.text(
        "feed",
        "input",
        pattern=re.compile(f"(?:{'|'.join(FEEDS)})\\Z"),
        allowed=f"how the value reaches the network: {', '.join(repr(f) for f in FEEDS)}",
    )
    if kind not in _FEED_TYPES[feed]:
        accepted = ", ".join(_FEED_TYPES[feed])
        raise table.error(
            "feed", feed, f"a feed that takes a {kind} knob ({feed!r} takes {accepted})"
        )
    if feed == "attribute" and network_format != "torchscript":
        raise table.error(
            "feed",
            feed,
            f"'input', 'gain' or 'offset' for a {network_format} network: 'attribute' sets an "
            "attribute of a TorchScript module (.pt)",
        )
    if feed in ("gain", "offset"):
        names = [i.name for i in inputs]
        target = table.text(
            "target",
            names[0],
            pattern=re.compile("(?:" + "|".join(re.escape(n) for n in names) + r")\Z"),
            allowed=f"the name of an image input: {', '.join(repr(n) for n in names)}",
        )
    else:
        what = "network input" if feed == "input" else "module attribute"
        target = table.text("target", name, pattern=NON_EMPTY, allowed=f"a {what} name")
    return KnobDecl(spec=spec, feed=feed, target=target)


def _check_bindings(path: Path, inputs: tuple[InputDecl, ...], knobs: tuple[KnobDecl, ...]) -> None:
    """Each network input and each module attribute is fed by one thing only."""
    fed: dict[str, str] = {}
    for index, image in enumerate(inputs):
        fed[image.tensor] = f"inputs[{index}]"
    attributes: dict[str, str] = {}
    for index, knob in enumerate(knobs):
        where = f"knobs[{index}].target"
        taken = fed if knob.feed == "input" else attributes if knob.feed == "attribute" else None
        if taken is None:
            continue
        if knob.target in taken:
            raise ModelLoadError(
                f"{path}: {where} = {show(knob.target)} is not allowed; {taken[knob.target]} "
                "already feeds it: expected a network input or attribute nothing else feeds"
            )
        taken[knob.target] = f"knobs[{index}]"
