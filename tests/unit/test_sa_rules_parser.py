"""Parsing SpamAssassin rule files: directives, conditionals, bad lines, includes."""

from __future__ import annotations

from pathlib import Path

from filterd.content.rules.model import RuleKind
from filterd.content.rules.parser import RuleFileParser, parse_rule_files


def parse(text: str, native: tuple[str, ...] = ()):
    return RuleFileParser(native).parse_text(text, "t.cf")


def test_every_rule_directive() -> None:
    cfg = parse(
        "header   H1  Subject =~ /foo/i\n"
        "header   H2  From:addr !~ m{@example\\.com$}\n"
        "header   H3  exists:X-Mailer\n"
        "header   H4  X-Foo =~ /^$/ [if-unset: UNSET]\n"
        "header   H5  eval:check_illegal_chars('From', '0.2', \"2\")\n"
        "body     B1  /bar/\n"
        "rawbody  R1  m!<b>!\n"
        "uri      U1  /\\.example\\b/\n"
        "full     F1  /^Received:/m\n"
        "meta     M1  (H1 || B1) && !U1\n"
        "score    H1  2.5\n"
        "score    B1  1 2 3 4\n"
        "score    U1  (0.5)\n"
        "describe H1  Subject says foo\n"
        "tflags   B1  multiple maxhits=3 nice\n"
        "priority M1  -100\n"
        "lang de describe H1 Betreff sagt foo\n"
    )
    assert cfg.errors == []
    r = cfg.rules
    assert (r["H1"].kind, r["H1"].header, r["H1"].pattern, r["H1"].mods) == (RuleKind.HEADER, "Subject", "foo", "i")
    assert r["H2"].negate and r["H2"].header == "From:addr" and r["H2"].pattern == "@example\\.com$"
    assert r["H3"].exists and r["H3"].header == "X-Mailer"
    assert r["H4"].if_unset == "UNSET"
    assert r["H5"].eval_func == "check_illegal_chars" and r["H5"].eval_args == ("From", "0.2", "2")
    assert r["R1"].pattern == "<b>" and r["U1"].kind is RuleKind.URI and r["F1"].mods == "m"
    assert r["M1"].meta == "(H1 || B1) && !U1"
    assert cfg.scores == {"H1": [2.5], "B1": [1, 2, 3, 4], "U1": [0.5]}
    assert cfg.describes["H1"] == "Subject says foo"  # lang lines do not override
    assert cfg.tflags["B1"] == {"multiple", "maxhits=3", "nice"}
    assert cfg.priorities["M1"] == -100


def test_comments_need_escaping_like_spamassassin() -> None:
    cfg = parse("body B1 /a\\#b/  # trailing comment\n# full-line comment\n")
    assert cfg.rules["B1"].pattern == "a\\#b"


def test_bad_lines_are_reported_with_file_and_line_and_skipped() -> None:
    cfg = parse(
        "body GOOD1 /ok/\n"
        "body BAD1 /unterminated\n"
        "header BAD2 Subject ~~ /x/\n"
        "score BAD3 1 2\n"
        "score BAD4 lots\n"
        "meta BAD5\n"
        "body 9BAD /x/\n"
        "body BAD6 /x/q\n"
        "header BAD7 Subject =~ /x/ trailing\n"
        "header BAD8 eval:broken(\n"
        "endif\n"
        "else\n"
        "body GOOD2 /ok/\n"
    )
    assert set(cfg.rules) == {"GOOD1", "GOOD2"}
    wheres = [p.where for p in cfg.errors]
    assert wheres == [f"t.cf:{n}" for n in range(2, 13)]
    assert cfg.errors[0].rule == "BAD1" and "unterminated" in cfg.errors[0].message


def test_unclosed_if_is_reported() -> None:
    cfg = parse("ifplugin Mail::SpamAssassin::Plugin::ReplaceTags\nbody A /a/\n")
    assert "A" in cfg.rules
    assert cfg.errors[0].where == "t.cf:EOF"


