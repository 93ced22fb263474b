"""Reply lines are made safe in one place: one line, printable ASCII, RFC 5321's length."""

from __future__ import annotations

import pytest

from filterd.reply import REPLY_LINE_MAX, join_replies, safe_reply

CONTROLS = ["\r", "\n", "\r\n", "\x00", "\t", "\x07", "\x1b", "\x0b", "\x0c", "\x1c", "\x7f",
            "\x85", "\x9b", "\u2028", "\u2029", "\u202e", "\ufeff", "\udcff", "\U000e0041", "\u00e9"]


@pytest.mark.parametrize("char", CONTROLS)
def test_every_control_class_becomes_a_question_mark(char: str) -> None:
    line = safe_reply(f"554 5.7.0 Reject - BANNED: x{char}250 2.0.0 Ok.exe")
    assert line == f"554 5.7.0 Reject - BANNED: x{'?' * len(char)}250 2.0.0 Ok.exe"
    assert line.isascii() and line.isprintable()


def test_a_long_reply_is_cut_to_one_rfc5321_line() -> None:
    line = safe_reply("554 5.7.0 " + "x" * 2000)
    assert len(line) == REPLY_LINE_MAX and line.endswith("...")
    assert len((line + "\r\n").encode()) <= 512


def test_printable_replies_are_left_alone() -> None:
    line = "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 4756B13453"
    assert safe_reply(line) is line


def test_lmtp_replies_joined_after_each_is_made_safe() -> None:
    """Per-recipient LMTP replies: exactly one line each, whatever they held."""
    joined = join_replies(["554 5.7.0 a\r\n250 2.0.0 Ok", "250 2.0.0 b\n", "451 4.5.0 c\x00"])
    assert joined.split("\r\n") == ["554 5.7.0 a??250 2.0.0 Ok", "250 2.0.0 b?", "451 4.5.0 c?"]
