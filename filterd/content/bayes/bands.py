"""The BAYES_xx symbols: probability bands, descriptions and default scores.

Bands are SpamAssassin 4's (23_bayes.cf), and so are the scores (the "Bayes on, network
tests off" column of 50_scores.cf) except at the two ends, where filterd's model is
surer than SpamAssassin's scores assume: BAYES_999 adds 3.0 (SA: 0.2), so BAYES_99 +
BAYES_999 = 6.8 reaches the spam level on its own, and BAYES_00 counts -5.0 (SA: -1.5).
Both were chosen by cross-validation inside the training part of each fold of
``bench/quality.py`` (bench/README.md has the grid, the choices and the numbers): on
this corpus no ham reached p > 0.999 and only 2 of 500 spam fell below 0.01.
``bayes_scores = BAYES_999=0.2 BAYES_00=-1.5`` restores SpamAssassin's weights.
This module has no heavy imports: the configuration layer uses :func:`as_bayes_scores`
to validate ``bayes_scores``.
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
    Band("BAYES_00", 0.00, 0.01, -5.0, "Bayes spam probability is 0 to 1%"),
    Band("BAYES_05", 0.01, 0.05, -0.3, "Bayes spam probability is 1 to 5%"),
    Band("BAYES_20", 0.05, 0.20, -0.001, "Bayes spam probability is 5 to 20%"),
    Band("BAYES_40", 0.20, 0.40, -0.001, "Bayes spam probability is 20 to 40%"),
    Band("BAYES_50", 0.40, 0.60, 2.0, "Bayes spam probability is 40 to 60%"),
    Band("BAYES_60", 0.60, 0.80, 2.5, "Bayes spam probability is 60 to 80%"),
    Band("BAYES_80", 0.80, 0.95, 2.7, "Bayes spam probability is 80 to 95%"),
    Band("BAYES_95", 0.95, 0.99, 3.2, "Bayes spam probability is 95 to 99%"),
    Band("BAYES_99", 0.99, 1.00, 3.8, "Bayes spam probability is 99 to 100%"),
    Band("BAYES_999", 0.999, 1.00, 3.0, "Bayes spam probability is 99.9 to 100%"),
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
