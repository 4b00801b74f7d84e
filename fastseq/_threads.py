"""Thread control: how many threads fastseq's compiled code and BLAS may use.

The kernels hold no parallel region of their own (no ``prange``), so numba's
threading layer (fork-unsafe OpenMP here, workqueue that aborts under
concurrent callers) is never started: fastseq is safe after ``fork`` and from
several Python threads.  Parallelism comes from BLAS (limited here with
threadpoolctl) and from running nogil kernels on slices of a batch in Python
threads (:func:`get_num_threads` says how many).
"""

import os
import threading
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

_local = threading.local()


def default_num_threads():
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_n_jobs(n_jobs):
    """scikit-learn's convention: None -> 1, -1 -> all cores, -k -> all but k-1."""
    if n_jobs is None:
        return 1
    n = int(n_jobs)
    if n == 0:
        raise ValueError("n_jobs must be a non-zero integer or None, got 0")
    cores = default_num_threads()
    return n if n > 0 else max(1, cores + 1 + n)


def get_num_threads():
    """Threads the current thread's fastseq calls may use (default: 1)."""
    return getattr(_local, "n", 1)


@contextmanager
def limit(n_jobs):
    """Use ``n_jobs`` threads (scikit-learn convention) inside the block, for
    fastseq's own batch splitting and for every BLAS library; restore after."""
    n = resolve_n_jobs(n_jobs)
    old = get_num_threads()
    _local.n = n
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        _local.n = old
