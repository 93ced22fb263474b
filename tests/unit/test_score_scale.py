"""The learned score scale: fitting, storage, `filterd learn --report`, and the pipeline
using it (each symbol shows its learned points, the verdict's score is their sum)."""

from __future__ import annotations

import asyncio
import io
import random
from pathlib import Path

import numpy as np
import pytest

from filterd.config import Config
from filterd.content.bayes.check import BayesClassifier
from filterd.content.bayes import scale as scale_module
from filterd.content.bayes.learn import learn_command
from filterd.content.bayes.scale import (
    BAYES_EDGES, LOG_ODDS_EDGES, MIN_PER_CLASS, SCALE_FILE, Scale, ScaleError, bayes_features, fit_scale,
    recall_at_fp, stratified_folds, threshold_for,
)
from filterd.content.message import Message
from filterd.content.pipeline import ContentPipeline
from filterd.content.symbols import Symbol
from tests.unit.bayes_corpus import make_message

RULES = """\
body     T_SPAMWORD   /\\b(?:viagra|casino|lottery)\\b/i
describe T_SPAMWORD   spam words
score    T_SPAMWORD   1.0
body     T_HAMLIKE    /\\bmeeting\\b/
describe T_HAMLIKE    a spam-signed rule that fires on ham
score    T_HAMLIKE    2.0
header   T_NICE       From =~ /lists\\.example\\.org/
describe T_NICE       a nice rule
score    T_NICE       -1.0
body     T_NEVER      /this text never appears anywhere/
score    T_NEVER      4.5
"""


def synthetic(n_spam: int = 300, n_ham: int = 900, seed: int = 3) -> tuple[list[dict[str, float]], list[bool]]:
    """Feature dicts: A is strong spam evidence, B weak, N fires on ham only but has a
    spam sign, H is a nice rule; every message has one Bayes bin."""
    rng = random.Random(seed)
    feats: list[dict[str, float]] = []
    labels: list[bool] = []
    for i in range(n_spam + n_ham):
        spam = i < n_spam
        f: dict[str, float] = {}
        if rng.random() < (0.7 if spam else 0.01):
            f["A"] = 1.0
        if rng.random() < (0.4 if spam else 0.1):
            f["B"] = 0.5
        if not spam and rng.random() < 0.3:
            f["N"] = 1.0
        if not spam and rng.random() < 0.5:
            f["H"] = -1.0
        p = rng.betavariate(8, 2) if spam else rng.betavariate(2, 8)
        f.update(bayes_features(p, (p - 0.5) * 40))
        feats.append(f)
        labels.append(spam)
    return feats, labels


def test_fit_puts_the_decision_on_the_level_with_no_constant_left() -> None:
    feats, labels = synthetic()
    folds = stratified_folds(labels)
    scale = fit_scale(feats, labels, folds, 6.31, ["/rules"])
    assert scale.level == 6.31 and scale.rule_paths == ["/rules"]
    # strong evidence counts more than weak; signs follow the rules' own scores
    assert scale.points["A"] > scale.points["B"] >= 0
    assert scale.points["N"] == 0.0  # fires on ham only, but a spam rule never turns into a ham rule
    assert scale.points["H"] <= 0.0
    # the Bayes bins rise with the probability: low bins take points off, high ones add
    low, neutral, high = scale.bayes(0.1, -16)[0], scale.bayes(0.5, 0)[0], scale.bayes(0.9, 16)[0]
    assert low < neutral == 0 < high
    # a symbol's points replace its static score; what the scale does not know keeps its own
    assert scale.apply([Symbol("A", 1.0), Symbol("Z", 3.0)]) == [Symbol("A", scale.points["A"]), Symbol("Z", 3.0)]
    r = scale.report
    assert 0 <= r["level_fp"] <= 0.001 and r["level_recall"] > 0.5
    assert r["recall_at_1%"] >= r["recall_at_0.1%"]
    assert int(r["spam"]) == 300 and int(r["ham"]) == 900


def test_threshold_keeps_ham_under_the_target_with_a_margin() -> None:
    ham = np.arange(3000, dtype=float)  # 0.1 % of 3000 = 3 ham, less one of margin: 2 above
    t = threshold_for(ham)
    assert int(np.sum(ham >= t)) == 2
    assert threshold_for(np.arange(100, dtype=float)) > 99  # 0.1 % of 100: none may be above
    assert recall_at_fp(np.zeros(1000), np.ones(10), 0.001) == 1.0


def test_too_few_messages_keep_static_scores() -> None:
    feats, labels = synthetic(MIN_PER_CLASS - 1, 200)
    with pytest.raises(ScaleError, match="static scores stay"):
        fit_scale(feats, labels, stratified_folds(labels), 6.31, [])


def test_folds_are_stratified_and_fixed() -> None:
    labels = [True] * 50 + [False] * 200
    folds = stratified_folds(labels)
    assert np.array_equal(folds, stratified_folds(labels))
    for f in range(5):
        assert sum(1 for x, y in zip(folds, labels) if x == f and y) == 10


