"""Seq2Seq network: float64 central-difference gradients, decoding, bad input."""

import numpy as np
import pytest

from fastseq.network.seq2seq import Seq2Seq
from conftest import central_difference

KINDS = ["bahdanau", "luong", "dot", "cosine", None]


def make_model(attention, outputs="tokens", cell="lstm", tokens_in=True, **kw):
    src = dict(src_vocab=7) if tokens_in else dict(input_size=2)
    return Seq2Seq(5, outputs=outputs, embedding_dim=3, cell=cell, hidden_size=3,
                   attention=attention, attention_units=4, dtype="float64", random_state=1,
                   **src, **kw)


def make_batch(rng, model, tokens_in=True, nan_padding=False):
    """Padded sources (lengths 5, 2, 3) and targets (lengths 4, 1, 3)."""
    B, S, T = 3, 5, 4
    lengths = np.array([5, 2, 3])
    if tokens_in:
        X = rng.integers(0, 7, (B, S))
    else:
        X = rng.standard_normal((B, S, 2))
        if nan_padding:
            for b, L in enumerate(lengths):
                X[b, L:] = np.nan
    if model.outputs == "tokens":
        Y = rng.integers(0, model.n_outputs, (B, T))
    else:
        Y = rng.standard_normal((B, T, model.n_outputs))
    return X, lengths, Y, np.array([4, 1, 3])


def numeric_grad(model, X, lengths, Y, y_len, use_truth, eps=1e-6):
    num = np.zeros_like(model.flat)
    for i in range(model.flat.shape[0]):
        num[i] = central_difference(lambda: model.forward_loss(X, lengths, Y, y_len, use_truth),
                                    model.flat, i, eps)
    return num


def assert_gradcheck(model, X, lengths, Y, y_len, use_truth=None):
    model.forward_loss(X, lengths, Y, y_len, use_truth)
    g = model.backward()
    num = numeric_grad(model, X, lengths, Y, y_len, use_truth)
    scale = max(1e-8, np.abs(num).max())
    assert np.abs(g - num).max() / scale < 1e-6
    return g


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("attention", KINDS)
def test_gradcheck_tokens_padded_sources(attention):
    rng = np.random.default_rng(0)
    m = make_model(attention)
    assert_gradcheck(m, *make_batch(rng, m))


@pytest.mark.parametrize("attention", KINDS)
def test_gradcheck_vectors_padded_sources_nan_padding(attention):
    rng = np.random.default_rng(1)
    m = make_model(attention, outputs="vectors", cell="gru", tokens_in=False)
    assert_gradcheck(m, *make_batch(rng, m, tokens_in=False, nan_padding=True))


@pytest.mark.parametrize("cell,decoder_cell,attention", [
    ("rnn", None, "bahdanau"), ("gru", "lstm", "luong"), ("lstm", "gru", "cosine"),
    ("lstm", "rnn", None),
])
def test_gradcheck_cells_stacked_bidirectional(cell, decoder_cell, attention):
    rng = np.random.default_rng(2)
    m = make_model(attention, cell=cell, decoder_cell=decoder_cell, num_layers=2,
                   bidirectional=True)
    assert_gradcheck(m, *make_batch(rng, m))


@pytest.mark.parametrize("outputs", ["tokens", "vectors"])
def test_gradcheck_scheduled_sampling(outputs):
    """teacher_forcing < 1: the model's own outputs are fed back (the argmax's
    embedding for tokens, the differentiated output vector for vectors)."""
    rng = np.random.default_rng(3)
    m = make_model("bahdanau", outputs=outputs, cell="gru")
    X, lengths, Y, y_len = make_batch(rng, m)
    use_truth = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.int64)
    assert_gradcheck(m, X, lengths, Y, y_len, use_truth)


def test_gradcheck_relu_rnn_decoder():
    rng = np.random.default_rng(5)
    m = make_model("dot", cell="rnn", nonlinearity="relu")
    assert_gradcheck(m, *make_batch(rng, m))


@pytest.mark.parametrize("outputs,cell,attention,teacher", [
    ("tokens", "gru", "bahdanau", True), ("tokens", "lstm", "luong", True),
    ("vectors", "gru", "bahdanau", False), ("vectors", "rnn", "cosine", False),
])
def test_float32_loss_and_gradient_match_float64(outputs, cell, attention, teacher):
    """The float32 kernels (weights packed once per call, the cells' rational
    tanh, products after the loop) against the float64 ones with the same
    parameters.  Q = 40 and B = 6 run the packed products' strips, tiles and
    remainders; ``teacher`` False feeds some outputs back (for vectors, the
    gradient through the fed-back output runs inside the loop)."""
    rng = np.random.default_rng(6)
    kw = dict(embedding_dim=5, cell=cell, hidden_size=20, bidirectional=True,
              attention=attention, attention_units=24, random_state=1, src_vocab=9)
    m64 = Seq2Seq(7, outputs=outputs, dtype="float64", **kw)
    m32 = Seq2Seq(7, outputs=outputs, dtype="float32", **kw)
    m32.flat[...] = m64.flat
    B, S, T = 6, 7, 5
    X = rng.integers(0, 9, (B, S))
    lengths = np.array([7, 3, 5, 1, 6, 7])
    Y = (rng.integers(0, 7, (B, T)) if outputs == "tokens"
         else rng.standard_normal((B, T, 7)))
    y_len = np.array([5, 2, 4, 1, 5, 3])
    use_truth = np.ones((T, B), dtype=np.int64)
    if not teacher:
        use_truth[1:] = rng.integers(0, 2, (T - 1, B))
    l64 = m64.forward_loss(X, lengths, Y, y_len, use_truth)
    g64 = m64.backward()
    l32 = m32.forward_loss(X, lengths, Y.astype(np.float32) if outputs == "vectors" else Y,
                           y_len, use_truth)
    g32 = m32.backward()
    assert abs(l32 - l64) <= 1e-4 * abs(l64)
    assert np.abs(g32 - g64).max() <= 1e-3 * np.abs(g64).max()


