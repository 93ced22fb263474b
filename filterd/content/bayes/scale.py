"""The learned score scale: how many points each rule and each Bayes band is worth.

Hand-set scores only mean something if they happen to add up: filterd's Bayes bands alone
never reached ``spam_tag2_level``, and SpamAssassin's scores were fitted for its own
threshold (5.0) and its own Bayes. ``filterd learn`` therefore fits the points on the
training mail, as SpamAssassin's perceptron does on its mass-check results:

- a message is a 0/1 vector of the symbols that fired on it (score rules, ``MIME_DEFECTS``)
  and of the bin its Bayes probability falls in, the probability coming from a Bayes
  model that did *not* learn the message (k folds: Bayes learns k-1, classifies the k-th),
  because Bayes scoring the mail it learned is overconfident and the weights would trust
  it too much. The bins (:data:`BAYES_EDGES`) are finer than SpamAssassin's BAYES_xx
  bands where the model's output separates ham from spam: just above 0.5 (the
  chi-square's "no opinion") sit many spam and almost no ham, which BAYES_50 (0.4-0.6)
  lumps together. A second set of bins (:data:`LOG_ODDS_EDGES`) holds the same model's
  naive Bayes log-odds: the chi-square says 0.5 for strong evidence both ways as for
  none, where much hard ham sits (on the corpus this raised the cross-validated recall
  at 0.1 % FP by 1-10 points, with and without SpamAssassin's rules). The pipeline still
  shows the BAYES_xx band's name, with the points of both bins;
- an L2-regularised logistic regression learns one weight per symbol that fired on at
  least :data:`MIN_HITS` training messages. Weights keep the sign of the rule's own score
  (a spam sign never becomes a ham sign, as SpamAssassin's perceptron keeps "nice" rules
  negative), so a spammer cannot earn points off by tripping a spam rule; the Bayes bins
  are free. The regularisation strength is picked by cross-validation over the same folds;
- the decision threshold is chosen on out-of-fold decision values so that at most
  ``fp_target`` of ham (less one message of margin) would score above it, and the weights
  are scaled so that this threshold lands exactly on ``spam_tag2_level`` and a message
  with no evidence (no rule, Bayes without opinion) scores 0. The constant term goes into
  the Bayes bins' points (exactly one bin fires whenever Bayes speaks), so every point of a
  verdict's score belongs to a symbol, and ``score >= spam_tag2_level`` is the fitted
  decision.

Symbols the scale does not know (rules that never fired in training, GTUBE, Postfix
checks) keep the score their rule file gives them. The scale is stored beside the Bayes
model as ``scale.npz`` (NumPy arrays, no pickle) with the rule directories it was learned
with: a scale learned with other rules would misjudge, so it is then not used.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.sparse import csr_matrix

from filterd.content.bayes.npzfile import save_npz
from filterd.content.symbols import Symbol

SCALE_FILE = "scale.npz"
FORMAT = "filterd-scale"
FORMAT_VERSION = 2
#: A symbol must fire on this many training messages to get a learned weight.
MIN_HITS = 3
#: Regularisation strengths tried (sklearn's C: larger means weaker regularisation).
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
#: Folds for the out-of-fold Bayes bands, the choice of C and the reported figures.
FOLDS = 5
#: At most this share of ham may score at or above the level (on out-of-fold scores).
FP_TARGET = 0.001
#: Messages of margin below the allowed ham count, for mail newer than the training set.
FP_MARGIN = 1
#: Upper edges of the Bayes probability bins (``low < p <= high``; the first bin includes 0).
BAYES_EDGES = (1e-6, 1e-4, 0.01, 0.05, 0.2, 0.4, 0.4999, 0.5001, 0.6, 0.8, 0.95, 0.99, 0.999,
               0.99999, 1.0)
#: Upper edges of the bins of the Bayes log-odds (``low < x <= high``; one more bin above
#: the last edge): the second view of the same tokens, see ``BayesModel.evidence_of_indices``.
LOG_ODDS_EDGES = (-200.0, -60.0, -30.0, -15.0, -8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0, 15.0, 30.0,
                  60.0, 200.0)
#: Feature names of the bins while fitting (never a rule name: rules are upper case).
BAYES_BIN = "bayes-bin-"
LOG_ODDS_BIN = BAYES_BIN + "log-odds-"
#: The level lies at least this far (in logits) above a message with no evidence.
MIN_LEVEL_LOGITS = 1.0
#: Fewest messages of each class the scale is fitted on (fewer: static scores stay).
MIN_PER_CLASS = 50


class ScaleError(Exception):
    """A scale file that cannot be used, or training data a scale cannot be fitted on."""


@dataclass
class Scale:
    """Learned points per symbol name, and what they were learned with."""

    points: dict[str, float]
    level: float
    rule_paths: list[str]
    report: dict[str, float] = field(default_factory=dict)
    bayes_points: tuple[float, ...] = (0.0,) * len(BAYES_EDGES)
    log_odds_points: tuple[float, ...] = (0.0,) * (len(LOG_ODDS_EDGES) + 1)

    def bayes(self, p: float, log_odds: float) -> tuple[float, str]:
        """Points for Bayes probability ``p`` and log-odds ``log_odds`` (the sum of their
        bins' points), and which bins gave them."""
        k = bayes_bin(p)
        low = 0.0 if k == 0 else BAYES_EDGES[k - 1]
        j = log_odds_bin(log_odds)
        lo = "-inf" if j == 0 else f"{LOG_ODDS_EDGES[j - 1]:g}"
        hi = "inf" if j == len(LOG_ODDS_EDGES) else f"{LOG_ODDS_EDGES[j]:g}"
        return (round(self.bayes_points[k] + self.log_odds_points[j], 3),
                f"{low:g} < p <= {BAYES_EDGES[k]:g} and {lo} < log-odds <= {hi}")

    def apply(self, symbols: Iterable[Symbol]) -> list[Symbol]:
        """The same symbols, each known one carrying its learned points."""
        out = []
        for s in symbols:
            pts = self.points.get(s.name)
            out.append(s if pts is None else Symbol(s.name, pts, s.description, s.evidence))
        return out

    # -- storage -------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write atomically (temp file, fsync, rename, fsync the directory)."""
        names = sorted(self.points)
        save_npz(
            path,
            format=np.array(FORMAT),
            format_version=np.array(FORMAT_VERSION),
            names=np.array(names, dtype=np.str_),
            points=np.array([self.points[n] for n in names], dtype=np.float64),
            level=np.array(self.level),
            rule_paths=np.array(self.rule_paths, dtype=np.str_),
            report_keys=np.array(sorted(self.report), dtype=np.str_),
            report_values=np.array([self.report[k] for k in sorted(self.report)], dtype=np.float64),
            bayes_edges=np.array(BAYES_EDGES, dtype=np.float64),
            bayes_points=np.array(self.bayes_points, dtype=np.float64),
            log_odds_edges=np.array(LOG_ODDS_EDGES, dtype=np.float64),
            log_odds_points=np.array(self.log_odds_points, dtype=np.float64),
        )

    @classmethod
    def load(cls, path: str) -> "Scale":
        """Read a scale file; :class:`ScaleError` says why one is unusable."""
        try:
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
                fields = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            raise ScaleError(f"{path}: not a filterd score scale ({exc})") from None
        required = ("format", "format_version", "names", "points", "level", "rule_paths",
                    "report_keys", "report_values", "bayes_edges", "bayes_points", "log_odds_edges",
                    "log_odds_points")
        missing = [n for n in required if n not in fields]
        if missing or str(fields.get("format")) != FORMAT:
            raise ScaleError(f"{path}: not a filterd score scale")
        if int(fields["format_version"]) != FORMAT_VERSION:
            raise ScaleError(f"{path}: scale format version {int(fields['format_version'])}, "
                             f"this filterd reads {FORMAT_VERSION}: run filterd learn again")
        names, points = fields["names"], fields["points"]
        keys, values = fields["report_keys"], fields["report_values"]
        edges, bpoints = fields["bayes_edges"], fields["bayes_points"]
        ledges, lpoints = fields["log_odds_edges"], fields["log_odds_points"]
        if (names.shape != points.shape or keys.shape != values.shape or bpoints.shape != edges.shape
                or lpoints.shape != (ledges.shape[0] + 1,) or not np.all(np.isfinite(points))
                or not np.all(np.isfinite(bpoints)) or not np.all(np.isfinite(lpoints))):
            raise ScaleError(f"{path}: corrupt score scale")
        if (tuple(float(e) for e in edges) != BAYES_EDGES
                or tuple(float(e) for e in ledges) != LOG_ODDS_EDGES):
            raise ScaleError(f"{path}: learned with other Bayes bins: run filterd learn again")
        return cls({str(n): float(p) for n, p in zip(names, points)}, float(fields["level"]),
                   [str(p) for p in fields["rule_paths"]],
                   {str(k): float(v) for k, v in zip(keys, values)},
                   tuple(float(b) for b in bpoints), tuple(float(b) for b in lpoints))


def bayes_bin(p: float) -> int:
    """The index of the Bayes bin holding probability ``p``."""
    return min(int(np.searchsorted(BAYES_EDGES, p, side="left")), len(BAYES_EDGES) - 1)


def log_odds_bin(log_odds: float) -> int:
    """The index of the log-odds bin holding ``log_odds``."""
    return int(np.searchsorted(LOG_ODDS_EDGES, log_odds, side="left"))


def bayes_feature(p: float) -> str:
    """The fitting feature name of the bin holding ``p``."""
    return f"{BAYES_BIN}{bayes_bin(p)}"


def bayes_features(p: float, log_odds: float) -> dict[str, float]:
    """The fitting features of a Bayes verdict: its probability's and its log-odds' bins
    (static score 0: their weights are free)."""
    return {bayes_feature(p): 0.0, f"{LOG_ODDS_BIN}{log_odds_bin(log_odds)}": 0.0}


def same_rules(learned: Sequence[str], configured: Sequence[str]) -> bool:
    """Whether the configured rule paths are the ones a scale was learned with."""
    return [os.path.realpath(p) for p in learned] == [os.path.realpath(p) for p in configured]


# -- fitting -----------------------------------------------------------------------------

def stratified_folds(labels: Sequence[bool], k: int = FOLDS, seed: int = 1) -> np.ndarray:
    """Fold number of each message: each class shuffled (fixed seed) and dealt round-robin."""
    y = np.asarray(labels, dtype=bool)
    folds = np.empty(len(y), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for cls in (False, True):
        idx = np.flatnonzero(y == cls)
        folds[rng.permutation(idx)] = np.arange(len(idx)) % k
    return folds


def _fit(X: csr_matrix, y: np.ndarray, bounds: list[tuple[float | None, float | None]],
         c: float) -> tuple[np.ndarray, float]:
    """Logistic regression, ``c * sum(log-loss) + |w|^2 / 2``, weights within ``bounds``
    (the intercept is free and not penalised). L-BFGS-B: the sign constraints are bounds."""
    sign = np.where(y, 1.0, -1.0)
    d = X.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        z = sign * (X @ w + b)
        value = c * float(np.sum(np.logaddexp(0.0, -z))) + 0.5 * float(w @ w)
        g = -c * sign * np.exp(-np.logaddexp(0.0, z))  # d loss / d margin, times the sign
        grad = np.empty(d + 1)
        grad[:d] = X.T @ g + w
        grad[d] = float(np.sum(g))
        return value, grad

    result = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B",
                      bounds=[*bounds, (None, None)], options={"maxiter": 2000})
    return result.x[:d], float(result.x[d])


def threshold_for(ham_scores: np.ndarray, fp_target: float = FP_TARGET, margin: int = FP_MARGIN) -> float:
    """The lowest threshold with at most ``floor(fp_target * n) - margin`` ham at or above it."""
    allowed = max(0, math.floor(fp_target * len(ham_scores) + 1e-9) - margin)
    ranked = np.sort(ham_scores)[::-1]
    if allowed >= len(ranked):
        return float("-inf")
    return float(np.nextafter(ranked[allowed], np.inf))


def recall_at_fp(ham: np.ndarray, spam: np.ndarray, fp_rate: float) -> float:
    """Spam recall at the best threshold letting at most ``fp_rate`` of ham through
    (a spam tied with the highest allowed-out ham counts as missed)."""
    t = threshold_for(ham, fp_rate, margin=0)
    return float(np.mean(spam >= t)) if len(spam) else 0.0


def _design(features: Sequence[dict[str, float]], names: list[str]) -> csr_matrix:
    col = {n: i for i, n in enumerate(names)}
    indptr, indices = [0], []
    for f in features:
        indices.extend(sorted(col[n] for n in f if n in col))
        indptr.append(len(indices))
    return csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(features), len(names)))


