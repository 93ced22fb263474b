"""The BAYES_xx symbols: probability bands, descriptions and default scores.

Bands and scores are SpamAssassin 4's (23_bayes.cf and the "Bayes on, network tests off"
column of 50_scores.cf), so a filterd Bayes verdict weighs what an administrator who
knows SpamAssassin expects. This module has no heavy imports: the configuration layer
uses :func:`as_bayes_scores` to validate ``bayes_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass

from filterd.config.types import split_list


@dataclass(frozen=True)
class Band:
    """A symbol that fires when ``low < p <= high`` (``low == 0`` includes 0)."""

    name: str
    low: float
    high: float
    score: float
    description: str

    def matches(self, p: float) -> bool:
        return (self.low == 0.0 or p > self.low) and p <= self.high


BANDS: tuple[Band, ...] = (
    Band("BAYES_00", 0.00, 0.01, -1.5, "Bayes spam probability is 0 to 1%"),
    Band("BAYES_05", 0.01, 0.05, -0.3, "Bayes spam probability is 1 to 5%"),
    Band("BAYES_20", 0.05, 0.20, -0.001, "Bayes spam probability is 5 to 20%"),
    Band("BAYES_40", 0.20, 0.40, -0.001, "Bayes spam probability is 20 to 40%"),
    Band("BAYES_50", 0.40, 0.60, 2.0, "Bayes spam probability is 40 to 60%"),
    Band("BAYES_60", 0.60, 0.80, 2.5, "Bayes spam probability is 60 to 80%"),
    Band("BAYES_80", 0.80, 0.95, 2.7, "Bayes spam probability is 80 to 95%"),
    Band("BAYES_95", 0.95, 0.99, 3.2, "Bayes spam probability is 95 to 99%"),
    Band("BAYES_99", 0.99, 1.00, 3.8, "Bayes spam probability is 99 to 100%"),
    Band("BAYES_999", 0.999, 1.00, 0.2, "Bayes spam probability is 99.9 to 100%"),
)
BAND_NAMES = frozenset(b.name for b in BANDS)
DEFAULT_SCORES_TEXT = " ".join(f"{b.name}={b.score:g}" for b in BANDS)


def as_bayes_scores(value: str) -> dict[str, float]:
    """``BAYES_99=4.0, BAYES_00=-2`` → scores; names not listed keep SpamAssassin's."""
    scores = {b.name: b.score for b in BANDS}
    for item in split_list(value):
        name, eq, number = item.partition("=")
        name = name.strip().upper()
        if not eq or name not in BAND_NAMES:
            raise ValueError(
                f"expected BAYES_xx=score items (names {', '.join(b.name for b in BANDS)}), got {item!r}"
            )
        try:
            scores[name] = float(number)
        except ValueError:
            raise ValueError(f"expected a number after {name}=, got {number!r}") from None
    return scores