def test_ifplugin_provided_and_not_provided() -> None:
    cfg = parse(
        "ifplugin Mail::SpamAssassin::Plugin::DNSEval\n body NET /x/\n"
        " ifplugin Mail::SpamAssassin::Plugin::ReplaceTags\n  body NESTED /x/\n endif\n"
        "else\n body NONET /x/\nendif\n"
        "ifplugin Mail::SpamAssassin::Plugin::HeaderEval\n body LOCAL /x/\nendif\n"
    )
    assert set(cfg.rules) == {"NONET", "LOCAL"}
    assert cfg.skipped_blocks == 1


def test_if_expressions() -> None:
    cfg = parse(
        "if (version >= 3.004002)\nbody V1 /x/\nendif\n"
        "if (version < 4.000000)\nbody V2 /x/\nendif\n"
        "if !((version >= 3.004000))\nbody V3 /x/\nendif\n"
        "if can(Mail::SpamAssassin::Conf::feature_bug6558_free)\nbody C1 /x/\nendif\n"
        "if can(Mail::SpamAssassin::Conf::feature_unknown)\nbody C2 /x/\nelse\nbody C3 /x/\nendif\n"
        "if !plugin(Mail::SpamAssassin::Plugin::ReplaceTags)\nbody P1 /x/\nendif\n"
        "if plugin(Mail::SpamAssassin::Plugin::MIMEHeader) || version >= 4\nbody P2 /x/\nendif\n"
        "if can(Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length)\nbody H1 /x/\nendif\n"
        "if (bogus >= 1)\nbody E1 /x/\nendif\n"
    )
    assert set(cfg.rules) == {"V1", "C1", "C3", "P2"}
    assert len(cfg.errors) == 1 and "bogus" in cfg.errors[0].message
    native = parse("if can(Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length)\nbody H1 /x/\nendif\n",
                   native=("check_body_length",))
    assert "H1" in native.rules


def test_ignored_and_plugin_directives_are_counted_not_errors() -> None:
    cfg = parse("require_version 4.000001\nreport hello\nmimeheader M1 Content-Type =~ /x/\n")
    assert cfg.errors == []
    assert cfg.ignored_directives == {"require_version": 1, "report": 1}
    assert cfg.unsupported_types == {"mimeheader": 1}


def test_later_definition_replaces_earlier() -> None:
    cfg = parse("body A /one/\nbody A /two/\n")
    assert cfg.rules["A"].pattern == "two"


def test_replace_tags_directives() -> None:
    cfg = parse("replace_tag A [a4]\nreplace_inter W1 \\W?\nreplace_rules R1 R2\nreplace_start <\n")
    assert cfg.replace_tags == {"A": "[a4]"} and cfg.replace_inter == {"W1": "\\W?"}
    assert cfg.replace_rules == {"R1", "R2"}


def test_directory_loading_in_name_order_and_include(tmp_path: Path) -> None:
    (tmp_path / "20_b.cf").write_text("body SAME /second/\ninclude extra/inc.cf\n")
    (tmp_path / "10_a.cf").write_text("body SAME /first/\nbody ONLY_A /a/\n")
    (tmp_path / "readme.txt").write_text("body NOT_LOADED /x/\n")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "inc.cf").write_text("body INCLUDED /x/\ninclude inc.cf\n")
    cfg = parse_rule_files([str(tmp_path)])
    assert cfg.rules["SAME"].pattern == "second"
    assert set(cfg.rules) == {"SAME", "ONLY_A", "INCLUDED"}
    assert [p.message for p in cfg.errors] == ["include loop"]


def test_missing_path_and_8bit_file(tmp_path: Path) -> None:
    f = tmp_path / "x.cf"
    f.write_bytes(b"body EIGHT /caf\xe9/\n")
    cfg = parse_rule_files([str(f), str(tmp_path / "nope")])
    assert cfg.rules["EIGHT"].pattern == "caf\xe9"
    assert cfg.errors[0].message == "no such file or directory"
