"""Tests for frameserve.engine.colour: names, conversions, HDR round trips, configs and threads."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from frameserve.engine.colour import (
    DEFAULT_CONFIG,
    FRIENDLY_ALIASES,
    OCIO_ENV,
    SCENE_LINEAR,
    ColourManager,
    default_manager,
)
from frameserve.errors import ColourError, ConfigError, FrameError

#: The colourspaces the round trips go through (scene_linear is ACEScg in the default config).
SPACES = ("scene_linear", "srgb", "ACEScg", "ACES2065-1", "lin_rec709")

#: A hand-written studio config: scene-linear and a pure 2.2 gamma (OCIO clamps its negatives).
STUDIO_CONFIG = """\
ocio_profile_version: 2

roles:
  default: linear
  scene_linear: linear

displays:
  sRGB:
    - !<View> {name: Raw, colorspace: linear}

colorspaces:
  - !<ColorSpace>
    name: linear
    encoding: scene-linear

  - !<ColorSpace>
    name: gamma22
    aliases: [g22]
    encoding: sdr-video
    to_scene_reference: !<ExponentTransform> {value: 2.2%s}
"""


@pytest.fixture(scope="module")
def colour() -> ColourManager:
    """A manager for OCIO's built-in ACES CG config, shared by the module."""
    return ColourManager(DEFAULT_CONFIG)


def grey(*values: float, channels: int = 3) -> torch.Tensor:
    """A (channels, 1, N) frame whose pixels are the given neutral values."""
    row = torch.tensor(values, dtype=torch.float32).view(1, 1, -1)
    return row.expand(channels, 1, -1).contiguous()


def srgb_encode(x: np.ndarray) -> np.ndarray:
    """The sRGB curve as OCIO computes it, extended (a straight line below 0, power above 1).

    OCIO derives the straight segment from gamma 2.4 and offset 0.055 so that the slopes meet:
    it breaks at 0.0030399 with slope 12.9232, not IEC 61966-2-1's rounded 0.0031308 and 12.92.
    """
    gamma, offset = 2.4, 0.055
    break_linear = (offset / (gamma - 1) + offset) ** gamma / (1 + offset) ** gamma
    slope = offset / (gamma - 1) / break_linear
    x = x.astype(np.float64)
    small = x <= break_linear
    out = np.empty_like(x)
    out[small] = slope * x[small]
    out[~small] = (1 + offset) * x[~small] ** (1 / gamma) - offset
    return out


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor (compares NaN payloads too)."""
    return tensor.contiguous().view(torch.int32)


def assert_round_trip(back: torch.Tensor, start: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Assert ``back`` equals ``start`` within ``tolerance``, relative above magnitude 1."""
    scale = start.abs().clamp(min=1.0)
    error = ((back - start).abs() / scale).max().item()
    assert error <= tolerance, f"round trip off by {error:.3g} (relative), allowed {tolerance}"


@pytest.fixture(scope="module")
def photo(colour: ColourManager) -> torch.Tensor:
    """A real photo (skimage's astronaut, 64x64), decoded from sRGB to scene-linear."""
    pixels = data.astronaut()[::8, ::8].astype(np.float32) / 255.0
    encoded = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return colour.convert(encoded, "srgb", SCENE_LINEAR)


# -- config and names ------------------------------------------------------------------------


def test_the_default_is_the_builtin_aces_cg_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OCIO_ENV, raising=False)
    manager = ColourManager()
    assert manager.config_name.startswith(DEFAULT_CONFIG)
    assert "cg-config" in manager.config_name
    assert manager.resolve(SCENE_LINEAR) == "ACEScg"
    assert {"ACEScg", "ACES2065-1", "Raw"} <= set(manager.names())


