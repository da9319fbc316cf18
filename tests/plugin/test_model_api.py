"""Tests for the model plug-in contract: declarations, requests, the runner, result objects."""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

import frameserve.plugin.model
from frameserve import (
    ChoiceKnob,
    FloatKnob,
    ImageSpec,
    IntKnob,
    Model,
    ModelSpec,
    Prediction,
    ResultObject,
    python_script,
)
from frameserve.catalogue.registry import ModelRegistry
from frameserve.engine.request import InferenceRequest, InferenceResult, build_request
from frameserve.engine.runner import Runner
from frameserve.errors import (
    ConfigError,
    FrameError,
    KnobError,
    ModelNotFoundError,
    ModelRunError,
    ModelSetupError,
)
from frameserve.plugin.knobs import KnobValues

#: A plug-in file holding the test models the runner tests use; written to a temporary folder.
TEST_PLUGIN = '''
"""Test models for tests/test_model_api.py."""

from __future__ import annotations

import time

import numpy as np
import torch

from frameserve import (
    ChoiceKnob,
    FloatKnob,
    ImageSpec,
    IntKnob,
    Model,
    Prediction,
    ResultObject,
    python_script,
)


class Counting(Model):
    """Adds one; counts its setup calls on the class."""

    id = "counting"
    setup_calls = 0
    devices = []

    def setup(self, device):
        type(self).setup_calls += 1
        type(self).devices.append(device)
        time.sleep(0.05)  # long enough for concurrent first requests to overlap
        self.offset = torch.ones((), device=device)

    def predict(self, frames, knobs):
        return frames["image"] + self.offset


class Returns(Model):
    """Returns what its 'returns' knob names, right or wrong."""

    id = "returns"
    outputs = (ImageSpec("image", 3), ImageSpec("matte", 1))
    knobs = (
        ChoiceKnob(
            "returns",
            default="tensor",
            choices=(
                "tensor", "float64", "dict", "prediction", "wrong_channels", "undeclared",
                "array", "list", "none", "missing_first", "bad_object", "wrong_dims",
                "array_in_dict", "int_tensor",
            ),
        ),
    )

    def predict(self, frames, knobs):
        image = frames["image"]
        matte = image[:1] * 0.5
        returns = knobs["returns"]
        if returns == "tensor":
            return image * 2
        if returns == "float64":
            return image.double() * 2
        if returns == "dict":
            return {"image": image * 2, "matte": matte}
        if returns == "prediction":
            stats = ResultObject("stats", {"mean": float(image.mean()), "size": [4, 3]})
            return Prediction(
                frames={"image": image * 2, "matte": matte},
                objects=[stats, python_script("nuke.message('done')")],
            )
        if returns == "wrong_channels":
            return image[:2]
        if returns == "undeclared":
            return {"image": image, "depth": matte}
        if returns == "array":
            return image.numpy()
        if returns == "list":
            return [image]
        if returns == "none":
            return None
        if returns == "missing_first":
            return {"matte": matte}
        if returns == "bad_object":
            return Prediction(frames={"image": image}, objects=[{"score": 1.0}])
        if returns == "wrong_dims":
            return image[0]
        if returns == "array_in_dict":
            return {"image": np.zeros(tuple(image.shape), np.float32)}
        if returns == "int_tensor":
            return image.to(torch.int32)
        raise AssertionError(returns)


class SetupFails(Model):
    id = "setup_fails"

    def setup(self, device):
        raise OSError("weights.pt not found")

    def predict(self, frames, knobs):
        return frames["image"]


class PredictFails(Model):
    id = "predict_fails"

    def predict(self, frames, knobs):
        raise ValueError("bad luck")


class KnobSpy(Model):
    """Keeps the knob mappings it was given."""

    id = "knob_spy"
    knobs = (
        FloatKnob("gain", default=1.0, min=0.0, max=4.0),
        IntKnob("steps", default=2, min=1, max=10),
    )
    seen = []

    def predict(self, frames, knobs):
        type(self).seen.append(knobs)
        return frames["image"] * knobs["gain"]
'''

Frame = npt.NDArray[np.float32]


def docstring_example() -> str:
    """The example model of ``frameserve.plugin.model``'s docstring, as source code."""
    doc = frameserve.plugin.model.__doc__
    assert doc is not None
    start = doc.index("::\n") + 3
    lines: list[str] = []
    for line in doc[start:].splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of model folders: the docstring's ``sharpen`` and the test models."""
    root = tmp_path_factory.mktemp("models")
    (root / "sharpen").mkdir()
    (root / "sharpen" / "model.py").write_text(docstring_example())
    (root / "api").mkdir()
    (root / "api" / "model.py").write_text(TEST_PLUGIN)
    return root


