"""Exporting a trained network: a TorchScript file, or a model package that serves it.

::

    export_torchscript("jobs/degrain", "degrain.pt")
    module = torch.jit.load("degrain.pt")
    out = module(frames)                     # (N, C, H, W) float32, any H and W

    export_package("jobs/degrain", "studio_models/degrain", network_format="pt2")
    # studio_models/degrain/model.toml + degrain.pt2: serves like the job's model

**TorchScript file** (:func:`export_torchscript`). An exported image network takes frames of
any size: it pads them at the bottom and right to its size multiple (mirroring the edge, as
the frameserve engine does; repeating it for frames too small to mirror) and crops the output
back. Label networks return ``(N, classes)`` scores, number networks ``(N, 1)`` values. The
checkpoint's metadata (:class:`TrainedMetadata`) travels inside the file as
``frameserve.json`` (``torch.jit.load(path, _extra_files=...)``).

**Model package** (:func:`export_package`, ``frameserve export``). A folder with
``model.toml`` and the network as TorchScript (``.pt``), ``torch.export`` (``.pt2``) or ONNX
(``.onnx``), declared as the job's model is: one input and one output ``image`` with the
data's channels and colourspace, fully convolutional with the network's size multiple and
receptive field as ``overlap``, so the engine pads and tiles it exactly as it does the job's
model and the pixels agree. The network takes one ``image`` tensor ``(N, C, H, W)`` whose
height and width are multiples of the size multiple (the engine pads to them). The package is
built in a hidden folder beside its target, checked by running it on a test frame
(:func:`frameserve.packaging.write_package`) and only then renamed into place. Only image
jobs export to packages: a package's outputs are images, and label and number jobs answer objects.

PyTorch 2.13 marks TorchScript deprecated (in favour of ``torch.export``) but still writes and
loads it, as Nuke's tools expect; the export silences that one warning while it scripts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frameserve.catalogue.packages import SCHEMA
from frameserve.errors import ConfigError
from frameserve.media.atomic import write_atomically
from frameserve.packaging import CheckReport, write_package
from frameserve.training.checkpoints import LATEST, resolve_checkpoint
from frameserve.training.inference import TrainedMetadata, load_trained, model_id_for
from frameserve.training.kinds import JobKind

__all__ = [
    "METADATA_FILE",
    "PACKAGE_FORMATS",
    "check_model_id",
    "check_version",
    "export_package",
    "export_torchscript",
]

logger = logging.getLogger(__name__)

#: The name of the metadata entry inside an exported file.
METADATA_FILE = "frameserve.json"
#: Network formats of an exported package: TorchScript, ``torch.export``, ONNX.
PACKAGE_FORMATS = ("pt", "pt2", "onnx")
#: How many frames the package's network may take at once (the job's model takes as many).
PACKAGE_BATCH = 4

_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"
_LARGEST_SIDE = 32768  # the largest frame side an exported program accepts
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}\Z")


class _PaddedNetwork(nn.Module):
    """Pads frames to the network's size multiple, runs it, crops the output back."""

    def __init__(self, network: nn.Module, multiple: int) -> None:
        super().__init__()
        self.network = network
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        extra_rows = (self.multiple - height % self.multiple) % self.multiple
        extra_cols = (self.multiple - width % self.multiple) % self.multiple
        if extra_rows > 0 or extra_cols > 0:
            if extra_rows < height and extra_cols < width:
                x = F.pad(x, [0, extra_cols, 0, extra_rows], mode="reflect")
            else:
                x = F.pad(x, [0, extra_cols, 0, extra_rows], mode="replicate")
        y: torch.Tensor = self.network(x)
        return y[:, :, :height, :width]


class _PackagedNetwork(nn.Module):
    """The network as a package calls it: one input named ``image``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.network(image)
        return y


def export_torchscript(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Write the network of ``checkpoint`` (a file, or a job folder: its newest) as a
    scripted TorchScript module to ``path``, atomically; return ``path``.

    Raises:
        ConfigError: no checkpoint there, or a file that is not one.
    """
    network, metadata = load_trained(checkpoint)
    module: nn.Module = network
    if metadata.kind is JobKind.IMAGE:
        module = _PaddedNetwork(network, metadata.size_multiple)
    extra = {METADATA_FILE: json.dumps(metadata.to_dict(), sort_keys=True)}
    target = Path(path)
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export
        warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
        scripted = torch.jit.script(module.eval())
        write_atomically(
            target, lambda stream: torch.jit.save(scripted, stream, _extra_files=extra)
        )
    logger.info("exported %s (step %d) to %s", metadata.name, metadata.step, target)
    return target


