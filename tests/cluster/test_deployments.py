"""The deployment file of ``frameserve serve --ray``: TOML and JSON, defaults, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from frameserve.cli import main as cli_main
from frameserve.cli import serve as cli_serve
from frameserve.engine.cluster.connect import import_ray
from frameserve.engine.cluster.deployments import Resources, load_deployments
from frameserve.errors import ConfigError


def test_defaults_without_a_file() -> None:
    plan = load_deployments(None)
    assert plan.for_model("any", "1") == Resources()
    options = Resources().deployment_options()
    assert options["num_replicas"] == 1 and options["ray_actor_options"]["num_gpus"] == 0


def test_toml_tables_apply_from_general_to_specific(tmp_path: Path) -> None:
    path = tmp_path / "deployments.toml"
    path.write_text(
        "[default]\nnum_cpus = 0.5\n\n"
        "[models.upscale]\nnum_gpus = 1\nmax_replicas = 4\nresources = { a100 = 1 }\n\n"
        '[models."upscale@2"]\nmin_replicas = 2\n'
    )
    plan = load_deployments(path)
    assert plan.for_model("denoise", "1") == Resources(num_cpus=0.5)
    one = plan.for_model("upscale", "1")
    assert (one.num_cpus, one.num_gpus, one.min_replicas, one.max_replicas) == (0.5, 1, 1, 4)
    options = one.deployment_options()
    assert options["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "resources": {"a100": 1.0},
    }
    assert options["autoscaling_config"]["max_replicas"] == 4
    assert plan.for_model("upscale", "2").min_replicas == 2


def test_json_is_read_too(tmp_path: Path) -> None:
    path = tmp_path / "deployments.json"
    path.write_text(json.dumps({"models": {"blur": {"max_ongoing_requests": 8}}}))
    assert load_deployments(path).for_model("blur", "1").max_ongoing_requests == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default]\ngpus = 1\n", "unknown key"),
        ("[default]\nmax_replicas = 0\n", "replicas"),
        ("[models.x]\nmin_replicas = 3\nmax_replicas = 2\n", "models.x"),
        ("[nodes]\n", "unknown table"),
        ("[default]\nnum_cpus = 'two'\n", "num_cpus must be a number"),
        ("[default\n", "cannot read"),
    ],
)
def test_bad_files_are_refused_with_what_is_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "deployments.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_deployments(path)


def test_serve_flags_fill_in_the_ray_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)
    path = tmp_path / "deployments.toml"
    path.write_text("[default]\nnum_gpus = 1\n")
    args = cli_main._parser().parse_args(
        ["serve", "--ray", "head:6379", "--ray-deployments", str(path)]
    )
    settings = cli_serve.server_settings(args)
    assert (settings.ray_address, settings.ray_deployments) == ("head:6379", path)
    plain = cli_serve.server_settings(cli_main._parser().parse_args(["serve"]))
    assert (plain.ray_address, plain.ray_deployments) == (None, None)


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    with pytest.raises(ConfigError, match=r"pip install 'frameserve\[ray\]'"):
        import_ray()
