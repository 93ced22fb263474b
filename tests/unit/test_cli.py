"""The ``filterd`` command line: --version, and --config / -o / $FILTERD_CONFIG taking
effect at every level where --help offers them, for every subcommand."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import filterd
from filterd.cli import build_parser, main
from filterd.config import Config
from filterd.content.quarantine import Quarantine

REPO = Path(__file__).resolve().parents[2]

#: The arguments each command needs after its name to get as far as reading the
#: configuration (nothing else is done: every configuration used with them is broken).
LEAF_ARGS: dict[tuple[str, ...], list[str]] = {
    ("serve",): [],
    ("config",): ["-n"],
    ("map", "query"): ["static:found", "key"],
    ("check",): ["-"],
    ("quarantine", "list"): [],
    ("quarantine", "show"): ["virus-0"],
    ("quarantine", "release"): ["virus-0"],
    ("quarantine", "delete"): ["virus-0"],
    ("rules",): ["--check"],
    ("learn",): ["--spam", "/nonexistent"],
    ("queue", "list"): [],
    ("queue", "flush"): [],
    ("queue", "flush-site"): ["example.com"],
    ("queue", "hold"): ["ALL"],
    ("queue", "release"): ["ALL"],
    ("queue", "delete"): ["ALL"],
    ("queue", "requeue"): ["ALL"],
    ("queue", "cat"): ["0A1B2C3D4E"],
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _offers_config(parser: argparse.ArgumentParser) -> bool:
    options = {o for action in parser._actions for o in action.option_strings}
    return {"--config", "-o"} <= options


def _command_lines(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                   ) -> list[tuple[tuple[str, ...], list[int]]]:
    """Every command (path of subcommand names) with the levels whose parser offers
    --config and -o (0 = before the first subcommand name)."""
    subs = _subcommands(parser)
    here = [len(path)] if _offers_config(parser) else []
    if not subs:
        return [(path, here)]
    out = []
    for name, child in subs.items():
        for leaf, levels in _command_lines(child, path + (name,)):
            out.append((leaf, here + levels))
    return out


COMMAND_LINES = _command_lines(build_parser())
POSITIONS = [(leaf, level) for leaf, levels in COMMAND_LINES for level in levels]


def _failed(leaf: tuple[str, ...]) -> int:
    """The exit status of a command that cannot use its configuration: 1, but 2 for
    ``map query``, whose 1 means "not found" (postmap -q), and for ``check``, whose 1
    means "something found"."""
    return 2 if leaf[0] in ("map", "check") else 1


def _argv(leaf: tuple[str, ...], level: int, options: list[str]) -> list[str]:
    """The command ``leaf`` with ``options`` right after its ``level``-th word."""
    words = list(leaf)
    return words[:level] + options + words[level:] + LEAF_ARGS[leaf]


def test_every_command_is_tested_and_offers_config_at_every_level() -> None:
    assert {leaf for leaf, _ in COMMAND_LINES} == set(LEAF_ARGS)
    for leaf, levels in COMMAND_LINES:
        assert levels == list(range(len(leaf) + 1)), leaf


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    f = tmp_path / "broken.cf"
    f.write_text("# a configuration no command may use\nworker_processes = many\n")
    return f


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default, whatever this machine has in /etc/filterd or the environment."""
    monkeypatch.delenv("FILTERD_CONFIG", raising=False)
    monkeypatch.setattr("filterd.config.SYSTEM_CONFIG", str(tmp_path / "absent.cf"))


@pytest.mark.parametrize("leaf, level", POSITIONS, ids=[f"{' '.join(leaf)}@{level}" for leaf, level in POSITIONS])
def test_config_is_read_at_every_level(leaf: tuple[str, ...], level: int, broken: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(leaf, level, ["--config", str(broken)])) == _failed(leaf)
    err = capsys.readouterr().err
    assert f"{broken}, line 2: bad value for worker_processes" in err


