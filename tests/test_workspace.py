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


def test_scratch_arrays_are_the_same_while_the_shapes_stay():
    """:func:`fastseq._workspace.scratch_arrays`: the same arrays while a
    name is asked for the same shapes and dtype, each its own memory;
    other shapes or a dtype get arrays of those (the memory of the
    name's when large enough), another thread its own."""
    _workspace.release()
    f32 = np.dtype(np.float32)
    a, b = _workspace.scratch_arrays("s", ((4, 5), (3,)), f32)
    assert a.shape == (4, 5) and b.shape == (3,) and a.dtype == b.dtype == f32
    assert a.flags.c_contiguous and not np.shares_memory(a, b)
    again = _workspace.scratch_arrays("s", ((4, 5), (3,)), f32)
    assert again[0] is a and again[1] is b
    c, d = _workspace.scratch_arrays("s", ((2, 5), (6,)), f32)
    assert c.shape == (2, 5) and d.shape == (6,) and np.shares_memory(a, c) and not np.shares_memory(b, d)
    e, = _workspace.scratch_arrays("s", ((2, 5),), np.dtype(np.float64))
    assert e.dtype == np.float64 and e.shape == (2, 5)
    other = []
    t = threading.Thread(target=lambda: other.extend(_workspace.scratch_arrays("s", ((2, 5),), f32)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], c)
    _workspace.release()
    assert _workspace.scratch_arrays("s", ((2, 5),), np.dtype(np.float64))[0] is not e


def test_fit_releases_the_layers_scratch():
    """An estimator's fit leaves no scratch memory behind in its thread
    (the weight gradients' buffers are as large as a batch's rows)."""
    from fastseq import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 6, 3)).astype(np.float32)
    y = np.arange(12) % 2
    _workspace.scratch("t", (3,), np.float32)
    RNNClassifier(cell="lstm", hidden_size=8, max_iter=2, batch_size=6, random_state=0).fit(X, y)
    assert getattr(_workspace._local, "arrays", {}) == {} and getattr(_workspace._local, "sets", {}) == {}


def test_kept_reuses_memory_only_once_nothing_else_holds_it():
    """:func:`fastseq._workspace.kept` hands an earlier call's memory out
    again only when no view of it is alive: a caller that kept the last
    call's arrays (or a slice of one) keeps their values."""
    store = {}
    a = _workspace.kept(store, "x", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    a[...] = 1
    b = _workspace.kept(store, "x", (4, 5), np.float32)      # a is alive: fresh memory
    assert not np.shares_memory(a, b)
    b[...] = 2
    assert (a == 1).all()
    del a
    c = _workspace.kept(store, "x", (2, 3), np.float32)      # b alive: fresh again
    assert not np.shares_memory(b, c)
    kept_b = b[1:]                                           # a slice outlives its view
    del b
    address = c.__array_interface__["data"][0]
    del c
    d = _workspace.kept(store, "x", (2, 3), np.float32)      # nothing holds c's memory now
    assert d.__array_interface__["data"][0] == address and d.shape == (2, 3) and d.flags.c_contiguous
    assert (kept_b == 2).all()
    del d
    e = _workspace.kept(store, "x", (5, 5), np.float32)      # larger than kept: new memory
    assert e.shape == (5, 5) and e.__array_interface__["data"][0] != address
    del e
    f = _workspace.kept(store, "x", (5, 5), np.float64)      # another dtype: new memory
    assert f.dtype == np.float64 and f.shape == (5, 5)


def test_a_training_step_reuses_the_layers_memory_and_keeps_a_saved_state():
    """Two training steps of a layer run in the same kept memory (fresh
    arrays of megabytes were faulted in anew at every step), the backward
    pass's gate gradients in the forward projection's; a forward pass's
    state saved elsewhere (as the estimators' streaming fit saves it) is
    not overwritten by the next forward pass, and pickling drops the
    memory."""
    import pickle

    from fastseq.nn import Recurrent

    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 5, 3)).astype(np.float32)
    G = rng.standard_normal((6, 5, 8)).astype(np.float32)
    for n_jobs in (1, 2):
        layer = Recurrent("lstm", 3, 8, random_state=0, n_jobs=n_jobs)
        layer.forward(X)
        layer.backward(G)
        first = {name: a.__array_interface__["data"][0] for name, a in layer._kept_arrays.items()}
        assert {"gates_x", "out_h00", "out_c00", "gates00"} <= set(first)
        out1, _ = layer.forward(X)
        _, grads1 = layer.backward(G)
        assert {name: a.__array_interface__["data"][0] for name, a in layer._kept_arrays.items()} == first
        saved = layer._cache
        gates = saved["layers"][0]["dirs"][0]["gates"].copy()
        layer.forward(X[::-1].copy())                      # another step while the state is held
        assert (saved["layers"][0]["dirs"][0]["gates"] == gates).all()
        layer._cache = saved
        _, grads2 = layer.backward(G)
        for name in grads1:
            np.testing.assert_array_equal(grads2[name], grads1[name])
        assert "_kept_arrays" not in pickle.loads(pickle.dumps(layer)).__dict__


def test_packed_weights_start_a_cache_line():
    """Packed weights (read as 64-byte vectors) start a 64-byte line
    wherever they are allocated: in compiled code (numba aligns to 32
    bytes), in Python scratch and as fresh numpy arrays (16 bytes)."""
    from numba import njit

    from fastseq.kernels.infer import own_packed
    from fastseq.kernels.matmul import pack_weight

    @njit
    def addresses(w):
        out = []
        for k in range(1, 9):
            out.append(pack_weight(w[:, :k]).ctypes.data % 64)
            out.append(own_packed(w, 4, 0, 16, 4, 1)[1].ctypes.data % 64)
        return out

    for dtype in (np.float32, np.float64):
        w = np.ones((64, 9), dtype=dtype)
        assert addresses(w) == [0] * 16
        for k in range(1, 9):
            assert _workspace.scratch(("line", k), (3, k), dtype).ctypes.data % 64 == 0
            got = _workspace.aligned_empty((k, 5), dtype)
            assert got.ctypes.data % 64 == 0 and got.shape == (k, 5) and got.flags.c_contiguous