def _vocabulary(features: Sequence[dict[str, float]], rows: np.ndarray) -> tuple[list[str], list[tuple[float | None, float | None]]]:
    """Symbols firing on at least MIN_HITS of ``rows``, and each weight's sign bound."""
    hits: dict[str, int] = {}
    static: dict[str, float] = {}
    for i in rows:
        for name, score in features[i].items():
            hits[name] = hits.get(name, 0) + 1
            static[name] = score
    names = sorted(n for n, h in hits.items() if h >= MIN_HITS and (static[n] != 0 or n.startswith(BAYES_BIN)))
    bounds: list[tuple[float | None, float | None]] = []
    for n in names:
        if n.startswith(BAYES_BIN):
            bounds.append((None, None))
        elif static[n] > 0:
            bounds.append((0.0, None))
        else:
            bounds.append((None, 0.0))
    return names, bounds


def _oof(features: Sequence[dict[str, float]], y: np.ndarray, folds: np.ndarray, c: float) -> np.ndarray:
    """Each message's decision value from a model fitted without its fold."""
    out = np.empty(len(y))
    for f in np.unique(folds):
        train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        names, bounds = _vocabulary(features, train)
        w, b = _fit(_design([features[i] for i in train.tolist()], names), y[train], bounds, c)
        out[test] = _design([features[i] for i in test.tolist()], names) @ w + b
    return out


