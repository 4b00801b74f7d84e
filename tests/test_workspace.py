"""fastseq._workspace: scratch memory kept from call to call, per thread."""

import threading

import numpy as np

from fastseq import _workspace


def test_scratch_reuses_grows_and_is_per_thread():
    _workspace.release()
    a = _workspace.scratch("t", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    b = _workspace.scratch("t", (2, 3), np.float32)          # smaller: the same memory
    assert np.shares_memory(a, b) and b.shape == (2, 3) and b.flags.c_contiguous
    c = _workspace.scratch("t", (5, 5), np.float32)          # larger: new memory
    assert not np.shares_memory(a, c)
    d = _workspace.scratch("t", (5, 5), np.float64)          # another dtype: new memory
    assert d.dtype == np.float64 and not np.shares_memory(c, d)
    assert not np.shares_memory(_workspace.scratch("u", (5, 5), np.float64), d)   # another name
    other = []
    t = threading.Thread(target=lambda: other.append(_workspace.scratch("t", (5, 5), np.float64)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], d)                 # another thread
    _workspace.release()
    assert not np.shares_memory(_workspace.scratch("t", (5, 5), np.float64), d)


def test_fit_releases_the_layers_scratch():
    """An estimator's fit leaves no scratch memory behind in its thread
    (the weight gradients' buffers are as large as a batch's rows)."""
    from fastseq import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 6, 3)).astype(np.float32)
    y = np.arange(12) % 2
    _workspace.scratch("t", (3,), np.float32)
    RNNClassifier(cell="lstm", hidden_size=8, max_iter=2, batch_size=6, random_state=0).fit(X, y)
    assert getattr(_workspace._local, "arrays", {}) == {}
