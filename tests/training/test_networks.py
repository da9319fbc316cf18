"""Tests for frameserve.training.networks: shapes, sizes, receptive field, scripting."""

from __future__ import annotations

import warnings

import pytest
import torch

from frameserve.errors import ConfigError
from frameserve.training import (
    NETWORK_SIZES,
    NetworkSpec,
    build_network,
    receptive_field_radius,
    size_multiple,
)
from frameserve.training.tasks import ImageTask
from tests.training.helpers import small_pairs


@pytest.mark.parametrize("size", NETWORK_SIZES)
def test_each_size_maps_channels_in_to_channels_out(size: str) -> None:
    multiple = size_multiple(size)
    net = build_network(NetworkSpec(kind="unet", size=size, in_channels=4, out_channels=1))
    frames = torch.rand(2, 4, 2 * multiple, 3 * multiple)
    assert net(frames).shape == (2, 1, 2 * multiple, 3 * multiple)


def test_sizes_grow_and_declare_their_multiple_and_reach() -> None:
    counts = [
        sum(
            p.numel()
            for p in build_network(
                NetworkSpec(kind="unet", size=s, in_channels=3, out_channels=3)
            ).parameters()
        )
        for s in NETWORK_SIZES
    ]
    assert counts == sorted(counts) and counts[0] > 100_000
    assert [size_multiple(s) for s in NETWORK_SIZES] == [8, 8, 16]
    assert [receptive_field_radius(s) for s in NETWORK_SIZES] == [51, 51, 107]


def test_odd_frame_sizes_are_padded_to_the_multiple_and_cropped_back() -> None:
    spec = NetworkSpec(kind="unet", size="small", in_channels=3, out_channels=3)
    net = build_network(spec).eval()
    task = ImageTask(small_pairs())
    with torch.no_grad():
        out = task.predict(net, torch.rand(1, 3, 37, 45))
    assert out.shape == (1, 3, 37, 45)


def test_a_residual_network_starts_as_the_identity() -> None:
    spec = NetworkSpec(kind="unet", size="small", in_channels=3, out_channels=3, residual=True)
    frames = torch.rand(1, 3, 16, 24) * 4 - 1  # scene-linear values outside 0-1 too
    assert torch.equal(build_network(spec)(frames), frames)


def test_a_residual_network_needs_matching_channels() -> None:
    with pytest.raises(ConfigError, match="as many output channels as input"):
        NetworkSpec(kind="unet", size="small", in_channels=4, out_channels=3, residual=True)


def test_unknown_sizes_are_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="'huge' is not allowed; choose one of 'small'"):
        NetworkSpec(kind="unet", size="huge", in_channels=3, out_channels=3)


def test_the_receptive_field_is_what_the_network_really_sees() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkSpec(kind="unet", size="small", in_channels=1, out_channels=1))
    net = net.double()
    seen = 0
    for phase in range(size_multiple("small")):
        frame = torch.randn(1, 1, 120, 120, dtype=torch.float64, requires_grad=True)
        centre = 56 + phase
        net(frame)[0, 0, centre, centre].backward()
        rows, cols = torch.nonzero(frame.grad[0, 0], as_tuple=True)  # type: ignore[index]
        seen = max(seen, *(abs(int(v) - centre) for v in (*rows.aminmax(), *cols.aminmax())))
    assert seen == receptive_field_radius("small")


@pytest.mark.parametrize("outputs", [1, 5])
def test_the_encoder_takes_any_frame_size(outputs: int) -> None:
    spec = NetworkSpec(kind="encoder", size="small", in_channels=3, out_channels=outputs)
    net = build_network(spec)
    assert net(torch.rand(2, 3, 61, 97)).shape == (2, outputs)
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, outputs)


@pytest.mark.parametrize("kind", ["unet", "encoder"])
def test_networks_can_be_scripted(kind: str) -> None:
    net = build_network(NetworkSpec(kind=kind, size="small", in_channels=3, out_channels=3))
    frames = torch.rand(1, 3, 32, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        scripted = torch.jit.script(net)
    assert torch.allclose(scripted(frames), net(frames), atol=1e-6)


def test_a_spec_round_trips_through_plain_data() -> None:
    spec = NetworkSpec(kind="encoder", size="large", in_channels=1, out_channels=4, image_size=48)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
