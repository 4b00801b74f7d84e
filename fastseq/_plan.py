"""How a call runs on this machine: the planner.

The layers ask this module how to run a call with more than one thread:
split the batch across threads, compute the input projection (or the weight
gradients) on a second thread beside the time loop, split the hidden units of
an LSTM training pass, or stay on one thread.  Each choice trades a thread
hand-over against the work it moves, so its threshold is a number of
hand-overs' worth of work, where one hand-over's worth is what this machine
measures (FFTW's "wisdom", BLIS's per-machine configuration):

- ``handover_s``: a round trip of a task through fastseq's thread pool,
  its thread woken from idle as at a call;
- ``linger_handover_s``: a round trip of a compiled task to a pool thread
  that lingers after its last one (:func:`fastseq.kernels._sync.split_native`,
  an empty part on each side), as back-to-back calls find it;
- ``madd_rate``: multiply-adds a second of one core on a float32 matrix
  product (numpy's BLAS at one thread);
- ``l2_bytes``, ``l3_bytes``: one core's L2 cache and the L3 (from the
  operating system; 1 MB and 8 MB when it does not say);
- ``l1_bytes``: one core's L1 data cache (32 KB when it does not say).

Measuring takes a few tens of milliseconds, once per machine: the facts are
kept in a small JSON file (``$FASTSEQ_CACHE_DIR``, else ``$NUMBA_CACHE_DIR``,
else the user's cache folder), keyed by the CPU, its features and the core
count, and read back by later processes.  Nothing is measured while a call
runs on one thread (no threshold is needed then).  The thresholds are rounded
to a power of two, so that a measurement a little off rarely moves a
decision.  The rules and the measurements behind their factors are in
``bench/RESULTS.md`` ("Planner").

Two decisions are taken inside compiled code: from how many rows a step's
product calls BLAS rather than its tiles, and from how large a weight the
input projection does.  The first crossover is timed once per CPU kind
too, the second follows the L2 cache (:func:`resolve_kernel_values`, at the
first compiled call of a process, at any thread count); both are handed to
the kernels as numbers they read at run time
(:mod:`fastseq.kernels._runtime`).
"""

import itertools
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import _fpenv

#: rule factors, in hand-overs' worth of work (bench/RESULTS.md, "Planner")
PIPELINE_HANDOVERS = 2.0       # projection ahead / weight gradients behind the loop
SPLIT_HANDOVERS = 4.0          # batch split of a whole time loop
MATMUL_SPLIT_HANDOVERS = 4.0   # row blocks of one large matrix product
INFER_SPLIT_STEP_HANDOVERS = 1.5  # inference batch split: one step's recurrent product
#: LSTM training splits its hidden units while its batch is too small for
#: a batch split, when W_hh is at least this many L2 caches and from a
#: pipeline's work, with UNIT_SPLIT_MIN_UNITS units a thread (bench/RESULTS.md,
#: "fifteenth session")
UNIT_SPLIT_L2S = 0.25
UNIT_SPLIT_MIN_UNITS = 32
#: an LSTM inference unit split pays a barrier a step (about one compiled
#: hand-over) that a batch split does not: below this many hand-overs'
#: worth of a thread's share of a step, a batch split of whole row blocks
#: whose weights fit in cache is taken instead (bench/RESULTS.md,
#: "fifteenth session")
UNITS_STEP_HANDOVERS = 8.0
#: a one-thread inference loop beside its pipelined projection waits at each
#: step for rows the other core writes: a projection is computed ahead only
#: when a step's share of it is at least this many compiled hand-overs' worth
#: (bench/RESULTS.md, "twentieth session")
PIPELINE_STEP_HANDOVERS = 2.0
#: an inference unit split takes batches of under this many row blocks a
#: thread where the layer's weights are larger than half the L2 (each thread
#: of a batch split streams all of them at every step, of a unit split half;
#: bench/RESULTS.md, "twentieth session" and "twenty-second session") ...
UNITS_WIDE_BLOCKS = 16
#: ... and under this many for an LSTM whose weights fit in half the L3,
#: which the fused kernel's batch split takes from there
UNITS_FUSED_BLOCKS = 8
#: least sequences per thread in a batch split
MIN_SPLIT_ROWS = 4
#: a threshold no work reaches
NEVER = 1 << 62
#: version of the facts file (a change of what is measured starts afresh)
_FORMAT = 4
#: every Plan's state gets a new number from this counter (Plan.version)
_VERSIONS = itertools.count()


