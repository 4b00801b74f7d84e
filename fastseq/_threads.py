"""Thread control: how many threads fastseq's compiled code and BLAS may use.

The kernels hold no parallel region of their own (no ``prange``), so numba's
threading layer (fork-unsafe OpenMP here, workqueue that aborts under
concurrent callers) is never started: fastseq is safe after ``fork`` and from
several Python threads.  Parallelism comes from running the nogil kernels
on slices of a batch, for the whole sequence, and large matrix products on
row blocks, in Python threads (:func:`get_num_threads` says how many: by
default every core the process may run on, within the limits set around it,
:func:`default_num_threads`), with every BLAS held at one thread
(threadpoolctl) while fastseq works.
"""

import collections
import ctypes
import functools
import queue
import os
import sys
import threading
import time
from _thread import allocate_lock as _allocate_lock

import numpy as np

from . import _plan
from ._fpenv import flush_denormals
from .kernels import _sync
from .kernels._sync import (CLAIMED, LINGER, QUEUED, STARTED, STRIDE, claim, linger, publish, signal_then_spin,
                            spin_until, wait_started)
from .kernels import _native
from .kernels._native import fewest_threads as _fewest_threads
from .kernels.matmul import pack_into, packed_shape, transpose_into
from ._workspace import scratch


_local = threading.local()

#: environment variables whose (first) value caps the default thread count:
#: the OpenMP convention that joblib's loky workers (``cpu_count() // n_jobs``)
#: and Dask's nanny (1) set, and numba's own knob
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


def _cpu_count():
    """Cores this process may run on: joblib's (loky's) ``cpu_count``, which
    reads the CPU affinity, the cgroup CPU quota and ``LOKY_MAX_CPU_COUNT``."""
    try:
        from joblib import cpu_count
    except ImportError:  # pragma: no cover - joblib comes with scikit-learn
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:
            return max(1, os.cpu_count() or 1)
    return max(1, cpu_count())