def fit_scale(features: Sequence[dict[str, float]], labels: Sequence[bool], folds: np.ndarray,
              level: float, rule_paths: list[str], fp_target: float = FP_TARGET) -> Scale:
    """Fit the points of every symbol so that ``level`` is the cross-validated decision.

    ``features[i]`` maps each symbol that fired on message ``i`` to its static score, and
    :func:`bayes_features` of its out-of-fold Bayes verdict to 0; ``labels[i]`` is True
    for spam.
    """
    y = np.asarray(labels, dtype=bool)
    nspam, nham = int(y.sum()), int((~y).sum())
    if nspam < MIN_PER_CLASS or nham < MIN_PER_CLASS:
        raise ScaleError(f"a score scale needs at least {MIN_PER_CLASS} spam and {MIN_PER_CLASS} ham "
                         f"(got {nspam} spam, {nham} ham): static scores stay")
    names, bounds = _vocabulary(features, np.arange(len(y)))
    design = _design(features, names)
    best: tuple[float, float] | None = None  # (recall at the threshold, -c)
    chosen: tuple[float, np.ndarray, np.ndarray, float, float, float] | None = None
    for c in C_GRID:
        oof = _oof(features, y, folds, c)
        w, b = _fit(design, y, bounds, c)
        neutral = _neutral(names, w, b)
        # Mail without evidence is never spam: when the training mail is so well separated
        # that the threshold falls below the neutral message, it is raised above it. C is
        # judged at the threshold it will really get: a strongly regularised fit pulls
        # every score towards the neutral one, and the raise can cost it most of its recall.
        t = max(threshold_for(oof[~y], fp_target), neutral + MIN_LEVEL_LOGITS)
        key = (float(np.mean(oof[y] >= t)), -c)
        if best is None or key > best:
            best, chosen = key, (c, oof, w, b, neutral, t)
    assert chosen is not None
    c, oof, w, b, neutral, t = chosen
    # A neutral message (no rule fired; Bayes, if used, with no opinion: p = 0.5 and
    # log-odds 0) scores 0 points and one at the threshold scores `level`. Every message
    # the Bayes model speaks on falls in exactly one bin, so the constant term goes into
    # the bins' points.
    weights = dict(zip(names, w))
    bins = [weights.get(f"{BAYES_BIN}{i}", 0.0) for i in range(len(BAYES_EDGES))]
    odds = [weights.get(f"{LOG_ODDS_BIN}{i}", 0.0) for i in range(len(LOG_ODDS_EDGES) + 1)]
    bayes_used = any(n.startswith(BAYES_BIN) for n in names)
    k = level / (t - neutral)
    points = {n: round(float(k * wi), 3) for n, wi in weights.items() if not n.startswith(BAYES_BIN)}
    bayes_points = tuple(round(float(k * (wb + b - neutral)), 3) if bayes_used else 0.0 for wb in bins)
    log_odds_points = tuple(round(float(k * wo), 3) if bayes_used else 0.0 for wo in odds)
    report = _report(oof, y, folds, fp_target, t)
    report.update({"c": c, "points_per_logit": k, "weights": float(len(names)), "fp_target": fp_target})
    return Scale(points, level, list(rule_paths), report, bayes_points, log_odds_points)


