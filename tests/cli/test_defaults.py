"""Flag defaults come from the settings objects the flags fill in, so the two cannot drift."""

from __future__ import annotations

import inspect

import pytest

from frameserve.cli import main as cli_main
from frameserve.cli import run as cli_run
from frameserve.cli import serve as cli_serve
from frameserve.cli.flags import setting_default
from frameserve.errors import ConfigError
from frameserve.serve.settings import ServerSettings
from frameserve.shots.backends import DEFAULT_SERVER_TIMEOUT, ServerBackend
from frameserve.shots.run import RunOptions
from frameserve.training.settings import TrainingSettings


def test_serve_without_flags_is_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAMESERVE_MODELS", raising=False)
    args = cli_main._parser().parse_args(["serve"])
    assert cli_serve.server_settings(args) == ServerSettings()


def test_serve_help_shows_the_settings_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli_main._parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = ServerSettings()
    assert f"MLClient TCP port (default {defaults.port};" in text
    assert f"(default {defaults.cache_bytes >> 20}; 0: no cache)" in text
    assert f"interactive requests run at once (default {defaults.workers})" in text


def test_run_and_train_defaults_are_the_settings_defaults() -> None:
    parser = cli_main._parser()
    local = parser.parse_args(["run", "identity", "--output", "o.####.exr"])
    assert local.stop_after == setting_default(RunOptions, "stop_after")
    assert cli_run._jobs(local) == setting_default(RunOptions, "jobs")
    served = parser.parse_args(["run", "identity", "--output", "o.#.exr", "--server", "http://h"])
    assert cli_run._jobs(served) == cli_run.DEFAULT_SERVER_JOBS
    backend_timeout = inspect.signature(ServerBackend).parameters["timeout"].default
    assert local.timeout == backend_timeout == DEFAULT_SERVER_TIMEOUT
    train = parser.parse_args(["train", "--name", "x"])
    assert train.steps == TrainingSettings().steps


def test_setting_default_names_what_is_missing() -> None:
    assert setting_default(ServerSettings, "model_folders") == ()  # a default factory
    with pytest.raises(LookupError, match="ServerSettings has no field 'colour'"):
        setting_default(ServerSettings, "colour")
    with pytest.raises(LookupError, match=r"RunOptions\.model has no default"):
        setting_default(RunOptions, "model")


def test_mlclient_menu_flags_reach_the_settings() -> None:
    args = cli_main._parser().parse_args(
        [
            "serve",
            "--mlclient-models",
            "segment,person_*",
            "blur",
            "--mlclient-door",
            "55556=denoise,deblur",
            "--mlclient-door",
            "55557=studio_*",
            "--mlclient-info-bytes",
            "8948",
        ]
    )
    settings = cli_serve.server_settings(args)
    assert settings.mlclient_models == ("segment", "person_*", "blur")
    assert settings.mlclient_doors == ((55556, ("denoise", "deblur")), (55557, ("studio_*",)))
    assert settings.mlclient_info_bytes == 8948
    assert [d.models for d in settings.extra_mlclient_doors()] == [
        ("denoise", "deblur"),
        ("studio_*",),
    ]


@pytest.mark.parametrize("door", ["55556", "x=blur", "55556=", "=blur"])
def test_a_malformed_mlclient_door_names_the_expected_form(door: str) -> None:
    args = cli_main._parser().parse_args(["serve", "--mlclient-door", door])
    with pytest.raises(ConfigError, match=r"expected PORT=PATTERN,\.\.\. such as 55556="):
        cli_serve.server_settings(args)