def test_an_empty_ocio_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OCIO_ENV, "  ")
    assert ColourManager().config_name.startswith(DEFAULT_CONFIG)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scene_linear", "ACEScg"),
        ("SCENE_LINEAR", "ACEScg"),
        ("linear", "ACEScg"),
        ("Scene-Linear", "ACEScg"),
        ("ACEScg", "ACEScg"),
        ("acescg", "ACEScg"),
        ("aces", "ACES2065-1"),
        ("ACES2065-1", "ACES2065-1"),
        ("srgb", "sRGB Encoded Rec.709 (sRGB)"),
        ("sRGB", "sRGB Encoded Rec.709 (sRGB)"),
        ("sRGB - Texture", "sRGB Encoded Rec.709 (sRGB)"),
        ("srgb_tx", "sRGB Encoded Rec.709 (sRGB)"),
        ("lin_rec709", "Linear Rec.709 (sRGB)"),
        ("data", "Raw"),
    ],
)
def test_resolve_knows_names_aliases_roles_and_friendly_aliases(
    colour: ColourManager, name: str, expected: str
) -> None:
    assert colour.resolve(name) == expected


def test_every_friendly_alias_resolves_in_the_default_config(colour: ColourManager) -> None:
    for alias in FRIENDLY_ALIASES:
        assert colour.resolve(alias) in colour.names()


def test_an_unknown_colourspace_is_a_helpful_colour_error(colour: ColourManager) -> None:
    with pytest.raises(ColourError) as caught:
        colour.resolve("srgbb")
    message = str(caught.value)
    assert "unknown colourspace 'srgbb'" in message
    assert "did you mean 'srgb'" in message
    assert "'ACEScg'" in message
    assert "names()" in message


def test_rec709_is_deliberately_not_an_alias(colour: ColourManager) -> None:
    with pytest.raises(ColourError, match="unknown colourspace 'rec709'"):
        colour.resolve("rec709")


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_name_is_a_colour_error(colour: ColourManager, name: str) -> None:
    with pytest.raises(ColourError, match="non-empty"):
        colour.resolve(name)


def test_an_unknown_colourspace_in_convert_is_a_colour_error(colour: ColourManager) -> None:
    with pytest.raises(ColourError, match="'nope'"):
        colour.convert(grey(0.5), "nope", SCENE_LINEAR)


def test_ocio_pointing_at_a_missing_file_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.ocio"
    monkeypatch.setenv(OCIO_ENV, str(missing))
    with pytest.raises(ConfigError, match=r"missing\.ocio.*\$OCIO"):
        ColourManager()


def test_a_missing_or_broken_config_argument_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.ocio"):
        ColourManager(str(tmp_path / "nothere.ocio"))
    broken = tmp_path / "broken.ocio"
    broken.write_text("this: [is not an OCIO config\n")
    with pytest.raises(ConfigError, match=r"broken\.ocio"):
        ColourManager(str(broken))
    with pytest.raises(ConfigError, match="ocio://no-such-config"):
        ColourManager("ocio://no-such-config")


def test_a_config_without_scene_linear_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "noscene.ocio"
    path.write_text((STUDIO_CONFIG % "").replace("  scene_linear: linear\n", ""))
    with pytest.raises(ConfigError, match="no 'scene_linear' role"):
        ColourManager(str(path))


# -- a studio config ---------------------------------------------------------------------------