def _neutral(names: list[str], w: np.ndarray, b: float) -> float:
    """The decision value of a message with no evidence: no rule fired, and Bayes (when
    the scale uses it) without opinion, p = 0.5 and log-odds 0."""
    weights = dict(zip(names, w))
    if not any(n.startswith(BAYES_BIN) for n in names):
        return b
    return b + weights.get(f"{BAYES_BIN}{bayes_bin(0.5)}", 0.0) + weights.get(f"{LOG_ODDS_BIN}{log_odds_bin(0.0)}", 0.0)


def _report(oof: np.ndarray, y: np.ndarray, folds: np.ndarray, fp_target: float, t: float) -> dict[str, float]:
    """Cross-validated figures: recall at 0.1 % and 1 % FP (pooled, then per fold), and at
    the level, where each fold is judged by a threshold chosen on the other folds only."""
    ham, spam = oof[~y], oof[y]
    per_fold: dict[str, list[float]] = {"r01": [], "r1": [], "lvl_recall": [], "lvl_fp": []}
    for f in np.unique(folds):
        here, rest = folds == f, folds != f
        fh, fs = oof[here & ~y], oof[here & y]
        per_fold["r01"].append(recall_at_fp(fh, fs, 0.001))
        per_fold["r1"].append(recall_at_fp(fh, fs, 0.01))
        tf = threshold_for(oof[rest & ~y], fp_target)
        per_fold["lvl_recall"].append(float(np.mean(fs >= tf)))
        per_fold["lvl_fp"].append(float(np.mean(fh >= tf)))
    report = {
        "recall_at_0.1%": recall_at_fp(ham, spam, 0.001),
        "recall_at_1%": recall_at_fp(ham, spam, 0.01),
        "level_recall": float(np.mean(spam >= t)),
        "level_fp": float(np.mean(ham >= t)),
        "spam": float(len(spam)), "ham": float(len(ham)), "folds": float(len(np.unique(folds))),
    }
    for key, values in per_fold.items():
        report[f"{key}_mean"] = float(np.mean(values))
        report[f"{key}_min"] = float(np.min(values))
        report[f"{key}_max"] = float(np.max(values))
    return report


