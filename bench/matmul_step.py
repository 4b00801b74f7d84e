"""GFLOP/s of one step's recurrent product: fastseq's packed product
(``packed_matmul``, what the time loops and the input projection run)
and BLAS (``np.dot`` inside a compiled loop, SciPy's OpenBLAS), one thread.

Run from the repository root::

    python bench/matmul_step.py
    python bench/matmul_step.py --widths 32,64    # the packed product at each vector width
    python bench/matmul_step.py --all-tiles --rows 64,128,256,512,1024   # tiles where BLAS is called

With ``--widths`` the packed product is compiled (uncached) for each vector
width in bytes (``fastseq.kernels.matmul.BLOCKING``), whatever this machine's
own is: 64 (AVX-512) against 32 (AVX2) shows what the wider vectors give
here.

``out (n, M) = a (n, K) @ w.T`` with w (M, K) = W_hh (M = 4H for an LSTM),
n the rows of one step (the batch, or a thread's share of it).  The numbers
quoted in ``fastseq/kernels/matmul.py`` come from this script.
"""

import argparse
import time

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from fastseq._config import JIT, VECTOR_BYTES
from fastseq.kernels import matmul as mm
from fastseq.kernels.matmul import pack_weight, packed_matmul


@njit(**JIT)
def _repeat_packed(a, w, out, reps):
    wp = pack_weight(w)
    for _ in range(reps):
        packed_matmul(a, w, wp, out)


@njit(**JIT)
def _repeat_blas(a, w_t, out, reps):
    for _ in range(reps):
        np.dot(a, w_t, out)


def _repeat_for(pm):
    @njit(**{**JIT, "cache": False})
    def repeat(a, w, out, reps):
        wp = pack_weight(w)
        for _ in range(reps):
            pm(a, w, wp, out)
    return repeat


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default=None, help="vector widths in bytes, e.g. 32,64")
    ap.add_argument("--H", default="64,128,256,512,1024", help="hidden sizes (K = H, M = 4H)")
    ap.add_argument("--rows", default="1,2,4,8,16,32,64,128", help="rows of a step")
    ap.add_argument("--all-tiles", action="store_true",
                    help="the packed product's tiles at every row count (its BLAS branch from "
                         "PACKED_BLAS_MIN_ROWS off)")
    args = ap.parse_args(argv)
    from fastseq import _plan

    _plan.resolve_kernel_values()   # the packed product's BLAS rows, as the layers have them
    print(f"the packed product calls BLAS from {mm.PACKED_BLAS_MIN_ROWS.get()} rows here")
    engines = [("packed", _repeat_packed, False), ("blas", _repeat_blas, True)]
    if args.all_tiles:
        def tiles_at_every_row_count(a, w, out, reps, _packed=engines[0][1]):
            saved = mm.PACKED_BLAS_MIN_ROWS.get()
            mm.PACKED_BLAS_MIN_ROWS.set(1 << 62)     # read by the compiled code at run time
            try:
                return _packed(a, w, out, reps)
            finally:
                mm.PACKED_BLAS_MIN_ROWS.set(saved)
        engines[0] = ("tiles", tiles_at_every_row_count, False)
    if args.widths:
        engines = [(f"packed{vb}", _repeat_for(njit(**{**JIT, "cache": False})(mm._packed_matmul_for(vb))), False)
                   for vb in (int(v) for v in args.widths.split(","))]
    print(f"this machine's vector width: {VECTOR_BYTES} bytes")
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        for H in (int(v) for v in args.H.split(",")):
            M = 4 * H
            w = rng.standard_normal((M, H), dtype=np.float32)
            w_t = np.ascontiguousarray(w.T)
            for n in (int(v) for v in args.rows.split(",")):
                a = rng.standard_normal((n, H), dtype=np.float32)
                out = np.empty((n, M), dtype=np.float32)
                row = []
                for name, fn, transposed in engines:
                    ww = w_t if transposed else w
                    fn(a, ww, out, 1)
                    reps = max(1, int(2e8 / (2 * n * H * M)))
                    best = min(_one(fn, a, ww, out, reps) for _ in range(3))
                    row.append(f"{name} {2 * n * H * M / best / 1e9:6.1f}")
                print(f"K=H={H:5d} M={M:5d} n={n:4d}  " + "  ".join(row) + "  GFLOP/s", flush=True)


def _one(fn, a, w, out, reps):
    t0 = time.perf_counter()
    fn(a, w, out, reps)
    return (time.perf_counter() - t0) / reps


if __name__ == "__main__":
    main()