def test_a_studio_config_loads_and_converts(tmp_path: Path) -> None:
    path = tmp_path / "studio.ocio"
    path.write_text(STUDIO_CONFIG % ", style: mirror")
    studio = ColourManager(str(path))
    assert studio.config_name.startswith(str(path))
    assert studio.names() == ["linear", "gamma22"]
    assert studio.resolve("g22") == "gamma22"
    assert studio.resolve("linear") == "linear"
    frame = grey(-0.5, 0.0, 0.18, 0.5, 1.0, 4.0)
    encoded = studio.convert(frame, "linear", "g22")
    values = frame[0, 0].numpy().astype(np.float64)
    expected = np.sign(values) * np.abs(values) ** (1 / 2.2)
    np.testing.assert_allclose(encoded[0, 0].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert_round_trip(studio.convert(encoded, "gamma22", SCENE_LINEAR), frame)


def test_the_ocio_variable_picks_a_studio_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "studio.ocio"
    path.write_text(STUDIO_CONFIG % "")
    monkeypatch.setenv(OCIO_ENV, str(path))
    assert ColourManager().names() == ["linear", "gamma22"]


def test_a_conversion_that_clamps_is_logged_not_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "clamping.ocio"
    path.write_text(STUDIO_CONFIG % "")  # ExponentTransform clamps negatives by default
    studio = ColourManager(str(path))
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.colour"):
        out = studio.convert(grey(-0.5, 0.5), "linear", "gamma22")
        studio.convert(grey(-0.5, 0.5), "linear", "gamma22")  # warned once per conversion
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'linear' -> 'gamma22'" in warnings[0].getMessage()
    assert "below 0" in warnings[0].getMessage()
    assert "above 1" not in warnings[0].getMessage()
    assert out[0, 0, 0].item() == 0.0


def test_the_default_config_conversions_are_not_flagged(
    colour: ColourManager, caplog: pytest.LogCaptureFixture
) -> None:
    fresh = ColourManager(DEFAULT_CONFIG)
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.colour"):
        for source in SPACES:
            for target in SPACES:
                fresh.convert(grey(0.5), source, target)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_ocio_optimisation_flags_in_the_environment_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OCIO_OPTIMIZATION_FLAGS", "263995331")
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.colour"):
        ColourManager(DEFAULT_CONFIG)
    assert "OCIO_OPTIMIZATION_FLAGS is set" in caplog.text


def test_srgb_in_a_config_without_one_is_a_colour_error(tmp_path: Path) -> None:
    path = tmp_path / "studio.ocio"
    path.write_text(STUDIO_CONFIG % "")
    with pytest.raises(ColourError, match="'srgb' means the sRGB texture colourspace"):
        ColourManager(str(path)).resolve("srgb")


# -- reference values --------------------------------------------------------------------------


def test_neutral_grey_encodes_to_the_srgb_reference_values(colour: ColourManager) -> None:
    encoded = colour.convert(grey(0.0, 0.18, 1.0), SCENE_LINEAR, "srgb")
    np.testing.assert_allclose(encoded[:, 0, 0].numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(encoded[:, 0, 1].numpy(), 0.4613561, atol=2e-6)
    np.testing.assert_allclose(encoded[:, 0, 2].numpy(), 1.0, atol=2e-6)


def test_the_srgb_curve_is_extended_not_clamped(colour: ColourManager) -> None:
    values = np.array([-100, -1, -0.01, 0, 0.002, 0.18, 0.5, 1, 1.5, 10, 100], np.float32)
    encoded = colour.convert(grey(*values.tolist()), "lin_rec709", "srgb")
    expected = srgb_encode(values)
    for channel in range(3):
        np.testing.assert_allclose(encoded[channel, 0].numpy(), expected, rtol=2e-6, atol=1e-7)
    assert encoded[0, 0, -1].item() == pytest.approx(7.1326, abs=1e-4)  # linear 100
    assert encoded[0, 0, 1].item() == pytest.approx(-12.9232, abs=1e-4)  # linear -1


def test_neutral_grey_is_the_same_in_every_linear_space(colour: ColourManager) -> None:
    frame = grey(0.18, 1.0, 10.0)
    for target in ("ACEScg", "ACES2065-1", "lin_rec709"):
        np.testing.assert_allclose(colour.convert(frame, SCENE_LINEAR, target), frame, rtol=1e-6)


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", SPACES[1:])
def test_a_photo_round_trips(colour: ColourManager, photo: torch.Tensor, target: str) -> None:
    there = colour.convert(photo, SCENE_LINEAR, target)
    assert_round_trip(colour.convert(there, target, SCENE_LINEAR), photo)


def test_a_photo_round_trips_through_every_space_in_turn(
    colour: ColourManager, photo: torch.Tensor
) -> None:
    frame = photo
    for source, target in zip(SPACES, (*SPACES[1:], SPACES[0]), strict=True):
        frame = colour.convert(frame, source, target)
    assert_round_trip(frame, photo)


def test_an_srgb_photo_round_trips_exactly_enough(colour: ColourManager) -> None:
    pixels = data.astronaut()[::8, ::8].astype(np.float32) / 255.0
    encoded = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    linear = colour.convert(encoded, "srgb", SCENE_LINEAR)
    assert_round_trip(colour.convert(linear, SCENE_LINEAR, "srgb"), encoded)


@pytest.mark.parametrize("target", SPACES[1:])
def test_hdr_and_negative_values_round_trip(colour: ColourManager, target: str) -> None:
    generator = torch.Generator().manual_seed(7)
    frame = torch.rand((3, 16, 16), generator=generator) * 101.0 - 1.0  # -1 .. 100, in colour
    frame[:, 0, :11] = torch.tensor([-100, -10, -1, -0.01, 0, 1e-4, 0.18, 1, 10, 100, 1e4])
    there = colour.convert(frame, SCENE_LINEAR, target)
    assert there.abs().max().item() > 1.0  # nothing was clipped into 0..1
    assert_round_trip(colour.convert(there, target, SCENE_LINEAR), frame)


def test_srgb_round_trips_from_minus_100_to_a_million(colour: ColourManager) -> None:
    magnitudes = np.geomspace(1e-6, 1e6, 400)
    values = np.concatenate([magnitudes, -magnitudes[:300], np.linspace(-100, 100, 201)])
    frame = grey(*values.tolist())
    for linear in (SCENE_LINEAR, "lin_rec709"):
        back = colour.convert(colour.convert(frame, linear, "srgb"), "srgb", linear)
        assert_round_trip(back, frame, tolerance=2e-6)


# -- channels, identity, NaN -------------------------------------------------------------------


def test_alpha_and_further_channels_are_copied_bit_for_bit(colour: ColourManager) -> None:
    frame = torch.rand(5, 8, 8) * 4.0 - 1.0
    frame[3, 0, 0] = float("nan")
    frame[4, 1, 1] = float("inf")
    out = colour.convert(frame, SCENE_LINEAR, "srgb")
    assert out.shape == frame.shape and out.dtype == torch.float32
    assert torch.equal(bits(out[3:]), bits(frame[3:]))
    assert not torch.allclose(out[:3], frame[:3])


def test_one_channel_is_converted_as_grey(colour: ColourManager) -> None:
    out = colour.convert(grey(0.18, 1.0, channels=1), SCENE_LINEAR, "srgb")
    assert out.shape == (1, 1, 2)
    np.testing.assert_allclose(out[0, 0].numpy(), [0.4613561, 1.0], atol=2e-6)


def test_two_channels_convert_the_first_and_keep_the_second(colour: ColourManager) -> None:
    frame = grey(0.18, 4.0, channels=2)
    frame[1] = torch.tensor([0.25, 0.75])
    out = colour.convert(frame, SCENE_LINEAR, "srgb")
    np.testing.assert_allclose(out[0, 0, 0].item(), 0.4613561, atol=2e-6)
    assert torch.equal(out[1], frame[1])
    assert_round_trip(colour.convert(out, "srgb", SCENE_LINEAR), frame)


@pytest.mark.parametrize(
    ("source", "target"),
    [("linear", "linear"), ("scene_linear", "ACEScg"), ("srgb", "sRGB - Texture")],
)
def test_the_same_colourspace_returns_the_input_itself(
    colour: ColourManager, source: str, target: str
) -> None:
    frame = torch.rand(4, 4, 4)
    assert colour.convert(frame, source, target) is frame


def test_the_input_is_never_modified(colour: ColourManager) -> None:
    frame = torch.rand(4, 8, 8) * 10.0 - 1.0
    frame[0, 0, 0] = float("nan")
    before = frame.clone()
    colour.convert(frame, SCENE_LINEAR, "srgb")
    colour.convert(frame[:1], SCENE_LINEAR, "srgb")
    assert torch.equal(bits(frame), bits(before))


def test_a_non_contiguous_frame_converts_like_a_contiguous_one(colour: ColourManager) -> None:
    frame = torch.rand(3, 8, 16)
    view = frame[:, :, ::2]
    expected = colour.convert(view.contiguous(), SCENE_LINEAR, "srgb")
    assert torch.equal(colour.convert(view, SCENE_LINEAR, "srgb"), expected)


def test_nan_and_inf_pixels_pass_through_untouched(colour: ColourManager) -> None:
    frame = grey(0.18, 0.18, 0.18, 0.18, 0.18)
    frame[0, 0, 1] = float("nan")
    frame[1, 0, 2] = float("inf")
    frame[2, 0, 3] = float("-inf")
    for target in ("srgb", "ACES2065-1"):
        out = colour.convert(frame, SCENE_LINEAR, target)
        assert torch.equal(bits(out[:, :, 1:4]), bits(frame[:, :, 1:4]))  # whole pixels kept
        np.testing.assert_allclose(out[:, 0, 0].numpy(), out[:, 0, 4].numpy())
        assert torch.isfinite(out[:, :, [0, 4]]).all()


def test_huge_finite_values_are_converted_not_hidden(colour: ColourManager) -> None:
    frame = grey(1e38, 0.18)  # the frame's sum overflows: the NaN check must not hide them
    out = colour.convert(frame, "lin_rec709", "srgb")
    assert torch.isfinite(out).all()
    assert out[0, 0, 0].item() == pytest.approx(srgb_encode(np.array([1e38]))[0], rel=1e-5)
    assert out[0, 0, 1].item() == pytest.approx(0.4613561, abs=2e-6)


@pytest.mark.parametrize(
    "frame",
    [torch.zeros(3, 4, 4, dtype=torch.float64), torch.zeros(4, 4), np.zeros((3, 4, 4))],
)
def test_a_frame_of_the_wrong_form_is_a_frame_error(colour: ColourManager, frame: object) -> None:
    with pytest.raises(FrameError):
        colour.convert(frame, SCENE_LINEAR, "srgb")


def test_a_frame_comes_back_on_the_device_it_came_from(
    colour: ColourManager, device: torch.device
) -> None:
    frame = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(5))
    out = colour.convert(frame.to(device), SCENE_LINEAR, "srgb")
    assert out.device.type == device.type and out.dtype == torch.float32
    assert torch.equal(out.cpu(), colour.convert(frame, SCENE_LINEAR, "srgb"))
    assert not torch.equal(out[:3].cpu(), frame[:3])  # converted, alpha copied as it is
    assert torch.equal(out[3].cpu(), frame[3])


# -- threads -----------------------------------------------------------------------------------


def test_threads_converting_at_once_agree_with_one_thread() -> None:
    manager = ColourManager(DEFAULT_CONFIG)  # fresh: the threads race to build the processors
    generator = torch.Generator().manual_seed(3)
    frames = [torch.rand((4, 32, 32), generator=generator) * 10.0 - 1.0 for _ in range(8)]
    pairs = [(SCENE_LINEAR, "srgb"), ("srgb", "ACES2065-1")]
    results: dict[int, list[torch.Tensor]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(frames))

    def work(index: int) -> None:
        try:
            barrier.wait()
            results[index] = [
                manager.convert(frames[index], s, t) for _ in range(5) for s, t in pairs
            ]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    single = ColourManager(DEFAULT_CONFIG)
    for index, frame in enumerate(frames):
        expected = [single.convert(frame, s, t) for s, t in pairs] * 5
        for got, want in zip(results[index], expected, strict=True):
            assert torch.equal(got, want)


def test_default_manager_is_one_instance_for_every_thread() -> None:
    found: list[ColourManager] = []
    threads = [threading.Thread(target=lambda: found.append(default_manager())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8
    assert all(manager is found[0] for manager in found)
    assert default_manager() is found[0]
