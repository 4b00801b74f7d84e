"""This checkout's fastseq against another checkout's, in one process.

Run from the repository root::

    git worktree add /tmp/before HEAD~1          # (or any other checkout)
    python -m bench.ab --other /tmp/before [--cells rnn,gru,lstm] [--H 32] [--T 32] [--B 1]
                       [--I 28] [--train] [--threads 2] [--repeats 9] [--rounds 3]

Times ``Recurrent.forward(X, need_grad=False)`` (input size ``--I``, default
H; a layer of each package with the same seed, hence the same weights), or
with ``--train`` a training step (:class:`bench.compare.FastseqTrainer`:
forward, backward, clipping, Adam; each package its own kernels) of both
packages alternated call by call (:func:`bench.compare.time_alternating`,
no pause), ``--rounds`` times, and prints the median microseconds of each
round.  The other checkout's package is imported under another name
(``fastseq_other``, numba caching its kernels beside its own files), so
both run in the same process on the same cores at the same moment: on the
2-vCPU machines here, whose timings move by 10-50% between processes and
minutes, only such side-by-side figures tell a change of a few percent
from the machine's noise.  Each package keeps its own thread pool.
"""

import argparse
import importlib
import importlib.util
import os
import sys

import numpy as np

from bench.compare import FastseqTrainer, cpu_header, machine_info, time_alternating


def load_other(path, name="fastseq_other"):
    """The ``fastseq`` package of the checkout at ``path``, as module ``name``."""
    pkg = os.path.join(os.path.abspath(path), "fastseq")
    init = os.path.join(pkg, "__init__.py")
    if not os.path.exists(init):
        raise SystemExit(f"--other: no fastseq package in {path!r}")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[pkg])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    importlib.import_module(name + ".nn")
    return module


class _Trainer(FastseqTrainer):
    """:class:`bench.compare.FastseqTrainer` on the kernels of ``package``."""

    def __init__(self, layer, package):
        super().__init__(layer)
        self.K = importlib.import_module(package.__name__ + ".kernels")


def compare(other, cells, Hs, Ts, Bs, threads, repeats, rounds, I=None, train=False):
    import fastseq
    import fastseq.nn

    rows = []
    for cell in cells:
        for H in Hs:
            for T in Ts:
                for B in Bs:
                    F = I or H
                    rng = np.random.default_rng(0)
                    X = rng.standard_normal((B, T, F)).astype(np.float32)
                    G = rng.standard_normal((B, T, H)).astype(np.float32)
                    fns = {}
                    for label, pkg in (("other", other), ("this", fastseq)):
                        layer = pkg.nn.Recurrent(cell, F, H, random_state=0, n_jobs=threads)
                        if train:
                            fns[label] = (lambda tr: lambda: tr.step(X, G))(_Trainer(layer.train(), pkg))
                        else:
                            fns[label] = (lambda lay: lambda: lay.forward(X, need_grad=False)[0])(layer.eval())
                    if not train:
                        np.testing.assert_allclose(fns["this"](), fns["other"](), rtol=1e-4, atol=1e-5)
                    res = [time_alternating(fns, repeats, pause=0) for _ in range(rounds)]
                    line = "  ".join(f"{r['other'] * 1e6:8.1f} {r['this'] * 1e6:8.1f}" for r in res)
                    print(f"{cell:4s} {'train' if train else 'infer'} B{B:3d} I{F:4d} H{H:4d} T{T:4d}  "
                          f"other / this us: {line}", flush=True)
                    rows.append((cell, B, H, T, res))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--other", required=True, help="root of the other checkout")
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--H", default="32")
    p.add_argument("--T", default="32")
    p.add_argument("--B", default="1")
    p.add_argument("--I", type=int, default=None, help="input size (default: H)")
    p.add_argument("--train", action="store_true", help="time training steps, not inference")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    other = load_other(args.other)
    print(cpu_header(machine_info(args.threads)), f"(other: {args.other})")
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    return compare(other, args.cells.split(","), ints(args.H), ints(args.T), ints(args.B), args.threads,
                   args.repeats, args.rounds, args.I, args.train)


if __name__ == "__main__":
    main()
