"""The `payportal` command lists its commands, stops on a malformed setting with one line and
exit 2, and reports its version; driven in-process through Typer's CliRunner."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from payportal.cli import app

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # An empty working directory and no PAYPORTAL_* variables, so no developer's .env,
    # var/ or shell settings leak into the tests.
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PAYPORTAL_"):
            monkeypatch.delenv(name)
    return CliRunner()


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])

    assert result.exit_code == 0
    for command in ("serve", "migrate", "keys", "demo", "version", "mail-catcher"):
        assert command in result.stdout


def test_keys_help_lists_create(runner: CliRunner) -> None:
    result = runner.invoke(app, ["keys", "--help"])

    assert result.exit_code == 0
    assert "create" in result.stdout


@pytest.mark.parametrize(
    "command", [["serve"], ["migrate"], ["demo", "seed"], ["mail"], ["mail-catcher"]]
)
def test_malformed_setting_prints_one_line_and_exits_2(
    runner: CliRunner, command: list[str]
) -> None:
    result = runner.invoke(app, command, env={"PAYPORTAL_PORT": "abc"})

    assert result.exit_code == 2
    assert result.stderr == "PAYPORTAL_PORT: must be an integer 1-65535, got 'abc'\n"
    assert result.stdout == ""


def test_malformed_setting_in_dotenv_prints_one_line_and_exits_2(
    runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PAYPORTAL_SHARDS=lots\n")

    result = runner.invoke(app, ["migrate"])

    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("PAYPORTAL_SHARDS: ")


def test_version_prints_the_package_version(runner: CliRunner) -> None:
    pyproject = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())

    result = runner.invoke(app, ["version"])

    assert result.exit_code == 0
    assert result.stdout == f"payportal {pyproject['project']['version']}\n"
