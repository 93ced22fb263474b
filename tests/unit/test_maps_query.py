"""``filterd map query``: postmap -q output and exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from filterd.maps.query import query_command


@pytest.fixture
def table(tmp_path: Path) -> str:
    f = tmp_path / "access"
    f.write_text("a 1\nb two words\n")
    return f"texthash:{f}"


def test_single_key_prints_value(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command(table, ["A"]) == 0
    assert capsys.readouterr().out == "1\n"


def test_single_key_not_found(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command(table, ["zz"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_several_keys_tabbed(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command(table, ["a", "zz", "B"]) == 0
    assert capsys.readouterr().out == "a\t1\nB\ttwo words\n"


def test_several_keys_none_found(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command(table, ["x", "y"]) == 1


def test_keys_from_stdin(table: str, capsys: pytest.CaptureFixture[str],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a\nzz\nb\n"))
    assert query_command(table, ["-"]) == 0
    assert capsys.readouterr().out == "a\t1\nb\ttwo words\n"


def test_bad_table_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r"
    bad.write_text("/abc\n")
    assert query_command(f"regexp:{bad}", ["x"]) == 2
    err = capsys.readouterr().err
    assert err == f"filterd: error: regexp:{bad} line 1: missing closing '/'\n"


@pytest.mark.parametrize("spec", ["nosuch:/x", "no-type", "texthash:/nonexistent/file"])
def test_unopenable_exit_2(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command(spec, ["x"]) == 2
    assert capsys.readouterr().err.startswith("filterd: error: ")


def test_temp_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert query_command("fail:x", ["k"]) == 2
    assert "fail:x" in capsys.readouterr().err
