"""Tests for the registry: finding model plug-ins, and listing the ones that fail."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from frameserve.catalogue.entries import FailedModel
from frameserve.catalogue.registry import (
    BUILTIN_FOLDER,
    MODELS_ENV,
    ModelEntry,
    ModelRegistry,
    model_folders_from_env,
)
from frameserve.errors import ModelNotFoundError
from tests.support.paths import TEST_MODELS


def plugin_source(model_id: str, *, extra: str = "") -> str:
    """The source of a ``model.py`` declaring one working model called ``model_id``."""
    return textwrap.dedent(
        f'''
        """Test plug-in {model_id}."""

        from frameserve import Model

        WHERE = {model_id!r}


        class Plugin(Model):
            id = {model_id!r}

            def predict(self, frames, knobs):
                return frames["image"]
        '''
    ) + textwrap.dedent(extra)


def write_plugin(folder: Path, source: str) -> Path:
    """Write ``source`` as ``folder/model.py`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    return folder


def by_id(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    return {entry.id: entry for entry in entries}


def failure(registry: ModelRegistry, model_id: str) -> ModelEntry:
    """The failed entry called ``model_id``."""
    failed = [e for e in registry.entries() if e.id == model_id and not e.ok]
    assert len(failed) == 1, registry.entries()
    return failed[0]


# -- finding models ----------------------------------------------------------------------------


def test_builtins_are_found() -> None:
    registry = ModelRegistry()
    entries = by_id(registry.available())
    assert {"identity", "blur", "difference"} <= set(entries)
    for model_id in ("identity", "blur", "difference"):
        entry = entries[model_id]
        assert entry.ok and entry.builtin and entry.error is None
        assert entry.spec.id == model_id
        assert entry.model_class.id == model_id
        assert Path(entry.source) == BUILTIN_FOLDER / model_id / "model.py"
    assert registry.get("blur") is entries["blur"]


def test_builtins_can_be_left_out() -> None:
    assert ModelRegistry(builtins=False).entries() == []
    assert ModelRegistry(builtins=False).largest_input_count() == 1


def test_a_folder_of_model_folders(tmp_path: Path) -> None:
    write_plugin(tmp_path / "b_second", plugin_source("second"))
    write_plugin(tmp_path / "a_first", plugin_source("first"))
    (tmp_path / "not_a_model").mkdir()  # a folder without model.py is not a model
    (tmp_path / "notes.txt").write_text("not a model either")
    registry = ModelRegistry([tmp_path], builtins=False)
    assert [e.id for e in registry.entries()] == ["first", "second"]  # in folder name order
    entry = registry.get("first")
    assert entry.ok and not entry.builtin
    assert entry.source == str(tmp_path / "a_first" / "model.py")


def test_a_single_model_folder(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "solo", plugin_source("solo"))
    registry = ModelRegistry([folder], builtins=False)
    assert [e.id for e in registry.entries()] == ["solo"]
    assert registry.get("solo").source == str(folder / "model.py")


def test_a_plugin_may_declare_several_models(tmp_path: Path) -> None:
    source = plugin_source(
        "one",
        extra='''

        class Other(Plugin):
            id = "two"


        class Base(Model):
            """No id: an abstract base, not a model."""
        ''',
    )
    registry = ModelRegistry([write_plugin(tmp_path / "pair", source)], builtins=False)
    assert sorted(e.id for e in registry.entries()) == ["one", "two"]
    assert all(e.ok for e in registry.entries())


def test_the_test_models_folder() -> None:
    registry = ModelRegistry([TEST_MODELS])
    assert {"identity", "blur", "difference", "knobby", "slow"} <= {
        e.id for e in registry.available()
    }
    broken = failure(registry, "broken_import")
    assert broken.error == ("RuntimeError: this plug-in is broken on purpose (model.py, line 3)")


def test_models_env_var_adds_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = write_plugin(tmp_path / "one" / "alpha", plugin_source("alpha")).parent
    two = write_plugin(tmp_path / "two", plugin_source("beta"))
    monkeypatch.setenv(MODELS_ENV, os.pathsep.join([str(one), "", "  ", str(two)]))
    folders = model_folders_from_env()
    assert folders == [one, two]
    registry = ModelRegistry(folders, builtins=False)
    assert [e.id for e in registry.available()] == ["alpha", "beta"]


def test_models_env_var_unset_or_given_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MODELS_ENV, raising=False)
    assert model_folders_from_env() == []
    environ = {MODELS_ENV: os.pathsep.join(["a", "b"])}
    assert model_folders_from_env(environ) == [Path("a"), Path("b")]
    assert model_folders_from_env({}) == []


def test_two_plugins_both_called_model_py_do_not_clash(tmp_path: Path) -> None:
    first = write_plugin(tmp_path / "studio" / "same", plugin_source("first"))
    second = write_plugin(tmp_path / "show" / "same", plugin_source("second"))
    registry = ModelRegistry([first, second], builtins=False)
    classes = {e.id: e.model_class for e in registry.available()}
    assert set(classes) == {"first", "second"}
    modules = {model_id: cls.__module__ for model_id, cls in classes.items() if cls}
    assert modules["first"] != modules["second"]
    assert sys.modules[modules["first"]].WHERE == "first"
    assert sys.modules[modules["second"]].WHERE == "second"
    assert "model" not in {modules["first"], modules["second"]}


def test_reload_picks_up_new_models(tmp_path: Path) -> None:
    write_plugin(tmp_path / "a", plugin_source("a"))
    registry = ModelRegistry([tmp_path], builtins=False)
    write_plugin(tmp_path / "b", plugin_source("b"))
    assert [e.id for e in registry.available()] == ["a"]
    registry.reload()
    assert [e.id for e in registry.available()] == ["a", "b"]


# -- plug-ins that fail ------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """A folder of model folders: two good ones between every kind of broken one."""
    root = tmp_path / "models"
    write_plugin(root / "a_good", plugin_source("good_a"))
    write_plugin(root / "broken", 'raise ImportError("needs a package that is not installed")\n')
    write_plugin(root / "empty", "VALUE = 1\n")
    write_plugin(
        root / "no_predict",
        "from frameserve import Model\n\n\nclass NoPredict(Model):\n    id = 'no_predict'\n",
    )
    write_plugin(
        root / "bad_channels",
        "from frameserve import ImageSpec\n\nSPEC = ImageSpec('image', channels=0)\n",
    )
    write_plugin(root / "twin", plugin_source("identity"))  # the built-in took this id
    write_plugin(root / "z_good", plugin_source("good_z"))
    return root


def test_each_failure_is_listed_and_the_others_still_load(
    mixed_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "missing"
    with caplog.at_level(logging.WARNING, logger="frameserve.catalogue.registry"):
        registry = ModelRegistry([missing, mixed_folder])
    available = {e.id for e in registry.available()}
    builtins = {e.id for e in ModelRegistry().available()}
    assert available == builtins | {"good_a", "good_z"}
    assert registry.get("identity").builtin  # the first to claim an id keeps it

    errors = {e.source: e.error for e in registry.entries() if not e.ok}
    assert errors == {
        str(missing): f"models folder {str(missing)!r} does not exist",
        str(mixed_folder / "broken" / "model.py"): (
            "ImportError: needs a package that is not installed (model.py, line 1)"
        ),
        str(mixed_folder / "empty" / "model.py"): (
            f"{mixed_folder / 'empty' / 'model.py'} defines no Model subclass with an id"
        ),
        str(mixed_folder / "no_predict" / "model.py"): (
            "model class NoPredict: it must implement predict(frames, knobs)"
        ),
        str(mixed_folder / "bad_channels" / "model.py"): (
            "image 'image': channels 0 is outside 1..64"
        ),
        str(mixed_folder / "twin" / "model.py"): (
            f"id 'identity' is already used by {BUILTIN_FOLDER / 'identity' / 'model.py'}"
        ),
    }
    failed_ids = [e.id for e in registry.entries() if not e.ok]
    assert failed_ids == ["missing", "bad_channels", "broken", "empty", "no_predict", "identity"]
    assert registry.entries()[-len(failed_ids) :] == [e for e in registry.entries() if not e.ok]
    assert all(isinstance(e, FailedModel) for e in registry.entries() if not e.ok)
    assert not any(hasattr(e, "spec") for e in registry.entries() if not e.ok)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(failed_ids)
    assert all("failed to load" in r.getMessage() for r in warned)


def test_a_failed_import_leaves_no_module_behind(tmp_path: Path) -> None:
    folder = write_plugin(tmp_path / "boom", "raise RuntimeError('boom')\n")
    before = set(sys.modules)
    ModelRegistry([folder], builtins=False)
    assert not [name for name in set(sys.modules) - before if "boom" in name]


def test_a_declaration_that_raises_type_error_is_listed(tmp_path: Path) -> None:
    write_plugin(tmp_path / "good", plugin_source("good"))
    write_plugin(
        tmp_path / "unwrapped",
        plugin_source("unwrapped", extra="\nPlugin.inputs = ImageSpec('image', 3)\n").replace(
            "from frameserve import Model", "from frameserve import ImageSpec, Model"
        ),
    )
    registry = ModelRegistry([tmp_path], builtins=False)
    assert [e.id for e in registry.available()] == ["good"]
    assert failure(registry, "unwrapped").error


# -- get ---------------------------------------------------------------------------------------


def test_get_an_unknown_model_lists_the_available_ones() -> None:
    registry = ModelRegistry()
    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("sharpen")
    message = str(caught.value)
    assert message.startswith("unknown model 'sharpen'; available models: ")
    for model_id in ("blur", "difference", "identity"):
        assert model_id in message


def test_get_with_no_models_at_all() -> None:
    with pytest.raises(ModelNotFoundError, match="available models: none"):
        ModelRegistry(builtins=False).get("identity")


def test_get_a_failed_model_says_why() -> None:
    registry = ModelRegistry([TEST_MODELS])
    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("broken_import")
    assert str(caught.value) == (
        "model 'broken_import' failed to load: "
        "RuntimeError: this plug-in is broken on purpose (model.py, line 3)"
    )


def test_largest_input_count() -> None:
    assert ModelRegistry().largest_input_count() == 3  # motion_vectors: a frame, two neighbours
