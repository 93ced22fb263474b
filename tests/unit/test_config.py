"""The main.cf dialect: parsing, expansion, defaults, validation, and `filterd config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from filterd.cli import main
from filterd.config import Config, ConfigError, ConfigErrors, expand_macros
from filterd.config.parser import parse_text
from filterd.config.types import as_endpoint, as_size, as_time, split_list

REPO = Path(__file__).resolve().parents[2]


def test_continuation_comments_and_last_setting_wins():
    s = parse_text("# comment\na = 1\n  2,\n\t3\n  # indented comment line\nb = x # not a comment\na = 4 5\n")
    assert s["a"].value == "4 5" and s["a"].line == 7
    assert s["b"].value == "x # not a comment"


@pytest.mark.parametrize(
    "text, message",
    [
        ("  leading = 1\n", "continuation line"),
        ("novalue\n", "missing '='"),
        (" = 3\n", "continuation line"),
        ("= 3\n", "missing parameter name"),
        ("bad name = 3\n", "bad parameter name"),
    ],
)
def test_syntax_errors_name_file_and_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_text(text, "f.cf")
    assert message in str(err.value)
    assert "f.cf, line 1" in str(err.value)


def test_expansion_forms_and_defaults():
    cfg = Config.from_text(
        "mydomain = example.com\n"
        "myhostname = mx.$mydomain\n"
        "relay_domains = ${mydomain}, $(myhostname)\n"
        "policy_restrictions = ${mydomain?check_greylist} ${unset_thing:permit}\n"
        "unset_thing =\n"
    )
    assert cfg.expand("myhostname") == "mx.example.com"
    assert cfg.get("relay_domains") == ["example.com", "mx.example.com"]
    assert cfg.get("policy_restrictions") == ["check_greylist", "permit"]
    assert cfg.get("greylist_delay") == 300.0  # declared default
    assert cfg.expand_text("$$literal") == "$literal"


def test_expansion_loop_is_an_error_with_location():
    with pytest.raises(ConfigError) as err:
        Config.from_text("a = $b\nb = ${a}\n", "loop.cf")
    assert "expansion loop" in str(err.value) and "loop.cf, line" in str(err.value)


def test_bad_value_names_file_line_and_expectation():
    with pytest.raises(ConfigError) as err:
        Config.from_text("x = 1\ngreylist_delay = soon\n", "bad.cf")
    text = str(err.value)
    assert "bad.cf, line 2" in text and "greylist_delay" in text and "expected a time value" in text


def test_unknown_parameters_are_warned_with_location_but_classes_and_refs_are_not():
    cfg = Config.from_text(
        "smtpd_restriction_classes = from_partners\n"
        "from_partners = permit\n"
        "helper = 10.0.0.0/8\n"
        "mynetworks = $helper\n"
        "mispelled_param = 1\n",
        "w.cf",
    )
    assert cfg.warnings == ["w.cf, line 5: unknown parameter 'mispelled_param' (ignored)"]


def test_an_unknown_name_close_to_a_known_one_is_named():
    cfg = Config.from_text("greylist_dely = 60s\n", "w.cf")
    assert cfg.warnings == ["w.cf, line 1: unknown parameter 'greylist_dely' (ignored; did you mean greylist_delay?)"]


def test_converters():
    assert split_list("a, b  c,{ x = y, z },d") == ["a", "b", "c", "{ x = y, z }", "d"]
    assert as_time("s")("5m") == 300 and as_time("d")("2") == 172800 and as_time("s")("1w") == 604800
    assert as_size("10m") == 10 * 1024 * 1024 and as_size("1234") == 1234
    ep = as_endpoint("inet:127.0.0.1:10023")
    assert (ep.kind, ep.host, ep.port) == ("inet", "127.0.0.1", 10023)
    assert as_endpoint("unix:/run/x.sock").path == "/run/x.sock"
    assert as_endpoint("") is None
    with pytest.raises(ValueError, match="expected inet:host:port"):
        as_endpoint("inet:nowhere")
    with pytest.raises(ValueError, match="port out of range"):
        as_endpoint("inet:127.0.0.1:70000")


def test_expand_macros_for_reply_templates():
    t = "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain${rbl_reason?; $rbl_reason}"
    v = {"rbl_code": "554", "rbl_class": "Client host", "rbl_what": "192.0.2.1", "rbl_domain": "zen.test"}
    assert expand_macros(t, v) == "554 Service unavailable; Client host [192.0.2.1] blocked using zen.test"
    assert expand_macros(t, v | {"rbl_reason": "listed"}).endswith("zen.test; listed")


def test_search_order_env_then_embedded(tmp_path, monkeypatch):
    f = tmp_path / "f.cf"
    f.write_text("greylist_delay = 60s\n")
    monkeypatch.setenv("FILTERD_CONFIG", str(f))
    assert Config.load().get("greylist_delay") == 60
    monkeypatch.delenv("FILTERD_CONFIG")
    monkeypatch.setattr("filterd.config.SYSTEM_CONFIG", str(tmp_path / "absent.cf"))
    cfg = Config.load()
    assert cfg.source == "<embedded default>"
    assert str(cfg.get("policy_listen")) == "inet:127.0.0.1:10023"


def test_overrides_apply_last(tmp_path):
    f = tmp_path / "f.cf"
    f.write_text("greylist_delay = 60s\n")
    assert Config.load(str(f), ["greylist_delay = 10s"]).get("greylist_delay") == 10


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(str(tmp_path / "nope.cf"))


def test_config_command_like_postconf(tmp_path, capsys):
    f = tmp_path / "f.cf"
    f.write_text("mydomain = example.org\nmyhostname = mx.$mydomain\n")
    assert main(["config", "--config", str(f), "-n"]) == 0
    out = capsys.readouterr().out
    assert out == "mydomain = example.org\nmyhostname = mx.$mydomain\n"
    assert main(["config", "--config", str(f), "-x", "myhostname"]) == 0
    assert capsys.readouterr().out == "myhostname = mx.example.org\n"
    assert main(["config", "--config", str(f), "-d", "greylist_delay"]) == 0
    assert capsys.readouterr().out == "greylist_delay = 300s\n"
    assert main(["config", "--config", str(f), "no_such_param"]) == 1
    assert "no_such_param: unknown parameter" in capsys.readouterr().err


def test_config_command_reports_bad_file(tmp_path, capsys):
    f = tmp_path / "f.cf"
    f.write_text("worker_processes = many\n")
    assert main(["config", "--config", str(f)]) == 1
    err = capsys.readouterr().err
    assert err == (f"filterd: error: {f}, line 1: bad value for worker_processes: expected an integer, "
                   "got 'many'\nfilterd: fatal: 1 error in the configuration\n")


SEVERAL_ERRORS = (
    "# every kind of problem, each line once\n"   # 1
    "greylist_delay = soon\n"                    # 2 bad value
    "mispelled_param = 1\n"                      # 3 unknown: a warning
    "novalue\n"                                  # 4 syntax
    "worker_processes = many\n"                  # 5 bad value (with its continuation)
    "  more\n"                                   # 6
    "myhostname = $mydomain\n"                   # 7 loop, reported once
    "mydomain = $myhostname\n"                   # 8
    "bad name = 3\n"                             # 9 syntax
    "log_level = loud\n"                         # 10 bad value
)
SEVERAL_ERRORS_REPORT = [
    ("error", "several.cf, line 2: bad value for greylist_delay: expected a time value"),
    ("warning", "several.cf, line 3: unknown parameter 'mispelled_param' (ignored)"),
    ("error", "several.cf, line 4: missing '=' after parameter name 'novalue'"),
    ("error", "several.cf, line 5: bad value for worker_processes: expected an integer, got 'many more'"),
    ("error", "several.cf, line 7: parameter expansion loop: myhostname -> mydomain -> myhostname"),
    ("error", "several.cf, line 9: bad parameter name 'bad name'"),
    ("error", "several.cf, line 10: bad value for log_level: expected one of debug, info, warning, error"),
]


def test_parse_collects_every_syntax_error_when_asked():
    errors: list[ConfigError] = []
    s = parse_text("  lead = 1\na = 1\nnovalue\nb = 2\n= 3\n", "f.cf", errors)
    assert [str(e).split(":")[0] for e in errors] == ["f.cf, line 1", "f.cf, line 3", "f.cf, line 5"]
    assert sorted(s) == ["a", "b"]


def test_every_problem_is_reported_in_file_order(tmp_path):
    f = tmp_path / "several.cf"
    f.write_text(SEVERAL_ERRORS)
    with pytest.raises(ConfigErrors) as err:
        Config.load(str(f), ["greylist_max_age = never", "nonsense"])
    got = [(level, str(exc).replace(f"{tmp_path}/", "")) for level, exc in err.value.problems]
    expected = SEVERAL_ERRORS_REPORT + [
        ("error", "-o option 1: bad value for greylist_max_age: expected a time value"),
        ("error", "-o option 2: missing '=' after parameter name 'nonsense'"),
    ]
    assert len(got) == len(expected)
    for (level, text), (want_level, want) in zip(got, expected):
        assert level == want_level and text.startswith(want), (text, want)
    assert len(err.value.errors) == 8


def test_a_single_error_reads_as_before():
    with pytest.raises(ConfigError) as err:
        Config.from_text("greylist_delay = soon\n", "one.cf")
    assert str(err.value).startswith("one.cf, line 1: bad value for greylist_delay")
    assert (err.value.file, err.value.line) == ("one.cf", 1)


def _assert_report(stderr: str, directory) -> None:
    lines = [line.replace(f"{directory}/", "") for line in stderr.splitlines()]
    assert len(lines) == len(SEVERAL_ERRORS_REPORT) + 1, stderr
    for line, (level, text) in zip(lines, SEVERAL_ERRORS_REPORT):
        assert line.startswith(f"filterd: {level}: {text}"), (line, text)
    assert lines[-1] == "filterd: fatal: 6 errors in the configuration"


def test_config_command_reports_every_error(tmp_path, capsys):
    f = tmp_path / "several.cf"
    f.write_text(SEVERAL_ERRORS)
    assert main(["config", "--config", str(f), "-n"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    _assert_report(err, tmp_path)


def test_serve_reports_every_error_and_starts_nothing(tmp_path):
    f = tmp_path / "several.cf"
    f.write_text(SEVERAL_ERRORS + f"data_directory = {tmp_path}/data\n")
    proc = subprocess.run([sys.executable, "-m", "filterd", "serve", "--config", str(f)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    _assert_report(proc.stderr, tmp_path)
    assert not (tmp_path / "data").exists()
