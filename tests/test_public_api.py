"""Tests for frameserve's public names and its one exception tree."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import tomllib

import frameserve
import frameserve.errors as errors
from tests.support.paths import REPO

PYPROJECT = REPO / "pyproject.toml"

#: What a model author imports from ``frameserve`` (the plug-in contract).
MODEL_AUTHOR_NAMES = {
    "BoolKnob",
    "ButtonKnob",
    "ChoiceKnob",
    "FloatKnob",
    "ImageSpec",
    "IntKnob",
    "KnobValues",
    "Model",
    "Prediction",
    "ResultObject",
    "StringKnob",
    "python_script",
}


def package_modules() -> list[str]:
    """Every module of the package except ``__main__`` (importing it runs the command)."""
    found = pkgutil.walk_packages(frameserve.__path__, prefix="frameserve.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def error_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in ``frameserve.errors``, by name."""
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def documented_tree() -> dict[str, str | None]:
    """Each class drawn in the docstring of ``frameserve.errors``, mapped to its drawn parent."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    root_indent: int | None = None
    for line in errors.__doc__.splitlines():
        match = re.match(r"^(?P<prefix>[ │├└─]*)(?P<name>[A-Z]\w*Error)\b", line)
        if match is None:
            continue
        indent = len(match["prefix"])
        if root_indent is None:
            root_indent = indent
        depth = (indent - root_indent) // 4
        del stack[depth:]
        parents[match["name"]] = stack[-1] if stack else None
        stack.append(match["name"])
    return parents


# -- names -------------------------------------------------------------------------------------


def test_all_is_sorted_unique_and_every_name_exists() -> None:
    names = list(frameserve.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))
    missing = [name for name in names if not hasattr(frameserve, name)]
    assert missing == []


def test_the_model_author_names_are_public() -> None:
    assert set(frameserve.__all__) >= MODEL_AUTHOR_NAMES | {"FrameServeError", "__version__"}


def test_public_names_are_the_objects_of_their_home_modules() -> None:
    for name in frameserve.__all__:
        obj = getattr(frameserve, name)
        home = getattr(obj, "__module__", None)
        if home is None or not home.startswith("frameserve."):
            continue
        assert getattr(importlib.import_module(home), name) is obj, name


def test_version_matches_pyproject() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert frameserve.__version__ == project["version"]


def test_every_modules_all_names_exist() -> None:
    problems: list[str] = []
    for module_name in package_modules():
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:
            continue
        if len(names) != len(set(names)):
            problems.append(f"{module_name}.__all__ repeats a name")
        problems += [f"{module_name}.{name}" for name in names if not hasattr(module, name)]
    assert problems == []


# -- the exception tree ------------------------------------------------------------------------


def test_every_error_derives_from_frameserve_error() -> None:
    classes = error_classes()
    assert "FrameServeError" in classes
    assert frameserve.FrameServeError is errors.FrameServeError
    assert issubclass(errors.FrameServeError, Exception)
    for name, cls in classes.items():
        assert issubclass(cls, errors.FrameServeError), name


def test_errors_all_lists_every_error() -> None:
    assert sorted(errors.__all__) == sorted(error_classes())


def test_the_docstring_names_every_error() -> None:
    doc = errors.__doc__
    assert doc is not None
    for name in error_classes():
        assert re.search(rf"\b{name}\b", doc), f"{name} is not in the docstring of errors.py"


def test_the_docstring_tree_is_the_real_tree() -> None:
    drawn = documented_tree()
    classes = error_classes()
    assert set(drawn) == set(classes)
    assert drawn["FrameServeError"] is None
    for name, parent in drawn.items():
        if parent is None:
            continue
        assert classes[name].__bases__ == (classes[parent],), f"{name} is drawn under {parent}"


def test_every_error_has_a_one_line_summary() -> None:
    for name, cls in error_classes().items():
        doc = inspect.getdoc(cls)
        assert doc and doc.splitlines()[0].endswith("."), name