def test_save_load_round_trip_and_refusals(tmp_path: Path) -> None:
    scale = Scale({"A": 2.5, "B": -1.0}, 6.31, ["/r1", "/r2"], {"c": 1.0},
                  tuple(float(i) for i in range(len(BAYES_EDGES))),
                  tuple(0.5 * i for i in range(len(LOG_ODDS_EDGES) + 1)))
    path = str(tmp_path / SCALE_FILE)
    scale.save(path)
    back = Scale.load(path)
    assert back == scale
    applied = back.apply([Symbol("A", 1.0, "d", "e"), Symbol("GTUBE", 1000.0)])
    assert applied == [Symbol("A", 2.5, "d", "e"), Symbol("GTUBE", 1000.0)]  # unknown: static
    assert back.bayes(1.0, 500.0) == (float(len(BAYES_EDGES) - 1) + 0.5 * len(LOG_ODDS_EDGES),
                                      "0.99999 < p <= 1 and 200 < log-odds <= inf")
    assert back.bayes(0.0, -1.0)[1] == "0 < p <= 1e-06 and -2 < log-odds <= 0"
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(ScaleError, match="not a filterd score scale"):
        Scale.load(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "other.npz", format=np.array("something else"))
    with pytest.raises(ScaleError, match="not a filterd score scale"):
        Scale.load(str(tmp_path / "other.npz"))


