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
