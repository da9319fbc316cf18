"""Tests for reading model packages: manifests and their errors, the generated class, examples.

Running packages through the engine (the Runner, a real server, knob feeds) is in
``test_package_models.py``; checking and writing packages in ``tests/packaging``; the commands
in ``tests/cli/test_package.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from frameserve.catalogue.packages import (
    MANIFEST_FILE,
    PackageModel,
    dump_toml,
    load_package_classes,
    read_manifest,
)
from frameserve.errors import ModelLoadError
from tests.support.package_networks import (
    EXAMPLE_PACKAGES,
    EXAMPLES,
    REPO,
)

#: A valid manifest; the error cases below change one thing each.
BASE = """\
id = "net"
version = "1.0.0"
network = "net.pt"

[[inputs]]
name = "image"
channels = 3

[[outputs]]
name = "image"
channels = 3

[[knobs]]
name = "strength"
type = "float"
default = 0.5
min = 0.0
max = 1.0
"""

KNOB_END = "max = 1.0\n"


def with_input(line: str) -> str:
    """BASE with ``line`` added to its input."""
    return BASE.replace("channels = 3\n\n[[outputs]]", f"channels = 3\n{line}\n\n[[outputs]]")


def with_output(line: str) -> str:
    """BASE with ``line`` added to its output."""
    return BASE.replace("channels = 3\n\n[[knobs]]", f"channels = 3\n{line}\n\n[[knobs]]")


def with_knob(line: str) -> str:
    """BASE with ``line`` added to its knob."""
    return BASE.replace(KNOB_END, f"{KNOB_END}{line}\n")


#: (case, manifest text, what the message must say besides the file's path)
MANIFEST_ERRORS = [
    # unknown keys
    (
        "unknown top-level key",
        'colour_in = "srgb"\n' + BASE,
        ["unknown key 'colour_in'", "allowed keys in the manifest", "colourspace_in"],
    ),
    (
        "unknown key in an input",
        BASE.replace("channels = 3\n\n[[outputs]]", "chanels = 3\n\n[[outputs]]"),
        ["unknown key 'inputs[0].chanels'", "did you mean 'channels'", "[[inputs]] item"],
    ),
    ("American licence", 'license = "MIT"\n' + BASE, ["'license'", "did you mean 'licence'"]),
    (
        "a key another knob type has",
        with_knob('choices = ["a"]'),
        ["unknown key 'knobs[0].choices'", "allowed keys in a float knob", "min, max"],
    ),
    # wrong types
    (
        "channels as text",
        BASE.replace("channels = 3\n\n[[outputs]]", 'channels = "three"\n\n[[outputs]]'),
        ['inputs[0].channels = "three" is not allowed', "a whole number from 1 to 64"],
    ),
    (
        "a flag as text",
        'half_precision = "yes"\n' + BASE,
        ['half_precision = "yes" is not allowed', "true or false"],
    ),
    (
        "a knob default of the wrong type",
        BASE.replace("default = 0.5", 'default = "half"'),
        ['knobs[0].default = "half" is not allowed', "a finite number"],
    ),
    (
        "a bool where a number goes",
        "max_batch_size = true\n" + BASE,
        ["max_batch_size = true", "a whole number from 1 to 1024"],
    ),
    (
        "a timeout of zero",
        "timeout_s = 0\n" + BASE,
        ["timeout_s = 0 is not allowed", "a number of seconds above 0"],
    ),
    (
        "a memory limit as text",
        'memory_limit_mb = "2G"\n' + BASE,
        ['memory_limit_mb = "2G" is not allowed', "a whole number of at least 1"],
    ),
    ("a bad id", BASE.replace('id = "net"', 'id = "my net"'), ['id = "my net"', "model id"]),
    ("a newer schema", "schema = 2\n" + BASE, ["schema = 2", "manifest schema 1"]),
    (
        "a bad temporal window",
        "temporal_window = [1]\n" + BASE,
        ["temporal_window = [1]", "[before, after]"],
    ),
    # missing keys
    (
        "no version",
        BASE.replace('version = "1.0.0"\n', ""),
        ["version is missing", 'a version string such as "1.0.0"'],
    ),
    (
        "no inputs",
        BASE.replace('[[inputs]]\nname = "image"\nchannels = 3\n\n', ""),
        ["inputs is missing", "one [[inputs]] section per item"],
    ),
    (
        "an input without channels",
        BASE.replace("channels = 3\n\n[[outputs]]", "\n[[outputs]]"),
        ["inputs[0].channels is missing", "a whole number from 1 to 64"],
    ),
    (
        "a knob without a type",
        BASE.replace('type = "float"\n', ""),
        ["knobs[0].type is missing", "'float'", "'choice'"],
    ),
    # channel lists
    (
        "use past the channels",
        with_input("use = [0, 3]"),
        ["inputs[0].use = [0, 3] is not allowed", "channel indices from 0 to 2"],
    ),
    ("empty use", with_input("use = []"), ["inputs[0].use = []", "a non-empty list"]),
    (
        "use of text",
        with_input('use = ["r", "g", "b"]'),
        ["inputs[0].use", "channel indices from 0 to 2"],
    ),
    (
        "output use of the wrong length",
        with_output("use = [0, 1]"),
        ["outputs[0].use = [0, 1]", "3 channel indices, one per channel"],
    ),
    ("output use repeating", with_output("use = [0, 0, 1]"), ["outputs[0].use", "each once"]),
    # ranges
    (
        "a range upside down",
        with_input("range = [1.0, 0.0]"),
        ["inputs[0].range = [1.0, 0.0] is not allowed", "low < high"],
    ),
    ("a range of text", with_input('range = [0, "a"]'), ["inputs[0].range", "two finite numbers"]),
    ("a range of one", with_output("range = [1.0]"), ["outputs[0].range = [1.0]", "[low, high]"]),
    (
        "normalise without a range",
        with_input("normalise = true"),
        ["inputs[0].normalise = true", "unless a range is declared"],
    ),
    # knob feeds
    (
        "an unknown feed",
        with_knob('feed = "multiply"'),
        ['knobs[0].feed = "multiply"', "'input', 'attribute', 'gain', 'offset'"],
    ),
    (
        "a feed that cannot take the type",
        BASE.replace(
            'type = "float"\ndefault = 0.5\nmin = 0.0\nmax = 1.0\n',
            'type = "bool"\ndefault = false\nfeed = "gain"\n',
        ),
        ['knobs[0].feed = "gain"', "takes a bool knob", "'gain' takes int, float"],
    ),
    (
        "gain on an input that does not exist",
        with_knob('feed = "gain"\ntarget = "matte"'),
        ['knobs[0].target = "matte"', "the name of an image input: 'image'"],
    ),
    (
        "a knob feeding the image's network input",
        with_knob('target = "image"'),
        ['knobs[0].target = "image"', "inputs[0] already feeds it"],
    ),
    (
        "a knob value out of its range",
        BASE.replace("default = 0.5", "default = 2.0"),
        ["knobs[0]", "above the maximum 1"],
    ),
    (
        "a choice default that is not a choice",
        BASE.replace(
            'type = "float"\ndefault = 0.5\nmin = 0.0\nmax = 1.0\n',
            'type = "choice"\nchoices = ["soft", "hard"]\ndefault = "medium"\n',
        ),
        ["knobs[0]", "'medium' is not allowed", "'soft', 'hard'"],
    ),
    # network files
    (
        "a missing network file",
        BASE.replace('network = "net.pt"', 'network = "missing.pt"'),
        ['network = "missing.pt"', "no such file", "missing.pt"],
    ),
    (
        "a state dict",
        BASE.replace('network = "net.pt"', 'network = "net.pth"'),
        ['network = "net.pth" is not allowed', ".pt (TorchScript)", ".onnx", "hold weights"],
    ),
    (
        "an unsupported extension",
        BASE.replace('network = "net.pt"', 'network = "net.h5"'),
        ['network = "net.h5" is not allowed', ".pt2 (torch.export)"],
    ),
    (
        "a network outside the package",
        BASE.replace('network = "net.pt"', 'network = "../net.pt"'),
        ["network", "resolve against the manifest's folder"],
    ),
    # engine declarations
    (
        "output_scale with tiles",
        "output_scale = 2\n" + BASE + "\n[spatial]\nfully_convolutional = true\n",
        ["output_scale = 2", "fully_convolutional = false"],
    ),
    (
        "impossible spatial needs",
        BASE + "\n[spatial]\noverlap = 10\nmax_size = 8\n",
        ["[spatial]", "max_size 8"],
    ),
    (
        "two inputs of one name",
        BASE.replace("[[outputs]]", '[[inputs]]\nname = "image"\nchannels = 1\n\n[[outputs]]', 1),
        ['inputs[1].name = "image"', "a name no other input has"],
    ),
    ("not TOML", BASE + "oops =\n", ["not valid TOML"]),
]


def manifest_error(folder: Path, text: str) -> str:
    """Write a package with ``text`` as its manifest; return the error loading it gives."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("net.pt", "net.pth", "net.h5", "net.onnx"):
        (folder / name).write_bytes(b"")  # never read: listing a package loads no network
    (folder / MANIFEST_FILE).write_text(text)
    with pytest.raises(ModelLoadError) as caught:
        load_package_classes(folder)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in MANIFEST_ERRORS],
    ids=[case for case, _, _ in MANIFEST_ERRORS],
)
def test_manifest_errors_name_the_file_the_key_and_what_is_allowed(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    message = manifest_error(tmp_path / "pkg", text)
    assert str(tmp_path / "pkg" / MANIFEST_FILE) in message
    for part in expected:
        assert part in message, f"{part!r} not in: {message}"


def test_the_base_manifest_of_the_error_cases_is_valid(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(b"")
    (tmp_path / MANIFEST_FILE).write_text(BASE)
    [cls] = load_package_classes(tmp_path)
    assert cls.spec().id == "net"


def test_attribute_feeds_need_a_torchscript_network(tmp_path: Path) -> None:
    text = with_knob('feed = "attribute"').replace("net.pt", "net.onnx")
    message = manifest_error(tmp_path, text)
    assert 'knobs[0].feed = "attribute" is not allowed' in message
    assert "'attribute' sets an attribute of a TorchScript module" in message


def test_a_missing_manifest_says_what_a_package_is(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.toml: no such file; a model package"):
        load_package_classes(tmp_path)


# -- what a manifest declares ------------------------------------------------------------------


def test_the_example_manifest_declares_everything_to_the_engine() -> None:
    [cls] = load_package_classes(EXAMPLE_PACKAGES / "soften")
    assert issubclass(cls, PackageModel)
    spec = cls.spec()
    assert (spec.id, spec.label) == ("soften", "Soften (TorchScript)")
    assert cls.version == "1.0.0"
    assert [(i.name, i.channels) for i in spec.inputs] == [("image", 3)]
    assert [(k.name, k.kind, k.default) for k in spec.knobs] == [
        ("strength", "float", 0.5),
        ("gain", "float", 1.0),
    ]
    assert spec.spatial.fully_convolutional and spec.spatial.overlap == 2
    assert spec.max_batch_size == 4
    assert spec.description.startswith("Softens")
    manifest = cls.manifest
    assert manifest.network == EXAMPLE_PACKAGES / "soften" / "soften.pt"
    assert [(k.feed, k.target) for k in manifest.knobs] == [
        ("input", "strength"),
        ("gain", "image"),
    ]


def test_every_key_of_a_full_manifest_reaches_the_class(tmp_path: Path) -> None:
    (tmp_path / "net.onnx").write_bytes(b"")
    (tmp_path / MANIFEST_FILE).write_text(
        """\
        schema = 1
        id = "full"
        label = "Full"
        version = "2.1.0+studio"
        description = "Every key."
        author = "Lighting TD"
        licence = "MIT"
        network = "net.onnx"
        colourspace_in = "srgb"
        colourspace_out = "acescg"
        half_precision = true
        cacheable = false
        max_batch_size = 8
        batch_window_ms = 5
        timeout_s = 30
        memory_limit_mb = 2048
        output_scale = 2
        temporal_window = [1, 2]

        [spatial]
        size_multiple = 8
        overlap = 4
        max_size = 512

        [[inputs]]
        name = "plate"
        channels = 4
        use = [2, 1, 0]
        range = [-1, 1]
        normalise = true
        tensor = "x"

        [[outputs]]
        name = "image"
        channels = 3
        use = [0, 1, 2]
        range = [0.0, 255.0]
        normalise = true

        [[outputs]]
        name = "matte"
        channels = 1

        [[knobs]]
        name = "mode"
        type = "choice"
        choices = ["soft", "hard"]
        help = "How."
        label = "Mode"

        [[knobs]]
        name = "exposure"
        type = "float"
        default = 1
        feed = "gain"
        target = "plate"
        """.replace("        ", "")
    )
    [cls] = load_package_classes(tmp_path)
    spec = cls.spec()
    assert cls.version == "2.1.0+studio" and cls.output_scale == 2
    assert (spec.colourspace_in, spec.colourspace_out) == ("srgb", "acescg")
    assert spec.half_precision and not spec.cacheable
    assert (spec.max_batch_size, spec.batch_window_ms) == (8, 5.0)
    assert (spec.timeout_s, spec.memory_limit_mb) == (30.0, 2048)
    assert spec.temporal_window == (1, 2)
    assert [i.name for i in spec.inputs] == ["plate", "plate@-1", "plate@+1", "plate@+2"]
    assert [(o.name, o.channels) for o in spec.outputs] == [("image", 3), ("matte", 1)]
    assert (spec.spatial.size_multiple, spec.spatial.overlap, spec.spatial.max_size) == (8, 4, 512)
    manifest = cls.manifest
    plate = manifest.inputs[0]
    assert (plate.use, plate.range, plate.normalise, plate.tensor) == (
        (2, 1, 0),
        (-1.0, 1.0),
        True,
        "x",
    )
    assert manifest.outputs[1].use is None
    mode, exposure = manifest.knobs
    assert mode.spec.default == "soft" and (mode.feed, mode.target) == ("input", "mode")
    assert exposure.spec.default == 1.0 and (exposure.feed, exposure.target) == ("gain", "plate")
    assert (manifest.author, manifest.licence) == ("Lighting TD", "MIT")
    assert manifest.describe()["inputs"][0]["tensor"] == "x"


def test_listing_a_package_never_loads_its_network(tmp_path: Path) -> None:
    (tmp_path / "net.pt").write_bytes(b"not a network")
    (tmp_path / MANIFEST_FILE).write_text(BASE)
    [cls] = load_package_classes(tmp_path)  # fine: only the manifest is read
    with pytest.raises(ModelLoadError, match=r"cannot load network 'net\.pt' \(torchscript\)"):
        cls().setup(torch.device("cpu"))


def test_read_manifest_resolves_the_network_against_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "net.pt").write_bytes(b"")
    (tmp_path / MANIFEST_FILE).write_text(BASE.replace('"net.pt"', '"nets/net.pt"'))
    assert read_manifest(tmp_path / MANIFEST_FILE).network == tmp_path / "nets" / "net.pt"


def test_dump_toml_writes_what_tomllib_reads_back() -> None:
    document = {
        "id": "x",
        "text": 'quotes " and \\ backslash, a\nnewline, tab\t, DEL \x7f, é',
        "numbers": [1, -2.5, 1e-7, 3.0],
        "flag": False,
        "spatial": {"overlap": 2, "max_size": 512},
        "inputs": [{"name": "a", "use": [0, 1]}, {"name": "b", "range": [-1.0, 1.0]}],
    }
    assert tomllib.loads(dump_toml(document)) == document


# -- the examples ------------------------------------------------------------------------------


def test_the_examples_are_tiny() -> None:
    sizes = {p.name: p.stat().st_size for p in EXAMPLE_PACKAGES.glob("*/*")}
    assert set(sizes) == {MANIFEST_FILE, "soften.pt", "soften.onnx"}
    assert max(sizes.values()) < 32 * 1024


def test_the_build_script_rebuilds_the_examples(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "build_examples.py"), "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("soften", "soften_onnx"):
        built = (tmp_path / name / MANIFEST_FILE).read_text()
        assert built == (EXAMPLE_PACKAGES / name / MANIFEST_FILE).read_text()
    # the same weights: the rebuilt network gives the committed one's outputs
    frame = torch.rand((1, 3, 20, 24), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated
        committed = torch.jit.load(str(EXAMPLE_PACKAGES / "soften" / "soften.pt"))
        rebuilt = torch.jit.load(str(tmp_path / "soften" / "soften.pt"))
    strength = torch.tensor(0.7)
    assert torch.equal(committed(frame, strength), rebuilt(frame, strength))


def test_the_documented_full_manifest_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "packages.md").read_text()
    manifest = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "denoise.onnx").write_bytes(b"")
    (tmp_path / MANIFEST_FILE).write_text(manifest)
    [cls] = load_package_classes(tmp_path)
    spec = cls.spec()
    assert (spec.id, cls.version, cls.manifest.licence) == ("denoise", "1.4.0", "Apache-2.0")
    assert [i.name for i in spec.inputs][:3] == ["beauty", "beauty@-1", "beauty@+1"]
    assert [(k.feed, k.target) for k in cls.manifest.knobs] == [
        ("input", "strength"),
        ("gain", "beauty"),
    ]
