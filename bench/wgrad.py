"""Weight gradients over few inputs: BLAS against the tall products.

Run from the repository root::

    python -m bench.wgrad [--threads 2] [--repeats 9] [--shapes N:F:M,...]

Times the weight-gradient product ``dg.T @ x`` of a layer (``dg`` (N, M)
its gate gradients, ``x`` (N, F) its inputs, float32, random) both ways
the layer can run it: BLAS (:func:`fastseq._threads.parallel_matmul`, row
blocks in threads, BLAS at one thread each), what the layer runs past the
tall product's rule (``network.recurrent._backward_product``: the packed
product from transposed copies where they fit, else BLAS; "tiles"), the
strip product
(:func:`fastseq._threads.parallel_tall_matmul`) and the same product
from the inputs transposed first (``transposed=True``; the time of the
transposing copy, :func:`fastseq._threads.parallel_transpose`, included:
the layer writes its fused inputs that way instead of copying them
plainly, so the copy's own time is what it costs there), the inputs
read in place as the layer's fused ``[inputs | h_prev | 1]`` are
(:func:`fastseq._threads.parallel_tall_cat` over ``F - 1`` columns and a
row of ones: "cat"; the layer's own splits its columns in two sources,
at the same cost), under
``fastseq._threads.limit(threads)`` entered once (entering threadpoolctl's
limits at every call costs milliseconds, more than some products take),
alternated call by call (:func:`bench.compare.time_alternating`, median
ms), and prints each with its GFLOP/s and which the layer's rule takes:
the tall product where the gates fill whole strips
(``network.recurrent._tall_fits``; ``M`` not a multiple of a strip's 16
gates: BLAS), from the inputs transposed first where a k block of them
passes half the L2 (``_strided_x_spills``), and which the fused inputs
take (``_in_place_fits``: "cat" read in place, else the transposed
buffer of ``_gate_grads`` or BLAS).

The default shapes are the layers' own: the weather GRU's input side
(49152 rows: 1024 sequences of 48 steps; 5 inputs and a column of ones;
192 gates) and recurrent side (64 states), the weather RNN's and LSTM's
fused ``[inputs | h_prev | 1]`` (70 columns), the MNIST-rows GRU's input
(29) and recurrent (256) sides, the MNIST-rows LSTM's fused inputs (285)
and two larger ones.
"""

import argparse

import numpy as np

from bench.compare import cpu_header, machine_info, time_alternating

#: (N, F, M): rows, inputs, gates
SHAPES = ((49152, 6, 192), (49152, 64, 192), (49152, 70, 64), (49152, 70, 256), (3584, 29, 768),
          (3456, 256, 768), (3584, 285, 1024), (3200, 1001, 2000))


def run(shapes, threads, repeats):
    from fastseq._threads import limit, parallel_matmul, parallel_tall_cat, parallel_tall_matmul, parallel_transpose
    from fastseq.network.recurrent import _backward_product, _in_place_fits, _strided_x_spills, _tall_fits

    rows = []
    rng = np.random.default_rng(0)
    for N, F, M in shapes:
        dg = rng.standard_normal((N, M), dtype=np.float32)
        x = rng.standard_normal((N, F), dtype=np.float32)
        out = np.empty((M, F), dtype=np.float32)
        out_t = np.empty((F, M), dtype=np.float32)
        xt = np.empty((F, N), dtype=np.float32)
        x_cat, no_h, no_h0 = np.ascontiguousarray(x[:, :F - 1]), np.empty((N, 0), np.float32), np.empty((0, 0), np.float32)
        steps = np.zeros(1, dtype=np.int64)   # (not read without state columns)

        def transposed():
            parallel_transpose(x, xt)
            parallel_tall_matmul(xt, dg, out=out_t, transposed=True)
        with limit(threads):
            ref = parallel_matmul(dg.T, x)
            np.testing.assert_allclose(parallel_tall_matmul(x, dg).T, ref, rtol=1e-3, atol=1e-2 * np.sqrt(N))
            transposed()
            np.testing.assert_allclose(out_t.T, ref, rtol=1e-3, atol=1e-2 * np.sqrt(N))
            np.testing.assert_allclose(_backward_product(dg.T, x, out=out), ref, rtol=1e-3,
                                       atol=1e-2 * np.sqrt(N))
            fns = {"blas": lambda: parallel_matmul(dg.T, x, out=out),
                   "tiles": lambda: _backward_product(dg.T, x, out=out),
                   "tall": lambda: parallel_tall_matmul(x, dg, out=out_t),
                   "transposed": transposed}
            if _tall_fits(M, np.dtype(np.float32)):   # (whole strips only)
                fns["cat"] = lambda: parallel_tall_cat(x_cat, no_h, no_h0, steps, dg, out_t)
                fns["cat"]()
                ones = np.concatenate([x_cat, np.ones((N, 1), np.float32)], 1)
                np.testing.assert_allclose(out_t.T, parallel_matmul(dg.T, ones), rtol=1e-3, atol=1e-2 * np.sqrt(N))
            ts = time_alternating(fns, repeats, pause=0.002)
            rule = _tall_fits(M, np.dtype(np.float32))
            rule_t = rule and _strided_x_spills(F, np.dtype(np.float32))
            rule_cat = _in_place_fits(M, F - 1, np.dtype(np.float32))
        flop = 2.0 * N * F * M
        row = {"N": N, "F": F, "M": M, "rule_tall": rule, "rule_transposed": rule_t, "rule_fused_cat": rule_cat}
        for k in ts:
            row[f"{k}_ms"], row[f"{k}_gflops"] = ts[k] * 1e3, flop / ts[k] / 1e9
        print(f"N {N:6d} F {F:5d} M {M:5d}  BLAS {row['blas_ms']:8.3f} ms ({row['blas_gflops']:5.0f} GFLOP/s)"
              f"  tiles {row['tiles_ms']:8.3f} ms ({row['tiles_gflops']:5.0f})"
              f"  tall {row['tall_ms']:8.3f} ms ({row['tall_gflops']:5.0f})"
              f"  transposed {row['transposed_ms']:8.3f} ms ({row['transposed_gflops']:5.0f})"
              + (f"  cat {row['cat_ms']:8.3f} ms ({row['cat_gflops']:5.0f})" if "cat" in ts else "")
              + f"  rule: {'transposed' if rule_t else 'tall' if rule else 'BLAS'}"
              f", fused: {'cat' if rule_cat else 'transposed' if rule else 'BLAS'}",
              flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--shapes", default=None, help="N:F:M,... (default: the layers' own, see the docstring)")
    args = p.parse_args(argv)
    shapes = SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
        except ValueError:
            p.error(f"--shapes: expected N:F:M,..., got {args.shapes!r}")
        if any(len(s) != 3 or min(s) < 1 for s in shapes):
            p.error(f"--shapes: expected positive N:F:M,..., got {args.shapes!r}")
    print(cpu_header(machine_info(args.threads)))
    return run(shapes, args.threads, args.repeats)


if __name__ == "__main__":
    main()
