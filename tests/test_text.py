"""Text input of the token estimators: tokenizers, vocabulary caps, pretrained
vectors (dict or KeyedVectors-like), persistence of the tokenizer, bad input;
and one-to-many Seq2Seq (a sequence generated from one vector)."""

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fastseq
from fastseq import RNNClassifier, RNNRegressor, Seq2SeqClassifier, Seq2SeqRegressor, SequenceTagger
from fastseq._input import (N_RESERVED, UNKNOWN_INDEX, Vocabulary, check_sequences,
                            word_tokenizer)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = dict(hidden_size=6, max_iter=3, batch_size=8, random_state=0, n_jobs=1)

REVIEWS = ["A good film, truly good!", "Bad. Really bad and dull.", "It's a GOOD movie",
           "Dull, bad, awful plot", "good acting and a good cast", "awful: just bad"] * 3
LABELS = [1, 0, 1, 0, 1, 0] * 3


def split_on_dash(text):
    """A picklable callable tokenizer."""
    return text.split("-")


class FakeKeyedVectors:
    """The part of gensim's ``KeyedVectors`` interface fastseq reads."""

    def __init__(self, words, vectors):
        self.key_to_index = {w: i for i, w in enumerate(words)}
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.vector_size = self.vectors.shape[1]
        self.lookups = []

    def __contains__(self, key):
        return key in self.key_to_index

    def get_vector(self, key):
        self.lookups.append(key)
        return self.vectors[self.key_to_index[key]]

    def __getitem__(self, key):
        return self.get_vector(key)


def tokens_of(X, tokenizer="char"):
    return check_sequences(X, dtype=None, tokens=True, tokenizer=tokenizer)


# ---------------------------------------------------------------- tokenizers
def test_word_tokenizer_lowercases_and_keeps_punctuation_and_apostrophes():
    assert word_tokenizer("It's GOOD, isn't it?!") == ["it's", "good", ",", "isn't", "it", "?", "!"]
    assert word_tokenizer("  ") == []
    assert tokens_of(["Ab c"], "word").items == [["ab", "c"]]
    assert tokens_of(["Ab c"]).items == [["A", "b", " ", "c"]]  # "char", the default
    assert tokens_of(["a-b-c"], split_on_dash).items == [["a", "b", "c"]]
    # lists of tokens are taken as given, whatever the tokenizer
    assert tokens_of([["Ab", "c"]], "word").items == [["Ab", "c"]]


def test_char_default_unchanged_and_word_vocabulary():
    c = RNNClassifier(embedding_dim=3, **SMALL).fit(REVIEWS, LABELS)
    assert c.tokenizer == "char"
    assert set(c.vocabulary_.index) == set("".join(REVIEWS))
    w = RNNClassifier(embedding_dim=3, tokenizer="word", **SMALL).fit(REVIEWS, LABELS)
    assert list(w.vocabulary_.index)[:5] == ["a", "good", "film", ",", "truly"]
    assert "it's" in w.vocabulary_.index and "GOOD" not in w.vocabulary_.index
    assert w.predict(["good GOOD good", "never seen words"]).shape == (2,)


# ---------------------------------------------------------------- vocabulary
def test_vocabulary_caps_keep_most_frequent_with_deterministic_ties():
    seqs = tokens_of([["c", "a", "b", "a"], ["d", "b", "e", "a"], ["d"]])
    # counts: c 1, a 3, b 2, d 2, e 1 (first appearance c, a, b, d, e)
    assert list(Vocabulary.build(seqs).index) == ["c", "a", "b", "d", "e"]  # no cap: all
    v = Vocabulary.build(seqs, min_frequency=2)
    assert list(v.index) == ["a", "b", "d"]
    assert [v.index[t] for t in v.index] == [2, 3, 4]
    # 2 real tokens: a (3), then the tie b/d (2 each) goes to b, seen first
    v = Vocabulary.build(seqs, max_vocabulary=N_RESERVED + 2)
    assert list(v.index) == ["a", "b"] and len(v) == N_RESERVED + 2
    v = Vocabulary.build(seqs, max_vocabulary=N_RESERVED + 3)
    assert list(v.index) == ["a", "b", "d"]
    v = Vocabulary.build(seqs, max_vocabulary=N_RESERVED + 1, min_frequency=3)
    assert list(v.index) == ["a"]
    assert_array_equal(v.encode(seqs).items[0], [UNKNOWN_INDEX, 2, UNKNOWN_INDEX, 2])
    # a cap above the number of tokens changes nothing
    assert list(Vocabulary.build(seqs, max_vocabulary=100).index) == ["c", "a", "b", "d", "e"]