def corpus(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    spam, ham = tmp_path / "corpus" / "spam", tmp_path / "corpus" / "ham"
    for base, is_spam in ((spam, True), (ham, False)):
        base.mkdir(parents=True)
        for i in range(n):
            (base / f"{i:05d}.eml").write_bytes(make_message(is_spam, i))
    return spam, ham


def config(tmp_path: Path, rules_dir: Path) -> Config:
    return Config.from_text(
        f"data_directory = {tmp_path / 'data'}\nrules_directory = {rules_dir}\nrules_extra_directories =\n"
        "rules_engine = regex\nclamav_socket =\nbayes_min_spam_num = 10\nbayes_min_ham_num = 10\n"
        "bayes_reload_interval = 0\n")


def test_learn_fits_the_scale_and_the_pipeline_explains_itself(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.cf").write_text(RULES)
    spam, ham = corpus(tmp_path)
    cfg = config(tmp_path, rules)
    out, err = io.StringIO(), io.StringIO()
    assert learn_command(cfg, [str(spam)], [str(ham)], out=out, err=err, report=True) == 0, err.getvalue()
    text = out.getvalue()
    assert "Score scale learned into" in text
    assert "cross-validated recall at 0.1 % FP:" in text and "cross-validated recall at 1 % FP:" in text
    assert "level: spam_tag2_level 6.31" in text
    scale = Scale.load(str(tmp_path / "data" / "bayes" / SCALE_FILE))
    assert scale.rule_paths == [str(rules)]
    assert scale.points["T_HAMLIKE"] == 0.0  # fires on ham: never a ham sign, so nothing
    assert "T_NEVER" not in scale.points  # never fired in training: keeps its static 4.5

    # learn --report alone prints the stored figures
    out = io.StringIO()
    assert learn_command(cfg, [], [], out=out, err=io.StringIO(), report=True) == 0
    assert out.getvalue().startswith(f"Score scale {tmp_path / 'data' / 'bayes' / SCALE_FILE}, learned with rules from {rules}")

    pipeline = ContentPipeline.from_config(cfg)
    try:
        new_spam = Message(make_message(True, 1000, seed=7) + b"this text never appears anywhere\n")
        verdict = asyncio.run(pipeline.scan(new_spam))
    finally:
        pipeline.close()
    by_name = {s.name: s for s in verdict.symbols}
    assert by_name["T_NEVER"].score == 4.5
    if "T_SPAMWORD" in by_name:
        assert by_name["T_SPAMWORD"].score == scale.points["T_SPAMWORD"]
    bayes = [s for s in verdict.symbols if s.name.startswith("BAYES_")]
    assert len(bayes) == 1 and "learned bins" in bayes[0].evidence
    p, log_odds = (float(part.split("=")[1]) for part in bayes[0].evidence.split(", ")[:2])
    assert bayes[0].score == scale.bayes(p, log_odds)[0]
    assert verdict.score == pytest.approx(sum(s.score for s in verdict.symbols))
    assert verdict.score >= 6.31 and verdict.category in ("SPAM", "SPAMMY")


def test_a_scale_learned_with_other_rules_is_not_used(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.cf").write_text(RULES)
    cfg = config(tmp_path, rules)
    Scale({"T_SPAMWORD": 9.0}, 6.31, ["/somewhere/else"]).save(str(tmp_path / "data" / "bayes" / SCALE_FILE))
    clf = BayesClassifier(cfg)
    assert clf.scale() is None
    assert clf.rescale([Symbol("T_SPAMWORD", 1.0)]) == [Symbol("T_SPAMWORD", 1.0)]
    assert "learned with rules from /somewhere/else" in (clf.scale_error or "")
    Scale({"T_SPAMWORD": 9.0}, 6.31, [str(rules)]).save(str(tmp_path / "data" / "bayes" / SCALE_FILE))
    clf = BayesClassifier(cfg)
    assert clf.rescale([Symbol("T_SPAMWORD", 1.0)]) == [Symbol("T_SPAMWORD", 9.0)]


def test_learn_report_without_a_scale(tmp_path: Path) -> None:
    err = io.StringIO()
    cfg = Config.from_text(f"data_directory = {tmp_path}\n")
    assert learn_command(cfg, [], [], out=io.StringIO(), err=err, report=True) == 1
    assert "no score scale learned yet" in err.getvalue()


def test_learn_reads_a_users_mbox_and_maildir_and_fits_the_scale(tmp_path: Path) -> None:
    """Issue 11: a user's own mail, an mbox of spam and a Maildir of ham (cur/ and new/;
    tmp/ holds deliveries in progress and is skipped), as sa-learn --mbox and sa-learn on
    a directory read them."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "t.cf").write_text(RULES)
    spam_mbox = tmp_path / "Junk.mbox"
    spam_mbox.write_bytes(b"".join(
        b"From spammer@example.com Mon Oct  7 10:00:00 2002\n" + make_message(True, i) + b"\n" for i in range(60)))
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i in range(60):
        (maildir / ("cur" if i % 2 else "new") / f"{i}.host:2,S").write_bytes(make_message(False, i))
    (maildir / "tmp" / "partial").write_bytes(make_message(True, 999))
    out, err = io.StringIO(), io.StringIO()
    assert learn_command(config(tmp_path, rules), [str(spam_mbox)], [str(maildir)], out=out, err=err) == 0, err.getvalue()
    assert out.getvalue().startswith("Learned tokens from 120 message(s) (120 message(s) examined)")
    scale = Scale.load(str(tmp_path / "data" / "bayes" / SCALE_FILE))
    assert int(scale.report["spam"]) == 60 and int(scale.report["ham"]) == 60


def test_the_messages_kept_for_the_scale_are_bounded() -> None:
    from filterd.content.bayes.learn import _Reservoir

    kept = _Reservoir(100)
    for i in range(1000):
        kept.offer(b"%d" % i, i % 5 == 0)
    assert len(kept.raws) == len(kept.labels) == 100
    assert all(lab == (int(raw) % 5 == 0) for raw, lab in zip(kept.raws, kept.labels))
    assert max(int(r) for r in kept.raws) > 500  # later messages had their chance too


def test_log_odds_tell_conflicting_evidence_from_none() -> None:
    """The chi-square says 0.5 for a message whose tokens pull hard both ways as for one
    with no known token; the scale learns the two apart through the log-odds bins."""
    rng = random.Random(5)
    feats: list[dict[str, float]] = []
    labels: list[bool] = []
    for i in range(600):
        spam = i % 3 == 0
        if rng.random() < 0.5:  # clear verdicts
            p = rng.betavariate(8, 2) if spam else rng.betavariate(2, 8)
            f = bayes_features(p, (p - 0.5) * 40)
        else:  # "no opinion": spam leans spammy in its log-odds, ham hammy
            f = bayes_features(0.5, rng.uniform(5, 40) if spam else rng.uniform(-40, -5))
        feats.append(f)
        labels.append(spam)
    scale = fit_scale(feats, labels, stratified_folds(labels), 6.31, [])
    assert scale.bayes(0.5, 20.0)[0] > scale.bayes(0.5, 0.0)[0] == 0 > scale.bayes(0.5, -20.0)[0]


def test_regularisation_is_chosen_at_the_level_it_really_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    """C is judged by the recall at its threshold after the raise above the neutral
    message, so the grid's choice is never worse than any single C of it."""
    rng = random.Random(11)
    feats: list[dict[str, float]] = []
    labels: list[bool] = []
    for i in range(900):
        spam = i % 4 == 0
        f: dict[str, float] = {}
        if rng.random() < (0.5 if spam else 0.004):
            f["A"] = 1.0
        if spam and rng.random() < 0.45:  # Bayes has no opinion on half the spam...
            f.update(bayes_features(0.5, 0.0))
        else:  # ...and a clear one on the rest, and on all ham
            p = rng.betavariate(6, 2) if spam else rng.betavariate(2, 6)
            f.update(bayes_features(p, (p - 0.5) * 30))
        feats.append(f)
        labels.append(spam)
    folds = stratified_folds(labels)
    grid = scale_module.C_GRID
    alone = []
    for c in grid:
        monkeypatch.setattr(scale_module, "C_GRID", (c,))
        alone.append(fit_scale(feats, labels, folds, 6.31, []).report["level_recall"])
    monkeypatch.setattr(scale_module, "C_GRID", grid)
    assert fit_scale(feats, labels, folds, 6.31, []).report["level_recall"] == max(alone)
