"""Writing a package atomically: built and checked in a hidden folder, then renamed into place.

:func:`write_package` is ``frameserve package`` (and ``frameserve export``'s last step): it
copies the network file (and an ONNX graph's weights files) into a hidden folder beside the
target, writes the manifest there, checks the package (:func:`~frameserve.packaging.check_package`)
and only then renames it into place, so a package that fails its check never appears.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path, PurePath

import torch

from frameserve.catalogue.packages import (
    MANIFEST_FILE,
    NETWORK_FORMATS,
    dump_toml,
    load_network,
    onnx_external_files,
    read_manifest,
)
from frameserve.errors import ConfigError, ModelLoadError
from frameserve.packaging.check import check_manifest
from frameserve.packaging.report import CheckReport

__all__ = ["write_package"]

_STAGED_MANIFEST = MANIFEST_FILE + ".staged"


def write_package(
    network_file: str | Path,
    out: str | Path,
    document: Mapping[str, object],
    *,
    force: bool = False,
    device: str | torch.device = "cpu",
) -> CheckReport:
    """Write a package: ``network_file`` copied into ``out`` with a manifest, once it checks.

    ``document`` is the manifest as plain data (its ``network`` key is set to the copied
    file's name). The package is built and checked in a hidden folder beside ``out`` and then
    renamed into place; nothing is left behind when the check fails.

    ::

        write_package("soften.onnx", "studio_models/soften", {
            "id": "soften", "version": "1.0.0",
            "inputs": [{"name": "image", "channels": 3}],
            "outputs": [{"name": "image", "channels": 3}],
        })

    Raises:
        ConfigError: the network file is missing or of an unsupported kind, or ``out``
            exists and ``force`` is false.
        ModelLoadError: the package fails its check (see :func:`check_package`).
    """
    network_file = Path(network_file)
    out = Path(out)
    suffix = network_file.suffix.lower()
    if suffix not in NETWORK_FORMATS:
        kinds = ", ".join(f"{s} ({f})" for s, f in NETWORK_FORMATS.items())
        raise ConfigError(f"{network_file}: unsupported network file; expected one of {kinds}")
    if not network_file.is_file():
        raise ConfigError(f"{network_file}: no such network file")
    if out.exists() and not (force and out.is_dir()):
        what = "use --force to replace it" if out.is_dir() else "it is not a folder"
        raise ConfigError(f"{out} already exists; {what}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.staging"
    staging.mkdir()  # not mkdtemp: the package gets the permissions of any new folder
    try:
        shutil.copy2(network_file, staging / network_file.name)
        if NETWORK_FORMATS[suffix] == "onnx":
            _copy_external_data(network_file, staging)
        network = staging / network_file.name
        document = bind_the_only_input(document, network, NETWORK_FORMATS[suffix], device)
        staged = staging / _STAGED_MANIFEST
        text = dump_toml(_with_network(document, network_file.name))
        staged.write_text(text, encoding="utf-8")
        try:
            report = check_manifest(staged, device=device)
        except ModelLoadError as exc:
            message = str(exc).replace(str(staged), str(out / MANIFEST_FILE))
            raise ModelLoadError(message.replace(str(staging), str(out))) from None
        staged.rename(staging / MANIFEST_FILE)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(report, manifest=read_manifest(out / MANIFEST_FILE))


def bind_the_only_input(
    document: Mapping[str, object],
    network: Path,
    network_format: str,
    device: str | torch.device = "cpu",
) -> Mapping[str, object]:
    """Bind a package's one image input to the network's one unfed input, whatever its name.

    A network with a single image input (``x``, ``input_1``...) needs no ``tensor`` key: when
    the document declares one image input without a ``tensor``, no network input carries its
    name, and exactly one network input is left that no knob feeds, that input is the one.
    Otherwise ``document`` is returned as it is, and the package check explains what to bind.
    """
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        return document
    image = inputs[0]
    if "tensor" in image:
        return document
    knobs = document.get("knobs")
    knobs = knobs if isinstance(knobs, list) else []
    fed = {
        str(knob.get("target") or knob.get("name"))
        for knob in knobs
        if isinstance(knob, dict) and knob.get("feed", "input") == "input"
    }
    try:
        names = load_network(network, network_format, torch.device(device)).input_names
    except (ModelLoadError, ConfigError):
        return document  # the check says what is wrong with the file
    unfed = [name for name in names if name not in fed]
    if image.get("name") in names or len(unfed) != 1:
        return document
    return {**document, "inputs": [{**image, "tensor": unfed[0]}]}


def _with_network(document: Mapping[str, object], name: str) -> dict[str, object]:
    """Return ``document`` with ``network = name`` after the keys that say what it is."""
    about = ("schema", "id", "label", "version", "description", "author", "licence")
    result = {k: v for k, v in document.items() if k in about}
    result["network"] = name
    result.update((k, v) for k, v in document.items() if k not in about and k != "network")
    return result


def _copy_external_data(network_file: Path, staging: Path) -> None:
    for location in onnx_external_files(network_file):
        relative = PurePath(location)
        if relative.is_absolute() or ".." in relative.parts:
            raise ConfigError(
                f"{network_file}: its weights file {location!r} is outside its folder; "
                "expected weights beside the .onnx file"
            )
        source = network_file.parent / relative
        if not source.is_file():
            raise ConfigError(f"{network_file}: its weights file {str(source)!r} is missing")
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, staging / relative)


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an old ``out`` is moved aside first, then deleted."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old, ignore_errors=True)