@pytest.fixture(scope="module")
def registry(models_folder: Path) -> ModelRegistry:
    return ModelRegistry([models_folder], builtins=False)


@pytest.fixture(scope="module")
def runner(registry: ModelRegistry) -> Runner:
    return Runner(registry)


def spec_of(registry: ModelRegistry, model_id: str) -> ModelSpec:
    spec = registry.get(model_id).spec
    return spec


def run(
    runner: Runner, model_id: str, frames: list[torch.Tensor], **knobs: object
) -> InferenceResult:
    """Build a request as a front door does and run it."""
    request = build_request(spec_of(runner.registry, model_id), frames, knobs)
    return runner.run(request)


def sharpen_reference(image: Frame, amount: float) -> Frame:
    """``image + amount * laplacian(image)`` with zeros beyond the frame, in numpy."""
    padded = np.pad(image, ((0, 0), (1, 1), (1, 1)))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2]
    neighbours = neighbours + padded[:, 1:-1, 2:]
    return (image + amount * (4 * image - neighbours)).astype(np.float32)


# -- declarations ------------------------------------------------------------------------------


class Good(Model):
    """A model with a docstring for a description."""

    id = "good-model_1.0"
    knobs = (FloatKnob("gain", default=1.0), IntKnob("steps", default=1))

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return frames["image"]


def test_a_good_declaration_gives_its_spec() -> None:
    spec = Good.spec()
    assert spec.id == "good-model_1.0"
    assert spec.label == "good-model_1.0"  # the label defaults to the id
    assert spec.description == "A model with a docstring for a description."
    assert spec.inputs == (ImageSpec("image", 3),)
    assert spec.outputs == (ImageSpec("image", 3),)
    assert [k.name for k in spec.knobs] == ["gain", "steps"]
    assert spec.knob("steps") is spec.knobs[1]
    assert spec.knob("nope") is None
    assert spec.describe() == {
        "id": "good-model_1.0",
        "label": "good-model_1.0",
        "description": "A model with a docstring for a description.",
        "inputs": [{"name": "image", "channels": 3}],
        "outputs": [{"name": "image", "channels": 3}],
        "knobs": [Good.knobs[0].describe(), Good.knobs[1].describe()],
        "colourspace_in": "scene_linear",
        "colourspace_out": "scene_linear",
        "spatial": {
            "fully_convolutional": False,
            "size_multiple": 1,
            "overlap": 0,
            "max_size": None,
        },
        "max_batch_size": 1,
        "half_precision": False,
        "cacheable": True,
        "temporal_window": [0, 0],
        "output_scale": 1,
        "timeout_s": None,
        "memory_limit_mb": None,
        "weights": None,  # undeclared
        "commercial_use": False,
    }


def declared(**attributes: object) -> type[Model]:
    """A subclass of :class:`Good` with some class attributes replaced."""
    return type("Declared", (Good,), attributes)


@pytest.mark.parametrize("model_id", ["", "has space", "-leading-dash", ".hidden", "slash/es", 5])
def test_a_missing_or_bad_id_is_a_config_error(model_id: object) -> None:
    with pytest.raises(ConfigError, match=r"model class Declared: id .* must be letters, digits"):
        declared(id=model_id).spec()


def test_a_model_without_an_id_is_a_config_error() -> None:
    class NoId(Model):
        def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
            return frames["image"]

    with pytest.raises(ConfigError, match="id '' must be"):
        NoId.spec()


