"""`neurallabel --help`: every argument of every command says what it is (defaults stated), every command shows
an example, `--version` prints the package's version."""

from __future__ import annotations

import argparse
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from neurallabel.core.app import cli
from neurallabel.core.app.cli import build_parser, main, package_version

PYPROJECT_VERSION = tomllib.loads((Path(cli.__file__).resolve().parents[2] / "pyproject.toml").read_text()
                                  )["project"]["version"]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_of_every_command_has_help_and_every_command_an_example() -> None:
    parser = build_parser()
    commands = subparsers(parser)
    assert {"demo", "sfm", "train", "render", "bake", "inspect"} <= set(commands)
    for name, sub in {"neurallabel": parser, **commands}.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name}: {action.dest} has no help"
        assert "example:" in (sub.epilog or ""), f"{name} shows no example"
        if name != "neurallabel":
            assert f"neurallabel {name} " in sub.epilog


def test_help_states_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bake", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: bop,coco,raw)" in text and "(default: auto)" in text and "(default: 5.0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "example: neurallabel bake spec.json --out" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 5," in text  # the training time without --minutes or --steps


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"neurallabel {package_version()}"


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert package_version() == PYPROJECT_VERSION
