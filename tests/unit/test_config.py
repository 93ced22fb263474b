"""The main.cf dialect: parsing, expansion, defaults, validation, and `filterd config`."""

from __future__ import annotations

import pytest

from filterd.cli import main
from filterd.config import Config, ConfigError, expand_macros
from filterd.config.parser import parse_text
from filterd.config.types import as_endpoint, as_size, as_time, split_list


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
    assert err.startswith("filterd: fatal: ") and "line 1" in err and "worker_processes" in err