def report_lines(scale: Scale) -> list[str]:
    """What ``filterd learn --report`` prints about a scale."""
    r = scale.report

    def rng(key: str, digits: int = 1) -> str:
        return (f"{100 * r[key + '_mean']:.{digits}f} % (folds {100 * r[key + '_min']:.{digits}f}"
                f"-{100 * r[key + '_max']:.{digits}f})")

    return [
        f"score scale: {int(r['weights'])} learned weights, C={r['c']:g}, {int(r['spam'])} spam / "
        f"{int(r['ham'])} ham, {int(r['folds'])} folds, Bayes out of fold",
        f"cross-validated recall at 0.1 % FP: {100 * r['recall_at_0.1%']:.1f} % pooled, "
        f"mean {rng('r01')}",
        f"cross-validated recall at 1 % FP: {100 * r['recall_at_1%']:.1f} % pooled, mean {rng('r1')}",
        f"level: spam_tag2_level {scale.level:g}, set where at most {100 * r['fp_target']:g} % of ham "
        f"less {FP_MARGIN} message scored above it ({r['points_per_logit']:.3f} points per logit)",
        f"at the level: recall {100 * r['level_recall']:.1f} %, ham at or above "
        f"{100 * r['level_fp']:.2f} % (pooled out of fold); each fold judged by a level chosen on "
        f"the other folds: recall {rng('lvl_recall')}, ham {rng('lvl_fp', 2)}",
    ]
