"""Checking a package by loading its network the way the server will and running it once.

:func:`check_package` is ``frameserve check``: it reads the manifest, loads the network the
way the server will (the generated model's ``setup``), runs it once on seeded random frames with
the knobs' defaults and checks what comes back against the declared outputs, then runs it once
more per knob with another value (:meth:`~frameserve.plugin.knobs.KnobSpec.other_value`) and
warns when the output does not change (a traced TorchScript module, for one, bakes its
attributes in). The colourspaces the manifest names are looked up in the colour configuration
the engine converts with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import torch

from frameserve.catalogue.packages import (
    MANIFEST_FILE,
    Manifest,
    Network,
    PackageModel,
    model_class,
    read_manifest,
)
from frameserve.engine.colour import default_manager
from frameserve.engine.devices import resolve_device
from frameserve.errors import ColourError, ConfigError, ModelLoadError, ModelRunError
from frameserve.packaging.report import CheckReport, shape_text
from frameserve.plugin.knobs import KnobValues, resolve_knobs
from frameserve.plugin.model import SCENE_LINEAR, ModelSpec

__all__ = ["TEST_SIZE", "check_manifest", "check_package"]

#: The side of the square test frame (rounded to the size multiple, capped by max_size).
TEST_SIZE = 64


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
    return check_manifest(Path(folder) / MANIFEST_FILE, device=device)


def check_manifest(manifest_path: Path, *, device: str | torch.device) -> CheckReport:
    """Check the package whose manifest is ``manifest_path`` (see :func:`check_package`)."""
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
            other = knob.spec.other_value()
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
    shapes = ", ".join(f"{n} {shape_text(tuple(f.shape))}" for n, f in frames.items())
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
