"""BayesClassifier: gating, BAYES_xx symbols, reloads, merged saves, auto-learning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from filterd.config import Config
from filterd.content.bayes.bands import BANDS, as_bayes_scores
from filterd.content.bayes.check import BayesClassifier
from filterd.content.bayes.model import BayesModel, BayesModelError
from filterd.content.message import Message
from filterd.content.symbols import Symbol
from tests.unit.bayes_corpus import make_message


def config(tmp_path: Path, extra: str = "") -> Config:
    return Config.from_text(
        f"data_directory = {tmp_path}\nbayes_min_spam_num = 5\nbayes_min_ham_num = 5\n"
        f"bayes_reload_interval = 0\n{extra}"
    )


def spam(i: int, seed: int = 0) -> Message:
    return Message(make_message(True, i, seed))


def ham(i: int, seed: int = 0) -> Message:
    return Message(make_message(False, i, seed))


def trained(tmp_path: Path, n: int = 10, extra: str = "") -> BayesClassifier:
    clf = BayesClassifier(config(tmp_path, extra))
    clf.learn([spam(i) for i in range(n)], spam=True)
    clf.learn([ham(i) for i in range(n)], spam=False)
    clf.save()
    return clf


def test_no_model_means_no_symbols(tmp_path: Path) -> None:
    clf = BayesClassifier(config(tmp_path))
    assert clf.probability(spam(1)) is None and clf.symbols(spam(1)) == []
    assert clf.describe().startswith("no Bayes model")


def test_min_counts_gate_the_symbols(tmp_path: Path) -> None:
    clf = trained(tmp_path, n=4)
    assert clf.symbols(spam(1, seed=1)) == []
    assert "inactive until 5 spam and 5 ham" in clf.describe()
    clf.learn([spam(50), ham(50)][:1], spam=True)
    clf.learn([ham(50)], spam=False)
    clf.save()
    assert [s.name for s in clf.symbols(spam(1, seed=1))] == ["BAYES_99", "BAYES_999"]


def test_symbols_for_spam_and_ham(tmp_path: Path) -> None:
    clf = trained(tmp_path)
    syms = clf.symbols(spam(3, seed=2))
    assert [s.name for s in syms] == ["BAYES_99", "BAYES_999"]
    assert syms[0].score == 3.8 and syms[1].score == 3.0
    assert syms[0].evidence.startswith("probability=") and float(syms[0].evidence[12:]) > 0.99
    assert [s.name for s in clf.symbols(ham(3, seed=2))] == ["BAYES_00"]


def test_disabled_bayes_is_silent(tmp_path: Path) -> None:
    trained(tmp_path)
    clf = BayesClassifier(config(tmp_path, "use_bayes = no\n"))
    assert clf.symbols(spam(1, seed=1)) == [] and "disabled" in clf.describe()


@pytest.mark.parametrize("p, names", [
    (0.0, ["BAYES_00"]), (0.01, ["BAYES_00"]), (0.0101, ["BAYES_05"]), (0.2, ["BAYES_20"]),
    (0.5, ["BAYES_50"]), (0.7, ["BAYES_60"]), (0.9, ["BAYES_80"]), (0.97, ["BAYES_95"]),
    (0.995, ["BAYES_99"]), (0.9995, ["BAYES_99", "BAYES_999"]), (1.0, ["BAYES_99", "BAYES_999"]),
])
def test_probability_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, p: float, names: list[str]) -> None:
    clf = BayesClassifier(config(tmp_path, "bayes_scores = BAYES_99=4.5\n"))
    monkeypatch.setattr(clf, "evidence", lambda msg: (p, 0.0))
    syms = clf.symbols(spam(0))
    assert [s.name for s in syms] == names
    expected = {b.name: b.score for b in BANDS} | {"BAYES_99": 4.5}
    assert all(s.score == expected[s.name] for s in syms)


def test_bayes_scores_parameter() -> None:
    assert as_bayes_scores("")["BAYES_00"] == -5.0
    assert as_bayes_scores("bayes_00=-2, BAYES_95=3")["BAYES_00"] == -2.0
    for bad in ("BAYES_42=1", "BAYES_99", "BAYES_99=high"):
        with pytest.raises(ValueError):
            as_bayes_scores(bad)


def test_reload_when_another_process_replaces_the_file(tmp_path: Path) -> None:
    reader = BayesClassifier(config(tmp_path))
    assert reader.probability(spam(1)) is None
    trained(tmp_path)  # "another process" writes the model
    assert reader.probability(spam(1, seed=3)) > 0.99


def test_reload_interval_limits_stat_calls(tmp_path: Path) -> None:
    reader = BayesClassifier(config(tmp_path).__class__.from_text(
        f"data_directory = {tmp_path}\nbayes_min_spam_num = 5\nbayes_min_ham_num = 5\n"
        "bayes_reload_interval = 1h\n"))
    assert reader.probability(spam(1)) is None
    trained(tmp_path)
    assert reader.probability(spam(1)) is None  # not re-checked within the interval


def test_broken_file_keeps_previous_model_and_says_why(tmp_path: Path) -> None:
    trained(tmp_path)
    reader = BayesClassifier(config(tmp_path))
    assert reader.probability(spam(1, seed=4)) is not None
    path = Path(reader.path)
    path.write_bytes(b"garbage")
    os.utime(path, ns=(1, 1))
    assert reader.probability(spam(1, seed=4)) is not None
    assert reader.error is not None and "not a filterd Bayes model" in reader.error
    fresh = BayesClassifier(config(tmp_path))
    assert "not a filterd Bayes model" in fresh.describe()
    with pytest.raises(BayesModelError):
        fresh.learn([spam(1)], spam=True)


def test_concurrent_writers_are_merged(tmp_path: Path) -> None:
    trained(tmp_path)
    a = BayesClassifier(config(tmp_path))
    b = BayesClassifier(config(tmp_path))
    a.learn([spam(100)], spam=True)
    b.learn([ham(100), ham(101)], spam=False)
    a.save()
    b.save()  # b's file is stale: a's learning must survive
    model = BayesModel.load(a.path)
    assert (model.nspam, model.nham) == (11, 12)


def test_load_returns_one_instance_per_model(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    first = BayesClassifier.load(cfg)
    assert BayesClassifier.load(cfg) is first
    reloaded = config(tmp_path, "bayes_scores = BAYES_00=-3\n")
    assert BayesClassifier.load(reloaded) is first and first.scores["BAYES_00"] == -3.0


def test_autolearn_thresholds(tmp_path: Path) -> None:
    clf = trained(tmp_path, extra="bayes_auto_learn = yes\nbayes_auto_learn_save_interval = 0\n")
    bayes = [Symbol("BAYES_99", 3.8), Symbol("BAYES_999", 0.2)]
    # 15.0 total but 4.0 of it is Bayes: 11.0 < 12.0, not learned
    assert clf.maybe_autolearn(spam(200), 15.0, bayes + [Symbol("X", 11.0)]) is None
    assert clf.maybe_autolearn(spam(201), 16.5, bayes + [Symbol("X", 12.5)]) is True
    # -2.5 total, -1.0 without Bayes: below 0.1, learned as ham
    assert clf.maybe_autolearn(ham(202), -2.5, [Symbol("BAYES_00", -1.5), Symbol("Y", -1.0)]) is False
    assert clf.maybe_autolearn(ham(204), 0.0, [Symbol("BAYES_00", -1.5), Symbol("Y", 1.5)]) is None
    assert clf.maybe_autolearn(ham(203), 0.1, []) is None  # not below 0.1
    assert clf.maybe_autolearn(spam(201), 16.5, bayes + [Symbol("X", 12.5)]) is None  # already learned
    model = BayesModel.load(clf.path)  # saved at once: save interval 0
    assert (model.nspam, model.nham) == (11, 11)


def test_autolearn_off_by_default(tmp_path: Path) -> None:
    clf = trained(tmp_path)
    assert clf.maybe_autolearn(spam(300), 50.0, []) is None
    assert BayesModel.load(clf.path).nspam == 10