def test_max_vocabulary_counts_reserved_indices():
    c = RNNClassifier(embedding_dim=3, tokenizer="word", max_vocabulary=5, **SMALL)
    c.fit(REVIEWS, LABELS)
    assert len(c.vocabulary_) == 5
    assert c.model_.emb.params["weight"].shape == (5, 3)
    for bad in (1, 2):
        with pytest.raises(ValueError, match=r"max_vocabulary=%d .*at least 3" % bad):
            RNNClassifier(embedding_dim=3, max_vocabulary=bad, **SMALL).fit(REVIEWS, LABELS)
    for bad in (0, -1, 2.5, "10"):
        with pytest.raises(ValueError, match="max_vocabulary"):
            RNNClassifier(embedding_dim=3, max_vocabulary=bad, **SMALL).fit(REVIEWS, LABELS)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="min_frequency"):
            RNNClassifier(embedding_dim=3, min_frequency=bad, **SMALL).fit(REVIEWS, LABELS)


def test_min_frequency_trains_the_unknown_vector():
    """With min_frequency=2 the singleton tokens are UNKNOWN_INDEX in the
    training data itself, so the unknown row gets gradient; without rare
    tokens it never does (Adam's step on a row of zero gradient is zero)."""
    X = ["good film", "bad film", "good zebra", "bad yak", "good cast", "bad cast"] * 2 + \
        ["good unicorn", "bad gnu"]
    y = [1, 0, 1, 0, 1, 0] * 2 + [1, 0]
    est = RNNClassifier(embedding_dim=3, tokenizer="word", min_frequency=2, **SMALL)
    data = est._prepare_fit(X, y, reset=True)
    assert "unicorn" not in est.vocabulary_.index and "zebra" in est.vocabulary_.index
    assert_array_equal(data.X.items[-2], [est.vocabulary_.index["good"], UNKNOWN_INDEX])
    assert_array_equal(data.X.items[-1], [est.vocabulary_.index["bad"], UNKNOWN_INDEX])

    def unknown_row_moves(**kw):
        a = RNNClassifier(embedding_dim=3, tokenizer="word", **SMALL, **kw)
        a.set_params(max_iter=1).fit(X, y)
        before = a.model_.emb.params["weight"][UNKNOWN_INDEX].copy()
        a.partial_fit(X, y)
        return not np.array_equal(before, a.model_.emb.params["weight"][UNKNOWN_INDEX])

    assert unknown_row_moves(min_frequency=2)
    assert not unknown_row_moves(min_frequency=1)


# -------------------------------------------------------- pretrained vectors
def _initial_table(est, X, y):
    """The embedding table a fit starts from (before any update)."""
    est._validate_params()
    data = est._prepare_fit(X, y, reset=True)
    return est._build_model(data, np.random.default_rng(0)).emb.params["weight"]


def test_pretrained_keyed_vectors_and_caps():
    words = ["good", "bad", "awful", "truly", "nowhere"]
    vecs = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    kv = FakeKeyedVectors(words, vecs)
    # "truly" appears 3 times, so a cap of 2 + 3 tokens or min_frequency 4 leaves it out
    est = RNNClassifier(embedding_dim=3, tokenizer="word", pretrained_embeddings=kv,
                        min_frequency=4, **SMALL)
    W = _initial_table(est, REVIEWS, LABELS)
    idx = est.vocabulary_.index
    assert_allclose(W[idx["good"]], vecs[0])
    assert_allclose(W[idx["bad"]], vecs[1])
    assert "truly" not in idx and "nowhere" not in idx  # left out: stays unknown
    assert not np.any(np.all(np.isclose(W[:, None, :], vecs[None, 3:, :]), axis=2))
    # only vocabulary tokens are looked up (a large KeyedVectors is never iterated)
    assert set(kv.lookups) <= set(idx)
    # without caps "truly" is kept and initialised
    est = RNNClassifier(embedding_dim=3, tokenizer="word", pretrained_embeddings=kv, **SMALL)
    W = _initial_table(est, REVIEWS, LABELS)
    assert_allclose(W[est.vocabulary_.index["truly"]], vecs[3])
    # a dict works as before, int tokens too
    est = RNNClassifier(embedding_dim=3, pretrained_embeddings={5: vecs[2]}, **SMALL)
    W = _initial_table(est, [[5, 6], [6, 5, 5]] * 4, [0, 1] * 4)
    assert_allclose(W[est.vocabulary_.index[5]], vecs[2])
    # it trains and predicts
    RNNClassifier(embedding_dim=3, tokenizer="word", pretrained_embeddings=kv,
                  **SMALL).fit(REVIEWS, LABELS).predict(REVIEWS[:2])
    with pytest.raises(ValueError, match="vector_size=3.*embedding_dim=4"):
        RNNClassifier(embedding_dim=4, tokenizer="word", pretrained_embeddings=kv,
                      **SMALL).fit(REVIEWS, LABELS)
    with pytest.raises(ValueError, match="pretrained_embeddings"):
        RNNClassifier(embedding_dim=3, pretrained_embeddings=[1, 2], **SMALL).fit(REVIEWS, LABELS)