def export_package(
    job: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    network_format: str = "pt",
    checkpoint: str = LATEST,
    model_id: str | None = None,
    version: str = "1.0.0",
    label: str | None = None,
    force: bool = False,
    scratch: str | os.PathLike[str] | None = None,
) -> CheckReport:
    """Write a model package serving the network of a training job to the folder ``out``.

    ``model_id`` and ``version`` are checked before anything is read or written; the network
    is saved in a temporary folder inside ``scratch`` (default: the system's) first.

    Args:
        job: a job folder, or one checkpoint file.
        network_format: ``"pt"`` (TorchScript), ``"pt2"`` (``torch.export``) or ``"onnx"``.
        checkpoint: which checkpoint of a job folder: ``"latest"`` or a name such as
            ``"step_500"``.
        model_id: the package's model id (default: the job's model id; a package in a
            server's model folders takes the id over from the job of that name).
        version: the package's version.
        label: what artists see (default: ``"NAME (trained)"``).
        force: replace an existing ``out`` folder.
        scratch: where temporary files go (a server keeps them in its jobs folder).

    Returns:
        The report of the package's test run (:class:`~frameserve.packaging.CheckReport`).

    Raises:
        ConfigError: an unknown format, a model id or version that is not allowed, no such
            checkpoint, a label or number job, or ``out`` exists (without ``force``).
        ModelLoadError: the exported network failed its check (a bug: please report it).
    """
    if network_format not in PACKAGE_FORMATS:
        raise ConfigError(
            f"package format {network_format!r} is not offered; choose one of "
            f"{', '.join(PACKAGE_FORMATS)} (TorchScript, torch.export, ONNX)"
        )
    if model_id is not None:
        check_model_id(model_id)
    check_version(version)
    network, metadata = load_trained(resolve_checkpoint(job, checkpoint))
    if metadata.kind is not JobKind.IMAGE:
        raise ConfigError(
            f"job {metadata.name!r} is a {metadata.kind} job: a model package's outputs are "
            "images, and its answers are objects; export its network with export_torchscript "
            "or serve the job folder instead"
        )
    identity = model_id or model_id_for(metadata.name)
    document = _manifest(metadata, identity, version, label)
    with tempfile.TemporaryDirectory(prefix="frameserve-export-", dir=scratch) as folder:
        path = Path(folder) / f"{identity}.{network_format}"
        _save(_PackagedNetwork(network).eval(), metadata, path, network_format)
        report = write_package(path, Path(out), document, force=force)
    logger.info(
        "exported %s (step %d) as a %s package to %s",
        metadata.name,
        metadata.step,
        network_format,
        out,
    )
    return report


def check_model_id(model_id: object) -> str:
    """Return ``model_id`` if a package may have it (it also names the network's file).

    Raises:
        ConfigError: not 1-64 letters, digits, ``_ . -`` starting with a letter or digit.
    """
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise ConfigError(
            f"model id {model_id!r:.80} is not allowed; use 1-64 letters, digits, '_', '.' or "
            "'-', starting with a letter or digit (no folders)"
        )
    return model_id


def check_version(version: object) -> str:
    """Return ``version`` if a package may have it.

    Raises:
        ConfigError: not 1-64 letters, digits, ``_ . + -`` starting with a letter or digit.
    """
    if not isinstance(version, str) or not _VERSION.match(version):
        raise ConfigError(
            f"package version {version!r:.80} is not allowed; use 1-64 letters, digits and "
            "'_ . + -', starting with a letter or digit"
        )
    return version


def _manifest(
    metadata: TrainedMetadata, model_id: str, version: str, label: str | None
) -> dict[str, object]:
    """The ``model.toml`` of a package that serves ``metadata``'s network like the job does."""
    loss = f"{metadata.train_loss:.4g}" if metadata.train_loss == metadata.train_loss else "-"
    pairs = sum(1 for frame in metadata.frames if frame.get("split") == "train")
    return {
        "schema": SCHEMA,
        "id": model_id,
        "label": label or f"{metadata.name} (trained)",
        "version": version,
        "description": (
            f"A {metadata.network.size} network trained by frameserve job {metadata.name!r} "
            f"on {pairs} frame pair(s): checkpoint {metadata.checkpoint.stem}, "
            f"step {metadata.step} of {metadata.total_steps}, training loss {loss} "
            f"({metadata.settings.loss})."
        ),
        "colourspace_in": metadata.colourspace,
        "colourspace_out": metadata.colourspace,
        "max_batch_size": PACKAGE_BATCH,
        "spatial": {
            "fully_convolutional": True,
            "size_multiple": metadata.size_multiple,
            "overlap": metadata.receptive_field,
        },
        "inputs": [{"name": "image", "channels": metadata.in_channels}],
        "outputs": [{"name": "image", "channels": metadata.out_channels}],
    }


def _save(module: nn.Module, metadata: TrainedMetadata, path: Path, network_format: str) -> None:
    """Write ``module`` (taking ``image``, ``(N, C, H, W)``) as ``network_format`` to ``path``."""
    multiple = metadata.size_multiple
    if network_format == "pt":
        extra = {METADATA_FILE: json.dumps(metadata.to_dict(), sort_keys=True)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _DEPRECATED, DeprecationWarning)
            scripted = torch.jit.script(module)
            torch.jit.save(scripted, str(path), _extra_files=extra)
        return
    example = torch.rand(2, metadata.in_channels, 4 * multiple, 4 * multiple)
    blocks = _LARGEST_SIDE // multiple
    rows = torch.export.Dim("rows", min=1, max=blocks)
    columns = torch.export.Dim("columns", min=1, max=blocks)
    batch = torch.export.Dim("batch", min=1, max=PACKAGE_BATCH)
    shapes = {"image": {0: batch, 2: multiple * rows, 3: multiple * columns}}
    with _quiet_exporter():
        if network_format == "pt2":
            program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            torch.export.save(program, str(path))
        else:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamic_shapes=shapes,
                input_names=["image"],
                output_names=["output"],
                external_data=False,
            )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' progress lines, warnings and log chatter (they are not ours)."""
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)
