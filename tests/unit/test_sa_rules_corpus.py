"""Both engines agree on real mail with SpamAssassin's own rule set (every non-eval rule loads).

The Hyperscan engine's shortcuts (pre-filters, deferred sub-rules, compiled metas) must
change no rule result on any message. The suite compares an even sample of 600 of the
3,250 corpus messages (about a minute); ``FILTERD_CORPUS_SAMPLE=0`` compares every one
(about six minutes), which a change to the rule engine should be checked with.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filterd.content.message import Message
from filterd.content.rules import RuleSet
from filterd.content.rules.matcher import hyperscan_available
from filterd.content.rules.paths import shipped_rules_directory

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("FILTERD_CORPUS", REPO / ".." / "shared" / "corpus"))
SA_RULES = Path("/usr/share/spamassassin")
SAMPLE = int(os.environ.get("FILTERD_CORPUS_SAMPLE", "600"))  # 0: every message

pytestmark = [
    pytest.mark.skipif(not (CORPUS / "spamassassin").is_dir(), reason=f"corpus not found at {CORPUS}"),
    pytest.mark.skipif(not any(SA_RULES.glob("*.cf")), reason="SpamAssassin rules (Debian spamassassin) not installed"),
]


@pytest.fixture(scope="module")
def sample() -> list[bytes]:
    files = sorted(p for p in (CORPUS / "spamassassin").glob("*/*") if p.is_file())
    if SAMPLE:
        files = files[::max(1, len(files) // SAMPLE)][:SAMPLE]
    return [p.read_bytes() for p in files]


@pytest.fixture(scope="module")
def regex_rules() -> RuleSet:
    return RuleSet.load([shipped_rules_directory(), str(SA_RULES)], engine="regex")


def test_spamassassin_rules_load_completely(regex_rules: RuleSet) -> None:
    stats = regex_rules.stats
    assert stats.ok, (stats.parse_errors, stats.regex_errors, stats.meta_errors, stats.unsupported_types)
    assert stats.loaded["body"] > 450 and stats.loaded["header"] > 500 and stats.loaded["meta"] > 700
    assert stats.unreferenced > 100  # sub-rules no scored rule reads are not evaluated


@pytest.mark.slow  # 600 corpus messages through both engines: about a minute
@pytest.mark.skipif(not hyperscan_available(), reason="hyperscan module not installed")
def test_hyperscan_and_regex_agree_on_corpus(regex_rules: RuleSet, sample: list[bytes]) -> None:
    hs_rules = RuleSet.load([shipped_rules_directory(), str(SA_RULES)], engine="hyperscan")
    assert hs_rules.stats.engine == "hyperscan" and hs_rules.stats.hyperscan_accelerated > 1000
    fired = 0
    for raw in sample:
        expected = regex_rules.evaluate(Message(raw))
        got = hs_rules.evaluate(Message(raw))
        assert got == expected, raw[:300]
        fired += len(expected)
    assert fired > len(sample)  # the comparison is not vacuous