# ---------------------------------------------------------------- persistence
def test_save_load_round_trips_tokenizer_and_caps(tmp_path):
    est = RNNClassifier(embedding_dim=3, tokenizer="word", max_vocabulary=8, min_frequency=2,
                        **SMALL).fit(REVIEWS, LABELS)
    est.save(tmp_path / "m.npz")
    back = fastseq.load(tmp_path / "m.npz")
    assert (back.tokenizer, back.max_vocabulary, back.min_frequency) == ("word", 8, 2)
    assert back.vocabulary_.index == est.vocabulary_.index
    new = ["A GOOD, good film", "dull and bad"]
    assert_allclose(back.predict_proba(new), est.predict_proba(new))
    assert_array_equal(pickle.loads(pickle.dumps(est)).predict(new), est.predict(new))


def test_callable_tokenizer_pickles_but_cannot_be_saved(tmp_path):
    X = ["good-film", "bad-film", "good-cast-good", "bad-plot"] * 3
    y = [1, 0, 1, 0] * 3
    est = RNNClassifier(embedding_dim=3, tokenizer=split_on_dash, **SMALL).fit(X, y)
    assert set(est.vocabulary_.index) == {"good", "film", "bad", "cast", "plot"}
    with pytest.raises(TypeError, match="tokenizer=<function split_on_dash.*Pickle"):
        est.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    back = pickle.loads(pickle.dumps(est))
    assert back.tokenizer is split_on_dash
    assert_allclose(back.predict_proba(X), est.predict_proba(X))
    # a fresh estimator with a callable tokenizer refuses too
    with pytest.raises(TypeError, match="tokenizer"):
        RNNClassifier(tokenizer=split_on_dash).save(tmp_path / "u.npz")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("Est,y", [(RNNClassifier, [0, 1, 0]), (RNNRegressor, [0.0, 1.0, 2.0])])
def test_empty_sequences_are_errors_naming_the_sample(Est, y):
    est = Est(embedding_dim=3, tokenizer="word", **SMALL)
    with pytest.raises(ValueError, match=r"X\[1\] is a zero-length sequence \(an empty string\)"):
        est.fit(["good", "", "bad"], y)
    with pytest.raises(ValueError, match=r"X\[2\] is a zero-length sequence"):
        est.fit([["good"], ["bad"], []], y)
    with pytest.raises(ValueError, match=r"X\[1\] = '  \?\?' gives no tokens with tokenizer "
                                         r"'no_question_marks'"):
        est.set_params(tokenizer=no_question_marks).fit(["good", "  ??", "bad"], y)
    fitted = Est(embedding_dim=3, tokenizer="word", **SMALL).fit(["good", "so bad", "bad"], y)
    with pytest.raises(ValueError, match=r"X\[0\] = ' ' gives no tokens with tokenizer 'word'"):
        fitted.predict([" "])


def no_question_marks(text):
    return [t for t in text.split() if t != "??"]


@pytest.mark.parametrize("tok,err,msg", [
    (lambda s: s.split()[0] if s.split() else s, TypeError,
     r"tokenizer '<lambda>' returned str for X\[0\]; a tokenizer must return a list"),
    (lambda s: iter(s), TypeError, r"returned \w+iterator for X\[0\]"),
    (lambda s: [s.split()], TypeError,
     r"X\[0\] holds \['good'\] of type list \(from tokenizer '<lambda>'\); tokens must be"),
    (lambda s: [len(s) / 2], TypeError, r"X\[0\] holds 2.0 of type float"),
    (lambda s: [None], TypeError, r"X\[0\] holds None"),
])
def test_tokenizer_returning_bad_values(tok, err, msg):
    with pytest.raises(err, match=msg):
        RNNClassifier(embedding_dim=3, tokenizer=tok, **SMALL).fit(["good", "bad"], [0, 1])


def test_unknown_tokenizer_name():
    for bad in ("words", "WORD", "", 3, None):
        with pytest.raises(ValueError, match="tokenizer"):
            RNNClassifier(embedding_dim=3, tokenizer=bad, **SMALL).fit(["ab", "ba"], [0, 1])
        with pytest.raises(ValueError, match="tokenizer"):
            Seq2SeqClassifier(tokenizer=bad, max_iter=1).fit(["ab", "ba"], ["x", "y"])
    with pytest.raises(ValueError, match="tokenizer must be 'char', 'word' or a callable"):
        tokens_of(["ab"], "words")


