"""Inference of a model exported with ``fastseq.to_onnx``, in ONNX Runtime,
beside fastseq itself: the same fitted RNNClassifier, the same batch.

Run from the repository root::

    python -m bench.onnx_export                 # 16 cases, about a minute
    python -m bench.onnx_export --threads 1 --json out.json

Cases: LSTM and GRU, H = 64 and 128, B = 1 and 64, T = 50 and 200, F = 16
features, 4 classes, ``pooling="last"``, float32, every sequence of full
length (``lengths`` = T).  The classifier is fitted for one epoch on a few
short sequences (the weights do not matter for speed).

Columns (median seconds per call):

``fastseq``  ``clf.predict_proba(X)``: the user's call, input checks included;
``model``    ``clf.model_.predict_batch(X, lengths)`` then the softmax: the
             padded batch straight into the network, as ORT gets it;
``ort``      ``session.run`` of ``to_onnx(clf)`` on ``X`` and ``lengths``.

Threads are matched (``--threads``, default 2): fastseq under
``n_jobs=threads`` (its own threads, BLAS held at one inside), every BLAS
limited by threadpoolctl, ONNX Runtime with ``intra_op_num_threads=threads``
(``inter_op_num_threads=1``, sequential).  The two fastseq columns are timed
alternately (:func:`bench.compare.time_alternating`); ORT on its own right
after, in a session closed before the next case (its spinning worker threads
would otherwise slow whatever runs next).  Ratios are ``ort / fastseq`` time:
above 1.0 fastseq is faster.  The first line names the CPU as
``bench/compare.py`` does (model, LLVM name, widest vector ISA).  Figures
taken on a shared, loaded machine are provisional.
"""

import argparse
import json
import os
import sys
import warnings

if __package__ in (None, ""):  # python bench/onnx_export.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.compare import cpu_kind, cpu_model, time_alternating

F, C = 16, 4
CASES = [(cell, H, B, T) for cell in ("lstm", "gru") for H in (64, 128)
         for B in (1, 64) for T in (50, 200)]


def fitted(cell, H, threads):
    from sklearn.exceptions import ConvergenceWarning

    from fastseq import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 5, F)).astype(np.float32)
    clf = RNNClassifier(cell=cell, hidden_size=H, max_iter=1, random_state=0, n_jobs=threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, np.arange(8) % C)


def session(model, threads):
    from bench.compare import ort_session

    return ort_session(model.SerializeToString(), threads)


def run_case(cell, H, B, T, threads, repeats):
    import fastseq
    from fastseq._threads import limit
    from fastseq.network.dense import softmax

    clf = fitted(cell, H, threads)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((B, T, F)).astype(np.float32)
    lengths = np.full(B, T, dtype=np.int64)
    model = clf.model_

    def raw():
        with limit(threads):
            return softmax(model.predict_batch(X, lengths))

    times = time_alternating({"fastseq": lambda: clf.predict_proba(X), "model": raw}, repeats)
    sess = session(fastseq.to_onnx(clf), threads)
    feed = {"X": X, "lengths": lengths}
    got = sess.run(["probabilities"], feed)[0]
    err = float(np.abs(got - clf.predict_proba(X)).max())
    times.update(time_alternating({"ort": lambda: sess.run(["probabilities"], feed)}, repeats))
    sess = None  # close it: its worker threads must not slow the next case
    return dict(cell=cell, H=H, B=B, T=T, max_abs_diff=err, **times,
                ratio=times["ort"] / times["fastseq"], ratio_model=times["ort"] / times["model"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per engine (default 7)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    from threadpoolctl import threadpool_limits

    import onnxruntime

    name, isa = cpu_kind()
    head = (f"CPU: {cpu_model()} ({name}, {isa}), {args.threads} threads; "
            f"onnxruntime {onnxruntime.__version__}")
    print(head)
    print("| cell | H | B | T | fastseq ms | model ms | ORT ms | ORT/fastseq | ORT/model "
          "| max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    with threadpool_limits(limits=args.threads):
        for case in CASES:
            r = run_case(*case, args.threads, args.repeats)
            rows.append(r)
            print(f"| {r['cell']} | {r['H']} | {r['B']} | {r['T']} | {1e3 * r['fastseq']:.3f} "
                  f"| {1e3 * r['model']:.3f} | {1e3 * r['ort']:.3f} | {r['ratio']:.2f}x "
                  f"| {r['ratio_model']:.2f}x | {r['max_abs_diff']:.1e} |", flush=True)
    gm = float(np.exp(np.mean([np.log(r["ratio"]) for r in rows])))
    gm_model = float(np.exp(np.mean([np.log(r["ratio_model"]) for r in rows])))
    print(f"\ngeometric mean ORT/fastseq {gm:.2f}x (predict_proba), {gm_model:.2f}x (model); "
          f"lowest {min(r['ratio'] for r in rows):.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": head, "rows": rows, "geomean": gm, "geomean_model": gm_model}, f,
                      indent=1)


if __name__ == "__main__":
    main()