@dataclass
class Machine:
    """What the planner measures (see the module docstring)."""

    handover_s: float
    madd_rate: float
    l2_bytes: int
    l3_bytes: int = 8 * 1024 ** 2
    linger_handover_s: float = math.inf   # (inf: not measured, no such hand-over)
    l1_bytes: int = 32 * 1024

    @property
    def handover_work(self):
        """Multiply-adds one core does in the time of one hand-over."""
        return self.handover_s * self.madd_rate

    @property
    def linger_handover_work(self):
        """Multiply-adds one core does in the time of a compiled hand-over
        to a lingering thread."""
        return self.linger_handover_s * self.madd_rate


def _pow2(x):
    return int(2 ** round(math.log2(max(x, 1.0))))


@dataclass
class Plan:
    """The thresholds for one machine (attributes, so that tests and
    ``bench/thresholds.py`` can set them)."""

    pipeline_min_work: int
    split_min_work: int
    matmul_split_min_work: int
    infer_split_step_work: int
    unit_split_min_weight_bytes: int
    lingering_units_min_work: int = NEVER
    lingering_split_min_work: int = NEVER
    units_min_step_work: int = 0
    pipeline_min_step_work: int = 0
    unit_split_min_units: int = UNIT_SPLIT_MIN_UNITS
    min_split_rows: int = MIN_SPLIT_ROWS
    l2_bytes: int = 1024 ** 2
    l3_bytes: int = 8 * 1024 ** 2
    l1_bytes: int = 32 * 1024

    def __setattr__(self, name, value):
        # each change of a threshold (the dataclass's own __init__ included)
        # gives the plan a new ``version``, unique in the process: callers
        # that keep a decision keep it with the version it was taken under
        # (not a field: equality and repr ignore it)
        object.__setattr__(self, name, value)
        object.__setattr__(self, "version", next(_VERSIONS))

    @classmethod
    def for_machine(cls, m):
        w = m.handover_work
        return cls(pipeline_min_work=_pow2(PIPELINE_HANDOVERS * w),
                   split_min_work=_pow2(SPLIT_HANDOVERS * w),
                   matmul_split_min_work=_pow2(MATMUL_SPLIT_HANDOVERS * w),
                   infer_split_step_work=_pow2(INFER_SPLIT_STEP_HANDOVERS * w),
                   unit_split_min_weight_bytes=_pow2(UNIT_SPLIT_L2S * m.l2_bytes),
                   lingering_units_min_work=(_pow2(PIPELINE_HANDOVERS * m.linger_handover_work)
                                             if math.isfinite(m.linger_handover_s) else NEVER),
                   lingering_split_min_work=(_pow2(SPLIT_HANDOVERS * m.linger_handover_work)
                                             if math.isfinite(m.linger_handover_s) else NEVER),
                   units_min_step_work=(_pow2(UNITS_STEP_HANDOVERS * m.linger_handover_work)
                                        if math.isfinite(m.linger_handover_s) else 0),
                   pipeline_min_step_work=(_pow2(PIPELINE_STEP_HANDOVERS * m.linger_handover_work)
                                           if math.isfinite(m.linger_handover_s) else 0),
                   l2_bytes=m.l2_bytes, l3_bytes=m.l3_bytes, l1_bytes=m.l1_bytes)

    # ------------------------------------------------------------ decisions
    def batch_split(self, n_threads, B, work):
        """Threads a time loop over ``B`` sequences and ``work``
        multiply-adds is split across (1: not split)."""
        n = min(n_threads, B // self.min_split_rows)
        return n if n > 1 and work >= self.split_min_work else 1

    def batch_split_lingering(self, n_threads, B, work):
        """:meth:`batch_split` for a call that splits only when every pool
        thread it needs polls for work (a compiled hand-over; else the
        call runs its whole batch on its own thread): from
        ``lingering_split_min_work``, the same factor of compiled
        hand-overs' worth of work."""
        n = min(n_threads, B // self.min_split_rows)
        return n if n > 1 and work >= self.lingering_split_min_work else 1

    def batch_split_few_rows(self, n_threads, B, H, work, weight_bytes):
        """Threads the fused LSTM's lingering batch split (as
        :meth:`batch_split_lingering`) takes a batch too small for it
        across: fewer than ``min_split_rows`` sequences a thread, one at
        least.  Where a unit split cannot take the layer (fewer than
        ``unit_split_min_units`` of its ``H`` units a thread), its
        weights ``[W_ih | W_hh]`` (``weight_bytes``) fit in half the L2 (a
        row or two cost a thread little more a row than a row block) and
        from ``lingering_split_min_work`` (1: not split; bench/RESULTS.md,
        "Few rows a thread")."""
        n = min(n_threads, B)
        if (n > 1 and H < self.unit_split_min_units * n_threads and weight_bytes <= self.l2_bytes // 2
                and work >= self.lingering_split_min_work):
            return n
        return 1

    def matmul_split(self, n_threads, m, k, n):
        """Row blocks an (m, k) @ (k, n) product is split into (1: one call)."""
        t = min(n_threads, m // 8)
        return t if t > 1 and m * k * n >= self.matmul_split_min_work else 1

    def pipeline(self, n_threads, work, step_work=None):
        """Whether a second thread computes ``work`` multiply-adds (input
        projection, weight gradients) beside a time loop on this one; for
        an inference projection, ``step_work`` of it a step, from
        ``pipeline_min_step_work``."""
        return (n_threads > 1 and work >= self.pipeline_min_work
                and (step_work is None or step_work >= self.pipeline_min_step_work))

    def inference_split(self, n_threads, B, step_work, work):
        """Whether a full-length inference call splits its batch (a step's
        recurrent product ``step_work``, the call's ``work``)."""
        return step_work >= self.infer_split_step_work and self.batch_split(n_threads, B, work) > 1

    def share_packed(self, n_threads, weight_bytes):
        """Whether the batch slices of one call on ``n_threads`` threads
        read one packed recurrent weight of ``weight_bytes`` (packed once,
        in blocks across the threads) rather than each packing its own:
        when it is larger than a core's L2, so that every step streams it
        from the shared L3, where a copy a thread would take twice the
        room (bench/RESULTS.md, "One packed weight for the batch
        slices")."""
        return n_threads > 1 and weight_bytes > self.l2_bytes

    def share_projection(self, n_threads, weight_bytes):
        """Whether an input projection split across ``n_threads`` threads
        by rows, whose weight of ``weight_bytes`` would send each thread's
        block to BLAS (:data:`fastseq.kernels.matmul.PROJECT_BLAS_MIN_BYTES`),
        runs the packed product instead, from one packed copy that the
        threads share: when that copy fits in half of the L3 (each thread
        streams it from there once per block of rows; beyond, from memory).
        Two threads, this znver4: 1,600 x 1,024 into 4,096 (16 MB) 216
        GFLOP/s against BLAS's 200 (bench/RESULTS.md, "eighteenth
        session")."""
        return n_threads > 1 and weight_bytes <= self.l3_bytes // 2

    def fuse_projection(self, rows, block_rows, weight_bytes, pipelined=False):
        """Whether a time loop whose steps have ``rows`` rows (a thread's
        share) computes its input projection inside each step's product,
        whose weights ``[W_ih | W_hh]`` take ``weight_bytes``: from one row
        block of the product's micro-kernel (``block_rows``) when those
        weights fit in half of the L2 cache, from two row blocks when they
        fit in half of the L3 (a row block alone would wait on them), never
        beyond (each thread would stream all of them from memory at every
        step, where a separate projection streams ``W_ih`` once;
        bench/RESULTS.md, "Fused input projection").  Never when the
        separate projection would be ``pipelined``: computed on a second
        thread beside a one-thread loop, where it costs the loop nothing."""
        if rows < block_rows or pipelined:
            return False
        if weight_bytes <= self.l2_bytes // 2:
            return True
        return rows >= 2 * block_rows and weight_bytes <= self.l3_bytes // 2

    def units_max_rows(self, n_threads, H, gates, block_rows, weight_bytes=0):
        """The ``max_rows`` of :meth:`infer_units` for a layer of ``H``
        units and ``gates`` gates, as the layers measured: two row blocks
        of the step's product (``block_rows`` rows each) for an LSTM (4
        gates) and for a GRU from twice ``unit_split_min_units`` units a
        thread, else half a row block (bench/RESULTS.md, "The GRU's unit
        split up to 15 sequences"); where the layer's weights ``[W_ih |
        W_hh]`` (``weight_bytes``) are larger than half the L2, which each
        thread of a batch split would stream from the L3 at every step, and
        a thread of a unit split reads half of, :data:`UNITS_FUSED_BLOCKS`
        row blocks for an LSTM whose weights fit in half the L3 (the fused
        kernel's batch split takes it beyond: :meth:`fuse_projection`),
        else :data:`UNITS_WIDE_BLOCKS` (bench/RESULTS.md, "twentieth
        session" and "twenty-second session")."""
        wide = H >= 2 * self.unit_split_min_units * n_threads
        if wide and weight_bytes > self.l2_bytes // 2:
            rows = UNITS_FUSED_BLOCKS * block_rows
            fusable = gates == 4 and self.fuse_projection(rows, block_rows, weight_bytes)
            return rows if fusable else UNITS_WIDE_BLOCKS * block_rows
        if gates == 4 or wide:
            return 2 * block_rows
        return max(1, block_rows // 2)

    def infer_units(self, n_threads, B, H, work, max_rows):
        """Whether an inference call of ``work`` multiply-adds (input
        projection and time loop) over ``B`` sequences splits its ``H``
        hidden units across the threads rather than its batch, each thread
        then doing its share of every step: while a batch split would give
        a thread fewer than ``max_rows`` rows of the step's product (each
        thread would stream all the weights for a few rows;
        :meth:`units_max_rows`), from the work of a pipelined
        projection (the second thread's
        share then repays its hand-over), and with ``unit_split_min_units``
        units a thread (bench/RESULTS.md, "Unit split of LSTM inference")."""
        return (n_threads > 1 and B < max_rows * n_threads
                and H >= self.unit_split_min_units * n_threads and work >= self.pipeline_min_work)

    def infer_units_lingering(self, n_threads, B, H, work, max_rows):
        """:meth:`infer_units` for a call that splits only when every pool
        thread it needs lingers (a compiled hand-over,
        ``linger_handover_s``; when one does not, the call runs on one
        thread): from ``lingering_units_min_work``, the same factor of
        hand-overs' worth of work."""
        return (n_threads > 1 and B < max_rows * n_threads
                and H >= self.unit_split_min_units * n_threads and work >= self.lingering_units_min_work)

    def batch_over_units(self, n_threads, B, step_work, weight_bytes, block_rows):
        """Whether an LSTM inference call that :meth:`infer_units` would
        split by hidden units splits its batch instead (the fused kernel's
        slices): a unit split's threads meet at a barrier every step
        (about one compiled hand-over), a batch split's never.  When each
        thread's share of a step (``step_work`` multiply-adds, all
        threads') is under ``units_min_step_work``, each thread gets at
        least a row block of the product (``block_rows`` rows) and the
        weights it reads every step (``weight_bytes``) fit in half the L2
        (so a few rows are no slower a row than many)."""
        return (B // n_threads >= block_rows and weight_bytes <= self.l2_bytes // 2
                and step_work < self.units_min_step_work * n_threads)

    def unit_split(self, n_threads, H, B, work, weight_bytes):
        """Whether an LSTM training pass of ``work`` multiply-adds (its
        step products) over ``B`` sequences splits its ``H`` hidden units
        (a barrier a step, its parts handed over in Python): while the
        batch is too small for a batch split (fewer than
        ``min_split_rows`` sequences a thread), with ``W_hh``
        (``weight_bytes``) of at least ``unit_split_min_weight_bytes``,
        ``unit_split_min_units`` units a thread and a pipeline's work."""
        return (n_threads > 1 and H >= self.unit_split_min_units * n_threads
                and weight_bytes >= self.unit_split_min_weight_bytes
                and B < self.min_split_rows * n_threads and work >= self.pipeline_min_work)


# ---------------------------------------------------------------- measuring
def _cache_bytes(level, default):
    """Size of cpu0's data (or unified) cache of ``level`` (from Linux's
    sysfs; ``default`` when it does not say)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for name in sorted(os.listdir(base)):
            with open(os.path.join(base, name, "level")) as f:
                if f.read().strip() != str(level):
                    continue
            kind = os.path.join(base, name, "type")
            if os.path.exists(kind):
                with open(kind) as f:
                    if f.read().strip() == "Instruction":
                        continue
            with open(os.path.join(base, name, "size")) as f:
                size = f.read().strip().upper()
            mult = {"K": 1024, "M": 1024 ** 2}.get(size[-1:], 1)
            return int(size.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return default


#: idle time before each timed hand-over: a pool thread is woken from sleep
#: at a call (a round trip back to back is 3-6x faster than after an idle
#: millisecond on a 2-vCPU virtual machine)
HANDOVER_IDLE_S = 0.001


def _measure_handover(rounds=21):
    from ._threads import _pool

    pool = _pool(1)
    times = []
    for i in range(rounds + 3):
        time.sleep(HANDOVER_IDLE_S)
        t0 = time.perf_counter()
        pool.submit(int).result()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _measure_linger_handover(rounds=21):
    """Median seconds of :func:`fastseq.kernels._sync.split_native` handing
    an empty compiled part to the one thread of a two-thread pool that
    lingers after a task (inf where compiled hand-overs cannot run)."""
    from ._threads import _pool, linger_spins
    from .kernels._sync import AVAILABLE, STRIDE, split_native
    from .kernels.infer_native import part_address

    if not AVAILABLE or linger_spins() <= 0:
        return math.inf
    pool = _pool(1)
    bounds = np.array([[0, 0], [0, 0]], dtype=np.int64)
    flags = np.zeros(2 * STRIDE, dtype=np.int64)
    own = np.zeros(pool.descs.shape[1], dtype=np.int64)
    own[0] = part_address("noop", None)
    times = []
    for i in range(rounds + 3):
        pool.submit(int).result()         # the thread lingers after it
        t0 = time.perf_counter()
        ran = split_native(pool.states, pool.descs, own, bounds, flags)
        t = time.perf_counter() - t0
        if ran and i >= 3:
            times.append(t)
    return float(np.median(times)) if times else math.inf


def _measure_madd_rate():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((128, 256), dtype=np.float32)
    b = rng.standard_normal((256, 1024), dtype=np.float32)
    out = np.empty((128, 1024), dtype=np.float32)
    best = math.inf
    with threadpool_limits(1, user_api="blas"):
        np.matmul(a, b, out=out)
        for _ in range(7):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return a.shape[0] * a.shape[1] * b.shape[1] / best


def _cache_sizes():
    """The cache fields of :class:`Machine` for this machine: one core's L1
    data cache and L2, and the L3 (:func:`_cache_bytes`; 32 KB, 1 MB and
    8 MB when the operating system does not say)."""
    return dict(l1_bytes=_cache_bytes(1, 32 * 1024), l2_bytes=_cache_bytes(2, 1024 ** 2),
                l3_bytes=_cache_bytes(3, 8 * 1024 ** 2))


def measure():
    """The :class:`Machine` facts of this machine, measured now."""
    return Machine(handover_s=_measure_handover(), madd_rate=_measure_madd_rate(),
                   linger_handover_s=_measure_linger_handover(), **_cache_sizes())


def _cache_path():
    from ._config import VECTOR_BYTES
    from ._threads import _process_threads
    import llvmlite.binding as llvm

    folder = os.environ.get("FASTSEQ_CACHE_DIR") or os.environ.get("NUMBA_CACHE_DIR")
    if not folder:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastseq")
    key = f"{llvm.get_host_cpu_name()}-v{VECTOR_BYTES}-c{_process_threads()[0]}"  # cores, not a limit
    return os.path.join(folder, f"plan-{key}.json")


def _read_facts(path, fmt, read):
    """``read(data)`` of the JSON file at ``path`` written in format
    ``fmt``; None when it cannot be read or is of another format."""
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") == fmt:
            return read(data)
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return None


def _write_facts(path, fmt, **fields):
    """Write ``fields`` and the format as JSON at ``path``, whole or not at
    all (a temporary file replaced; a folder that cannot be written is
    left alone)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"format": fmt, **fields, "measured": time.time()}, f)
        os.replace(tmp, path)
    except OSError:
        pass


def load_or_measure(path=None):
    """The facts from the cache file, or measured and written there (a
    cache that cannot be read or written is measured around)."""
    path = path or _cache_path()
    m = _read_facts(path, _FORMAT, lambda data: Machine(**data["machine"]))
    if m is None:
        m = measure()
        _write_facts(path, _FORMAT, machine=asdict(m))
    return m


_lock = threading.Lock()
_current = None


def current():
    """This process's :class:`Plan` (measured or read on first use)."""
    global _current
    plan = _current
    if plan is None:
        with _lock:
            if _current is None:
                _current = Plan.for_machine(load_or_measure())
            plan = _current
    return plan


_one_thread = None


def for_threads(n):
    """The plan for a call of ``n`` threads: :func:`current`, but for one
    thread, while nothing has been measured yet, a plan from the cache
    sizes alone (read from the operating system, not measured; its
    split and pipeline thresholds never come into play at one thread)."""
    global _one_thread
    if n > 1 or _current is not None:
        return current()
    plan = _one_thread
    if plan is None:
        plan = _one_thread = Plan.for_machine(Machine(handover_s=0.0, madd_rate=0.0, **_cache_sizes()))
    return plan


def machine():
    """The facts behind :func:`current` (read from the cache, or measured)."""
    return load_or_measure()


# --------------------------------------------- numbers the kernels read
# The step product of the time loops (:func:`fastseq.kernels.matmul.packed_matmul`)
# calls BLAS from a number of rows on, where BLAS overtakes its tiles; the
# crossover is the machine's (bench/RESULTS.md, "BLAS or tiles": from 256
# rows on a znver3, never up to 1,024 rows on a znver4).  It is read by the
# compiled code at run time (:mod:`fastseq.kernels._runtime`), measured once
# per CPU kind and kept beside the planner's facts, and set before the
# first kernel of the process runs, at one thread as at many: a result
# never depends on which call came first.

#: rows timed for the crossover, and the step product timed at each: an
#: LSTM of 256 units (K = 256 inputs, 1024 outputs), float32, one thread
BLAS_ROWS_SIZES = (128, 256, 512, 1024)
BLAS_ROWS_SHAPE = (256, 1024)
#: BLAS is taken where it is at least this much faster than the tiles
BLAS_ROWS_MARGIN = 1.05
#: the input projection (:func:`fastseq.kernels.matmul.project`) calls BLAS
#: from this many L2 caches of weight: the packed blocks read the whole
#: weight once per 32 rows, from L2 while it nearly fits (one thread,
#: packed / BLAS GFLOP/s on this znver4, 1 MB of L2: 1 MB 102 / 94, 2 MB 98
#: / 91, 3.8 MB 98 / 97, 16 MB 87 / 97; on the znver3, 512 KB: ahead to
#: 1 MB, behind from 4 MB; bench/RESULTS.md, "BLAS or tiles")
PROJECT_BLAS_L2S = 4
#: repeats of each timing (the fastest counts)
BLAS_ROWS_REPEATS = 3
_BLAS_FORMAT = 1


def blas_crossover(times):
    """The rows from which the step product calls BLAS, from ``times``
    ``{rows: (tiles_s, blas_s)}``: the fewest rows measured from which BLAS
    is :data:`BLAS_ROWS_MARGIN` times as fast at every larger count
    measured, else twice the most rows measured (the tiles throughout)."""
    sizes = sorted(times)
    rows = 2 * sizes[-1]
    for r in reversed(sizes):
        tiles, blas = times[r]
        if tiles < BLAS_ROWS_MARGIN * blas:
            break
        rows = r
    return rows


def measure_blas_times():
    """``{rows: (tiles_s, blas_s)}``: the step product of
    :data:`BLAS_ROWS_SHAPE` by the packed tiles and by BLAS (one thread
    each, alternated, fastest of :data:`BLAS_ROWS_REPEATS`)."""
    from ._threads import blas_single_thread
    from .kernels._runtime import PACKED_BLAS_MIN_ROWS
    from ._workspace import aligned_empty
    from .kernels.matmul import pack_into, packed_matmul, packed_shape

    K, M = BLAS_ROWS_SHAPE
    rng = np.random.default_rng(0)
    w = rng.standard_normal((M, K), dtype=np.float32)
    wp = aligned_empty(packed_shape(w), np.float32)   # (no array taken from a cached kernel)
    pack_into(w, wp)
    saved = PACKED_BLAS_MIN_ROWS.get()
    times = {}
    try:
        with blas_single_thread():
            for r in BLAS_ROWS_SIZES:
                a = rng.standard_normal((r, K), dtype=np.float32)
                out = np.empty((r, M), dtype=np.float32)
                best = {0: math.inf, 1: math.inf}
                for _ in range(BLAS_ROWS_REPEATS + 1):   # (the first: compile, caches)
                    for blas, value in ((0, 1 << 62), (1, 0)):
                        PACKED_BLAS_MIN_ROWS.set(value)
                        t0 = time.perf_counter()
                        packed_matmul(a, w, wp, out)
                        best[blas] = min(best[blas], time.perf_counter() - t0)
                times[r] = (best[0], best[1])
    finally:
        PACKED_BLAS_MIN_ROWS.set(saved)
    return times


def _blas_rows_path():
    from ._config import VECTOR_BYTES
    import llvmlite.binding as llvm

    return os.path.join(os.path.dirname(_cache_path()),
                        f"blas-rows-{llvm.get_host_cpu_name()}-v{VECTOR_BYTES}.json")


def load_or_measure_blas_rows(path=None):
    """The crossover rows from their file, or measured and written there
    (as :func:`load_or_measure`)."""
    path = path or _blas_rows_path()
    rows = _read_facts(path, _BLAS_FORMAT, lambda data: int(data["rows"]))
    if rows is None:
        times = measure_blas_times()
        rows = blas_crossover(times)
        _write_facts(path, _BLAS_FORMAT, rows=rows, times={str(r): list(t) for r, t in times.items()})
    return rows


_values_lock = threading.RLock()
_values_state = 0   # 0: not set yet, 1: being set (by the lock's holder), 2: set


def resolve_kernel_values():
    """Set the numbers the kernels read at run time
    (:mod:`fastseq.kernels._runtime`) for this machine, once per process:
    :func:`fastseq._fpenv.flush_denormals` calls this as every compiled call
    starts until it has run.  Another thread's first call waits until they
    are set; a call that the measurement itself makes runs on.  When they
    cannot be had, the kernels keep their defaults."""
    global _values_state
    if _values_state == 2:
        return
    with _values_lock:
        if _values_state != 0:
            return
        _values_state = 1
        try:
            from .kernels._runtime import L1_BYTES, PACKED_BLAS_MIN_ROWS, PROJECT_BLAS_MIN_BYTES

            PROJECT_BLAS_MIN_BYTES.set(PROJECT_BLAS_L2S * _cache_bytes(2, 1024 ** 2))
            L1_BYTES.set(_cache_bytes(1, 32 * 1024))
            try:
                PACKED_BLAS_MIN_ROWS.set(load_or_measure_blas_rows())
            except Exception:   # (not timed: the kernels keep their default)
                pass
        finally:
            _values_state = 2
            _fpenv.before_kernels = None


def _after_fork_in_child():
    """A child forked while another thread was setting the numbers gets a
    fresh lock (the one held by a thread that does not exist in the child
    would hang its first call) and sets them itself."""
    global _values_lock, _values_state
    _values_lock = threading.RLock()
    if _values_state == 1:
        _values_state = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_fpenv.before_kernels = resolve_kernel_values