@pytest.mark.parametrize("leaf, level", POSITIONS, ids=[f"{' '.join(leaf)}@{level}" for leaf, level in POSITIONS])
def test_override_takes_effect_at_every_level(leaf: tuple[str, ...], level: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(leaf, level, ["-o", "worker_processes=many"])) == _failed(leaf)
    assert "-o option 1: bad value for worker_processes" in capsys.readouterr().err


@pytest.mark.parametrize("leaf", list(LEAF_ARGS), ids=[" ".join(leaf) for leaf in LEAF_ARGS])
def test_filterd_config_environment_is_read_by_every_command(
        leaf: tuple[str, ...], broken: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FILTERD_CONFIG", str(broken))
    assert main([*leaf, *LEAF_ARGS[leaf]]) == _failed(leaf)
    assert f"{broken}, line 2: bad value" in capsys.readouterr().err


def _quarantine_config(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A configuration with its own quarantine holding one message; its id."""
    data = tmp_path / name
    f = tmp_path / f"{name}.cf"
    f.write_text(f"data_directory = {data}\nquarantine_directory = {data}/quarantine\n")

    async def store() -> str:
        q = Quarantine(Config.load(str(f)))
        await q.open()
        try:
            return await q.store(b"Subject: x\r\n\r\nbody\r\n", mail_id=f"{name}Mail1234"[:12],
                                 kind="spam", sender=f"{name}@example.org",
                                 recipients=["rcpt@example.com"], reason="test")
        finally:
            await q.close()

    return f, asyncio.run(store())


@pytest.mark.parametrize("where", ["before list", "after list", "before the subcommand"])
def test_quarantine_list_reads_the_named_configuration(
        where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: `filterd quarantine --config F list` listed the default
    configuration's quarantine (nothing) instead of F's."""
    f, qid = _quarantine_config(tmp_path, "mine")
    argv = {"before list": ["quarantine", "--config", str(f), "list"],
            "after list": ["quarantine", "list", "--config", str(f)],
            "before the subcommand": ["--config", str(f), "quarantine", "list"]}[where]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert qid in out and "<mine@example.org>" in out


def test_innermost_config_wins(tmp_path: Path, broken: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f, qid = _quarantine_config(tmp_path, "inner")
    assert main(["--config", str(broken), "quarantine", "--config", str(broken), "list",
                 "--config", str(f)]) == 0
    assert qid in capsys.readouterr().out
    assert main(["quarantine", "--config", str(f), "list", "--config", str(broken)]) == 1
    assert str(broken) in capsys.readouterr().err


def test_overrides_from_every_level_apply_and_the_innermost_wins(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", "mydomain=outer.example", "config", "-o", "myhostname=mx.$mydomain",
                 "-x", "myhostname", "mydomain"]) == 0
    assert capsys.readouterr().out == "myhostname = mx.outer.example\nmydomain = outer.example\n"
    assert main(["-o", "worker_processes=many", "map", "-o", "worker_processes=3",
                 "query", "static:found", "key"]) == 0
    assert capsys.readouterr().out == "found\n"
    assert main(["map", "-o", "worker_processes=3", "query", "-o", "worker_processes=many",
                 "static:found", "key"]) == 2
    assert "-o option 2: bad value for worker_processes" in capsys.readouterr().err


def test_map_query_with_a_good_configuration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "f.cf"
    f.write_text("mydomain = example.org\n")
    assert main(["map", "--config", str(f), "query", "static:found", "key"]) == 0
    assert capsys.readouterr().out == "found\n"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"filterd {filterd.__version__}\n"
    proc = subprocess.run([sys.executable, "-m", "filterd", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, f"filterd {filterd.__version__}\n")


def test_version_is_the_packaged_version() -> None:
    """pyproject.toml takes the version from filterd.__version__: one place to bump."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'attr = "filterd.__version__"' in text
