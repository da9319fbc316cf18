"""Build the example model packages: one network, as TorchScript and as ONNX, same weights.

::

    python examples/build_examples.py              # rewrites examples/packages/soften*
    python examples/build_examples.py --out /tmp/packages

The network softens (``strength`` above 0) or sharpens (below 0) the image: a 3x3 depthwise
blur followed by a 1x1 colour mix, blended with the input, ``image + strength * (soft -
image)``. Its weights come from a fixed seed, so every build gives the same numbers. Both
packages are written with ``frameserve package`` (through :func:`frameserve.cli.main.main`), which
runs each network once on a test frame before writing it, and both declare two knobs:
``strength``, fed to the network as a scalar input, and ``gain``, a preset that multiplies the
image before the network. The tests load both and expect the same outputs within 1e-5.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from frameserve.cli.main import main as frameserve

SEED = 2026
HERE = Path(__file__).resolve().parent
PACKAGES = HERE / "packages"


class Soften(torch.nn.Module):
    """Soften (``strength > 0``) or sharpen (``strength < 0``) an RGB image."""

    def __init__(self) -> None:
        super().__init__()
        self.blur = torch.nn.Conv2d(
            3, 3, 3, padding=1, padding_mode="replicate", groups=3, bias=False
        )
        self.mix = torch.nn.Conv2d(3, 3, 1)

    def forward(self, image: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """Return ``image + strength * (mix(blur(image)) - image)``; image ``(N, 3, H, W)``."""
        soft = self.mix(self.blur(image))
        return image + strength * (soft - image)


def soften_network(seed: int = SEED) -> Soften:
    """Return the network with its seeded weights: a normalised blur, a near-identity mix."""
    generator = torch.Generator().manual_seed(seed)
    net = Soften()
    with torch.no_grad():
        kernel = torch.rand((3, 1, 3, 3), generator=generator) + 0.5
        net.blur.weight.copy_(kernel / kernel.sum(dim=(2, 3), keepdim=True))
        mix = torch.eye(3) + 0.05 * torch.randn((3, 3), generator=generator)
        net.mix.weight.copy_(mix[:, :, None, None])
        net.mix.bias.copy_(0.01 * torch.randn(3, generator=generator))
    return net.eval()


def example_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Return inputs to trace or export with: a batch of two frames and a strength."""
    return torch.rand((2, 3, 32, 48), generator=torch.Generator().manual_seed(SEED)), torch.tensor(
        0.5
    )


def save_torchscript(net: torch.nn.Module, path: Path) -> Path:
    """Save ``net`` as a scripted TorchScript module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # PyTorch deprecates TorchScript
        torch.jit.script(net).save(str(path))
    return path


def save_onnx(net: torch.nn.Module, path: Path) -> Path:
    """Export ``net`` to one ONNX file (weights inside), batch, height and width free."""
    batch = torch.export.Dim("batch", min=1, max=64)
    height = torch.export.Dim("height", min=4, max=16384)
    width = torch.export.Dim("width", min=4, max=16384)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter reports its steps and its own warnings
        torch.onnx.export(
            net,
            example_inputs(),
            str(path),
            dynamic_shapes={"image": {0: batch, 2: height, 3: width}, "strength": None},
            output_names=["softened"],
            external_data=False,
        )
    return path


def package_arguments(network: Path, out: Path, model_id: str, label: str) -> list[str]:
    """Return the ``frameserve package`` command line for one example."""
    return [
        "package",
        str(network),
        "--out",
        str(out),
        "--force",
        "--id",
        model_id,
        "--label",
        label,
        "--version",
        "1.0.0",
        "--description",
        "Softens (strength above 0) or sharpens (below 0) the plate: a tiny seeded conv net, "
        "an example of a model package.",
        "--author",
        "frameserve examples",
        "--licence",
        "Apache-2.0",
        "--input",
        "image:3",
        "--output",
        "image:3",
        "--knob",
        "strength=float:0.5:-1:1",
        "--knob-help",
        "strength=Above 0 softens, below 0 sharpens.",
        "--feed",
        "strength=input:strength",
        "--knob",
        "gain=float:1:0:8",
        "--knob-help",
        "gain=Multiplies the plate before the network (a preset: feed = gain).",
        "--feed",
        "gain=gain:image",
        "--fully-convolutional",
        "--overlap",
        "2",
        "--max-batch-size",
        "4",
    ]


def build(out: Path = PACKAGES) -> list[Path]:
    """Write both example packages under ``out``; return their folders."""
    torch.manual_seed(SEED)
    net = soften_network()
    folders = []
    with tempfile.TemporaryDirectory() as scratch:
        networks = [
            (save_torchscript(net, Path(scratch) / "soften.pt"), "soften", "Soften (TorchScript)"),
            (save_onnx(net, Path(scratch) / "soften.onnx"), "soften_onnx", "Soften (ONNX)"),
        ]
        for network, model_id, label in networks:
            folder = out / model_id
            status = frameserve(package_arguments(network, folder, model_id, label))
            if status != 0:
                raise SystemExit(f"frameserve package {network.name} failed ({status})")
            folders.append(folder)
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """Build the examples (``--out`` picks another folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=PACKAGES, help="folder for the packages")
    build(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
