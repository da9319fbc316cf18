"""Small networks and package folders for the model-package tests.

Each network is written in plain PyTorch and saved the way a TD would save it: scripted or
traced TorchScript, ``torch.export`` or ONNX. :func:`make_package` writes a package folder from
one of them and a manifest text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import textwrap
import warnings
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXAMPLE_PACKAGES = EXAMPLES / "packages"


def example_builder() -> ModuleType:
    """Import ``examples/build_examples.py`` (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location(
        "frameserve_examples_build", EXAMPLES / "build_examples.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Scale(torch.nn.Module):
    """``image * amount``, where ``amount`` is a module attribute, read after slow work.

    The convolutions run first so that concurrent calls overlap between setting the
    attribute and reading it: without a lock, one request would see another's value.
    """

    def __init__(self, rounds: int = 12) -> None:
        super().__init__()
        self.amount = 1.0
        self.rounds = rounds
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``image * self.amount`` (the convolutions only take time)."""
        busy = image
        for _ in range(self.rounds):
            busy = self.conv(busy)
        return image * self.amount + 0.0 * busy.mean()


class Identity(torch.nn.Module):
    """Returns its image (a copy), for tests of what happens around the network."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``image * 1``."""
        return image * 1.0


class Grey(torch.nn.Module):
    """Returns one channel: the mean of the image's channels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``(N, 1, H, W)``."""
        return image.mean(dim=1, keepdim=True)


class Upscale(torch.nn.Module):
    """Doubles width and height: a 1x1 convolution to 12 channels, then a pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.conv = torch.nn.Conv2d(3, 12, 1)
        with torch.no_grad():
            for parameter in self.conv.parameters():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``(N, 3, 2H, 2W)``."""
        return self.shuffle(self.conv(image))


class Temporal(torch.nn.Module):
    """Takes three stacked RGB frames (previous, current, next): ``next + current - previous``."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` is ``(N, 9, H, W)``, oldest frame first."""
        return image[:, 6:9] + image[:, 3:6] - image[:, 0:3]


class Modes(torch.nn.Module):
    """Scales by ``mode + 1`` (a choice's index) and negates when ``flip`` (a bool) is set."""

    def forward(self, image: torch.Tensor, mode: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """``mode`` is an int64 scalar, ``flip`` a bool scalar."""
        scaled = image * (mode.to(image.dtype) + 1.0)
        return torch.where(flip, -scaled, scaled)


class Unused(torch.nn.Module):
    """Takes a scalar input it never reads."""

    def forward(self, image: torch.Tensor, unused: torch.Tensor) -> torch.Tensor:
        """Return ``image * 2``."""
        return image * 2.0


def save_script(net: torch.nn.Module, path: Path) -> Path:
    """Save ``net`` as scripted TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        torch.jit.script(net).save(str(path))
    return path


def save_trace(net: torch.nn.Module, path: Path, *example: torch.Tensor) -> Path:
    """Save ``net`` as traced TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings belong to the net, not the test
        torch.jit.trace(net, example).save(str(path))
    return path


def save_exported(net: torch.nn.Module, path: Path, *example: torch.Tensor) -> Path:
    """Save ``net`` with ``torch.export``, batch, height and width free (first input)."""
    batch = torch.export.Dim("batch", min=1, max=64)
    height = torch.export.Dim("height", min=4, max=8192)
    width = torch.export.Dim("width", min=4, max=8192)
    names = list(net.forward.__code__.co_varnames[1 : 1 + len(example)])
    shapes: dict[str, object] = {name: None for name in names}
    shapes[names[0]] = {0: batch, 2: height, 3: width}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(net, example, dynamic_shapes=shapes)
        torch.export.save(program, str(path))
    return path


def save_onnx(
    net: torch.nn.Module, path: Path, *example: torch.Tensor, dynamic: bool = True
) -> Path:
    """Export ``net`` to ONNX (one file), batch, height and width free unless ``dynamic=False``."""
    names = list(net.forward.__code__.co_varnames[1 : 1 + len(example)])
    shapes: dict[str, object] | None = None
    if dynamic:
        shapes = {name: None for name in names}
        shapes[names[0]] = {
            0: torch.export.Dim("batch", min=1, max=64),
            2: torch.export.Dim("height", min=4, max=8192),
            3: torch.export.Dim("width", min=4, max=8192),
        }
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, str(path), dynamic_shapes=shapes, external_data=False)
    return path


def make_package(folder: Path, network: Path, manifest: str) -> Path:
    """Write package ``folder``: ``network`` moved in, ``manifest`` (dedented) as model.toml.

    The manifest's ``network`` key is added (the network file's name) unless it has one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / network.name
    if network.resolve() != target.resolve():
        network.replace(target)
    text = textwrap.dedent(manifest).strip() + "\n"
    if not any(line.startswith("network") for line in text.splitlines()):
        text = f'network = "{network.name}"\n' + text
    (folder / "model.toml").write_text(text)
    return folder
