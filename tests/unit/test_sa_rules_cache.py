"""The on-disk cache of compiled Hyperscan databases."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.matcher import hyperscan_available

pytestmark = pytest.mark.skipif(not hyperscan_available(), reason="hyperscan is not installed")

RULES = """
body     T_FREE   /free money/i
header   T_SUBJ   Subject =~ /viagra|c1al1s/i
uri      T_URI    /example\\.test/
score T_FREE 2.0
"""
SPAM = b"Subject: cheap c1al1s\r\n\r\nget FREE MONEY at http://www.example.test/x\r\n"


def names(rs: RuleSet) -> list[str]:
    return [s.name for s in rs.evaluate(Message(SPAM))]


def test_cached_databases_give_the_same_results(tmp_path: Path):
    (tmp_path / "r.cf").write_text(RULES)
    cache = tmp_path / "cache"
    first = RuleSet.load([str(tmp_path / "r.cf")], engine="hyperscan", cache_dir=str(cache))
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert files, "nothing was cached"
    second = RuleSet.load([str(tmp_path / "r.cf")], engine="hyperscan", cache_dir=str(cache))
    assert names(first) == names(second) == ["T_FREE", "T_SUBJ", "T_URI"]


def test_corrupt_cache_entries_are_ignored_and_rewritten(tmp_path: Path):
    (tmp_path / "r.cf").write_text(RULES)
    cache = tmp_path / "cache"
    RuleSet.load([str(tmp_path / "r.cf")], engine="hyperscan", cache_dir=str(cache))
    for f in (p for p in cache.rglob("*") if p.is_file()):
        data = bytearray(f.read_bytes())
        data[-3] ^= 0xFF  # flip bits in the serialised database
        f.write_bytes(bytes(data))
    rs = RuleSet.load([str(tmp_path / "r.cf")], engine="hyperscan", cache_dir=str(cache))
    assert names(rs) == ["T_FREE", "T_SUBJ", "T_URI"]
