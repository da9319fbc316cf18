"""Checking a package by running its network on a test frame; writing packages atomically.

:func:`check_package` is ``frameserve check``: it reads the manifest, loads the network the
way the server will (the generated model's ``setup``), runs it once on seeded random frames with
the knobs' defaults and checks what comes back against the declared outputs, then runs it once
more per knob with another value and warns when the output does not change (a traced
TorchScript module, for one, bakes its attributes in). :func:`write_package` is
``frameserve package``: it builds the package in a hidden folder beside the target, checks it
there, and only then renames it into place, so a package that fails its check never appears.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import torch

from frameserve.catalogue.packages._manifest import read_manifest
from frameserve.catalogue.packages._model import PackageModel, model_class
from frameserve.catalogue.packages._networks import Network, onnx_external_files
from frameserve.catalogue.packages._schema import MANIFEST_FILE, NETWORK_FORMATS, Manifest
from frameserve.catalogue.packages._toml import dump_toml
from frameserve.engine.devices import resolve_device
from frameserve.errors import ColourError, ConfigError, ModelLoadError, ModelRunError
from frameserve.plugin.knobs import KnobSpec, KnobValue, KnobValues, resolve_knobs
from frameserve.plugin.model import SCENE_LINEAR, ModelSpec

__all__ = ["CheckReport", "check_package", "write_package"]

#: The side of the square test frame (rounded to the size multiple, capped by max_size).
TEST_SIZE = 64
_STAGED_MANIFEST = MANIFEST_FILE + ".staged"


@dataclass(frozen=True, kw_only=True)
class CheckReport:
    """What a package's test run found.

    Attributes:
        manifest: the package's checked manifest.
        network_inputs: the network's own inputs, in its order.
        fed: the shape fed to each network input in the test run (``()``: a scalar).
        outputs: the shape of each output the test run gave, after ``use``.
        warnings: problems that do not stop the package from serving (a knob that changed
            nothing, outputs that are not finite).
        device: the device the test ran on.
        seconds: how long loading and the test runs took.
    """

    manifest: Manifest
    network_inputs: tuple[str, ...]
    fed: Mapping[str, tuple[int, ...]]
    outputs: Mapping[str, tuple[int, ...]]
    warnings: tuple[str, ...]
    device: str
    seconds: float

    def summary(self) -> str:
        """Return a few lines for people: what the package declares and what the test found."""
        m = self.manifest
        size = m.network.stat().st_size if m.network.exists() else 0
        lines = [
            f"{m.id} {m.version}  {m.label!r}: OK",
            f"  package: {m.folder}",
            f"  network: {m.network.name} ({m.network_format}, {_kib(size)})",
        ]
        if m.description:
            lines.append(f"  {m.description}")
        if m.author or m.licence:
            lines.append(f"  author: {m.author or '-'}; licence: {m.licence or '-'}")
        fed = ", ".join(f"{name} {_shape(shape)}" for name, shape in self.fed.items())
        lines.append(f"  network inputs fed: {fed}")
        for decl in m.inputs:
            extra = _range_text(decl.range, decl.normalise)
            lines.append(
                f"  input {decl.name}: {decl.channels} ch, network gets {list(decl.use)} as "
                f"{decl.tensor!r}{extra}"
            )
        for output in m.outputs:
            shape = _shape(self.outputs.get(output.name, ()))
            used = "" if output.use is None else f", from network channels {list(output.use)}"
            extra = _range_text(output.range, output.normalise)
            lines.append(f"  output {output.name}: {output.channels} ch{used}{extra}; test {shape}")
        for knob in m.knobs:
            lines.append(
                f"  knob {knob.spec.name}: {_knob_text(knob.spec)} -> {knob.feed} {knob.target!r}"
            )
        spatial = m.spatial
        lines.append(
            f"  colour: {m.colourspace_in} -> {m.colourspace_out}; spatial: "
            f"{'fully convolutional' if spatial.fully_convolutional else 'whole frames'}, "
            f"size multiple {spatial.size_multiple}, overlap {spatial.overlap}, max size "
            f"{spatial.max_size or 'any'}; output_scale {m.output_scale}; batch up to "
            f"{m.max_batch_size}; temporal window {list(m.temporal_window)}"
        )
        lines.append(f"  test run: {self.seconds * 1000:.0f} ms on {self.device}")
        lines += [f"  warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def describe(self) -> dict[str, Any]:
        """Return the report as plain data (``frameserve check --json``)."""
        return {
            **self.manifest.describe(),
            "ok": True,
            "network_inputs": list(self.network_inputs),
            "fed": {name: list(shape) for name, shape in self.fed.items()},
            "test_outputs": {name: list(shape) for name, shape in self.outputs.items()},
            "warnings": list(self.warnings),
            "device": self.device,
            "seconds": self.seconds,
        }


def check_package(folder: str | Path, *, device: str | torch.device = "cpu") -> CheckReport:
    """Check the package in ``folder``: its manifest, then its network on a test frame.

    ::

        report = check_package("studio_models/soften")
        print(report.summary())

    Raises:
        ModelLoadError: the manifest is wrong, the network does not load or does not take
            what the manifest feeds it, fails on the test frame, or returns other outputs
            than declared (expected and actual shapes in the message).
        ConfigError: an unknown device.
    """
    return _check(Path(folder) / MANIFEST_FILE, device=device)


def _check(manifest_path: Path, *, device: str | torch.device) -> CheckReport:
    started = time.perf_counter()
    manifest = read_manifest(manifest_path)
    cls = model_class(manifest)
    try:
        spec = cls.spec()
    except ConfigError as exc:
        raise ModelLoadError(f"{manifest.path}: {exc}") from None
    _check_colourspaces(manifest)
    target = resolve_device(device)
    model = cls()
    model.setup(target)
    frames = _test_frames(manifest, spec, model.runtime, target)
    defaults = resolve_knobs(spec.knobs, {})
    warnings = _fixed_size_warnings(manifest, model.runtime)
    with torch.inference_mode():
        fed = {
            name: tuple(int(n) for n in tensor.shape)
            for name, tensor in model.network_arguments(frames, defaults).items()
        }
        reference = _run(model, frames, defaults)
        warnings += [
            f"output {name!r} has NaN or infinite values on the test frame"
            for name, tensor in reference.items()
            if not bool(torch.isfinite(tensor).all())
        ]
        for knob in manifest.knobs:
            other = _other_value(knob.spec)
            if other is None:
                continue
            values = KnobValues({**defaults, knob.spec.name: other})
            changed = _run(model, frames, values)
            if all(torch.equal(changed[n], reference[n]) for n in reference):
                warnings.append(
                    f"knob {knob.spec.name!r} (feed = {knob.feed!r}, target "
                    f"{knob.target!r}) did not change the outputs of the test frame "
                    f"({knob.spec.default!r} -> {other!r})"
                    + (
                        "; a traced TorchScript module bakes attributes in: script it"
                        if knob.feed == "attribute"
                        else ""
                    )
                )
    return CheckReport(
        manifest=manifest,
        network_inputs=model.runtime.input_names,
        fed=fed,
        outputs={name: tuple(int(n) for n in t.shape[1:]) for name, t in reference.items()},
        warnings=tuple(warnings),
        device=str(target),
        seconds=time.perf_counter() - started,
    )


def _run(
    model: PackageModel, frames: Mapping[str, torch.Tensor], knobs: KnobValues
) -> dict[str, torch.Tensor]:
    """Run one test batch; return each output as ``(N, C, H, W)``; word failures for TDs."""
    manifest = model.manifest
    shapes = ", ".join(f"{n} {_shape(tuple(f.shape))}" for n, f in frames.items())
    try:
        results = model.predict_batch(frames, knobs)
    except ModelRunError as exc:
        raise ModelLoadError(
            f"{manifest.path}: the network's outputs do not match the manifest: {exc}"
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"{manifest.path}: the network failed on test frames ({shapes}) with knobs "
            f"{dict(knobs)}: {type(exc).__name__}: {exc}"
        ) from exc
    stacked: dict[str, torch.Tensor] = {}
    for decl in manifest.outputs:
        parts = []
        for result in results:
            assert isinstance(result, Mapping)
            parts.append(result[decl.name])
        stacked[decl.name] = torch.stack(parts)
    return stacked


def _test_frames(
    manifest: Manifest, spec: ModelSpec, runtime: Network, device: torch.device
) -> dict[str, torch.Tensor]:
    """Seeded random frames for every input (neighbours too), in each input's range."""
    needs = manifest.spatial
    multiple = needs.size_multiple
    side = -(-TEST_SIZE // multiple) * multiple
    if needs.max_size is not None:
        side = min(side, needs.max_size // multiple * multiple)
    height = width = side
    count = min(2, manifest.max_batch_size)
    declared = runtime.input_shape(manifest.inputs[0].tensor)
    if declared is not None and len(declared) == 4:  # an ONNX graph with fixed sizes
        count = declared[0] or count
        height = declared[2] or height
        width = declared[3] or width
    generator = torch.Generator().manual_seed(0)
    frames: dict[str, torch.Tensor] = {}
    for image in spec.inputs:
        base, _ = spec.input_source(image.name)
        decl = next(i for i in manifest.inputs if i.name == base)
        frame = torch.rand((count, image.channels, height, width), generator=generator)
        if decl.range is not None and not decl.normalise:
            low, high = decl.range
            frame = frame * (high - low) + low
        frames[image.name] = frame.to(device)
    return frames


def _fixed_size_warnings(manifest: Manifest, runtime: Network) -> list[str]:
    """Warn about network inputs that take one frame size only (ONNX graphs declare sizes)."""
    warnings = []
    for image in manifest.inputs:
        declared = runtime.input_shape(image.tensor)
        if declared is not None and len(declared) == 4 and (declared[2] or declared[3]):
            size = f"{declared[3] or 'any'} x {declared[2] or 'any'}"
            warnings.append(
                f"network input {image.tensor!r} takes frames of {size} pixels only (width x "
                "height); other frames fail: export it with free height and width"
            )
    return warnings


def _check_colourspaces(manifest: Manifest) -> None:
    names = {manifest.colourspace_in, manifest.colourspace_out} - {SCENE_LINEAR}
    if not names:
        return
    from frameserve.engine.colour import default_manager

    colour = default_manager()
    for key in ("colourspace_in", "colourspace_out"):
        name = getattr(manifest, key)
        if name == SCENE_LINEAR:
            continue
        try:
            colour.resolve(name)
        except ColourError as exc:
            raise ModelLoadError(
                f"{manifest.path}: {key} = {name!r} is not allowed; expected a colourspace of "
                f"the colour configuration: {exc}"
            ) from None


def _other_value(spec: KnobSpec) -> KnobValue | None:
    """Return a value of the knob other than its default, to see that it changes something."""
    kind = spec.kind
    if kind in ("bool", "button"):
        return not spec.default
    if kind == "choice":
        choices: tuple[str, ...] = getattr(spec, "choices", ())
        return next((c for c in choices if c != spec.default), None)
    if kind in ("int", "float"):
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        for candidate in (high, low):
            if candidate is not None and candidate != spec.default:
                return spec.validate(candidate)
        return spec.validate(spec.default + 1)
    return None  # free text: no value is sure to be meaningful


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
        staged = staging / _STAGED_MANIFEST
        text = dump_toml(_with_network(document, network_file.name))
        staged.write_text(text, encoding="utf-8")
        try:
            report = _check(staged, device=device)
        except ModelLoadError as exc:
            message = str(exc).replace(str(staged), str(out / MANIFEST_FILE))
            raise ModelLoadError(message.replace(str(staging), str(out))) from None
        staged.rename(staging / MANIFEST_FILE)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dataclasses.replace(report, manifest=read_manifest(out / MANIFEST_FILE))


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


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")" if shape else "(scalar)"


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"


def _range_text(value_range: tuple[float, float] | None, normalise: bool) -> str:
    if value_range is None:
        return ""
    low, high = value_range
    how = "normalised from 0..1" if normalise else "expected"
    return f", range {low:g}..{high:g} ({how})"


def _knob_text(spec: KnobSpec) -> str:
    info = spec.describe()
    text = f"{spec.kind} = {spec.default!r}"
    low, high = info.get("min"), info.get("max")
    if low is not None or high is not None:
        text += f" [{'' if low is None else low}..{'' if high is None else high}]"
    if info.get("choices"):
        text += " {" + ", ".join(info["choices"]) + "}"
    return text
