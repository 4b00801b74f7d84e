"""Do the defaults learn?  ``RNNClassifier(random_state=s)`` with nothing
tuned, on the UCR/UEA sets that ship inside aeon, against 1-nearest-neighbour
(Euclidean) and the published deep-learning results.

    python -m bench.defaults                 # every set, seeds 0 1 2 (~5-10 min on 2 cores)
    python -m bench.defaults --sets GunPoint ArrowHead --seeds 0

Columns:

- ``fastseq (defaults)``: ``RNNClassifier(random_state=seed)``, mean test
  accuracy over the seeds (min-max in brackets), and the mean fit time;
- ``before``: the defaults this project had before (LSTM, ``batch_size=32``,
  no convolution front end), same seeds: the number of updates collapsed on
  small sets and training stopped at chance;
- ``1-NN ED``: 1-nearest neighbour, Euclidean distance, on the raw series
  (ragged sets: zero-padded to the longest series);
- ``FCN``, ``ResNet``: Fawaz et al. (2019), "Deep learning for time series
  classification: a review", Data Mining and Knowledge Discovery 33, mean
  test accuracy over their runs (UCR 2018 archive: 5 runs; JapaneseVowels,
  from their MTS archive: 10 runs), as published in the results files of
  their repository (``hfawaz/dl-4-tsc``: ``results/results-ucr-128.csv``,
  ``results/results-mts.csv``);
- ``InceptionTime``: Fawaz et al. (2020), "InceptionTime: finding AlexNet for
  time series classification", same source (``hfawaz/InceptionTime``:
  ``results-InceptionTime-128.csv``, an ensemble of 5 networks).

Those networks train for 1,500-2,000 epochs with the architecture chosen
for the archive; the fastseq column is what a user gets from
``RNNClassifier().fit(X, y)`` in seconds.  Nothing here is asserted by a
test: a reseed moves these figures.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

#: name -> (FCN, ResNet, InceptionTime) published mean test accuracy (None: not published there)
PUBLISHED = {
    "GunPoint": (1.000, 0.991, 1.000),
    "ArrowHead": (0.843, 0.838, 0.846),
    "ItalyPowerDemand": (0.963, 0.962, 0.965),
    "OSULeaf": (0.979, 0.980, 0.942),
    "BasicMotions": (None, None, None),
    "JapaneseVowels": (0.993, 0.992, None),
    "PickupGestureWiimoteZ": (0.744, 0.704, 0.760),
    "ACSF1": (0.898, 0.916, 0.920),
}

#: the defaults before this table existed (for the "before" column)
BEFORE = dict(cell="lstm", batch_size=32, conv_filters=None)


def load(name):
    """(X_train, y_train, X_test, y_test) in fastseq's formats: (n, T, F) float32
    arrays for equal-length sets, lists of (T_i, F) arrays for ragged ones."""
    from aeon.datasets import load_classification

    def fmt(X):
        if isinstance(X, np.ndarray):
            return np.ascontiguousarray(np.transpose(X, (0, 2, 1)), dtype=np.float32)
        return [np.ascontiguousarray(np.asarray(x, dtype=np.float32).T) for x in X]

    X, y = load_classification(name, split="train")
    Xt, yt = load_classification(name, split="test")
    return fmt(X), np.asarray(y), fmt(Xt), np.asarray(yt)


def describe(X):
    lengths = [len(x) for x in X]
    F = X[0].shape[-1]
    T = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)}-{max(lengths)}"
    return f"{len(lengths)} x {T} x {F}"


def one_nn(X, y, Xt, yt):
    from sklearn.neighbors import KNeighborsClassifier

    T = max(max(len(x) for x in X), max(len(x) for x in Xt))

    def flat(A):
        out = np.zeros((len(A), T * A[0].shape[-1]), dtype=np.float64)
        for i, a in enumerate(A):
            out[i, :a.size] = np.asarray(a, dtype=np.float64).ravel()
        return out

    return KNeighborsClassifier(n_neighbors=1).fit(flat(X), y).score(flat(Xt), yt)


def fit_score(X, y, Xt, yt, seed, **params):
    from fastseq import RNNClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        clf = RNNClassifier(random_state=seed, **params).fit(X, y)
        took = time.perf_counter() - start
    return clf.score(Xt, yt), took, clf


def cpu_name():
    from bench.compare import cpu_kind, cpu_model
    from fastseq._threads import default_num_threads

    name, isa = cpu_kind()
    return (f"CPU: {cpu_model()} ({name}, {isa}), {default_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(PUBLISHED))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-before", action="store_true", help="skip the old-defaults column")
    args = ap.parse_args(argv)

    rows = []
    for name in args.sets:
        X, y, Xt, yt = load(name)
        nn = one_nn(X, y, Xt, yt)
        now, before = [], []
        for s in args.seeds:
            acc, took, clf = fit_score(X, y, Xt, yt, s)
            now.append((acc, took))
            front = clf.model_.config.get("conv_filters")
            if not args.no_before:
                acc_b, took_b, _ = fit_score(X, y, Xt, yt, s, **BEFORE)
                before.append((acc_b, took_b))
        a = np.array([r[0] for r in now])
        row = dict(name=name, shape=f"{describe(X)} / {len(Xt)}", classes=len(np.unique(y)),
                   now=f"**{a.mean():.3f}** ({a.min():.2f}-{a.max():.2f}), "
                       f"{np.mean([r[1] for r in now]):.0f} s",
                   front="conv" if front else "none",
                   before=(f"{np.mean([r[0] for r in before]):.3f}" if before else "-"),
                   nn=f"{nn:.3f}")
        fcn, resnet, inc = PUBLISHED.get(name, (None, None, None))
        row.update(fcn=f"{fcn:.3f}" if fcn else "-", resnet=f"{resnet:.3f}" if resnet else "-",
                   inc=f"{inc:.3f}" if inc else "-")
        rows.append(row)
        print(f"{name}: now {row['now']} ({row['front']}), before {row['before']}, "
              f"1-NN {row['nn']}", file=sys.stderr, flush=True)

    print(f"\n{cpu_name()}; seeds {' '.join(map(str, args.seeds))}; "
          f"fastseq at its default n_jobs\n")
    print("| data set | train x steps x features / test | classes | fastseq defaults: accuracy "
          "(min-max), fit time | front end | before | 1-NN ED | FCN | ResNet | InceptionTime |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['shape']} | {r['classes']} | {r['now']} | {r['front']} | "
              f"{r['before']} | {r['nn']} | {r['fcn']} | {r['resnet']} | {r['inc']} |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