def test_a_model_without_predict_is_a_config_error() -> None:
    class NoPredict(Model):
        id = "no_predict"

    with pytest.raises(ConfigError, match="NoPredict: it must implement predict"):
        NoPredict.spec()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"inputs": ("image",)}, "inputs must be ImageSpec"),
        ({"outputs": [ImageSpec("image"), {"name": "matte"}]}, "outputs must be ImageSpec"),
        ({"outputs": ()}, "at least one output"),
        ({"inputs": (ImageSpec("a"), ImageSpec("a", 1))}, "two inputs share a name"),
        ({"outputs": (ImageSpec("x"), ImageSpec("x"))}, "two outputs share a name"),
        ({"knobs": (FloatKnob("gain"), IntKnob("gain"))}, "two knobs are named 'gain'"),
        ({"knobs": ("gain",)}, "is not a knob spec"),
    ],
    ids=[
        "input-name",
        "output-dict",
        "no-outputs",
        "dup-inputs",
        "dup-outputs",
        "dup-knobs",
        "knob-text",
    ],
)
def test_bad_declarations_are_config_errors(attributes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        declared(**attributes).spec()
    assert str(caught.value).startswith("model class Declared: ")


@pytest.mark.parametrize(
    "attributes",
    [{"inputs": ImageSpec("image")}, {"outputs": None}, {"knobs": FloatKnob("gain")}],
    ids=["single-input", "outputs-none", "single-knob"],
)
def test_a_declaration_that_is_not_a_list_is_a_config_error(attributes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        declared(**attributes).spec()


@pytest.mark.parametrize(
    ("channels", "message"),
    [
        (0, "channels 0 is outside 1..64"),
        (65, "channels 65 is outside 1..64"),
        (-3, "outside 1..64"),
        (True, "whole number"),
        (3.0, "whole number"),
    ],
)
def test_image_channels_out_of_range_are_config_errors(channels: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ImageSpec("image", channels)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", None, 3])
def test_image_names_must_be_non_empty_strings(name: object) -> None:
    with pytest.raises(ConfigError, match="must be a non-empty string"):
        ImageSpec(name, 3)  # type: ignore[arg-type]


def test_image_channels_at_the_limits_are_accepted() -> None:
    assert ImageSpec("depth", 1).channels == 1
    assert ImageSpec("aovs", 64).channels == 64


# -- the README-style example, through the registry and the runner -----------------------------


def test_the_docstring_example_loads_through_the_registry(registry: ModelRegistry) -> None:
    entry = registry.get("sharpen")
    assert entry.ok and not entry.builtin
    assert entry.source.endswith(str(Path("sharpen") / "model.py"))
    spec = spec_of(registry, "sharpen")
    assert spec.label == "Sharpen"
    assert spec.inputs == spec.outputs == (ImageSpec("image", 3),)
    assert spec.knobs == (FloatKnob("amount", default=0.5, min=0.0, max=4.0, help="Strength."),)


def test_the_docstring_example_sharpens(runner: Runner) -> None:
    image = np.zeros((3, 5, 5), np.float32)
    image[:, 2, 2] = [1.0, 2.0, 3.0]
    out = run(runner, "sharpen", [torch.from_numpy(image)]).frames["image"]
    assert out.shape == (3, 5, 5) and out.dtype == torch.float32
    # default amount 0.5: the centre gains 0.5 * 4 * v, its four neighbours lose 0.5 * v
    np.testing.assert_allclose(out[:, 2, 2].numpy(), [3.0, 6.0, 9.0])
    np.testing.assert_allclose(out[:, 1, 2].numpy(), [-0.5, -1.0, -1.5])
    np.testing.assert_allclose(out[:, 2, 3].numpy(), [-0.5, -1.0, -1.5])
    assert float(out[:, 0, 0].abs().max()) == 0.0


def test_the_docstring_example_matches_a_reference(runner: Runner) -> None:
    rng = np.random.default_rng(7)
    image = (rng.normal(size=(3, 17, 23)) * 2).astype(np.float32)  # negatives and values over 1
    for amount in (0.0, 0.5, 2.75):
        out = run(runner, "sharpen", [torch.from_numpy(image)], amount=amount).frames["image"]
        np.testing.assert_allclose(out.numpy(), sharpen_reference(image, amount), atol=1e-5)


# -- setup -------------------------------------------------------------------------------------


def test_setup_runs_once_on_first_use_and_never_at_load(models_folder: Path) -> None:
    fresh = ModelRegistry([models_folder], builtins=False)  # a fresh import: a fresh class
    model_class = fresh.get("counting").model_class
    assert model_class.setup_calls == 0  # type: ignore[attr-defined]
    runner = Runner(fresh)
    assert model_class.setup_calls == 0  # type: ignore[attr-defined]
    assert runner.loaded_models() == []
    frame = torch.zeros(3, 2, 2)
    first = run(runner, "counting", [frame])
    second = run(runner, "counting", [frame])
    assert model_class.setup_calls == 1  # type: ignore[attr-defined]
    assert model_class.devices == [torch.device("cpu")]  # type: ignore[attr-defined]
    assert runner.loaded_models() == ["counting"]
    assert float(first.frames["image"].min()) == float(second.frames["image"].max()) == 1.0


def test_concurrent_first_requests_set_up_once(models_folder: Path) -> None:
    fresh = ModelRegistry([models_folder], builtins=False)
    runner = Runner(fresh)
    results: list[InferenceResult] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(run(runner, "counting", [torch.zeros(3, 2, 2)]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == [] and len(results) == 4
    assert fresh.get("counting").model_class.setup_calls == 1  # type: ignore[union-attr]


def test_a_setup_that_raises_is_a_model_setup_error(runner: Runner) -> None:
    with pytest.raises(ModelSetupError) as caught:
        run(runner, "setup_fails", [torch.zeros(3, 2, 2)])
    assert str(caught.value) == (
        "model 'setup_fails' failed to set up: OSError: weights.pt not found"
    )
    assert isinstance(caught.value.__cause__, OSError)
    assert "setup_fails" not in runner.loaded_models()


# -- what predict returns ----------------------------------------------------------------------


@pytest.fixture
def plate() -> torch.Tensor:
    """A small 3-channel frame with values above 1 and below 0."""
    return torch.linspace(-1.0, 2.0, 3 * 4 * 5).reshape(3, 4, 5)


def test_predict_may_return_a_tensor(runner: Runner, plate: torch.Tensor) -> None:
    result = run(runner, "returns", [plate], returns="tensor")
    assert list(result.frames) == ["image"]
    torch.testing.assert_close(result.frames["image"], plate * 2)
    assert result.objects == ()


def test_a_float64_tensor_comes_back_as_float32(runner: Runner, plate: torch.Tensor) -> None:
    result = run(runner, "returns", [plate], returns="float64")
    assert result.frames["image"].dtype == torch.float32
    torch.testing.assert_close(result.frames["image"], plate * 2)


def test_predict_may_return_a_dict(runner: Runner, plate: torch.Tensor) -> None:
    result = run(runner, "returns", [plate], returns="dict")
    assert list(result.frames) == ["image", "matte"]
    torch.testing.assert_close(result.frames["matte"], plate[:1] * 0.5)


def test_predict_may_return_a_prediction_with_objects(runner: Runner, plate: torch.Tensor) -> None:
    result = run(runner, "returns", [plate], returns="prediction")
    assert list(result.frames) == ["image", "matte"]
    torch.testing.assert_close(result.frames["image"], plate * 2)
    assert [obj.name for obj in result.objects] == ["stats", "PythonScript"]
    assert result.objects[0].to_data() == {
        "name": "stats",
        "records": [{"mean": pytest.approx(0.5), "size": [4, 3]}],
    }
    assert result.objects[1].records == ({"script": "nuke.message('done')"},)


@pytest.mark.parametrize(
    ("returns", "message"),
    [
        (
            "wrong_channels",
            "output 'image' of model 'returns' has 2 channel(s); the model declares 3",
        ),
        (
            "undeclared",
            "model 'returns' returned an undeclared output 'depth'; declared: image, matte",
        ),
        ("array", "model 'returns' returned ndarray; expected a tensor"),
        ("list", "model 'returns' returned list; expected a tensor"),
        ("none", "model 'returns' returned NoneType; expected a tensor"),
        ("missing_first", "model 'returns' returned no 'image' output"),
        ("bad_object", "model 'returns' returned an object that is not a ResultObject"),
    ],
)
def test_wrong_returns_are_model_run_errors(
    runner: Runner, plate: torch.Tensor, returns: str, message: str
) -> None:
    with pytest.raises(ModelRunError) as caught:
        run(runner, "returns", [plate], returns=returns)
    assert message in str(caught.value)


@pytest.mark.parametrize("returns", ["wrong_dims", "array_in_dict", "int_tensor"])
def test_outputs_of_the_wrong_form_are_model_run_errors(
    runner: Runner, plate: torch.Tensor, returns: str
) -> None:
    with pytest.raises(ModelRunError, match="output 'image' of model 'returns'"):
        run(runner, "returns", [plate], returns=returns)


def test_outputs_of_the_wrong_form_are_refused(runner: Runner, plate: torch.Tensor) -> None:
    """Whatever the error class, such an output never reaches a front door."""
    for returns in ("wrong_dims", "array_in_dict", "int_tensor"):
        with pytest.raises((ModelRunError, FrameError), match="output 'image' of model 'returns'"):
            run(runner, "returns", [plate], returns=returns)


def test_a_predict_that_raises_is_a_model_run_error(runner: Runner, plate: torch.Tensor) -> None:
    with pytest.raises(ModelRunError) as caught:
        run(runner, "predict_fails", [plate])
    assert str(caught.value) == "model 'predict_fails' failed: ValueError: bad luck"
    assert isinstance(caught.value.__cause__, ValueError)


def test_the_runner_refuses_an_unknown_model(runner: Runner, plate: torch.Tensor) -> None:
    request = InferenceRequest(model_id="nope", frames={"image": plate}, knobs=KnobValues({}))
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        runner.run(request)


# -- knobs as predict sees them ----------------------------------------------------------------


@pytest.fixture
def spy_seen(registry: ModelRegistry) -> Iterator[list[KnobValues]]:
    seen: list[KnobValues] = registry.get("knob_spy").model_class.seen  # type: ignore[union-attr]
    seen.clear()
    yield seen
    seen.clear()


def test_predict_gets_a_read_only_mapping_of_exactly_the_requests_knobs(
    runner: Runner, plate: torch.Tensor, spy_seen: list[KnobValues]
) -> None:
    spec = spec_of(runner.registry, "knob_spy")
    first = build_request(spec, [plate], {"gain": 2.0})
    second = build_request(spec, [plate], {"steps": 7})
    runner.run(first)
    runner.run(second)
    assert [dict(knobs) for knobs in spy_seen] == [
        {"gain": 2.0, "steps": 2},
        {"gain": 1.0, "steps": 7},
    ]
    assert spy_seen[0] == first.knobs and spy_seen[1] == second.knobs
    for knobs in spy_seen:
        assert isinstance(knobs, Mapping)
        with pytest.raises(TypeError):
            knobs["gain"] = 0.0  # type: ignore[index]


# -- building requests -------------------------------------------------------------------------


class TwoInputs(Model):
    id = "two_inputs"
    inputs = (ImageSpec("a", 3), ImageSpec("b", 1))
    knobs = (ChoiceKnob("mode", default="add", choices=("add", "sub")),)

    def predict(self, frames: Mapping[str, torch.Tensor], knobs: KnobValues) -> torch.Tensor:
        return frames["a"] + frames["b"]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_wrong_number_of_frames_is_a_frame_error(count: int) -> None:
    frames = [torch.zeros(3, 2, 2)] * count
    with pytest.raises(FrameError) as caught:
        build_request(TwoInputs.spec(), frames, {})
    assert str(caught.value) == (
        f"model 'two_inputs' takes 2 image(s) ('a', 'b'); the request has {count}"
    )


def test_too_few_channels_is_a_frame_error() -> None:
    with pytest.raises(FrameError) as caught:
        build_request(TwoInputs.spec(), [torch.zeros(2, 4, 4), torch.zeros(1, 4, 4)], {})
    assert str(caught.value) == (
        "input 'a' of model 'two_inputs' needs 3 channel(s); the request sent 2"
    )


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (torch.zeros(3, 4, 4, dtype=torch.float64), "expected float32 values, got torch.float64"),
        (torch.zeros(3, 4, 4, dtype=torch.float16), "expected float32 values, got torch.float16"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), "expected float32 values"),
        (np.zeros((3, 4, 4), np.float32), "expected a (C, H, W) float32 tensor, got ndarray"),
        (torch.zeros(4, 4), "expected shape (C, H, W), got (4, 4)"),
        (torch.zeros(1, 3, 4, 4), "expected shape (C, H, W)"),
        (torch.zeros(3, 0, 4), "every dimension must be at least 1"),
    ],
    ids=["float64", "float16", "uint8", "numpy", "2d", "4d", "empty"],
)
def test_frames_of_the_wrong_form_are_frame_errors(frame: object, message: str) -> None:
    with pytest.raises(FrameError) as caught:
        build_request(TwoInputs.spec(), [frame, torch.zeros(1, 4, 4)], {})  # type: ignore[list-item]
    assert str(caught.value).startswith("input 'a' of model 'two_inputs': ")
    assert message in str(caught.value)


def test_extra_channels_are_cut_to_the_declared_count() -> None:
    rgba = torch.arange(4 * 3 * 2, dtype=torch.float32).reshape(4, 3, 2)
    rgb = torch.arange(3 * 3 * 2, dtype=torch.float32).reshape(3, 3, 2) - 100
    request = build_request(TwoInputs.spec(), [rgba, rgb], {"mode": "sub"}, client="c:1")
    assert request.frames["a"].shape == (3, 3, 2)
    assert request.frames["b"].shape == (1, 3, 2)
    torch.testing.assert_close(request.frames["a"], rgba[:3])
    torch.testing.assert_close(request.frames["b"], rgb[:1])
    assert request.model_id == "two_inputs"
    assert request.frame_size == (2, 3)  # width, height
    assert request.client == "c:1"
    assert dict(request.knobs) == {"mode": "sub"}


def test_knob_errors_surface_from_build_request() -> None:
    frames = [torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)]
    with pytest.raises(KnobError, match="choose one of 'add', 'sub'"):
        build_request(TwoInputs.spec(), frames, {"mode": "mul"})
    with pytest.raises(KnobError, match="unknown knob 'gain'"):
        build_request(TwoInputs.spec(), frames, {"gain": 1.0})


def test_every_request_gets_its_own_id() -> None:
    frames = [torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)]
    first = build_request(TwoInputs.spec(), frames, {})
    second = build_request(TwoInputs.spec(), frames, {})
    assert second.id > first.id


