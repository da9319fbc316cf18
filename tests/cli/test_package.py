"""Tests for ``frameserve package`` and ``frameserve check``.

The documented commands and a usage error run as real subprocesses; each starts a Python
process that imports torch (about 1.5 s), so the commands of a test are started together where
they do not depend on each other. The other tests run the command line's ``main`` in this
process (:func:`~tests.support.commands.frameserve_here`).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from frameserve.catalogue.packages import MANIFEST_FILE
from frameserve.cli.main import main
from tests.support.commands import frameserve as run_commands
from tests.support.commands import frameserve_here
from tests.support.package_networks import (
    EXAMPLE_PACKAGES,
    REPO,
    Grey,
    Scale,
    example_builder,
    save_onnx,
    save_script,
)

TIMEOUT = 180.0


def frameserve(*commands: list[str | Path]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``python -m frameserve`` once per argument list, all at once; return each result."""
    return run_commands(*commands, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def networks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Network files to package: the example network as TorchScript and ONNX, and a grey one."""
    folder = tmp_path_factory.mktemp("networks")
    builder = example_builder()
    net = builder.soften_network()
    return {
        "soften.pt": save_script(net, folder / "soften.pt"),
        "soften.onnx": save_onnx(net, folder / "soften.onnx", *builder.example_inputs()),
        "grey.pt": save_script(Grey(), folder / "grey.pt"),
        "scale.pt": save_script(Scale(rounds=1), folder / "scale.pt"),
    }


SOFTEN_FLAGS = [
    "--input",
    "image:3",
    "--output",
    "image:3",
    "--knob",
    "strength=float:0.5:-1:1",
    "--knob",
    "gain=float:1:0:8",
    "--feed",
    "gain=gain:image",
    "--knob-help",
    "gain=Exposure before the network.",
    "--fully-convolutional",
    "--overlap",
    "2",
]


def test_package_writes_checked_packages_and_check_accepts_them(
    tmp_path: Path, networks: dict[str, Path]
) -> None:
    scripted, exported, upgraded = frameserve_here(
        ["package", networks["soften.pt"], "--out", tmp_path / "a", "--id", "soft", *SOFTEN_FLAGS],
        [
            "package",
            networks["soften.onnx"],
            "--out",
            tmp_path / "b",
            "--version",
            "2.0.0",
            "--licence",
            "MIT",
            *SOFTEN_FLAGS,
        ],
        [
            "package",
            networks["scale.pt"],
            "--out",
            tmp_path / "c",
            "--knob",
            "amount=float:1:0:4",
            "--feed",
            "amount=attribute",
            "--json",
        ],
    )
    for result in (scripted, exported, upgraded):
        assert result.returncode == 0, result.stderr
    assert scripted.stdout.startswith(f"wrote {tmp_path / 'a'}\n")
    assert "soft 1.0.0  'soft': OK" in scripted.stdout
    assert "network inputs fed: image (1, 3, 64, 64), strength (scalar)" in scripted.stdout
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [MANIFEST_FILE, "soften.pt"]
    manifest = tomllib.loads((tmp_path / "b" / MANIFEST_FILE).read_text())
    assert (manifest["id"], manifest["version"], manifest["licence"]) == ("soften", "2.0.0", "MIT")
    assert manifest["network"] == "soften.onnx"
    assert manifest["knobs"][1] == {
        "name": "gain",
        "type": "float",
        "default": 1,
        "min": 0,
        "max": 8,
        "help": "Exposure before the network.",
        "feed": "gain",
        "target": "image",
    }
    assert manifest["spatial"] == {"fully_convolutional": True, "size_multiple": 1, "overlap": 2}
    report = json.loads(upgraded.stdout)
    assert report["ok"] and report["knobs"][0]["feed"] == "attribute"

    checked, as_json = frameserve_here(
        ["check", tmp_path / "a"], ["check", tmp_path / "b", "--json"]
    )
    assert checked.returncode == 0, checked.stderr
    assert "soft 1.0.0  'soft': OK" in checked.stdout
    assert "knob gain: float = 1.0 [0.0..8.0] -> gain 'image'" in checked.stdout
    data = json.loads(as_json.stdout)
    assert data["network_format"] == "onnx" and data["warnings"] == []
    assert data["fed"] == {"image": [1, 3, 64, 64], "strength": []}


def test_package_refuses_a_shape_mismatch_and_writes_nothing(
    tmp_path: Path, networks: dict[str, Path]
) -> None:
    [result] = frameserve_here(
        ["package", networks["grey.pt"], "--out", tmp_path / "grey", "--output", "image:3"]
    )
    assert result.returncode == 1
    message = result.stderr.strip()
    assert message.startswith("frameserve package: ")
    assert str(tmp_path / "grey" / MANIFEST_FILE) in message
    assert "expected shape (1, 3, 64, 64)" in message and "got (1, 1, 64, 64)" in message
    assert list(tmp_path.iterdir()) == []


def test_check_the_examples(tmp_path: Path) -> None:
    results = frameserve_here(
        *(["check", EXAMPLE_PACKAGES / name] for name in ("soften", "soften_onnx"))
    )
    for result in results:
        assert result.returncode == 0, result.stderr
        assert ": OK" in result.stdout and "warning" not in result.stdout


def test_check_fails_on_a_broken_manifest_and_a_missing_folder(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(EXAMPLE_PACKAGES / "soften", broken)
    text = (broken / MANIFEST_FILE).read_text().replace("channels = 3", "channels = 0", 1)
    (broken / MANIFEST_FILE).write_text(text)
    bad, missing = frameserve_here(["check", broken], ["check", tmp_path / "nowhere"])
    assert bad.returncode == 1
    assert str(broken / MANIFEST_FILE) in bad.stderr
    assert "inputs[0].channels = 0 is not allowed; expected a whole number from 1 to 64" in (
        bad.stderr
    )
    assert missing.returncode == 1
    assert "no such file; a model package is a folder" in missing.stderr


def test_check_strict_fails_on_a_knob_that_changes_nothing(
    tmp_path: Path, networks: dict[str, Path]
) -> None:
    folder = tmp_path / "unused"
    folder.mkdir()
    shutil.copy(networks["scale.pt"], folder / "scale.pt")
    (folder / MANIFEST_FILE).write_text(
        'id = "unused"\nversion = "1"\nnetwork = "scale.pt"\n'
        '[[inputs]]\nname = "image"\nchannels = 3\n[[outputs]]\nname = "image"\nchannels = 3\n'
        '[[knobs]]\nname = "rounds"\ntype = "int"\ndefault = 1\nfeed = "attribute"\n'
    )
    lenient, strict = frameserve_here(["check", folder], ["check", folder, "--strict"])
    assert lenient.returncode == 0, lenient.stderr
    assert "warning: knob 'rounds' (feed = 'attribute', target 'rounds') did not change" in (
        lenient.stdout
    )
    assert strict.returncode == 1


def test_a_flag_error_exits_2_naming_the_flag(tmp_path: Path, networks: dict[str, Path]) -> None:
    [result] = frameserve(
        ["package", networks["soften.pt"], "--out", tmp_path / "x", "--knob", "strength=float"]
    )
    assert result.returncode == 2
    assert result.stderr == (
        "frameserve package: --knob 'strength=float': write NAME=float:DEFAULT[:MIN:MAX]\n"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--input", "image"], "--input 'image': write NAME:CHANNELS or NAME:CHANNELS:USE"),
        (["--output", "image:3:r"], "--output 'image:3:r': USE is a comma list"),
        (["--knob", "s=number:1"], "--knob 's=number:1': unknown type 'number'"),
        (["--knob", "s=int:1.5"], "--knob 's=int:1.5': ['1.5'] are not all int values"),
        (["--knob", "s=choice:a"], "--knob 's=choice:a': write NAME=choice:DEFAULT:A,B,C"),
        (["--feed", "gain=gain"], "--feed gain=gain: there is no --knob named 'gain'"),
        (["--tensor", "plate=x"], "--tensor plate=x: there is no --input named 'plate'"),
        (["--temporal-window", "1"], "--temporal-window '1': write BEFORE:AFTER"),
    ],
)
def test_package_flag_errors_name_the_flag(
    tmp_path: Path,
    networks: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    status = main(["package", str(networks["soften.pt"]), "--out", str(tmp_path / "x"), *flags])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_package_refuses_state_dicts_and_existing_folders(
    tmp_path: Path, networks: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "net.pth").write_bytes(b"")
    (tmp_path / "taken").mkdir()
    assert main(["package", str(tmp_path / "net.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "net.pth: unsupported network file; expected one of .pt (torchscript)" in (
        capsys.readouterr().err
    )
    assert main(["package", str(networks["soften.pt"]), "--out", str(tmp_path / "taken")]) == 2
    assert "already exists; use --force to replace it" in capsys.readouterr().err


def documented_commands(path: Path) -> list[list[str]]:
    """The ``frameserve package`` and ``check`` commands of ``path``'s first sh block doing so."""
    text = path.read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "package " in b)
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line)[1:] for line in lines if line.strip()]


def test_the_documented_commands_work(tmp_path: Path, networks: dict[str, Path]) -> None:
    packages, checks = [], []
    for index, document in enumerate(["README.md", "docs/packages.md"]):
        package, check = documented_commands(REPO / document)
        assert package[:2] == ["package", "soften.onnx"] and check[0] == "check", document
        package[1] = str(networks["soften.onnx"])
        out = package.index("--out") + 1
        package[out] = str(tmp_path / str(index) / package[out])
        check[1] = str(tmp_path / str(index) / check[1])
        packages.append(package)
        checks.append(check)
    for result in frameserve(*packages):
        assert result.returncode == 0, result.stderr
    for result in frameserve(*checks):
        assert result.returncode == 0, result.stderr
        assert "1.0.0" in result.stdout and "OK" in result.stdout
