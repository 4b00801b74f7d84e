"""Deliberately naive float64 references, written straight from the equations.

One sequence at a time, a Python loop over time, one matrix-vector product per
gate.  Weights use PyTorch's layout and gate order (see DESIGN.md):
LSTM (i, f, g, o), GRU (r, z, n).  Used by the tests to check the kernels and
the ``Recurrent`` layer; nothing here is fast or clever on purpose.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _split(w, G):
    return np.split(np.asarray(w, dtype=np.float64), G, axis=0)


def rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh", mask=None):
    hm = h if mask is None else h * mask
    pre = W_ih @ x + b_ih + W_hh @ hm + b_hh
    return np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0.0)


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh, mask=None):
    Wi, Wf, Wg, Wo = _split(W_ih, 4)
    Ui, Uf, Ug, Uo = _split(W_hh, 4)
    bi, bf, bg, bo = _split(b_ih, 4)
    ci, cf, cg, co = _split(b_hh, 4)
    hm = h if mask is None else h * mask
    i = sigmoid(Wi @ x + bi + Ui @ hm + ci)
    f = sigmoid(Wf @ x + bf + Uf @ hm + cf)
    g = np.tanh(Wg @ x + bg + Ug @ hm + cg)
    o = sigmoid(Wo @ x + bo + Uo @ hm + co)
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh, mask=None, reset_after=True):
    Wr, Wz, Wn = _split(W_ih, 3)
    Ur, Uz, Un = _split(W_hh, 3)
    br, bz, bn = _split(b_ih, 3)
    cr, cz, cn = _split(b_hh, 3)
    hm = h if mask is None else h * mask
    r = sigmoid(Wr @ x + br + Ur @ hm + cr)
    z = sigmoid(Wz @ x + bz + Uz @ hm + cz)
    if reset_after:
        n = np.tanh(Wn @ x + bn + r * (Un @ hm + cn))
    else:                                   # Cho et al. 2014, Keras reset_after=False
        n = np.tanh(Wn @ x + bn + Un @ (r * hm) + cn)
    return (1.0 - z) * n + z * h


def run_direction(cell, xs, h0, c0, W_ih, W_hh, b_ih, b_hh, nonlinearity="tanh", mask=None,
                  reset_after=True):
    """One sequence (T, F) through one direction; returns (T, H) outputs, h_T, c_T."""
    GH = np.shape(W_hh)[0]
    if b_ih is None:
        b_ih = np.zeros(GH)
        b_hh = np.zeros(GH)
    h = np.array(h0, dtype=np.float64)
    c = None if c0 is None else np.array(c0, dtype=np.float64)
    outs = []
    for x in xs:
        if cell == "lstm":
            h, c = lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh, mask)
        elif cell == "gru":
            h = gru_cell(x, h, W_ih, W_hh, b_ih, b_hh, mask, reset_after)
        else:
            h = rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh, nonlinearity, mask)
        outs.append(h)
    return np.array(outs), h, c


def recurrent_sequence(params, cell, x, num_layers=1, bidirectional=False, h0=None, c0=None,
                       nonlinearity="tanh", reset_after=True):
    """One unpadded sequence x (T, F) through a stacked (bi)directional layer.

    ``params`` uses PyTorch's state_dict names; ``h0``/``c0`` are
    (num_layers*D, H) for this one sequence.  Returns out (T, D*H), h_n, c_n
    as (num_layers*D, H).
    """
    D = 2 if bidirectional else 1
    H = np.shape(params["weight_hh_l0"])[1]
    inp = np.asarray(x, dtype=np.float64)
    h_n, c_n = [], []
    for k in range(num_layers):
        outs = []
        for d in range(D):
            s = f"_l{k}" + ("_reverse" if d else "")
            idx = k * D + d
            hh = np.zeros(H) if h0 is None else h0[idx]
            cc = (np.zeros(H) if c0 is None else c0[idx]) if cell == "lstm" else None
            seq = inp if d == 0 else inp[::-1]
            o, hT, cT = run_direction(cell, seq, hh, cc, params["weight_ih" + s], params["weight_hh" + s],
                                      params.get("bias_ih" + s), params.get("bias_hh" + s), nonlinearity,
                                      reset_after=reset_after)
            outs.append(o if d == 0 else o[::-1])
            h_n.append(hT)
            c_n.append(cT)
        inp = np.concatenate(outs, axis=1)
    return inp, np.array(h_n), (np.array(c_n) if cell == "lstm" else None)


def conv1d_preactivation(x, W):
    """Conv1d of one sequence without its bias ("same" zero padding, K odd),
    straight from the equations: x (L, F), W (C, F, K) -> (L, C)."""
    C, F, K = W.shape
    P = (K - 1) // 2
    L = x.shape[0]
    z = np.zeros((L, C))
    for t in range(L):
        for k in range(K):
            s = t + k - P
            if 0 <= s < L:
                z[t] += W[:, :, k] @ x[s]
    return z


def conv1d_relu_pool(x, W, b, pool=1):
    """One sequence through Conv1d ("same" zero padding, K odd) -> ReLU ->
    MaxPool1d(pool), straight from the equations in float64.

    x (L, F), W (C, F, K) (PyTorch's layout), b (C,) -> (L // pool, C)."""
    x = np.asarray(x, dtype=np.float64)
    C = W.shape[0]
    L = x.shape[0]
    r = np.maximum(conv1d_preactivation(x, W) + b, 0.0)
    L2 = L // pool
    return np.array([r[t * pool:(t + 1) * pool].max(axis=0) for t in range(L2)]).reshape(L2, C)