# -- result objects ----------------------------------------------------------------------------


def test_result_object_to_data() -> None:
    faces = ResultObject("faces", [{"score": 0.98, "box": [120, 40, 260, 210]}, {"score": 0.5}])
    assert faces.to_data() == {
        "name": "faces",
        "records": [{"score": 0.98, "box": [120, 40, 260, 210]}, {"score": 0.5}],
    }
    assert json.loads(json.dumps(faces.to_data())) == faces.to_data()


def test_a_single_record_may_be_given_as_a_mapping() -> None:
    single = ResultObject("count", {"n": 3, "label": "cars", "ok": True})
    assert single.records == ({"n": 3, "label": "cars", "ok": True},)


def test_nested_result_objects_become_nested_data() -> None:
    inner = ResultObject("point", {"x": 1.5, "y": 2.5})
    outer = ResultObject("track", {"first": inner, "points": [inner, inner], "tags": ["a", "b"]})
    assert outer.to_data() == {
        "name": "track",
        "records": [
            {
                "first": {"name": "point", "records": [{"x": 1.5, "y": 2.5}]},
                "points": [inner.to_data(), inner.to_data()],
                "tags": ["a", "b"],
            }
        ],
    }


def test_numpy_scalars_and_arrays_become_python_values() -> None:
    obj = ResultObject(
        "stats",
        {
            "mean": np.float32(0.5),
            "count": np.int64(3),
            "flag": np.bool_(True),
            "box": np.array([1, 2, 3], dtype=np.int32),
            "weights": [np.float32(0.25), 0.5],
        },
    )
    data = obj.to_data()["records"][0]
    assert data == {
        "mean": 0.5,
        "count": 3,
        "flag": True,
        "box": [1, 2, 3],
        "weights": [0.25, 0.5],
    }
    assert type(data["mean"]) is float
    assert type(data["count"]) is int
    assert type(data["flag"]) is bool
    assert all(type(v) is int for v in data["box"])
    json.dumps(obj.to_data())


