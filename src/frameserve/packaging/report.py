"""What a package's test run found, for people (:meth:`CheckReport.summary`) and for JSON.

:func:`~frameserve.packaging.check_package` and :func:`~frameserve.packaging.write_package`
return a :class:`CheckReport`; ``frameserve check`` and ``frameserve package`` print it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from frameserve.catalogue.packages import Manifest
from frameserve.plugin.knobs import KnobSpec

__all__ = ["CheckReport", "shape_text"]


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
        fed = ", ".join(f"{name} {shape_text(shape)}" for name, shape in self.fed.items())
        lines.append(f"  network inputs fed: {fed}")
        for decl in m.inputs:
            extra = _range_text(decl.range, decl.normalise)
            lines.append(
                f"  input {decl.name}: {decl.channels} ch, network gets {list(decl.use)} as "
                f"{decl.tensor!r}{extra}"
            )
        for output in m.outputs:
            shape = shape_text(self.outputs.get(output.name, ()))
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


def shape_text(shape: tuple[int, ...]) -> str:
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