# ------------------------------------------------------ the other estimators
def test_tagger_regressor_and_seq2seq_source_use_the_tokenizer(tmp_path):
    X = ["The cat sat.", "A dog ran!", "the dog sat"] * 4
    tags = [["D", "N", "V", "P"], ["D", "N", "V", "P"], ["D", "N", "V"]] * 4
    tagger = SequenceTagger(embedding_dim=3, tokenizer="word", **SMALL).fit(X, tags)
    pred = tagger.predict(["the cat ran!"])
    assert [len(p) for p in pred] == [4]
    reg = RNNRegressor(embedding_dim=3, tokenizer="word", max_vocabulary=4, **SMALL)
    reg.fit(X, np.arange(12.0))
    assert len(reg.vocabulary_) == 4 and reg.predict(X[:3]).shape == (3,)

    s2s = Seq2SeqClassifier(hidden_size=8, embedding_dim=4, max_iter=2, tokenizer="word",
                            min_frequency=2, random_state=0, n_jobs=1)
    s2s.fit(X + ["A unicorn ran"], ["ab", "ba", "ab"] * 4 + ["ba"])
    assert "unicorn" not in s2s.vocabulary_.index and "dog" in s2s.vocabulary_.index
    assert "ab" not in s2s.classes_.tolist() and set(s2s.classes_) == {"a", "b"}  # targets: chars
    s2s.save(tmp_path / "s.npz")
    back = fastseq.load(tmp_path / "s.npz")
    assert back.tokenizer == "word" and back.min_frequency == 2
    assert_array_equal(back.predict(X[:3]), s2s.predict(X[:3]))
    with pytest.raises(ValueError, match=r"X\[1\] = ' \?\?' gives no tokens"):
        s2s.set_params(tokenizer=no_question_marks).predict(["a", " ??"])


# -------------------------------------------------------------- one to many
NAMES = ["ab", "bca", "cab", "b"]


def one_to_many_data(n=240, F=6, seed=0):
    """One vector per sample, well separated by class: feature k lights up for
    class k; the target is that class's name."""
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, len(NAMES), n)
    X = rng.normal(scale=0.1, size=(n, 1, F))
    X[np.arange(n), 0, lab] += 3.0
    return X, lab


def test_one_to_many_classifier(tmp_path):
    X, lab = one_to_many_data()
    y = [NAMES[i] for i in lab]
    est = Seq2SeqClassifier(cell="gru", hidden_size=16, embedding_dim=8, max_iter=30,
                            batch_size=16, learning_rate=2e-2, random_state=0, n_jobs=1)
    est.fit(X, y)
    assert est.vocabulary_ is None
    assert est.n_features_in_ == 6 and est.n_features_per_step_ == 6
    assert est.model_.config["input_size"] == 6 and est.model_.config["src_vocab"] is None
    assert est.loss_curve_[-1] < 0.2 * est.loss_curve_[0]
    assert est.score(X, y) > 0.9  # four classes 30 standard deviations apart
    pred, att = est.predict(X[:4], return_attention=True)
    assert pred.dtype == object and all(isinstance(p, str) for p in pred)
    assert [a.shape for a in att] == [(len(p), 1) for p in pred]  # one source step
    assert all(np.allclose(a, 1.0) for a in att)
    # ragged form of the same one-step sources predicts the same
    assert_array_equal(est.predict(list(X[:5])), est.predict(X[:5]))
    est.save(tmp_path / "m.npz")
    assert_array_equal(fastseq.load(tmp_path / "m.npz").predict(X), est.predict(X))
    with pytest.raises(ValueError, match="7 features per step.*expecting 6"):
        est.predict(np.zeros((2, 1, 7)))
    with pytest.raises(TypeError, match="real numbers"):
        est.predict(["ab"])
    with pytest.raises(TypeError, match=r"2-D float array.*X\[:, None, :\]"):
        est.predict(X[:, 0, :])
    # a 2-D array is token ids, never one-step features
    tok = Seq2SeqClassifier(hidden_size=4, embedding_dim=2, max_iter=1, random_state=0)
    tok.fit(np.array([[1, 2], [2, 1]]), ["a", "b"])
    assert tok.vocabulary_ is not None


def test_one_to_many_regressor():
    X, lab = one_to_many_data(n=160)
    curves = np.stack([np.sin(np.linspace(0.5, 3, 5) * (k + 1)) for k in range(len(NAMES))])
    y = curves[lab][:, :, None]
    est = Seq2SeqRegressor(cell="gru", hidden_size=16, max_iter=40, batch_size=16,
                           learning_rate=2e-2, random_state=0, n_jobs=1).fit(X, y)
    pred = est.predict(X)
    assert pred.shape == (160, 5, 1)
    assert est.loss_curve_[-1] < 0.2 * est.loss_curve_[0]
    assert est.score(X, y) > 0.8
