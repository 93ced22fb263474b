"""Checks of eval-test arguments, shared by every module of native evals.

A rule such as ``eval:html_range('max_shouting', 2, 'inf')`` is checked when the rules
load, so a malformed argument list makes the rule unsupported (and listed by ``filterd
rules --check``) instead of failing on each message.
"""

from __future__ import annotations


def is_number(text: str) -> bool:
    """``text`` reads as a number as Perl would take it in SpamAssassin's argument lists."""
    try:
        float(text)
    except ValueError:
        return False
    return True