def test_fixed_cosine_sharpness_has_no_parameter():
    a = make_model("cosine")
    b = make_model("cosine", cosine_sharpness=4.0)
    assert "attention.sharpness" in a.params and "attention.sharpness" not in b.params
    assert b.n_params == a.n_params - 1


def test_padded_targets_and_sources_do_not_matter():
    """Changing padded source tokens or padded target entries changes nothing."""
    rng = np.random.default_rng(4)
    m = make_model("luong")
    X, lengths, Y, y_len = make_batch(rng, m)
    l1 = m.forward_loss(X, lengths, Y, y_len)
    g1 = m.backward()
    X2, Y2 = X.copy(), Y.copy()
    for b in range(3):
        X2[b, lengths[b]:] = 6
        Y2[b, y_len[b]:] = 0
    l2 = m.forward_loss(X2, lengths, Y2, y_len)
    g2 = m.backward()
    assert l1 == l2
    np.testing.assert_array_equal(g1, g2)


# ---------------------------------------------------------------- decoding
def trained_free_model(attention="bahdanau", seed=0):
    return Seq2Seq(6, outputs="tokens", src_vocab=8, embedding_dim=4, cell="gru",
                   hidden_size=5, attention=attention, dtype="float64", random_state=seed)


def source(rng, B=6, S=5):
    lengths = rng.integers(1, S + 1, B)
    lengths[0] = S
    return rng.integers(0, 8, (B, S)), lengths


@pytest.mark.parametrize("attention", ["bahdanau", "dot", None])
def test_beam_width_one_equals_greedy(attention):
    rng = np.random.default_rng(5)
    m = trained_free_model(attention)
    X, lengths = source(rng)
    tok, W, _ = m.greedy(X, lengths, 7)
    btok, bw, _ = m.beam_search(X, lengths, 7, beam_width=1)
    for b in range(len(lengths)):
        n = m._cut(tok[b])
        expect = tok[b, :n - 1] if tok[b, n - 1] == m.end_index else tok[b, :n]
        np.testing.assert_array_equal(btok[b], expect)
        np.testing.assert_allclose(bw[b], W[b, :n])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("penalty", [0.0, 1.0])
def test_beam_never_scores_below_greedy(seed, penalty):
    """Rescored by the model's own (teacher-forced) log-likelihood."""
    rng = np.random.default_rng(seed)
    m = trained_free_model("luong", seed)
    X, lengths = source(rng, B=8)
    T = 6
    tok, _, _ = m.greedy(X, lengths, T)

    def as_targets(seqs):
        y_len = np.array([len(s) for s in seqs])
        Y = np.zeros((len(seqs), y_len.max()), dtype=np.int64)
        for b, s in enumerate(seqs):
            Y[b, :len(s)] = s
        return Y, y_len

    greedy_seqs = [tok[b, :m._cut(tok[b])] for b in range(len(lengths))]
    toks, _, scores = m.beam_search(X, lengths, T, beam_width=4, length_penalty=penalty)
    # a hypothesis ended by the end token scored it; one cut at T steps did not
    beam_seqs = [np.append(t, m.end_index) if len(t) < T else t for t in toks]
    Yg, lg = as_targets(greedy_seqs)
    Yb, lb = as_targets(beam_seqs)
    sg = m.sequence_score(X, lengths, Yg, lg, penalty)
    sb = m.sequence_score(X, lengths, Yb, lb, penalty)
    assert np.all(sb >= sg - 1e-9)
    np.testing.assert_allclose(sb, scores, rtol=1e-9, atol=1e-9)


def test_beam_search_returns_valid_attention():
    rng = np.random.default_rng(6)
    m = trained_free_model("cosine")
    X, lengths = source(rng)
    toks, ws, _ = m.beam_search(X, lengths, 5, beam_width=3)
    for b, w in enumerate(ws):
        assert w.shape[1] == X.shape[1]
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-9)
        assert np.all(w[:, lengths[b]:] == 0.0)


def test_greedy_vectors_shapes():
    rng = np.random.default_rng(7)
    m = Seq2Seq(2, outputs="vectors", input_size=3, hidden_size=4, cell="lstm",
                attention="dot", dtype="float32", random_state=0)
    X = rng.standard_normal((4, 6, 3)).astype(np.float32)
    out, W, _ = m.greedy(X, np.array([6, 3, 1, 6]), 5)
    assert out.shape == (4, 5, 2) and W.shape == (4, 5, 6)
    np.testing.assert_allclose(W.sum(axis=2), 1.0, rtol=1e-5)
    assert np.all(W[2, :, 1:] == 0.0)


def test_unknown_attention_name_raises():
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(3, src_vocab=4, attention="additive")


def test_bad_target_lengths_raise():
    rng = np.random.default_rng(8)
    m = make_model("dot")
    X, lengths, Y, _ = make_batch(rng, m)
    for bad in ([0, 1, 1], [5, 1, 1], [1, 1]):
        with pytest.raises(ValueError, match="y_len"):
            m.forward_loss(X, lengths, Y, np.array(bad))


def test_config_rebuilds_same_architecture():
    m = make_model("bahdanau", bidirectional=True)
    m2 = Seq2Seq.from_config(m.config)
    assert m2.n_params == m.n_params and m2._layout == m._layout
