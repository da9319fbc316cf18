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

This package reads a package into a model; making and checking packages (a test run of the
network, ``frameserve package`` and ``frameserve check``) is :mod:`frameserve.packaging`.

- :func:`load_package_classes` turns a package folder into a generated
  :class:`~frameserve.plugin.model.Model` subclass (:class:`PackageModel`); the registry calls it
  for every folder holding a ``model.toml``. The network loads in ``setup``, never at listing time.
- :func:`read_manifest` reads and checks a manifest; every problem is a
  :class:`~frameserve.errors.ModelLoadError` naming the file, the key and what is allowed.
- :class:`Network` runs a network file (:func:`load_network`); :func:`onnx_external_files`
  lists the weights files an ONNX graph keeps beside it.
"""

from __future__ import annotations

from frameserve.catalogue.packages._manifest import read_manifest
from frameserve.catalogue.packages._model import PackageModel, load_package_classes, model_class
from frameserve.catalogue.packages._networks import Network, load_network, onnx_external_files
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
    "InputDecl",
    "KnobDecl",
    "Manifest",
    "Network",
    "OutputDecl",
    "PackageModel",
    "dump_toml",
    "load_network",
    "load_package_classes",
    "model_class",
    "onnx_external_files",
    "read_manifest",
]
