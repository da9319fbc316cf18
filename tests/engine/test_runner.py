"""Tests for the runner: batches, devices, precision, memory order and memory budget.

Tests that run models take the ``device`` fixture (``tests/support/devices.py``): each runs on
the CPU and, where there is one, on CUDA, with the expectation written for each device.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch

from frameserve import ChoiceKnob, ImageSpec, Model, Prediction
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.devices import (
    allocated_bytes,
    default_memory_budget,
    is_out_of_memory,
    resolve_device,
)
from frameserve.engine.pool import model_tensor_bytes
from frameserve.engine.request import InferenceRequest, InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.errors import (
    ConfigError,
    FrameServeError,
    ModelNotFoundError,
    ModelRunError,
    ModelSetupError,
)
from frameserve.serve.settings import ServerSettings
from tests.support.paths import TEST_MODELS
from tests.support.registries import registry_of

MIB = 1 << 20


def photo(height: int, width: int, *, name: str = "astronaut") -> torch.Tensor:
    """A (3, height, width) float32 crop of a scikit-image photo, values 0-1."""
    image = getattr(skimage.data, name)()[:height, :width].astype(np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def request(
    runner: Runner, model_id: str, *frames: torch.Tensor, **knobs: object
) -> InferenceRequest:
    return build_request(runner.registry.get(model_id).spec, list(frames), knobs)


def image_of(outcome: InferenceResult | FrameServeError) -> torch.Tensor:
    assert isinstance(outcome, InferenceResult), outcome
    return outcome.frames["image"]


def loaded_model(runner: Runner, model_id: str) -> Model:
    return runner._pool._loaded[runner.registry.get(model_id).key].model  # type: ignore[attr-defined, no-any-return]


# -- batches -----------------------------------------------------------------------------------


@pytest.fixture
def convnet_runner(device: torch.device) -> Runner:
    return Runner(ModelRegistry([TEST_MODELS / "convnet"], builtins=False), device=device)


def test_a_batch_runs_in_one_call_and_matches_single_runs(convnet_runner: Runner) -> None:
    runner = convnet_runner
    frames = [photo(61, 83, name=n) for n in ("astronaut", "coffee", "chelsea")]
    requests = [request(runner, "convnet", frame, gain=0.5) for frame in frames]
    outcomes = runner.run_batch(requests)
    model = loaded_model(runner, "convnet")
    assert model.calls == [(3, 3, 64, 84)]  # one call, padded to multiples of 4
    for frame, outcome in zip(frames, outcomes, strict=True):
        single = runner.run(request(runner, "convnet", frame, gain=0.5)).frames["image"]
        assert image_of(outcome).shape == (3, 61, 83)
        torch.testing.assert_close(image_of(outcome), single, atol=1e-5, rtol=0)
        assert not torch.equal(image_of(outcome), frame)
    # a model that writes predict_batch gets single requests there too, as batches of one
    assert model.calls[1:] == [(1, 3, 64, 84)] * 3


def test_a_batch_is_cut_at_max_batch_size_and_tiled_like_one_frame(convnet_runner: Runner) -> None:
    runner = convnet_runner
    requests = [request(runner, "convnet", photo(40, 40) * (1 + i / 10)) for i in range(6)]
    outcomes = runner.run_batch(requests)
    assert [c[0] for c in loaded_model(runner, "convnet").calls] == [4, 2]
    assert all(isinstance(o, InferenceResult) for o in outcomes)
    big = [request(runner, "convnet", photo(300, 270, name=n)) for n in ("astronaut", "coffee")]
    tiled = runner.run_batch(big)
    calls = loaded_model(runner, "convnet").calls[2:]
    assert len(calls) > 1 and all(c[0] == 2 and max(c[2:]) <= 256 for c in calls)
    for outcome, one in zip(tiled, big, strict=True):
        torch.testing.assert_close(image_of(outcome), runner.run(one).frames["image"])


def test_batches_and_tiles_on_each_device_match_single_runs_on_the_cpu(
    convnet_runner: Runner,
) -> None:
    runner = convnet_runner
    cpu = Runner(runner.registry, device="cpu")
    frames = [photo(300, 270, name=n) for n in ("astronaut", "coffee")]
    outcomes = runner.run_batch([request(runner, "convnet", f) for f in frames])
    assert len(loaded_model(runner, "convnet").calls) > 1  # tiled: 300x270 is above 256
    for frame, outcome in zip(frames, outcomes, strict=True):
        reference = cpu.run(request(cpu, "convnet", frame)).frames["image"]
        assert image_of(outcome).device.type == "cpu"
        torch.testing.assert_close(image_of(outcome), reference, atol=1e-4, rtol=0)


def test_a_mixed_list_is_grouped_and_answered_in_order(convnet_runner: Runner) -> None:
    runner = convnet_runner
    small, other = photo(20, 24), photo(28, 24)
    requests = [
        request(runner, "convnet", small),
        request(runner, "convnet", other),
        request(runner, "convnet", small, gain=2.0),
        request(runner, "convnet", small * 0.5),
    ]
    requests.append(
        InferenceRequest(model_id="nowhere", frames={"image": small}, knobs=requests[0].knobs)
    )
    outcomes = runner.run_batch(requests)
    assert isinstance(outcomes[-1], ModelNotFoundError)
    for one, outcome in zip(requests[:-1], outcomes[:-1], strict=True):
        torch.testing.assert_close(image_of(outcome), runner.run(one).frames["image"])
    # one batch of the two alike, then the others alone
    calls = loaded_model(runner, "convnet").calls[:3]
    assert calls == [(2, 3, 20, 24), (1, 3, 28, 24), (1, 3, 20, 24)]


class BatchForms(Model):
    """Answers batches in the form its knob names; a negative first pixel gets 2 channels."""

    id = "batch_forms"
    outputs = (ImageSpec("image", 3), ImageSpec("mask", 1))
    knobs = (
        ChoiceKnob(
            "form",
            default="sequence",
            choices=("sequence", "tensor", "mapping", "prediction", "count", "raise"),
        ),
    )
    max_batch_size = 8

    def predict(self, frames, knobs):
        return self.predict_batch({"image": frames["image"][None]}, knobs)[0]

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        form = knobs["form"]
        if form == "raise":
            raise ValueError("this batch is cursed")
        if form == "tensor":
            return images * 2
        if form == "mapping":
            return {"image": images * 2, "mask": images[:, :1]}
        if form == "prediction":
            return Prediction(frames={"image": images * 2})
        if form == "count":
            return images[:1] * 2
        return [image[:2] if image[0, 0, 0] < 0 else image * 2 for image in images]


@pytest.fixture
def forms_runner(tmp_path: Path, device: torch.device) -> Runner:
    return Runner(registry_of(tmp_path, BatchForms), device=device)


@pytest.mark.parametrize("form", ["sequence", "tensor", "mapping"])
def test_predict_batch_may_answer_in_three_forms(forms_runner: Runner, form: str) -> None:
    frames = [photo(9, 11), photo(9, 11, name="coffee"), photo(9, 11, name="chelsea")]
    outcomes = forms_runner.run_batch(
        [request(forms_runner, "batch_forms", f, form=form) for f in frames]
    )
    for frame, outcome in zip(frames, outcomes, strict=True):
        torch.testing.assert_close(image_of(outcome), frame * 2)
        assert image_of(outcome).dtype == torch.float32
        if form == "mapping":
            assert isinstance(outcome, InferenceResult)
            torch.testing.assert_close(outcome.frames["mask"], frame[:1])


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ("raise", r"failed: ValueError: this batch is cursed"),
        ("count", r"tensor of shape \(1, 3, 9, 11\) for a batch of 3"),
        ("prediction", r"returned Prediction; expected a sequence of 3 results"),
    ],
)
def test_a_failed_batch_call_fails_every_request(
    forms_runner: Runner, form: str, message: str
) -> None:
    requests = [request(forms_runner, "batch_forms", photo(9, 11), form=form) for _ in range(3)]
    outcomes = forms_runner.run_batch(requests)
    assert all(isinstance(o, ModelRunError) for o in outcomes)
    assert len({str(o) for o in outcomes}) == 1
    with pytest.raises(ModelRunError, match=message):
        raise outcomes[0]  # type: ignore[misc]


def test_a_request_whose_own_output_is_wrong_fails_alone(forms_runner: Runner) -> None:
    bad = -photo(9, 11)
    requests = [request(forms_runner, "batch_forms", f) for f in (photo(9, 11), bad, photo(9, 11))]
    good, wrong, also_good = forms_runner.run_batch(requests)
    assert isinstance(wrong, ModelRunError)
    assert "has 2 channel(s); the model declares 3" in str(wrong)
    torch.testing.assert_close(image_of(good), photo(9, 11) * 2)
    torch.testing.assert_close(image_of(also_good), photo(9, 11) * 2)
    with pytest.raises(ModelRunError, match="2 channel"):
        forms_runner.run(requests[1])


# -- devices -----------------------------------------------------------------------------------


def test_auto_picks_cuda_when_there_is_one() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (
        Runner(ModelRegistry(builtins=False), device="AUTO").device.type
        == resolve_device("auto").type
    )
    assert resolve_device("cpu") == torch.device("cpu")
    assert Runner(ModelRegistry(builtins=False)).device == torch.device("cpu")  # the default


def test_cuda_names_are_checked_against_the_gpus_of_this_machine() -> None:
    registry = ModelRegistry(builtins=False)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError, match=rf"device '{name}' is not available.*'cpu' or"):
                Runner(registry, device=name)
        return
    count = torch.cuda.device_count()
    current = torch.device("cuda", torch.cuda.current_device())
    assert Runner(registry, device="cuda").device == current  # a plain "cuda" gets its index
    assert Runner(registry, device=f"cuda:{count - 1}").device == torch.device("cuda", count - 1)
    message = rf"'cuda:{count}' does not exist: this machine has {count} CUDA device\(s\)"
    with pytest.raises(ConfigError, match=message):
        Runner(registry, device=f"cuda:{count}")


def test_unknown_devices_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'gpu please' is not a device name; use 'auto'"):
        resolve_device("gpu please")
    with pytest.raises(ConfigError, match="cuda:99"):
        resolve_device("cuda:99")


def test_server_settings_check_the_device_and_budget() -> None:
    assert ServerSettings().device == "auto"
    assert ServerSettings().model_memory_budget_bytes is None
    assert ServerSettings(device="cuda:1", model_memory_budget_bytes=MIB).device == "cuda:1"
    with pytest.raises(ConfigError, match="not a device name"):
        ServerSettings(device="gpu please")
    with pytest.raises(ConfigError, match="model_memory_budget_bytes must be at least 1"):
        ServerSettings(model_memory_budget_bytes=0)


def test_the_default_memory_budget_is_a_share_of_the_device_memory(device: torch.device) -> None:
    if device.type == "cuda":  # 80% of the GPU's memory
        total = torch.cuda.get_device_properties(device).total_memory
        expected = int(total * 0.8)
    else:  # half the machine's RAM
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        expected = ram // 2
    registry = ModelRegistry(builtins=False)
    assert default_memory_budget(device) == expected
    assert Runner(registry, device=device).memory_budget_bytes == expected
    assert Runner(registry, device=device, memory_budget_bytes=5).memory_budget_bytes == 5


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Half but found Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


# -- precision and memory order ----------------------------------------------------------------


class Sees(Model):
    """A conv model with a batch path, recording the dtype and memory order it is given."""

    id = "sees"
    half_precision = True

    def setup(self, device):
        generator = torch.Generator().manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1).to(device)
        with torch.no_grad():
            for parameter in self.conv.parameters():
                parameter.copy_(torch.rand(parameter.shape, generator=generator) - 0.5)
        self.offset = torch.full((3, 1, 1), 0.25, device=device)  # a plain float32 tensor
        self.seen: list[tuple[int, torch.dtype, bool, torch.dtype]] = []

    def predict(self, frames, knobs):
        image = frames["image"]
        self.seen.append((3, image.dtype, not image.is_contiguous(), self.conv.weight.dtype))
        return self.conv(image[None])[0] + self.offset

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        channels_last = images.is_contiguous(memory_format=torch.channels_last)
        self.seen.append((4, images.dtype, channels_last, self.conv.weight.dtype))
        return self.conv(images) + self.offset


class SeesFloat32(Sees):
    id = "sees_float32"
    half_precision = False


class SeesPredictOnly(Sees):
    id = "sees_predict_only"
    predict_batch = Model.predict_batch


class Views(Sees):
    """A conv model whose batch code assumes contiguous frames (``.view``)."""

    id = "views"

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        channels_last = images.is_contiguous(memory_format=torch.channels_last)
        self.seen.append((4, images.dtype, channels_last, images.dtype))
        return (images.view(-1) * 2).view(images.shape)


class Plain(Model):
    """No convolution: frames stay contiguous."""

    id = "plain"

    def predict(self, frames, knobs):
        image = frames["image"]
        assert image.is_contiguous()
        return image.view(3, -1).view(image.shape) + 1

    def predict_batch(self, frames, knobs):
        images = frames["image"]
        assert images.is_contiguous()
        return images.view(-1).view(images.shape) + 1


@pytest.fixture
def precision_registry(tmp_path: Path) -> ModelRegistry:
    return registry_of(tmp_path, Sees, SeesFloat32, SeesPredictOnly, Views, Plain)


def test_half_precision_converts_modules_and_frames_and_returns_float32(
    precision_registry: ModelRegistry, device: torch.device
) -> None:
    half = Runner(precision_registry, device=device, half_precision=True)
    full = Runner(precision_registry, device=device, half_precision=False)
    frame = photo(32, 48)
    out_half = half.run(request(half, "sees", frame)).frames["image"]
    out_full = full.run(request(full, "sees", frame)).frames["image"]
    assert out_half.dtype == torch.float32 and out_half.shape == (3, 32, 48)
    assert out_half.device.type == "cpu" and out_half.is_contiguous()
    assert loaded_model(half, "sees").seen == [(4, torch.float16, True, torch.float16)]
    assert loaded_model(full, "sees").seen == [(4, torch.float32, True, torch.float32)]
    torch.testing.assert_close(out_half, out_full, atol=2e-2, rtol=0)
    assert float((out_half - out_full).abs().max()) > 0  # it really ran in float16
    # a model that does not declare half precision stays in float32
    half.run(request(half, "sees_float32", frame))
    assert loaded_model(half, "sees_float32").seen == [(4, torch.float32, True, torch.float32)]
    # a model without a batch path gets contiguous (C, H, W) float16 frames through predict
    half.run(request(half, "sees_predict_only", frame))
    assert loaded_model(half, "sees_predict_only").seen == [
        (3, torch.float16, False, torch.float16)
    ]


def test_half_precision_is_the_default_on_cuda_only(
    precision_registry: ModelRegistry, device: torch.device
) -> None:
    runner = Runner(precision_registry, device=device)
    on_cuda = device.type == "cuda"
    assert runner.half_precision is on_cuda
    frame = photo(64, 96)
    out = runner.run(request(runner, "sees", frame)).frames["image"]
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.is_contiguous()
    # on the CPU a model that declares half precision still runs in float32
    dtype = torch.float16 if on_cuda else torch.float32
    assert loaded_model(runner, "sees").seen == [(4, dtype, True, dtype)]
    cpu = Runner(precision_registry, device="cpu", half_precision=False)
    reference = cpu.run(request(cpu, "sees", frame)).frames["image"]
    torch.testing.assert_close(out, reference, atol=2e-2 if on_cuda else 1e-6, rtol=0)


def test_conv_models_get_channels_last_frames_and_others_contiguous_ones(
    precision_registry: ModelRegistry, device: torch.device
) -> None:
    runner = Runner(precision_registry, device=device, half_precision=False)
    frame = photo(16, 16)
    out = runner.run(request(runner, "sees_float32", frame)).frames["image"]
    # channels-last on CUDA, and on the CPU too (runner.CHANNELS_LAST_ON_CPU: faster there)
    assert loaded_model(runner, "sees_float32").seen == [(4, torch.float32, True, torch.float32)]
    assert out.device.type == "cpu" and out.is_contiguous()  # results leave in the one form
    # (C, H, W) frames gain nothing from channels-last strides: predict gets contiguous ones
    runner.run(request(runner, "sees_predict_only", frame))
    assert loaded_model(runner, "sees_predict_only").seen == [
        (3, torch.float32, False, torch.float32)
    ]
    torch.testing.assert_close(
        runner.run(request(runner, "plain", frame)).frames["image"], frame + 1
    )


def test_a_model_failing_on_channels_last_frames_gets_contiguous_ones(
    precision_registry: ModelRegistry, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner(precision_registry, device=device, half_precision=False)
    frame = photo(16, 16)
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.runner"):
        out = runner.run(request(runner, "views", frame)).frames["image"]
        runner.run(request(runner, "views", frame))
    torch.testing.assert_close(out, frame * 2)
    assert [seen[2] for seen in loaded_model(runner, "views").seen] == [True, False, False]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gets contiguous frames from now on" in warnings[0]


# -- memory budget -----------------------------------------------------------------------------

SETUPS: Counter[str] = Counter()
RELEASE = threading.Event()
STARTED = threading.Event()


class Weighs1MiB(Model):
    """A model holding exactly 1 MiB of weights (and a shared module counted once)."""

    id = "weighs_a"

    def setup(self, device):
        SETUPS[self.id] += 1
        self.net = torch.nn.Linear(512, 512, bias=False).to(device)  # 512 x 512 x 4 bytes
        self.same_net = self.net

    def predict(self, frames, knobs):
        return frames["image"]


class Weighs1MiBToo(Weighs1MiB):
    id = "weighs_b"


class Weighs1MiBThree(Weighs1MiB):
    id = "weighs_c"


class Blocks(Weighs1MiB):
    """Holds its request until RELEASE is set."""

    id = "blocks"

    def predict(self, frames, knobs):
        STARTED.set()
        assert RELEASE.wait(10)
        return frames["image"]


class SetupOutOfMemoryOnce(Weighs1MiB):
    id = "setup_oom_once"

    def setup(self, device):
        SETUPS[self.id] += 1
        if SETUPS[self.id] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        self.net = torch.nn.Linear(512, 512, bias=False).to(device)


@pytest.fixture
def budget_registry(tmp_path: Path) -> ModelRegistry:
    SETUPS.clear()
    return registry_of(
        tmp_path, Weighs1MiB, Weighs1MiBToo, Weighs1MiBThree, Blocks, SetupOutOfMemoryOnce
    )


def test_a_model_size_counts_each_tensor_once(device: torch.device) -> None:
    model = Weighs1MiB()
    model.setup(device)
    model.bias = torch.zeros(256)  # type: ignore[attr-defined]
    model.net.register_buffer("scale", torch.ones(128, dtype=torch.float64))
    assert model_tensor_bytes(model) == MIB + 256 * 4 + 128 * 8


def test_least_recently_used_models_are_unloaded_to_stay_within_the_budget(
    budget_registry: ModelRegistry, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    # On CUDA a size is also measured as the growth of allocated memory: 1 MiB here too.
    runner = Runner(budget_registry, device=device, memory_budget_bytes=2 * MIB + MIB // 2)
    frame = photo(8, 8)
    for model_id in ("weighs_a", "weighs_b"):
        runner.run(request(runner, model_id, frame))
    assert runner.loaded_models() == ["weighs_a", "weighs_b"]
    assert runner.memory_in_use() == 2 * MIB
    runner.run(request(runner, "weighs_a", frame))  # a is now the most recently used
    with caplog.at_level(logging.INFO, logger="frameserve.engine.pool"):
        runner.run(request(runner, "weighs_c", frame))
    assert runner.loaded_models() == ["weighs_a", "weighs_c"]
    assert runner.memory_in_use() == 2 * MIB
    assert any("unloaded model weighs_b (1.0 MiB)" in r.getMessage() for r in caplog.records)
    runner.run(request(runner, "weighs_b", frame))  # sets up again, making room first
    assert SETUPS == {"weighs_a": 1, "weighs_b": 2, "weighs_c": 1}
    assert runner.loaded_models() == ["weighs_c", "weighs_b"]
    assert runner.unload("weighs_b") and not runner.unload("weighs_b")
    assert runner.loaded_models() == ["weighs_c"] and runner.memory_in_use() == MIB


def test_a_model_in_use_is_never_unloaded(
    budget_registry: ModelRegistry, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner(budget_registry, device=device, memory_budget_bytes=MIB)
    STARTED.clear()
    RELEASE.clear()
    results: list[InferenceResult] = []
    worker = threading.Thread(
        target=lambda: results.append(runner.run(request(runner, "blocks", photo(8, 8))))
    )
    worker.start()
    try:
        assert STARTED.wait(10)
        with caplog.at_level(logging.WARNING, logger="frameserve.engine.pool"):
            runner.run(request(runner, "weighs_a", photo(8, 8)))
        assert runner.loaded_models() == ["blocks", "weighs_a"]
        assert not runner.unload("blocks")
        assert any("above the model memory budget" in r.getMessage() for r in caplog.records)
    finally:
        RELEASE.set()
        worker.join(10)
    assert len(results) == 1
    runner.run(request(runner, "weighs_b", photo(8, 8)))  # now both others can go
    assert runner.loaded_models() == ["weighs_b"]


def test_a_setup_out_of_memory_unloads_unused_models_and_tries_again(
    budget_registry: ModelRegistry, device: torch.device, caplog: pytest.LogCaptureFixture
) -> None:
    runner = Runner(budget_registry, device=device)
    runner.run(request(runner, "weighs_a", photo(8, 8)))
    with caplog.at_level(logging.WARNING, logger="frameserve.engine.pool"):
        runner.run(request(runner, "setup_oom_once", photo(8, 8)))
    assert runner.loaded_models() == ["setup_oom_once"]
    assert SETUPS == {"weighs_a": 1, "setup_oom_once": 2}
    assert "unloading 1 unused model(s) and trying once more" in caplog.text


def test_a_setup_out_of_memory_with_nothing_to_unload_is_a_setup_error(
    budget_registry: ModelRegistry, device: torch.device
) -> None:
    runner = Runner(budget_registry, device=device)
    with pytest.raises(ModelSetupError, match="failed to set up: OutOfMemoryError: CUDA out of"):
        runner.run(request(runner, "setup_oom_once", photo(8, 8)))
    assert SETUPS == {"setup_oom_once": 1} and runner.loaded_models() == []


def test_unloading_a_model_frees_its_memory(
    budget_registry: ModelRegistry, device: torch.device
) -> None:
    runner = Runner(budget_registry, device=device)
    runner.run(request(runner, "weighs_a", photo(8, 8)))
    assert runner.memory_in_use() == MIB
    weight = loaded_model(runner, "weighs_a").net.weight  # type: ignore[attr-defined]
    assert weight.device.type == device.type
    weights = weakref.ref(weight)
    del weight
    before = allocated_bytes(runner.device)  # the GPU's allocated memory; 0 on the CPU
    assert runner.unload("weighs_a")
    assert runner.loaded_models() == [] and runner.memory_in_use() == 0
    assert weights() is None  # nothing holds the weights any more
    if device.type == "cuda":
        assert torch.cuda.memory_allocated(runner.device) <= before - MIB