def _env_threads(value):
    """The thread count an ``OMP_NUM_THREADS``-like value asks for ("4", or
    "4,2" for nested levels: the first), None when unset or not a count."""
    try:
        n = int(str(value).split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


_process_cache = None


def _process_threads():
    """``(cores, threads)`` of this process, read once (at the first call,
    again after ``fork``): :func:`_cpu_count`, and that capped by
    :data:`THREAD_ENV_VARS`."""
    global _process_cache
    cached = _process_cache
    if cached is None:
        cores = threads = _cpu_count()
        for var in THREAD_ENV_VARS:
            cap = _env_threads(os.environ.get(var))
            if cap is not None:
                threads = min(threads, cap)
        cached = _process_cache = (cores, threads)
    return cached


def _dask_worker_threads(cores):
    """Inside a task of a Dask worker, its share of the cores
    (``cores // nthreads``: the worker runs ``nthreads`` tasks at once), else
    ``cores``.  Only looked up when ``distributed`` is imported.  (A worker
    started by a nanny also has ``OMP_NUM_THREADS=1`` by default, which
    :func:`_process_threads` reads.)"""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return cores
    try:
        nthreads = int(distributed.get_worker().nthreads)
    except Exception:  # not in a worker's task (ValueError), or another version's API
        return cores
    return max(1, cores // max(1, nthreads))


#: what a library that reports no thread count is read as (no limit)
_NO_LIMIT = _native.NO_LIMIT


def _count_reader(ctrl):
    """A function returning the thread count of threadpoolctl's controller
    ``ctrl``: the C function its ``get_num_threads`` calls (a third of the
    cost) for OpenMP, MKL and OpenBLAS when it answers the same, else the
    method itself (None read as :data:`_NO_LIMIT`)."""
    try:
        api = ctrl.internal_api
        if api == "openmp":
            fn = ctrl.dynlib.omp_get_max_threads
        elif api == "mkl":
            fn = ctrl.dynlib.MKL_Get_Max_Threads
        elif api == "openblas":
            openmp = getattr(ctrl, "threading_layer", None) == "openmp"
            fn = ctrl._get_symbol("omp_get_max_threads" if openmp else "openblas_get_num_threads")
        else:
            fn = None
        if fn is not None and fn() == ctrl.get_num_threads():
            return fn
    except Exception:  # another threadpoolctl: its public method
        pass
    return lambda: ctrl.get_num_threads() or _NO_LIMIT


_pool_readers = None


def _threadpool_threads():
    """The fewest threads any BLAS or OpenMP library that threadpoolctl finds
    may use now (``threadpool_limits`` sets them; their environment variables
    set them at load); :data:`_NO_LIMIT` when there is none.

    BLAS is read as it was before fastseq held it at one thread
    (:class:`_BlasSingleThread`), so fastseq's own setting is never taken for
    a limit: fastseq writes only ones, so a read without a one is the user's,
    and one with a one is read again under the lock of that setting.  The
    libraries are found once (one loaded later is not read).
    """
    blas, omp, addrs = _pool_readers or _find_pool_readers()
    if addrs is not None:  # every count from a C function: one compiled call
        fewest_blas, fewest_omp = _fewest_threads(addrs, len(blas))
        if fewest_blas > 1:
            return min(fewest_blas, fewest_omp)
    counts = [get() for get in blas]
    if 1 in counts:
        with _blas_lock:
            counts = [n or _NO_LIMIT for n in _blas_saved] if _blas_depth else [get() for get in blas]
    counts += [get() for get in omp]
    return min(counts) if counts else _NO_LIMIT


def _find_pool_readers():
    """``(blas, openmp, addrs)``: :func:`_count_reader` of each library,
    found once, and when every reader is a C function, their addresses
    (int64, BLAS first) for :func:`fastseq.kernels._native.fewest_threads`,
    else None."""
    global _pool_readers
    from threadpoolctl import ThreadpoolController

    omp = [c for c in ThreadpoolController().lib_controllers if c.user_api == "openmp"]
    blas, omp = [_count_reader(c) for c in _blas_controllers()], [_count_reader(c) for c in omp]
    readers = blas + omp
    addrs = None
    if all(isinstance(get, ctypes._CFuncPtr) for get in readers):
        addrs = np.array([ctypes.cast(get, ctypes.c_void_p).value for get in readers], dtype=np.int64)
    _pool_readers = (blas, omp, addrs)
    return _pool_readers


def _forget_process_threads():
    global _process_cache
    _process_cache = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_process_threads)


def default_num_threads():
    """Threads a fastseq call uses when nothing sets ``n_jobs``: every core
    this process may run on, within the limits set around it.

    The smallest of: the cores of the process's CPU affinity and cgroup CPU
    quota (joblib's ``cpu_count``); ``OMP_NUM_THREADS`` and
    ``NUMBA_NUM_THREADS`` (joblib sets both to ``cpu_count() // n_jobs`` in
    its loky workers, Dask's nanny ``OMP_NUM_THREADS=1`` in its workers);
    inside a Dask worker's task, ``cores // nthreads`` of the worker; the
    thread count of every BLAS and OpenMP library that threadpoolctl sees
    (``threadpool_limits(n)``).  The first two are read once per process,
    the others at every call (0.3 us: one compiled call reads the libraries'
    counts, :func:`fastseq.kernels._native.fewest_threads`).
    """
    n = (_process_cache or _process_threads())[1]
    if n > 1 and "distributed" in sys.modules:
        n = _dask_worker_threads(n)
    if n > 1:
        n = min(n, _threadpool_threads())
    return n


def resolve_n_jobs(n_jobs):
    """Threads for ``n_jobs``: None -> :func:`default_num_threads`; an integer
    as scikit-learn reads it, k > 0 -> k, -1 -> every core of the process's
    affinity and cgroup quota, -k -> all but k-1 of them (at least 1)."""
    if n_jobs is None:
        return default_num_threads()
    n = int(n_jobs)
    if n == 0:
        raise ValueError("n_jobs must be a non-zero integer or None, got 0")
    return n if n > 0 else max(1, _process_threads()[0] + 1 + n)


def get_num_threads():
    """Threads the current thread's fastseq calls may use: those of the
    innermost :func:`limit` block around it, else :func:`default_num_threads`."""
    n = getattr(_local, "n", None)
    return default_num_threads() if n is None else n


def call_threads(n_jobs):
    """The thread count that :func:`limit` with ``n_jobs`` gives a call
    here, without entering it."""
    if n_jobs is not None:
        return resolve_n_jobs(n_jobs)
    n = getattr(_local, "n", None)
    return default_num_threads() if n is None else n


class _Limit:
    """The context manager of :func:`limit` (a class, not a generator: a
    layer enters one on every call)."""

    __slots__ = ("n_jobs", "blas", "old")

    def __init__(self, n_jobs, blas):
        self.n_jobs = n_jobs
        self.blas = blas_single_thread() if blas else None

    def __enter__(self):
        self.old = old = getattr(_local, "n", None)
        if self.n_jobs is not None:
            n = resolve_n_jobs(self.n_jobs)
        else:
            n = default_num_threads() if old is None else old
        if self.blas is not None:
            self.blas.__enter__()
        _local.n = n
        return n

    def __exit__(self, *exc):
        _local.n = self.old
        if self.blas is not None:
            self.blas.__exit__(*exc)
        return False


def limit(n_jobs, blas=True):
    """Use ``n_jobs`` threads (scikit-learn convention) inside the block; restore after.

    ``n_jobs=None`` keeps the count of an enclosing ``limit`` block (an
    estimator's, around the layers it calls), else takes
    :func:`default_num_threads`.  The block yields the count.

    fastseq's parallelism is its own: the batch split of the kernels
    (:func:`run_sliced`) and row blocks of its large matrix products
    (:func:`parallel_matmul`), ``n_jobs`` threads in all.  Every BLAS library
    is held at one thread meanwhile (:func:`blas_single_thread`; not with
    ``blas=False``, for callers that hold it themselves), so there is no
    oversubscription, and results depend on the thread count only, never on
    what BLAS threading another thread sets (OpenBLAS rounds differently
    with different thread counts).

    Denormal floats are flushed to zero meanwhile, in this thread and in the
    pool threads while they run fastseq's work (:mod:`fastseq._fpenv`:
    MXCSR FTZ and DAZ on x86-64, FPCR FZ on aarch64, nothing elsewhere):
    values below the smallest normal number (float32 1.18e-38, float64
    2.23e-308) are read and produced as zero, as PyTorch does under
    ``torch.set_flush_denormal(True)``, and gradients fading over long
    sequences never take the CPU's slow denormal path.  The thread's own
    setting is back when the block exits (also on an exception).
    """
    return _Limit(n_jobs, blas)


# ------------------------------------------------------------------------
# Batch splitting: nogil kernels on disjoint slices of a sorted batch, for the
# whole sequence (never a per-step split), BLAS at one thread inside.

_pools = {}
_pools_pid = None
_pid = os.getpid()   # this process's (set again in a forked child)
_pools_lock = threading.Lock()
_blas = None

# ------------------------------------------------------------------------
# Where the pool's threads run.  A pool thread sleeps between calls; when a
# call wakes it, the kernel's scheduler picks its CPU, and on a virtual
# machine whose idle vCPUs the guest sees as preempted (KVM's paravirtual
# steal/preempt flags) it often picks the caller's own CPU: the two halves of
# a split call then run one after the other.  On the 2-vCPU machines here
# that happened to 361-366 of 400 conv front-end calls made in bursts (10
# calls after 20 ms of idle; python -m bench.handover), doubling their time.  So each time a call hands work
# to the pool, the pool's threads are allowed every CPU of the process but
# the caller's current one (Linux only; nothing is done when there are not
# more CPUs than pool threads, or the process's CPUs cannot be read).

_worker_tids = {}    # pool size -> native ids of its threads
_placed = {}         # pool size -> the CPU set its threads were last given

try:  # glibc and musl: the CPU this thread runs on now
    import ctypes as _ctypes

    _sched_getcpu = _ctypes.CDLL(None).sched_getcpu
    _sched_getcpu.restype = _ctypes.c_int
    _sched_getcpu.argtypes = []
except (OSError, AttributeError, TypeError):  # pragma: no cover - not Linux
    _sched_getcpu = None

PLACEMENT_AVAILABLE = _sched_getcpu is not None and hasattr(os, "sched_setaffinity")


def _current_cpu():
    """The CPU the calling thread runs on now (-1 when unknown)."""
    return int(_sched_getcpu()) if _sched_getcpu is not None else -1


_affinity = threading.local()
#: seconds for which a thread's CPU affinity, once read, stands (each
#: hand-over reads it: a system call and a set, 1 us of a 40 us split call)
AFFINITY_TTL = 0.05


def _allowed_cpus():
    """The CPUs the calling thread may run on (read at most every
    :data:`AFFINITY_TTL` seconds)."""
    now = time.monotonic()
    got = getattr(_affinity, "cpus", None)
    if got is None or now - got[0] > AFFINITY_TTL:
        got = _affinity.cpus = (now, frozenset(os.sched_getaffinity(0)))
    return got[1]


def _record_worker(workers):
    tids = _worker_tids.setdefault(workers, [])
    tid = threading.get_native_id()
    tids.append(tid)
    cpus = _placed.get(workers)
    if cpus is not None:
        _set_affinity(tid, cpus)


def _set_affinity(tid, cpus):
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError:  # a thread gone, or a CPU set no longer allowed
        pass


def _place(workers):
    """Let the ``workers`` threads of the pool of that size run anywhere the
    process may run but on the calling thread's current CPU (see above)."""
    if not PLACEMENT_AVAILABLE:
        return
    try:
        allowed = _allowed_cpus()
    except OSError:  # pragma: no cover
        return
    cpu = _current_cpu()
    if len(allowed) <= workers or cpu not in allowed:
        cpus = allowed
    else:
        cpus = allowed - {cpu}
    if _placed.get(workers) != cpus:
        _placed[workers] = cpus
        for tid in _worker_tids.get(workers, ()):
            _set_affinity(tid, cpus)


# ------------------------------------------------------------------------
# A busy CPU.  A split call waits for its slowest part (a unit split at
# every step), so when another process or thread takes the CPU that one of
# its threads runs on, the scheduler gives that thread a share of it in
# slices of milliseconds and the whole call waits for it: an LSTM of 256
# units, batch 1, 32 steps took 0.35 ms on two threads, 4.2 ms beside one
# busy process (0.6 ms on one thread; ``python -m bench.contention``).  So
# now and then (at most every CHECK_S) a split call whose pool threads were
# lingering (:func:`run_native`, :func:`run_units`) reads the CPU time of
# each of its threads.  When one ran for less than HELD_SHARE of the call
# and lost HELD_MIN_S or more (a time slice, not an interrupt) in STRIKES
# timed calls in a row, each STRIKE_GAP_S or more after the one before
# (one such call in about 300 happens on an idle machine here, and another
# engine's threads spin for about 10 ms after its call: torch's OpenMP
# threads), the calls that have a one-thread form with the same
# results (:func:`unit_split_slot`, the fused LSTM's batch slices) take it
# for BUSY_S (:func:`cpu_busy`).  Then the split calls are timed again,
# each of them, until PROBATION_CALLS in a row find no busy CPU.  Such a
# call can take many time slices (30-70 ms here beside a busy process), so
# each busy finding doubles the time to the next try, up to BUSY_MAX_S,
# until a probation ends without one (back to BUSY_S).

#: seconds for which a busy CPU keeps the splits that can run on one thread
#: there (doubled for each finding in a row, up to :data:`BUSY_MAX_S`)
BUSY_S = 0.25
#: the most seconds between two split calls that each found a busy CPU
BUSY_MAX_S = 4.0
#: split calls in a row, each timed, that must find no busy CPU after one did
PROBATION_CALLS = 8
#: seconds between two timed split calls
CHECK_S = 0.01
#: the share of a call's time below which a thread was held off its CPU
HELD_SHARE = 0.5
#: seconds a thread must have lost to be called held off
HELD_MIN_S = 2e-4
#: timed split calls in a row that must find a thread held off
STRIKES = 2
#: seconds from a timed split call that found a thread held off to the
#: next timed call (outside a probation): a busy CPU lasts longer than
#: another engine's threads spinning after its call
STRIKE_GAP_S = 0.02

_busy_until = 0.0    # perf_counter() until which cpu_busy() holds
_busy_for = BUSY_S   # seconds the next busy finding holds for
_probation = 0       # split calls still to be timed after a busy finding
_strikes = 0         # timed split calls in a row that found a thread held off
#: busy CPUs found in this process (each one sets :func:`cpu_busy`; read
#: by ``bench/compare.py``, whose figures assume the CPUs free)
busy_findings = 0
_next_check = 0.0    # perf_counter() from which the next split call is timed
_cpu_clock = getattr(time, "pthread_getcpuclockid", None)   # (not on every platform: no timing there)


def cpu_busy():
    """Whether a split call found one of its threads held off its CPU in the
    last :data:`BUSY_S` seconds (see above): calls then run on one thread
    where they can with the same results."""
    return _busy_until > 0.0 and _busy_until > time.perf_counter()


def _thread_clocks(workers):
    """The CPU-time clocks of ``workers`` (pool threads), or None where the
    platform cannot read another thread's CPU time."""
    try:
        for w in workers:
            if w.clock is None:
                w.clock = _cpu_clock(w.thread.ident)
        return [w.clock for w in workers]
    except (OSError, AttributeError, TypeError):  # pragma: no cover - depends on the platform
        return None


def _cpu_times(clocks):
    """CPU seconds of this thread, then of each of ``clocks`` (None when one
    cannot be read: a thread gone)."""
    try:
        return [time.thread_time()] + [time.clock_gettime(c) for c in clocks]
    except OSError:  # pragma: no cover - a pool thread ends only with the interpreter
        return None


def _start_timing(workers):
    """What :func:`_held_off` compares after a split call on ``workers``
    (pool threads), or None when this call is not timed: the last call
    timed ended less than :data:`CHECK_S` ago (:data:`STRIKE_GAP_S`
    after a strike; each call is timed in a probation), a thread is not
    lingering (its wake-up would count), or no clock can be read."""
    now = time.perf_counter()
    if _cpu_clock is None or (now < _next_check and not _probation):
        return None
    if any(w.state[0] != LINGER for w in workers):
        return None     # (a thread asleep: its wake-up is not a busy CPU)
    clocks = _thread_clocks(workers)
    cpu = None if clocks is None else _cpu_times(clocks)
    return None if cpu is None else (now, clocks, cpu)


def _held_off(timing):
    """After a split call timed by :func:`_start_timing`: whether it found
    a busy CPU, one of its threads held off its CPU as the :data:`STRIKES`
    - 1 timed calls before it (see above), which sets :func:`cpu_busy` (for
    :data:`BUSY_S`, doubled for each finding before a probation of
    :data:`PROBATION_CALLS` ends without one)."""
    global _busy_until, _busy_for, _probation, _next_check, _strikes, busy_findings
    t0, clocks, cpu0 = timing
    now = time.perf_counter()
    cpu = _cpu_times(clocks)
    _next_check = now + CHECK_S
    if cpu is None:
        return False
    ran = min(b - a for a, b in zip(cpu0, cpu))
    if busy_share(now - t0, ran):
        _strikes += 1
        if _strikes < STRIKES:
            _next_check = now + STRIKE_GAP_S
            return False
        _strikes = 0
        busy_findings += 1
        _busy_until = now + _busy_for
        _busy_for = min(2 * _busy_for, BUSY_MAX_S)
        _probation = PROBATION_CALLS
        return True
    _strikes = 0
    if _probation:
        _probation -= 1
        if not _probation:
            _busy_for = BUSY_S
    return False


def busy_share(wall, ran):
    """Whether a thread that ran ``ran`` CPU seconds of a split call of
    ``wall`` seconds was held off its CPU: less than :data:`HELD_SHARE` of
    the call, and :data:`HELD_MIN_S` or more lost."""
    return wall - ran >= HELD_MIN_S and ran < HELD_SHARE * wall


# ------------------------------------------------------------------------
# Hand-overs that spin before they sleep.  A pool thread that sleeps between
# calls must be woken at the next one, and a caller that sleeps while a part
# finishes must be woken too; on a virtual machine each wake-up costs 50-150
# us (the vCPU halted), more than a small part takes (a split conv layer of
# 8.6M multiply-adds: 110 us a thread, 250 us a call with two wake-ups).
# OpenMP runtimes spin for a while for the same reason.  Here a worker, after
# its task, polls its own state for a caller's claim for LINGER_SPINS polls
# (LINGER_S, the GIL released; :class:`_Worker`) before it goes back
# to sleep, and a caller polls each part's done flag for JOIN_SPINS polls
# before it blocks.

def _passive():
    """Whether ``OMP_WAIT_POLICY=passive`` asks threads to sleep at once
    (the OpenMP convention, which fastseq follows: no spinning then)."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"


#: seconds a pool thread waits, polling, for the next hand-over after a task
#: (0 under ``OMP_WAIT_POLICY=passive``).  A call whose split needs a
#: lingering thread (:func:`run_units`' ``lingering_only``) and finds it
#: asleep runs on one thread and rouses it; the thread must still linger
#: when the next call comes, a one-thread call later: 200,000 polls (0.1 ms
#: here) missed most such calls of 0.15-0.2 ms, 1 ms catches the next one.
#: (libgomp's threads spin 300,000 polls with a pause each, torch's about
#: 9 ms here.)
LINGER_S = 0.0 if _passive() else 0.001
#: polls of :data:`LINGER_S` (:func:`linger_spins`: timed at its first use,
#: the speed of a poll differing from CPU to CPU); None until then
LINGER_SPINS = 0 if _passive() else None
#: polls a caller spends waiting for a part to finish before it blocks
JOIN_SPINS = 0 if _passive() else 400_000
#: polls a claimed pool thread makes before it takes the GIL: about the few
#: microseconds the claiming caller takes to enter its own part's compiled
#: code and release the GIL (0 under ``OMP_WAIT_POLICY=passive``).  Taking
#: the GIL while the caller holds it puts the thread to sleep until the
#: caller releases it (``python -m bench.handover``, part 4: a no-op part
#: starts 11.6-26.1 us after the call with these polls, 14.6-29.5 without)
SETTLE_SPINS = 0 if _passive() else 2_000


def linger_spins():
    """:data:`LINGER_SPINS`, timed at the first call of the process: the
    polls of :func:`fastseq.kernels._sync.linger` (its polling loop, on
    a state no one claims) that take :data:`LINGER_S` here, the fastest of
    three timings of 100,000 (0.1 ms)."""
    global LINGER_SPINS
    spins = LINGER_SPINS
    if spins is None:
        state, done = np.zeros(STRIDE, dtype=np.int64), np.zeros(STRIDE, dtype=np.int64)
        desc = np.zeros(_sync.DESC_LEN, dtype=np.int64)
        n, best = 100_000, float("inf")
        linger(state, done, 0, 1, 0, desc)     # (compiled or loaded first)
        for _ in range(3):
            t0 = time.perf_counter()
            linger(state, done, 0, n, 0, desc)
            best = min(best, time.perf_counter() - t0)
        spins = LINGER_SPINS = max(1, int(LINGER_S * n / max(best, 1e-9)))
    return spins


class _Worker:
    """One pool thread.  It runs a task, then lingers (:func:`fastseq.kernels._sync.linger`):
    it publishes the task's done flag and polls its state, the GIL released,
    for the next caller's claim; when none comes it goes idle and sleeps on
    its queue.  A caller hands a task over (:meth:`hand`) by claiming the
    lingering thread (an atomic compare-and-swap of its state), or else by
    its queue.  Unlike a ``ThreadPoolExecutor``, neither side runs Python
    between the done flag and the next task, so a caller that returns as
    soon as it sees the flag never waits for the GIL the thread holds
    (``python -m bench.handover``, part 4: an executor's caller returns
    23.7-28.0 us after its part, fastseq's 1.9-4.0 us).  A lingering
    thread also takes compiled tasks (a unit split's parts:
    :func:`fastseq.kernels._sync.split_native`), which it runs without
    returning to Python at all."""

    __slots__ = ("state", "desc", "queue", "job", "thread", "roused", "clock")

    def __init__(self, workers, state, desc):
        self.state = state   # (zeros: IDLE) its row of the pool's states
        self.desc = desc     # the compiled task it is handed (:func:`fastseq.kernels._sync.split_native`)
        self.roused = None   # the held lock of the empty task last handed by _rouse
        self.clock = None    # its CPU-time clock (:func:`_held_off`), once read
        self.queue = queue.SimpleQueue()
        self.job = None
        self.thread = threading.Thread(target=self._run, args=(workers,), name="fastseq-worker", daemon=True)
        self.thread.start()

    def _run(self, workers):
        _record_worker(workers)
        while True:
            job = self._next_queued()
            while True:
                fn, done, slot, event = job
                job = None
                fn()                            # records its own error
                # the task and what it refers to (a call's arrays) are not
                # kept alive while this thread waits for the next one
                fn = None
                event.release()                 # for a caller that stopped polling
                if not linger(self.state, done, slot, linger_spins(), SETTLE_SPINS, self.desc):
                    break                       # idle: the next task comes by the queue
                job, self.job = self.job, None

    def _next_queued(self):
        """The next task from the queue (sleeping until one comes); the
        queued mark is cleared once the queue is empty, so that the thread
        lingers after this task.  (A mark left set would end every linger at
        once: each hand-over would then wake a sleeping thread; ``python -m
        bench.handover``, part 4.)  A caller's mark that this clear overtakes costs
        one linger's wait at most: the thread takes that task when it goes
        idle."""
        job = self.queue.get()
        if self.queue.empty():
            publish(self.state, QUEUED, 0)
        return job

    def hand(self, job):
        """Run ``job`` (``fn, done, slot, event``: ``event`` a held lock
        that the thread releases after ``fn``) on this thread."""
        if claim(self.state):       # only one caller's claim can succeed
            self.job = job
            publish(self.state, 0, CLAIMED)
        else:                       # idle, or running another caller's task:
            publish(self.state, QUEUED, 1)   # marked first, so that a lingering
            self.queue.put(job)              # thread never misses a queued task


class _Pool:
    """``workers`` pool threads (:class:`_Worker`); :meth:`submit` for a
    single task with a future (tests, the planner's measurement)."""

    def __init__(self, workers):
        # each thread's state and compiled task, rows of arrays that
        # split_native takes whole
        self.states = np.zeros((workers, STRIDE), dtype=np.int64)
        self.descs = np.zeros((workers, _sync.DESC_LEN), dtype=np.int64)
        self.workers = [_Worker(workers, self.states[k], self.descs[k]) for k in range(workers)]

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()

        def run():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        join = _start(1, [run], self, flush=False)
        join()
        return future


def _held_lock():
    """A lock already held: released once by a pool thread after its task,
    acquired by a caller that waits for it."""
    lock = _allocate_lock()
    lock.acquire()
    return lock


def _start(workers, fns, pool=None, flush=True, joined=None):
    """Run each no-argument callable of ``fns`` (at most ``workers``) on its
    own thread of the pool of ``workers`` threads (denormals flushed there,
    :func:`_flushed`, unless ``flush`` is false); returns ``join``, which waits for all of them
    (polling first) and re-raises the first error.  Call ``join`` even when
    this thread's own part raised.  ``joined``: a unit split's flags, whose
    :data:`fastseq.kernels._sync.JOINED` mark ``join`` sets as it starts
    to wait (:func:`fastseq.kernels._sync.signal_then_spin`)."""
    pool = pool or _pool(workers)
    n = len(fns)
    if n > len(pool.workers):
        raise ValueError(f"{n} tasks for a pool of {len(pool.workers)} threads")
    done = np.zeros(max(n, 1) * STRIDE, dtype=np.int64)
    errors = [None] * n
    events = [_held_lock() for _ in range(n)]   # (released by the part's thread: a fifth of an Event's cost)

    def task(k, fn):
        try:
            _flushed(fn) if flush else fn()
        except BaseException as exc:  # handed to the caller by join
            errors[k] = exc
    for k, fn in enumerate(fns):
        pool.workers[k].hand((functools.partial(task, k, fn), done, k * STRIDE, events[k]))

    def join():
        for k in range(n):
            if joined is not None and k == 0:
                polled = signal_then_spin(joined, done, 0, 1, JOIN_SPINS)
            else:
                polled = spin_until(done, k * STRIDE, 1, JOIN_SPINS)
            if not polled:
                events[k].acquire()
                spin_until(done, k * STRIDE, 1, 2 ** 62)   # set right after the event
        for exc in errors:
            if exc is not None:
                raise exc
    return join


def _pool(workers):
    """The persistent pool of ``workers`` threads (recreated after fork),
    its threads placed off the calling thread's CPU (:func:`_place`)."""
    global _pools_pid

    with _pools_lock:
        if _pools_pid != _pid:   # (_pid: no system call on every hand-over)
            _pools.clear()  # threads do not survive fork: start afresh in a child
            _worker_tids.clear()
            _placed.clear()
            _pools_pid = _pid
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = _Pool(workers)
        _place(workers)
        return pool


def _flushed(fn, *args):
    """``fn(*args)`` with denormals flushed in this (pool) thread, its own
    setting back after (what every task handed to :func:`_pool` runs in)."""
    with _FLUSH:
        return fn(*args)


def _blas_controllers():
    global _blas
    if _blas is None:
        import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's np.dot calls)
        from threadpoolctl import ThreadpoolController

        _blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    return _blas


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved = None


def _reset_after_fork():
    global _blas_lock, _blas_depth, _pid, _pools_lock
    _pid = os.getpid()   # (a child's pools are made afresh by _pool)
    _pools_lock = threading.Lock()   # (another thread of the parent may have held it)
    _blas_lock = threading.Lock()
    if _blas_depth and _blas_saved is not None and _blas is not None:
        for c, n in zip(_blas, _blas_saved):
            c.set_num_threads(n)
    _blas_depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _BlasSingleThread:
    """Every BLAS at one thread while any fastseq call is inside such a block.

    fastseq's own parallelism is its batch split (:func:`run_sliced`) and row
    blocks of its large products (:func:`parallel_matmul`), each running
    single-threaded BLAS.  This keeps results independent of BLAS threading
    (OpenBLAS rounds differently with different thread counts), so they are
    identical for a fixed ``n_jobs`` even with concurrent callers, and it
    avoids waking BLAS threads for the small per-step products.  The setting
    is reference-counted: it changes only when no fastseq call is active.
    The entering thread also flushes denormals to zero until it leaves
    (:func:`fastseq._fpenv.flush_denormals`, per thread, re-entrant).
    (A class, not a generator: it is entered on every call, a few times.)
    """

    __slots__ = ()

    def __enter__(self):
        global _blas_depth, _blas_saved
        _FLUSH.__enter__()
        try:
            with _blas_lock:
                if _blas_depth == 0:
                    ctrls = _blas_controllers()
                    _blas_saved = [c.get_num_threads() for c in ctrls]
                    for c, n in zip(ctrls, _blas_saved):
                        if n != 1:
                            c.set_num_threads(1)
                _blas_depth += 1
        except BaseException:
            _FLUSH.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        global _blas_depth
        try:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0:
                    for c, n in zip(_blas_controllers(), _blas_saved):
                        if n != 1:
                            c.set_num_threads(n)
        finally:
            _FLUSH.__exit__()
        return False


#: flush-to-zero in the calling thread (:mod:`fastseq._fpenv`)
_FLUSH = flush_denormals()


_BLAS_SINGLE = _BlasSingleThread()


def blas_single_thread():
    """Context manager: :class:`_BlasSingleThread` (re-entrant, thread-safe)."""
    return _BLAS_SINGLE


def split_bounds(lengths_sorted, n):
    """``n`` contiguous slices ``[(b0, b1), ...]`` of a batch sorted by
    decreasing length, balanced by total steps (deterministic)."""
    B = len(lengths_sorted)
    acc = np.cumsum(np.asarray(lengths_sorted, dtype=np.float64))
    total = float(acc[-1]) if B else 0.0
    bounds, b0 = [], 0
    for k in range(1, n):
        # first b (after the previous cut) whose running total reaches k/n of all
        b = int(np.searchsorted(acc, total * k / n, side="left"))
        b = max(b, b0)
        if b + 1 >= B:
            break
        bounds.append((b0, b + 1))
        b0 = b + 1
    bounds.append((b0, B))
    return bounds


def _split_threads(B, work):
    """Threads :func:`run_sliced` splits a batch of ``B`` sequences and
    ``work`` multiply-adds across (:meth:`fastseq._plan.Plan.batch_split`;
    1 on one thread, with nothing measured)."""
    n = get_num_threads()
    return 1 if n <= 1 else _plan.current().batch_split(n, B, work)


def _matmul_threads(m, k, n):
    """Row blocks :func:`parallel_matmul` splits an (m, k) @ (k, n) product into."""
    t = get_num_threads()
    return 1 if t <= 1 else _plan.current().matmul_split(t, m, k, n)


def splits(B, work):
    """Whether :func:`run_sliced` would split a batch of ``B`` sequences and
    ``work`` multiply-adds across threads."""
    return _split_threads(B, work) > 1


def matmul_splits(m, k, n):
    """Whether :func:`parallel_matmul` would split an (m, k) @ (k, n) product."""
    return _matmul_threads(m, k, n) > 1


def pipelines(work, step_work=None):
    """Whether a second thread should compute ``work`` multiply-adds (an
    input projection ahead of a time loop, weight gradients behind it)
    beside the loop on this one (:meth:`fastseq._plan.Plan.pipeline`;
    ``step_work``: an inference projection's work a step)."""
    n = get_num_threads()
    return n > 1 and _plan.current().pipeline(n, work, step_work)


def packed_for_slices(w, B, work):
    """``pack_weight(w)`` for the batch slices of :func:`run_sliced` (``B``
    sequences, ``work`` multiply-adds) to share, packed in blocks of strips
    on as many threads into this thread's scratch, when the batch is split
    and :meth:`fastseq._plan.Plan.share_packed` takes a weight of its
    size; else an empty packed weight (each slice packs its own:
    :func:`fastseq.kernels.matmul.shared_or_packed`).  The same values
    either way."""
    shape = packed_shape(w)
    # (the size first: a call that shares nothing pays a microsecond; one
    # thread asks the plan nothing)
    n = get_num_threads()
    n = _split_threads(B, work) if n > 1 and _plan.current().share_packed(n, w.nbytes) else 1
    if n <= 1 or shape[0] < n:
        return np.empty((0,) + shape[1:], dtype=w.dtype)
    return _packed_on_threads(w, "shared_packed", n)


def _packed_on_threads(w, name, n):
    """``pack_weight(w)`` into this thread's scratch ``name``, in blocks of
    strips on ``n`` threads (on this one when there are fewer strips)."""
    shape = packed_shape(w)
    wp = scratch(name, shape, w.dtype)
    SW = shape[2]
    if shape[0] >= n > 1:
        _in_chunks(shape[0], n, lambda i, j: pack_into(w[i * SW:j * SW], wp[i:j]))
    else:
        pack_into(w, wp)
    return wp


def run_sliced(kernel, args, lengths_sorted, work):
    """Run ``kernel(*args, b0, b1)`` over the whole sorted batch: in one call, or
    on :func:`get_num_threads` slices in parallel threads when the batch and
    the ``work`` are large enough.  BLAS is held at one thread meanwhile."""
    B = len(lengths_sorted)
    n = _split_threads(B, work)
    with blas_single_thread():
        if n <= 1:
            kernel(*args, 0, B)
            return
        bounds = split_bounds(lengths_sorted, n)
        if len(bounds) == 1:
            kernel(*args, 0, B)
            return
        _on_pool(bounds, lambda b0, b1: kernel(*args, b0, b1))


# ------------------------------------------------------------------------
# Threads that meet inside compiled code (:mod:`fastseq.kernels._sync`): the
# unit split of LSTM training (each thread computes its own hidden units, a
# barrier between steps) and the input projection computed ahead of an
# inference time loop (:func:`run_pipelined`).

_unit_lock = threading.Lock()
#: a flag value that releases every barrier (a thread that failed sets it)
_RELEASE_ALL = _sync.RELEASE_ALL


@functools.lru_cache(maxsize=256)
def unit_bounds(H, n):
    """``n`` contiguous ranges of the hidden units ``0..H``, cut at multiples
    of 8 where possible (whole vectors per thread); a tuple, computed once
    for each ``(H, n)``."""
    cuts = [0] + [min(H, max(0, int(round(H * k / n / 8.0)) * 8)) for k in range(1, n)] + [H]
    return tuple((cuts[k], cuts[k + 1]) for k in range(n))


class _UnitSlot:
    """The context manager of :func:`unit_split_slot` (a class: it is entered
    on every inference call, where a generator-based one cost 3 us)."""

    __slots__ = ("got",)

    def __enter__(self):
        self.got = not cpu_busy() and _unit_lock.acquire(blocking=False)
        return self.got

    def __exit__(self, *exc):
        if self.got:
            _unit_lock.release()
        return False


#: calls of a route between two calls of another form
#: (:class:`SplitWatch`)
WATCH_EVERY = 64
#: timed calls of each form that a :class:`SplitWatch` keeps (their fastest
#: decides)
WATCH_KEEP = 3


#: the forms of a small unit-split call that a :class:`SplitWatch` picks
#: from: split by hidden units (a barrier a step), on one thread, split by
#: sequences (the unit split's arithmetic on each thread's sequences, no
#: barrier: :func:`fastseq.kernels.infer.lstm_units_slice`); the same bits
SPLIT, ONE, SLICES = 0, 1, 2


class SplitWatch:
    """Which form the next call of one route takes: split across the
    threads by hidden units, its one-thread form, or (a route of more than
    one sequence) split by sequences (:data:`SPLIT`, :data:`ONE`,
    :data:`SLICES`: the same bits).  A call split by hidden units waits
    for the other thread at every step, so its speed depends on how far
    apart the two CPUs are: on a virtual machine whose host moves its
    vCPUs, a cache line's round trip went from 110 to 510 ns (cores far
    apart) or 43 ns (one core's two hardware threads), and the split from
    faster than one thread to slower (LSTM B1/H64/T128: 67 -> 122 or 107
    us, one thread 86-90; ``python -m bench.pingpong``, bench/RESULTS.md,
    "twenty-first session").  A split by sequences meets the other thread
    only at the start and the end, but gives each thread fewer rows a
    step (LSTM B4/H64/T32, us: by units 46, by sequences 47-52, one
    thread 64-66; B4/H128 114, 162 and 184; "twenty-fourth session").
    The busy-CPU check cannot see this (no thread is held off its CPU), so
    the route times the forms: every :data:`WATCH_EVERY` calls one takes
    another form (each in turn), and once each form has
    :data:`WATCH_KEEP` timings, each timing of another form compares them:
    the route takes the form with the fastest timing until the next
    comparison says otherwise, the form in use judged by the fastest of
    its last :data:`WATCH_EVERY` calls (as many calls as lie between two
    timings of another form; its own calls compare nothing, which keeps a
    minimum over them off every call).  The fastest, not
    the median, and over that many calls: the calls that follow an idle
    moment are slow for every form (the vCPUs wake: 466, 94, 58, 54 us for
    a 50 us call after 20 ms; bench/RESULTS.md, "twenty-fourth session"),
    and the form in use is timed at every call, so after a pause its last
    few timings were all such calls: medians of its last three swapped a
    GRU B4/H256/T32 route from its split (278 us) to a slower form for
    hundreds of calls, and the fastest of its last three swapped an LSTM
    B1/H256/T32 route from its split (240 us) to its one-thread form (420
    us) for up to about 60 calls after several pauses of a benchmark
    ("twenty-sixth session")."""

    __slots__ = ("calls", "times", "best", "turn", "recent", "recent_of")

    def __init__(self, forms=2):
        self.calls = 0
        self.times = [[] for _ in range(forms)]
        self.best = SPLIT
        self.turn = 0
        self.recent = collections.deque(maxlen=WATCH_EVERY)  # the form in use's last calls
        self.recent_of = SPLIT

    def form_now(self):
        """The form of this call (counts the call)."""
        self.calls += 1
        if self.calls % WATCH_EVERY:
            return self.best
        n = len(self.times)
        self.turn = self.turn % (n - 1) + 1
        return (self.best + self.turn) % n

    def record(self, form, seconds):
        """A call of ``form`` took ``seconds``."""
        times = self.times[form]
        times.append(seconds)
        if len(times) > WATCH_KEEP:
            del times[0]
        best = self.best
        if form == best:
            if self.recent_of != form:      # (the form in use changed)
                self.recent.clear()
                self.recent_of = form
            self.recent.append(seconds)
            return
        if all(len(t) == WATCH_KEEP for t in self.times):
            fastest = [min(t) for t in self.times]
            if self.recent_of == best and self.recent:
                fastest[best] = min(self.recent)
            self.best = min(range(len(fastest)), key=lambda f: (fastest[f], f))
            if self.best != best:           # (its last calls: its own few timings)
                self.recent = collections.deque(self.times[self.best], maxlen=WATCH_EVERY)
                self.recent_of = self.best


def unit_split_slot():
    """Context manager giving True when this call may run a unit split now
    (one at a time in the process: two of them interleaved on a shared pool
    could each hold a worker spinning for a part queued behind the other's;
    not while :func:`cpu_busy`), else False."""
    return _UnitSlot()


def run_pipelined(produce, consume, parallel=True):
    """``produce(ready)`` on a pool thread while ``consume(ready)`` runs on
    this one; ``ready`` (int64 zeros, one slot, see
    :mod:`fastseq.kernels._sync`) is the producer's published step count that
    the consumer waits on.  A producer that raises releases the consumer (its
    results are then discarded: the exception is re-raised).  With
    ``parallel=False`` (the caller could not take :func:`unit_split_slot`) the
    two run one after the other on this thread: the same arithmetic, so the
    results do not depend on what other threads are doing."""
    ready = np.zeros(STRIDE, dtype=np.int64)
    if not parallel:
        produce(ready)
        consume(ready)
        return

    def guarded():
        try:
            produce(ready)
        except BaseException:
            ready[0] = _RELEASE_ALL
            raise
    with blas_single_thread():
        join = _start(1, [guarded])
        try:
            consume(ready)
        finally:
            join()


@functools.lru_cache(maxsize=256)
def _bounds_array(H, n):
    """:func:`unit_bounds` as an (n, 2) int64 array (read only)."""
    a = np.array(unit_bounds(H, n), dtype=np.int64).reshape(n, 2)
    a.flags.writeable = False
    return a


def run_units(part, H, blas=True, native=None, lingering_only=False):
    """``part(tid, j0, j1, flags)`` for the :func:`get_num_threads` threads
    ``tid`` at once, each with its range ``j0..j1`` of the ``H`` hidden units
    (:func:`unit_bounds`) and the shared barrier ``flags`` (zeros, see
    :mod:`fastseq.kernels._sync`): 0 on the calling thread, the others on the
    pool.  A part that raises first releases the barriers so that the others
    finish; the first exception is re-raised.  Every part's kernel marks
    its start (:func:`fastseq.kernels._sync.signal_started`), which the
    calling thread waits for before its own part
    (:func:`fastseq.kernels._sync.wait_started`); the calling thread sets
    ``flags``' :data:`fastseq.kernels._sync.JOINED` mark once it waits for
    the others (a pool thread's part waits for it before it returns:
    :func:`fastseq.kernels._sync.wait_joined`).  No thread then takes the
    GIL while another holds it, at either end (a thread that does sleeps
    until it is released).  Under
    :func:`blas_single_thread`, or only with denormals flushed when ``blas``
    is false (no part calls BLAS; setting its threads costs microseconds).

    ``native``, when given, runs the same parts as compiled tasks:
    ``native(states, descs, own, bounds, flags)`` describes the call in
    ``own`` and returns :func:`fastseq.kernels._sync.split_native`'s
    answer (:func:`run_native`, ``bounds`` the units); when it is False (a
    pool thread was not lingering) the parts are handed over in Python, or
    with ``lingering_only`` not at all: each pool thread that does not
    linger is handed an empty task (not waited for), after which it
    lingers for the next call, and ``run_units`` returns False (run the
    call on one thread).  True when the parts ran."""
    n = get_num_threads()
    if lingering_only and (native is None or linger_spins() <= 0):
        return False
    bounds = unit_bounds(H, n)
    flags = np.zeros(n * STRIDE, dtype=np.int64)
    if native is not None:
        with blas_single_thread() if blas else _FLUSH:
            if run_native(_bounds_array(H, n), flags, native, rouse=lingering_only):
                return True
        if lingering_only:
            return False

    def guarded(tid):
        try:
            part(tid, *bounds[tid], flags)
        except BaseException:
            flags[tid * STRIDE] = _RELEASE_ALL
            raise
        finally:  # a part that marks no start of its own releases the caller as it ends
            flags[tid * STRIDE + STARTED] = 1
    pool = _pool(n - 1)
    timing = _start_timing(pool.workers)
    with blas_single_thread() if blas else _FLUSH:
        join = _start(n - 1, [functools.partial(guarded, tid) for tid in range(1, n)], pool, joined=flags)
        try:
            wait_started(flags)
            guarded(0)
        finally:
            join()
    if timing is not None:
        _held_off(timing)
    return True


def run_native(bounds, flags, native, rouse=False):
    """Parts as compiled tasks (:func:`fastseq.kernels._sync.split_native`)
    on the ``len(bounds) - 1`` threads of their pool, if they linger:
    ``native(states, descs, own, bounds, flags)`` describes the call in
    ``own`` (a fresh array of the call's) and returns ``split_native``'s
    answer, which this returns (False: nothing ran; with ``rouse``, the
    threads that were not lingering are roused, :func:`_rouse`).  False at
    once when pool threads do not linger (``OMP_WAIT_POLICY=passive``).
    A part that raised inside its compiled code (an allocation that failed:
    a cfunc passes no exception on) marks ``flags``
    (:func:`fastseq.kernels._sync.part_failed`) and releases the others;
    this then raises ``MemoryError``.  Now and then the call is timed, to
    tell a busy CPU (:func:`cpu_busy`)."""
    if linger_spins() <= 0:
        return False
    pool = _pool(bounds.shape[0] - 1)
    timing = _start_timing(pool.workers)
    if native(pool.states, pool.descs, np.empty(_sync.DESC_LEN, dtype=np.int64), bounds, flags):
        if timing is not None:
            _held_off(timing)
        if flags[_sync.FAILED]:
            raise MemoryError("a part of a call split across threads failed inside its compiled code "
                              "(an allocation); the call's results are discarded")
        return True
    if rouse:
        _rouse(pool)
    return False


_ROUSED = np.zeros(STRIDE, dtype=np.int64)   # (the done flag of every empty task: never read)


def _rouse(pool):
    """Hand each thread of ``pool`` that is not lingering an empty task,
    without waiting for it: the thread wakes (or finishes what it runs),
    runs it and lingers after it (:func:`fastseq.kernels._sync.linger`)."""
    for worker in pool.workers:
        if worker.state[0] != LINGER and (worker.roused is None or not worker.roused.locked()):
            # (one at a time: empty tasks queued call after call while the
            # thread wakes would each end its linger at once)
            worker.roused = _held_lock()
            worker.hand((int, _ROUSED, 0, worker.roused))


def parallel_matmul(a, b, out=None):
    """``a @ b`` (2-D) on :func:`get_num_threads` row blocks of ``a`` in
    threads (numpy releases the GIL), single-threaded BLAS in each; the row
    blocks depend only on the thread count (deterministic)."""
    m = a.shape[0]
    n = _matmul_threads(m, a.shape[1], b.shape[1])
    if n <= 1:
        return np.matmul(a, b) if out is None else np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, b.shape[1]), dtype=np.result_type(a, b))
    _in_chunks(m, n, lambda i, j: np.matmul(a[i:j], b, out=out[i:j]))
    return out


def _in_chunks(m, n, fn):
    """``fn(i, j)`` over ``n`` (> 1) contiguous blocks ``[i, j)`` of ``range(m)``:
    the first on this thread, the others on the pool; the blocks depend only
    on ``m`` and ``n`` (deterministic).  Waits for all, re-raising the first
    error."""
    step = -(-m // n)
    _on_pool([(i, min(i + step, m)) for i in range(0, m, step)], fn)


def _on_pool(bounds, fn):
    """``fn(i, j)`` for every ``(i, j)`` in ``bounds`` (two or more): the
    first on this thread, the others on the pool; waits for all."""
    join = _start(len(bounds) - 1, [functools.partial(fn, i, j) for i, j in bounds[1:]])
    try:
        fn(*bounds[0])
    finally:
        join()


def parallel_tall_matmul(x, g, out=None, transposed=False):
    """``x.T @ g`` (F, M) for C-contiguous ``x`` (N, F) and ``g`` (N, M),
    by :func:`fastseq.kernels.matmul.tall_matmul` (a weight gradient over
    few inputs, which BLAS runs far below its rate), the columns' strips in
    :func:`get_num_threads` blocks in threads as :func:`parallel_matmul`
    splits rows, or the rows of ``x.T`` when there are too few strips for
    each thread to fill the micro-kernel's register tile with them (a
    result does not depend on the split); into ``out`` (F, M) when given.
    With ``transposed``, ``x`` is the inputs already transposed, (F, N)
    (:func:`fastseq.kernels.matmul.tall_matmul_t`: the same sums, in the
    same order)."""
    from .kernels.matmul import STRIP_BYTES, tall_matmul, tall_matmul_t

    x, g = np.ascontiguousarray(x), np.ascontiguousarray(g)   # (one signature)
    if transposed:
        F, N = x.shape
        tall_matmul = tall_matmul_t
    else:
        N, F = x.shape
    M = g.shape[1]
    if out is None:
        out = np.empty((F, M), dtype=g.dtype)
    NS = M // (STRIP_BYTES // g.itemsize)
    # (the columns past the last strip with the last strips)
    _tall_parts(N, F, g, lambda f0, f1, s0, s1: tall_matmul(x, g, out, f0, f1, s0, s1, s1 == NS))
    return out


def _tall_parts(N, F, g, part):
    """Run ``part(f0, f1, s0, s1)`` over the ``F`` output rows and the
    whole strips of ``g``'s columns of a tall product over ``N`` rows:
    the strips in :func:`get_num_threads` blocks in threads, or the rows
    where there are too few strips for each thread to fill the
    micro-kernel's register tile with them, or all on this thread (a
    result does not depend on the split)."""
    from .kernels.matmul import BLOCKING, STRIP_BYTES, VECTOR_BYTES

    M = g.shape[1]
    NS = M // (STRIP_BYTES // g.itemsize)
    n = _matmul_threads(M, N, F)
    R, S = BLOCKING[VECTOR_BYTES][:2]
    if n > 1 and NS >= n * S:
        _in_chunks(NS, n, lambda i, j: part(0, F, i, j))
    elif n > 1 and F >= n * R:
        _in_chunks(F, n, lambda i, j: part(i, j, 0, NS))
    else:
        with _FLUSH:
            part(0, F, 0, NS)


def parallel_tall_cat(x, h, h0, batch_sizes, g, out):
    """``[x | h_prev | 1].T @ g`` into ``out`` (F + H + 1, M) by
    :func:`fastseq.kernels.matmul.tall_matmul_cat` (each source read in
    place, ``h_prev`` from ``h0``, ``h`` and ``batch_sizes`` as it says;
    ``g``'s columns in whole strips), split across threads by
    :func:`_tall_parts` (the same bits at any thread count); returns
    ``out``."""
    from .kernels.matmul import tall_matmul_cat

    (N, F), H = x.shape, h.shape[1]
    _tall_parts(N, F + H + 1, g,
                lambda f0, f1, s0, s1: tall_matmul_cat(x, h, h0, batch_sizes, g, out, f0, f1, s0, s1))
    return out


def parallel_project(inp, w, bias, out=None):
    """``inp @ w.T + bias`` (:func:`fastseq.kernels.matmul.project`) on
    :func:`get_num_threads` row blocks in threads, like :func:`parallel_matmul`
    (the result does not depend on the split); into ``out`` when given."""
    from .kernels.matmul import PROJECT_BLAS_MIN_BYTES, project, project_shared

    m = inp.shape[0]
    if out is None:
        out = np.empty((m, w.shape[0]), dtype=inp.dtype)
    n = _matmul_threads(m, inp.shape[1], w.shape[0])
    if n <= 1:
        project(inp, w, bias, out)
    elif w.nbytes >= PROJECT_BLAS_MIN_BYTES.get() and _plan.current().share_projection(n, w.nbytes):
        # (where each block would call BLAS: one packed copy, packed in
        # blocks of strips on the threads, that every block reads)
        wp = _packed_on_threads(w, "projection_packed", n)
        _in_chunks(m, n, lambda i, j: project_shared(inp[i:j], w, wp, bias, out[i:j]))
    else:
        _in_chunks(m, n, lambda i, j: project(inp[i:j], w, bias, out[i:j]))
    return out


#: elements of a copy from which :func:`parallel_copy` splits it
MIN_COPY_SPLIT = 1 << 20


def parallel_transpose(src, dst, row0=0, col0=0):
    """``dst[row0:row0 + K, col0:col0 + N] = src.T`` for ``src`` (N, K):
    :func:`fastseq.kernels.matmul.transpose_into` for a C-contiguous
    ``src`` and rows of ``dst`` of unit stride, of one dtype (numpy's copy
    otherwise), on :func:`get_num_threads` blocks of ``src``'s rows in
    threads from :data:`MIN_COPY_SPLIT` elements."""
    m = src.shape[0]
    if not (src.flags.c_contiguous and dst.strides[1] == dst.itemsize and dst.dtype == src.dtype):
        dst[row0:row0 + src.shape[1], col0:col0 + m] = src.T      # (no kernel for these layouts)
        return
    n = 1 if src.size < MIN_COPY_SPLIT else min(get_num_threads(), m)
    if n <= 1:
        transpose_into(src, dst, row0, col0, 0, m)
    else:
        _in_chunks(m, n, lambda i, j: transpose_into(src, dst, row0, col0, i, j))


def parallel_copy(dst, src):
    """``dst[...] = src`` on :func:`get_num_threads` blocks of the first axis in
    threads (numpy releases the GIL while it copies)."""
    m = dst.shape[0]
    n = min(get_num_threads(), m)
    if n <= 1 or dst.size < MIN_COPY_SPLIT:
        dst[...] = src
        return

    def one(i, j):
        dst[i:j] = src[i:j]
    _in_chunks(m, n, one)
