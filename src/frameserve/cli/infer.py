"""``frameserve infer``: one image file through one model, in-process, to try a model fast."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch

from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import build_request
from frameserve.engine.runner import Runner
from frameserve.errors import ConfigError, KnobError
from frameserve.media.colourspaces import (
    COLOURSPACE_ATTRIBUTE,
    Assumed,
    file_colourspace,
)
from frameserve.media.colourspaces import output_colourspace as default_output_colourspace
from frameserve.media.imageio import read_image, write_image
from frameserve.plugin.model import ModelSpec

__all__ = ["parse_knob_texts", "run_infer"]

log = logging.getLogger(__name__)


def parse_knob_texts(spec: ModelSpec, texts: Sequence[str]) -> dict[str, object]:
    """Turn ``NAME=VALUE`` strings into typed knob values for ``spec``.

    Raises:
        KnobError: a malformed pair, an unknown knob, or a value the knob does not accept.
    """
    values: dict[str, object] = {}
    for text in texts:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise KnobError(f"--knob {text!r}: write NAME=VALUE")
        knob = spec.knob(name)
        if knob is None:
            known = ", ".join(k.name for k in spec.knobs) or "none"
            raise KnobError(f"unknown knob {name!r}; model {spec.id!r} has: {known}")
        values[name] = knob.parse_text(value)
    return values


def _input_paths(spec: ModelSpec, first: str, more: Sequence[str]) -> dict[str, Path]:
    """The file of each input given, by input name (the first positional; optional inputs
    may be left out)."""
    paths: dict[str, Path] = {}
    if spec.inputs:
        paths[spec.inputs[0].name] = Path(first)
    for text in more:
        name, sep, path = text.partition("=")
        if not sep or spec.inputs is None or name not in {i.name for i in spec.inputs}:
            names = ", ".join(i.name for i in spec.inputs)
            raise ConfigError(f"--input {text!r}: write NAME=PATH with NAME one of: {names}")
        paths[name] = Path(path)
    missing = [i.name for i in spec.required_inputs if i.name not in paths]
    if missing:
        raise ConfigError(
            f"model {spec.id!r} also needs input(s) {', '.join(missing)}: add --input NAME=PATH"
        )
    return {i.name: paths[i.name] for i in spec.inputs if i.name in paths}


def run_infer(
    registry: ModelRegistry,
    *,
    model_id: str,
    first_input: str,
    more_inputs: Sequence[str],
    output: str,
    knob_texts: Sequence[str],
    device: str,
    colourspace: str | None = None,
    output_colourspace: str | None = None,
) -> int:
    """Read the inputs, run the model, write the outputs and print result objects as JSON.

    Each file is read in its own colourspace (:mod:`frameserve.media.colourspaces`) unless
    ``colourspace`` names one, and each output written in its file type's unless
    ``output_colourspace`` does; outputs of a model whose outputs are data (vectors, IDs) are
    never converted.
    """
    spec = registry.get(model_id).spec
    knobs = parse_knob_texts(spec, knob_texts)
    paths = _input_paths(spec, first_input, more_inputs)
    files = {name: read_image(path) for name, path in paths.items()}
    runner = Runner(registry, device=device)
    working: str | None = None
    frames: dict[str, torch.Tensor] = {}
    for declared in (i for i in spec.inputs if i.name in paths):
        path, image = paths[declared.name], files[declared.name]
        assumed = Assumed(colourspace, "--colourspace") if colourspace else file_colourspace(image)
        log.info("input %r: %s read as %s (%s)", declared.name, path, *astuple(assumed))
        pixels = image.hwc  # (H, W, C) as read; the runner gets a (C, H, W) view
        if pixels.shape[2] == 1 and declared.channels > 1:
            log.info(
                "input %r: repeating the single channel %d times", declared.name, declared.channels
            )
            pixels = np.repeat(pixels, declared.channels, axis=2)
        frame = torch.from_numpy(pixels).permute(2, 0, 1)
        if working is None:
            working = assumed.colourspace  # the request's: every input is brought to it
        elif assumed.colourspace != working:
            frame = runner.colour.convert(frame.contiguous(), assumed.colourspace, working)
        frames[declared.name] = frame
    request = build_request(
        spec, frames, knobs, client="command line", protocol="infer", colourspace=working
    )
    result = runner.run(request)
    data = runner.colour.resolve(spec.colourspace_out) == runner.colour.resolve("data")
    first_file = next(iter(files.values()), None)
    for index, (name, frame) in enumerate(result.frames.items()):
        target = Path(output) if index == 0 else _sibling(Path(output), name)
        wanted = output_colourspace or default_output_colourspace(target)
        if not data and working is not None and frame.shape[0] >= 3:  # mattes stay as they are
            frame = runner.colour.convert(frame.contiguous(), working, wanted)
        same_size = first_file is not None and first_file.size == tuple(frame.shape[1:])
        metadata = None
        if same_size and first_file is not None:
            metadata = {k: v for k, v in first_file.metadata.items() if k != COLOURSPACE_ATTRIBUTE}
        write_image(
            target,
            frame.numpy(),
            metadata=metadata,
            data_window=first_file.data_window if same_size and first_file else None,
            display_window=first_file.display_window if same_size and first_file else None,
        )
        log.info("wrote output %r to %s (%s)", name, target, "data" if data else wanted)
    if result.objects:
        print(json.dumps([obj.to_data() for obj in result.objects], indent=2))
    return 0


def _sibling(path: Path, output_name: str) -> Path:
    """``out.exr`` → ``out.<output_name>.exr`` for a model's further outputs."""
    return path.with_name(f"{path.stem}.{output_name}{path.suffix}")
