"""Registries of model classes written in a test module, through real plug-in folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

from frameserve.catalogue.registry import ModelRegistry
from frameserve.plugin.model import Model


def registry_of(folder: Path, *classes: type[Model]) -> ModelRegistry:
    """Return a registry (without built-ins) serving ``classes``, declared at module level.

    Each class gets a plug-in folder under ``folder`` whose ``model.py`` subclasses it without
    changing anything, so the registry finds, checks and imports it as it would any plug-in.
    """
    for cls in classes:
        plugin = folder / cls.id
        plugin.mkdir(parents=True)
        source = f'''
            """Test plug-in {cls.id}: {cls.__qualname__} from {cls.__module__}."""

            from {cls.__module__} import {cls.__qualname__} as _Declared


            class {cls.__qualname__}(_Declared):
                """{cls.__qualname__}, found through a plug-in folder."""
            '''
        (plugin / "model.py").write_text(textwrap.dedent(source))
    registry = ModelRegistry([folder], builtins=False)
    failed = [entry for entry in registry.entries() if not entry.ok]
    assert not failed, failed
    return registry