@pytest.mark.parametrize(
    "value",
    [[1, "a"], [0.5, "a"], ["a", ResultObject("x", {})], [[1, 2], [3, 4]]],
    ids=["int-str", "float-str", "str-object", "nested-lists"],
)
def test_mixed_type_lists_are_refused(value: object) -> None:
    with pytest.raises(ModelRunError, match="result object 'bad': field 'values' holds list"):
        ResultObject("bad", {"values": value})


@pytest.mark.parametrize("value", [None, {"a": 1}, b"bytes", object()])
def test_other_field_types_are_refused(value: object) -> None:
    with pytest.raises(ModelRunError, match="allowed are bool, int, float, str"):
        ResultObject("bad", {"field": value})


def test_records_must_be_mappings_with_string_keys() -> None:
    with pytest.raises(ModelRunError, match="a record must be a mapping"):
        ResultObject("bad", [["not", "a", "mapping"]])  # type: ignore[list-item]
    with pytest.raises(ModelRunError, match="field names must be strings"):
        ResultObject("bad", {1: "one"})  # type: ignore[dict-item]


def test_python_script() -> None:
    obj = python_script("nuke.message('hi')")
    assert obj.name == "PythonScript"
    assert obj.to_data() == {"name": "PythonScript", "records": [{"script": "nuke.message('hi')"}]}


def test_result_objects_are_frozen_and_comparable() -> None:
    obj = ResultObject("n", {"v": [1, 2]})
    assert obj == ResultObject("n", [{"v": (1, 2)}])
    with pytest.raises(AttributeError):
        obj.name = "m"  # type: ignore[misc]


def test_prediction_defaults_to_nothing() -> None:
    empty = Prediction()
    assert dict(empty.frames) == {} and tuple(empty.objects) == ()
