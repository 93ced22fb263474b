"""Score rules in SpamAssassin's rule language: parse, compile once, evaluate per message.

``RuleSet.load(paths)`` reads rule files (``header``, ``body``, ``rawbody``, ``uri``,
``full``, ``meta``, ``score``, ``describe``, ``tflags``, conditionals, ReplaceTags...) and
compiles them; ``RuleSet.evaluate(msg)`` returns the :class:`Symbol` of every rule that
fires. ``ruleset_from_config(cfg)`` loads what ``rules_directory``,
``rules_extra_directories`` and ``rules_engine`` say.
"""

from __future__ import annotations

import os

from filterd.config import Config
from filterd.content.rules.evaluator import SCORE_SET, RuleSet, default_engine
from filterd.content.rules.model import LoadStats


def rule_paths(cfg: Config) -> list[str]:
    """The rule files/directories a configuration names, in load order."""
    return [cfg.get("rules_directory"), *cfg.get("rules_extra_directories")]


def ruleset_from_config(cfg: Config) -> RuleSet:
    """Load the configured rules with the configured engine (CPU-bound: run off the loop)."""
    cache = os.path.join(cfg.get("data_directory"), "rules-cache")
    return RuleSet.load(rule_paths(cfg), engine=cfg.get("rules_engine"), cache_dir=cache)


__all__ = ["LoadStats", "RuleSet", "SCORE_SET", "default_engine", "rule_paths", "ruleset_from_config"]
