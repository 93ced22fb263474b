"""Rule sets written for a test: the text goes to a file and loads as rules_directory does."""

from __future__ import annotations

import pytest

from filterd.content.rules import RuleSet


def load_rules(tmp_path_factory: pytest.TempPathFactory, text: str, name: str = "t.cf") -> RuleSet:
    """``text`` loaded with the plain ``regex`` engine (no Hyperscan compile per test module)."""
    path = tmp_path_factory.mktemp("rules") / name
    path.write_text(text)
    return RuleSet.load([str(path)], engine="regex")
