"""The packed product at one row (a batch-1 step), one thread: its packed
weight starting a 64-byte line or 32 bytes into one, and, at this
machine's vector width, the strips one row takes at once from a weight
within L1 and beyond it.

Run from the repository root::

    python -m bench.one_row
    python -m bench.one_row --H 32,64 --gates 4,3

``out (1, G*H) = a (1, H) @ w.T``, ``w`` (G*H, H): an LSTM's (G 4), a
GRU's (3) or an Elman RNN's (1) recurrent product of one sequence.
Nanoseconds a product, fastest of 7 timings of many calls.  numba
allocates arrays on 32-byte boundaries, so a weight packed in compiled
code started a 64-byte line half the time before the packed weights were
aligned (:func:`fastseq.kernels.matmul.empty_strips`); a 512-bit strip
load from the other half spans two lines.
"""

import argparse
import time

import numpy as np
from numba import njit

from fastseq._config import JIT, VECTOR_BYTES
from fastseq.kernels import matmul as mm

from bench.compare import cpu_header, machine_info


def _repeat_for(pm):
    @njit(**{**JIT, "cache": False})
    def repeat(a, w, wp, out, reps):
        for _ in range(reps):
            pm(a, w, wp, out)
    return repeat


def _at_offset(shape, dtype, offset):
    """An uninitialised C-contiguous array ``offset`` bytes past a 64-byte line."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = np.empty(n + 128 // dtype.itemsize, dtype=dtype)
    start = ((-buf.ctypes.data) % 64 + offset) // dtype.itemsize
    return buf[start:start + n].reshape(shape)


def _time(fn, args, work, budget=3e6):
    reps = max(10, int(budget / work))
    fn(*args, 10)
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        fn(*args, reps)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--H", default="32,64,128", help="hidden sizes (K = H)")
    ap.add_argument("--gates", default="4,3,1", help="gates G (M = G*H)")
    ap.add_argument("--budget", type=float, default=3e6, help="multiply-adds a timing (default 3e6)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(v) for v in args.H.split(",")]
        gates = [int(v) for v in args.gates.split(",")]
    except ValueError:
        ap.error(f"--H and --gates: expected comma-separated integers, got {args.H!r} and {args.gates!r}")
    if min(sizes) < 1 or min(gates) < 1:
        ap.error(f"--H and --gates: expected positive integers, got {args.H!r} and {args.gates!r}")
    print(cpu_header(machine_info(1)))
    from fastseq import _plan
    from fastseq.kernels._runtime import L1_BYTES

    _plan.resolve_kernel_values()
    R, S, S2, S1, S1L2 = mm.BLOCKING[VECTOR_BYTES]
    variants = {"package": mm.packed_matmul}
    if S1L2 != S1:   # the other one-row grouping, both sides of L1 alike
        variants[f"{S1} strips"] = njit(**{**JIT, "cache": False})(
            mm._packed_matmul_for(VECTOR_BYTES, (R, S, S2, S1, S1)))
        variants[f"{S1L2} strips"] = njit(**{**JIT, "cache": False})(
            mm._packed_matmul_for(VECTOR_BYTES, (R, S, S2, S1L2, S1L2)))
    repeats = {k: _repeat_for(v) for k, v in variants.items()}
    print(f"{VECTOR_BYTES}-byte vectors, L1 {L1_BYTES.get() // 1024} KB, one row takes {S1} strips at once "
          f"from a weight within L1, {S1L2} beyond; ns a product, one thread")
    rng = np.random.default_rng(0)
    rows = []
    head = ["H", "G", "weight KB", "line", "32 B into a line"] + [k for k in variants if k != "package"]
    print(" | ".join(head))
    for H in sizes:
        for G in gates:
            a = rng.standard_normal((1, H)).astype(np.float32)
            w = rng.standard_normal((G * H, H)).astype(np.float32)
            out = np.empty((1, G * H), dtype=np.float32)
            packed = np.empty(mm.packed_shape(w), dtype=np.float32)
            mm.pack_into(w, packed)
            got = {"H": H, "G": G, "weight_kb": packed.nbytes / 1024}
            for offset in (0, 32):
                wp = _at_offset(packed.shape, np.float32, offset)
                wp[...] = packed
                got[f"ns_offset_{offset}"] = _time(repeats["package"], (a, w, wp, out), G * H * H, args.budget)
            np.testing.assert_allclose(out, a @ w.T, rtol=1e-4, atol=1e-4 * np.sqrt(H))
            wp = _at_offset(packed.shape, np.float32, 0)
            wp[...] = packed
            for k in variants:
                if k != "package":
                    got[f"ns_{k.replace(' ', '_')}"] = _time(repeats[k], (a, w, wp, out), G * H * H, args.budget)
            rows.append(got)
            print(" | ".join([str(H), str(G), f"{got['weight_kb']:.0f}"]
                             + [f"{v:.0f}" for k, v in got.items() if k.startswith("ns_")]))
    return rows


if __name__ == "__main__":
    main()
