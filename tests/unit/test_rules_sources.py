"""Where rules come from: SpamAssassin's installed rules by default (the newest sa-update
set, else the package's), filterd's own rules, and what `filterd rules --check` says."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.rules import RuleSet, rule_paths
from filterd.content.rules.check import rules_check_command
from filterd.content.rules.paths import (
    SA_DEFAULT_RULES_DIR, shipped_rules_directory, spamassassin_rules_directory,
)

REPO = Path(__file__).resolve().parents[2]


def rules_dir(path: Path, text: str = "body R /x/\n") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "50_r.cf").write_text(text)
    return path


def test_package_rules_when_sa_update_never_ran(tmp_path: Path) -> None:
    default = rules_dir(tmp_path / "usr-share")
    assert spamassassin_rules_directory(str(default), str(tmp_path / "absent")) == str(default)
    assert spamassassin_rules_directory(str(tmp_path / "none"), str(tmp_path / "absent")) is None


def test_the_newest_sa_update_set_wins(tmp_path: Path) -> None:
    default = rules_dir(tmp_path / "usr-share")
    updates = tmp_path / "var-lib"
    rules_dir(updates / "3.004006" / "updates_spamassassin_org")
    newest = rules_dir(updates / "4.000001" / "updates_spamassassin_org")
    (updates / "4.000002" / "updates_spamassassin_org").mkdir(parents=True)  # empty: not a rule set
    (updates / "sa-update-keys").mkdir()
    assert spamassassin_rules_directory(str(default), str(updates)) == str(newest)


def test_default_loads_spamassassin_rules_where_installed_and_empty_turns_them_off() -> None:
    installed = spamassassin_rules_directory()
    cfg = Config.from_text("")
    assert cfg.get("rules_extra_directories") == ([installed] if installed else [])
    assert rule_paths(Config.from_text("rules_extra_directories =\n")) == [shipped_rules_directory()]


def test_rules_check_says_what_came_from_where(tmp_path: Path) -> None:
    extra = rules_dir(tmp_path / "site")
    out = io.StringIO()
    assert rules_check_command([shipped_rules_directory(), str(extra)], engine="regex", out=out) == 0
    lines = out.getvalue().splitlines()
    own = len(list(Path(shipped_rules_directory()).glob("*.cf")))
    assert lines[0] == f"filterd's own rules from {shipped_rules_directory()}: {own} file(s)"
    assert lines[1] == f"rules from {extra}: 1 file(s)"
    if spamassassin_rules_directory() is None:
        assert lines[2].startswith("SpamAssassin's rules: not installed")
    else:
        assert lines[2].startswith("SpamAssassin's rules: installed in ")


@pytest.mark.skipif(spamassassin_rules_directory() != SA_DEFAULT_RULES_DIR,
                    reason="Debian's spamassassin package is not installed")
def test_rules_check_names_spamassassin_rules(tmp_path: Path) -> None:
    out = io.StringIO()
    rules_check_command([SA_DEFAULT_RULES_DIR], engine="regex", out=out)
    assert out.getvalue().startswith(f"SpamAssassin's rules from {SA_DEFAULT_RULES_DIR}: ")


def test_own_rules_load_cleanly_and_are_linked_from_the_top_level_folder() -> None:
    rs = RuleSet.load([shipped_rules_directory()], engine="regex")
    assert rs.stats.ok, (rs.stats.parse_errors, rs.stats.regex_errors, rs.stats.meta_errors)
    assert not rs.stats.unsupported_eval
    for cf in Path(shipped_rules_directory()).glob("*.cf"):
        link = REPO / "rules" / cf.name
        assert link.resolve() == cf.resolve(), f"rules/{cf.name} must link to {cf}"


HAM = (b"From: Alice <alice@example.org>\nTo: bob@example.com\nSubject: lunch\n"
       b"Date: Mon, 2 Sep 2002 10:00:00 +0000\nMessage-Id: <1@example.org>\n\nSee you at noon.\n")
TRICKS = [
    ("FD_HTML_COMMENT_IN_WORD", b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
     b"Content-Type: text/html\n\n<html><body>Vi<!-- x -->agra now</body></html>\n"),
    ("FD_HTML_BOGUS_TAG_IN_WORD", b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMIME-Version: 1.0\n"
     b"Content-Type: text/html\n\n<html><body>Vi<zq>agra now</body></html>\n"),
    ("FD_TO_NO_BRACKETS_NAME", b"From: a@example.org\nTo: Bob Smith bob@example.com\nSubject: hi\n\nx\n"),
    ("FD_URI_DECIMAL_HOST", b"From: a@example.org\nTo: b@example.com\nSubject: hi\n\n"
     b"Go to http://3627734734/offer now\n"),
    ("FD_MIME_NO_VERSION", b"From: a@example.org\nTo: b@example.com\nSubject: hi\n"
     b"Content-Type: multipart/alternative; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\nhi\n--b--\n"),
    ("FD_SUBJ_ENCODED_ASCII", b"From: a@example.org\nTo: b@example.com\nSubject: =?iso-8859-1?B?RnJlZSBvZmZlcg==?=\n\nx\n"),
    ("FD_MSGID_SPACES", b"From: a@example.org\nTo: b@example.com\nSubject: hi\nMessage-Id: <a b@example.org>\n\nx\n"),
    ("FD_URL_ENCODED_HOST", b"From: a@example.org\nTo: b@example.com\nSubject: hi\n\nhttp://%77%77%77.example.com/\n"),
]


@pytest.mark.parametrize("name,raw", TRICKS, ids=[t[0] for t in TRICKS])
def test_own_rules_catch_their_trick_and_not_plain_mail(name: str, raw: bytes) -> None:
    from filterd.content.message import Message

    rs = RuleSet.load([shipped_rules_directory()], engine="regex")
    assert name in {s.name for s in rs.evaluate(Message(raw))}
    assert name not in {s.name for s in rs.evaluate(Message(HAM))}


def test_sub_rules_no_scored_rule_reads_are_not_evaluated(tmp_path: Path) -> None:
    rules = rules_dir(tmp_path / "r", "body __USED /alpha/\nbody __UNUSED /beta/\nmeta __CHAIN __USED\n"
                      "meta SCORED __CHAIN\nscore SCORED 1.0\nbody OFF /gamma/\nscore OFF 0\n"
                      "body __ONLY_FOR_OFF /delta/\nmeta OFF2 __ONLY_FOR_OFF\nscore OFF2 0\n")
    from filterd.content.message import Message

    rs = RuleSet.load([str(rules)], engine="regex")
    assert rs.stats.unreferenced == 2  # __UNUSED, and __ONLY_FOR_OFF (read only by a rule scored 0)
    assert rs.stats.loaded["body"] == 1 and rs.stats.loaded["meta"] == 2
    fired = {s.name for s in rs.evaluate(Message(b"Subject: x\n\nalpha beta gamma delta\n"))}
    assert fired == {"SCORED"}
