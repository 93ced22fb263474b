"""BayesModel: learning, chi-square probabilities, relearning, and the .npz file format."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from filterd.content.bayes import model as model_mod
from filterd.content.bayes.model import BayesModel, BayesModelError, message_key
from filterd.content.bayes.tokenizer import tokenize
from filterd.content.message import Message
from tests.unit.bayes_corpus import make_message

N_FEATURES = 2**16  # small vectors keep the tests fast; the format records the width


def trained(n: int = 20) -> BayesModel:
    model = BayesModel(n_features=N_FEATURES)
    model.learn([Message(make_message(True, i)) for i in range(n)], spam=True)
    model.learn([Message(make_message(False, i)) for i in range(n)], spam=False)
    return model


def test_learn_and_classify_synthetic_corpus() -> None:
    model = trained()
    assert (model.nspam, model.nham) == (20, 20)
    spam = [model.probability(Message(make_message(True, i, seed=1))) for i in range(10)]
    ham = [model.probability(Message(make_message(False, i, seed=1))) for i in range(10)]
    assert min(spam) > 0.9 and max(ham) < 0.1


def test_untrained_or_unknown_tokens_give_no_opinion() -> None:
    assert BayesModel(n_features=N_FEATURES).probability(Message(make_message(True, 0))) == 0.5
    unseen = Message(b"Subject: zzqx\n\nqwertyuiop asdfghjkl zxcvbnm\n")
    assert trained().probability(unseen) == pytest.approx(0.5, abs=0.2)


def test_learning_is_idempotent_and_relearning_moves_the_message() -> None:
    model = trained(5)
    msg = Message(make_message(True, 0))
    assert model.learn([msg, msg], spam=True)[:2] == (0, 2)
    counts_before = model.nb.feature_count_.copy()
    learned, examined, _ = model.learn([msg], spam=False)
    assert (learned, examined) == (1, 1)
    assert (model.nspam, model.nham) == (4, 6)
    assert model.learned[message_key(msg)] is False
    assert model.nb.feature_count_[1].sum() < counts_before[1].sum()


def test_batch_replays_onto_another_model() -> None:
    a, b = trained(5), trained(5)
    extra = [Message(make_message(True, 100 + i)) for i in range(3)]
    _, _, batch = a.learn(extra, spam=True)
    assert b.learn_batch(batch) == 3 and b.learn_batch(batch) == 0
    np.testing.assert_array_equal(a.nb.feature_count_, b.nb.feature_count_)


def test_save_load_round_trip_without_pickle(tmp_path: Path) -> None:
    model = trained()
    path = tmp_path / "bayes" / "model.npz"
    model.save(str(path))
    with np.load(path, allow_pickle=False) as data:  # every array loads without pickle
        assert all(data[name].dtype != object for name in data.files)
    loaded = BayesModel.load(str(path))
    assert loaded.n_features == N_FEATURES and (loaded.nspam, loaded.nham) == (20, 20)
    np.testing.assert_array_equal(loaded.nb.feature_count_, model.nb.feature_count_)
    assert loaded.learned == model.learned
    msg = Message(make_message(True, 3, seed=9))
    assert loaded.probability(msg) == pytest.approx(model.probability(msg))
    assert [p.name for p in path.parent.iterdir()] == ["model.npz"]  # no temp file left
    loaded.learn([Message(make_message(False, 77))], spam=False)  # learning continues
    assert loaded.nham == 21


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_load_refuses_garbage(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    with pytest.raises(BayesModelError, match="not a filterd Bayes model"):
        BayesModel.load(str(path))


def test_load_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    np.savez(path, format=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(BayesModelError, match="not a filterd Bayes model"):
        BayesModel.load(str(path))


def _fields(model: BayesModel, tmp_path: Path) -> dict[str, np.ndarray]:
    path = tmp_path / "good.npz"
    model.save(str(path))
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("token_counts"), "missing token_counts"),
    (lambda f: f.update(format=np.array("other")), "format other"),
    (lambda f: f.update(format_version=np.array(99)), "format version 99"),
    (lambda f: f.update(tokenizer_version=np.array(99)), "learn the corpus again"),
    (lambda f: f.update(token_counts=np.zeros((2, 7), dtype=np.uint32)), "shapes do not match"),
    (lambda f: f.update(learned_spam=np.zeros(3, dtype=bool)), "shapes do not match"),
])
def test_load_refuses_wrong_fields(tmp_path: Path, change, message: str) -> None:
    fields = _fields(trained(2), tmp_path)
    change(fields)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **fields)
    with pytest.raises(BayesModelError, match=message):
        BayesModel.load(str(bad))


def test_missing_file_is_not_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        BayesModel.load(str(tmp_path / "absent.npz"))


def test_failed_save_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.npz"
    trained(2).save(str(path))
    before = path.read_bytes()

    def explode(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(model_mod.np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        trained(3).save(str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
    assert zipfile.is_zipfile(path)


# -- hashing shortcut: must give exactly HashingVectorizer's indices ------------------
REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("FILTERD_CORPUS", REPO / ".." / "shared" / "corpus"))


def _vectorizer_indices(tokens: list[str], n_features: int) -> np.ndarray:
    vectorizer = model_mod.make_vectorizer(n_features)
    vectorizer.set_params(analyzer=lambda toks: toks)
    return vectorizer.transform([tokens]).indices


@pytest.mark.parametrize("n_features", [2**20, N_FEATURES, 1_000_003])
def test_token_indices_match_hashing_vectorizer(n_features: int) -> None:
    tokens = [f"tok{i}" for i in range(3000)] + ["H*F:D*example.com", "u8:日", "é", "", "tok1"]
    assert np.array_equal(model_mod.token_indices(tokens, n_features),
                          _vectorizer_indices(tokens, n_features))


def test_token_indices_of_nothing_and_of_invalid_text() -> None:
    assert model_mod.token_indices([]).size == 0
    with pytest.raises(UnicodeEncodeError):  # as the vectorizer: lone surrogates are no text
        model_mod.token_indices(["bad\udce9"])
    with pytest.raises(UnicodeEncodeError):
        _vectorizer_indices(["bad\udce9"], N_FEATURES)


def test_probability_equals_the_vectorizer_path() -> None:
    model = trained()
    for i in range(10):
        msg = Message(make_message(i % 2 == 0, i, seed=2))
        assert model.probability(msg) == model.probability_of_indices(model.vectorizer.transform([msg]).indices)


@pytest.mark.skipif(not (CORPUS / "spamassassin").is_dir(), reason=f"corpus not found at {CORPUS}")
@pytest.mark.slow  # every corpus message through scikit-learn's vectorizer: tens of seconds
def test_token_indices_match_hashing_vectorizer_on_corpus() -> None:
    """Every corpus message: the shortcut's indices are the vectorizer's (models stay valid)."""
    vectorizer = model_mod.make_vectorizer()
    files = sorted(p for p in (CORPUS / "spamassassin").glob("*/*") if p.is_file())
    for path in files:
        msg = Message(path.read_bytes())
        assert np.array_equal(model_mod.token_indices(tokenize(msg)), vectorizer.transform([msg]).indices), path
