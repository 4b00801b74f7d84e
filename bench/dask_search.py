"""A small GridSearchCV of RNNClassifier, timed locally (``n_jobs=1``) and
on a Dask ``LocalCluster`` of worker processes (joblib's dask backend).

    python -m bench.dask_search             # 2 workers x 1 thread, 12 fits + refit
    python -m bench.dask_search --workers 4 --cv 4

Each fit is pinned to one thread (``n_jobs=1``) and seeded, so both runs fit
the same models and must report the same ``cv_results_`` (checked). The
kernels are loaded (or compiled) first in this process and on every worker
(:func:`fastseq.dask.warm_up`), so neither side is timed compiling; the
cluster's start and the warm-up are printed apart. Prints the CPU, the core
count and the load average (figures measured on a shared, loaded machine
are provisional).
"""

import argparse
import logging
import os
import time
import warnings

import numpy as np

from bench.compare import cpu_kind, cpu_model


def problem(n, T, F, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T, F))
    y = (X[:, :, 0].mean(axis=1) > 0).astype(int) + (X[:, -1, 1] > 0)
    return X, y


def make_search(n_jobs, cv, max_iter):
    from sklearn.model_selection import GridSearchCV

    from fastseq import RNNClassifier

    est = RNNClassifier(hidden_size=16, max_iter=max_iter, batch_size=32, n_jobs=1, random_state=0)
    grid = {"cell": ["gru", "lstm"], "hidden_size": [16, 32]}
    return GridSearchCV(est, grid, cv=cv, n_jobs=n_jobs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cv", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)

    import joblib
    from distributed import Client, LocalCluster

    import fastseq.dask as fd
    from fastseq import RNNClassifier

    warnings.simplefilter("ignore")
    X, y = problem(args.samples, args.steps, 4)
    name, isa = cpu_kind()
    print(f"CPU: {cpu_model()} ({name}, {isa}), {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    n_fits = 4 * args.cv
    print(f"GridSearchCV: RNNClassifier (gru, lstm) x hidden (16, 32), cv={args.cv}: {n_fits} fits "
          f"+ refit on {args.samples} x {args.steps} x 4, {args.epochs} epochs, n_jobs=1 per fit")

    RNNClassifier(cell="gru", hidden_size=4, max_iter=1, n_jobs=1).fit(X[:16], y[:16])
    RNNClassifier(cell="lstm", hidden_size=4, max_iter=1, n_jobs=1).fit(X[:16], y[:16])
    t0 = time.perf_counter()
    local = make_search(1, args.cv, args.epochs).fit(X, y)
    t_local = time.perf_counter() - t0
    print(f"local, n_jobs=1:                        {t_local:7.2f} s")

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    t_start = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        fd.warm_up(client, [RNNClassifier(cell=c, n_jobs=1) for c in ("gru", "lstm")])
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        with joblib.parallel_backend("dask"):
            remote = make_search(-1, args.cv, args.epochs).fit(X, y)
        t_dask = time.perf_counter() - t0
    finally:
        client.close()
        cluster.close()
    same = all(np.array_equal(local.cv_results_[f"split{k}_test_score"],
                              remote.cv_results_[f"split{k}_test_score"]) for k in range(args.cv))
    print(f"dask, {args.workers} workers x 1 thread (processes): {t_dask:7.2f} s   "
          f"({t_local / t_dask:.2f}x local; cluster start {t_start:.1f} s and warm-up "
          f"{t_warm:.1f} s not included)")
    print(f"same cv_results_ as local: {same}; best {remote.best_params_}, "
          f"score {remote.best_score_:.4f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
