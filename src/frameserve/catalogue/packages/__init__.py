"""Model packages: models without code, a network file and a ``model.toml`` manifest.

A model package is a folder holding ``model.toml`` and a network file: TorchScript (``.pt``),
``torch.export`` (``.pt2``) or ONNX (``.onnx``, run with onnxruntime). The manifest declares
what a Python plug-in declares in code — id, label, version, inputs and outputs, knobs,
colourspaces, spatial needs, precision — plus how each knob reaches the network and which
channels and value ranges the network works in. ``docs/packages.md`` is the reference.

::

    studio_models/soften/
        model.toml
        soften.onnx

    [cls] = load_package_classes(Path("studio_models/soften"))   # reads the manifest only
    report = check_package("studio_models/soften")                # loads and runs the network

- :func:`load_package_classes` turns a package folder into a generated
  :class:`~frameserve.plugin.model.Model` subclass (:class:`PackageModel`); the registry calls it
  for every folder holding a ``model.toml``. The network loads in ``setup``, never at listing time.
- :func:`read_manifest` reads and checks a manifest; every problem is a
  :class:`~frameserve.errors.ModelLoadError` naming the file, the key and what is allowed.
- :func:`check_package` (``frameserve check``) runs the network once on a test frame and
  checks what it returns; :func:`write_package` (``frameserve package``) writes a package
  atomically, after that check.
"""

from __future__ import annotations

from frameserve.catalogue.packages._check import CheckReport, check_package, write_package
from frameserve.catalogue.packages._manifest import read_manifest
from frameserve.catalogue.packages._model import PackageModel, load_package_classes, model_class
from frameserve.catalogue.packages._schema import (
    FEEDS,
    MANIFEST_FILE,
    NETWORK_FORMATS,
    SCHEMA,
    InputDecl,
    KnobDecl,
    Manifest,
    OutputDecl,
)
from frameserve.catalogue.packages._toml import dump_toml

__all__ = [
    "FEEDS",
    "MANIFEST_FILE",
    "NETWORK_FORMATS",
    "SCHEMA",
    "CheckReport",
    "InputDecl",
    "KnobDecl",
    "Manifest",
    "OutputDecl",
    "PackageModel",
    "check_package",
    "dump_toml",
    "load_package_classes",
    "model_class",
    "read_manifest",
    "write_package",
]
