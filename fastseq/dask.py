"""fastseq beyond one machine, with Dask (``pip install "fastseq[dask]"``).

dask is imported only by this module: ``import fastseq`` never imports it.

- **Hyper-parameter search** needs nothing from this module: fastseq's
  estimators pickle, so scikit-learn's ``GridSearchCV``,
  ``RandomizedSearchCV`` and ``cross_validate`` spread their fits over a
  Dask cluster under ``joblib.parallel_backend("dask")`` (with a
  ``distributed.Client`` connected), with the results of a local run.
  :func:`warm_up` loads (or compiles) the kernels on every worker first.
- **Batch inference**: :func:`predict`, :func:`predict_proba`,
  :func:`predict_log_proba` and :func:`decision_function` map a fitted
  estimator over the blocks of a dask array ``(n, T, F)`` or ``(n, T)``
  chunked along samples, lazily (no fastseq estimator has ``transform``).
- **Training from data larger than memory**: :func:`partial_fit` streams the
  blocks of dask arrays through ``est.partial_fit``, one block in memory at
  a time (as dask-ml's ``Incremental`` does for 2-D data).

Threads: a fastseq call inside a Dask worker's task uses, by default
(``n_jobs=None``), the worker's share of the cores (``cores // nthreads``,
and 1 under a nanny, which sets ``OMP_NUM_THREADS=1``): never more than the
worker was given (:func:`fastseq._threads.default_num_threads`).  Fix
``n_jobs`` for results bit-identical to a local call with the same count.

Compilation: numba compiles fastseq's kernels at their first use in each
process and caches the machine code next to the package's sources (the
``__pycache__`` folders), which every worker of one machine shares; where
that folder is read-only numba falls back to a per-user cache folder.  Set
``NUMBA_CACHE_DIR`` to a writable folder (local disk) in the environment of
each worker (``LocalCluster(env=...)``, ``Nanny(env=...)``, or the shell or
job script that starts ``dask worker``) to choose it.  :func:`warm_up` runs
a tiny fit and predict on every worker, so that no real task pays for
compiling or loading the kernels.
"""

import time
import warnings

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.array.core import PerformanceWarning
except ImportError as exc:  # pragma: no cover - dask is an optional dependency
    raise ImportError(
        'fastseq.dask needs dask: pip install "fastseq[dask]" (dask[array] and distributed)'
    ) from exc

from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

__all__ = ["predict", "predict_proba", "predict_log_proba", "decision_function", "transform",
           "partial_fit", "warm_up", "PerformanceWarning"]


# ------------------------------------------------------------------ checks
def _check_dask_array(X, name, function):
    if not isinstance(X, da.Array):
        raise TypeError(
            f"{name} must be a dask array (dask.array.Array), got {type(X).__name__}: "
            f"wrap it with dask.array.from_array({name}, chunks=...) or call the "
            f"estimator's own {function} on an in-memory array")
    return X


def _one_chunk_per_sample_block(X, name):
    """``X`` with one chunk along every axis but the first: rechunked (with a
    :class:`PerformanceWarning`) when it is chunked along time or features;
    a ValueError when those chunk sizes are unknown."""
    if X.ndim < 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_timesteps) or 3-D "
                         f"(n_samples, n_timesteps, n_features), got shape {X.shape}")
    split = [ax for ax in range(1, X.ndim) if len(X.chunks[ax]) > 1]
    if not split:
        return X
    if any(np.isnan(s) for ax in split for s in X.chunks[ax]):
        raise ValueError(f"{name} has unknown chunk sizes along axis {split}: call "
                         f"{name}.compute_chunk_sizes() first")
    axes = ", ".join({1: "time (axis 1)", 2: "features (axis 2)"}.get(ax, f"axis {ax}") for ax in split)
    warnings.warn(
        f"{name} is chunked along {axes}; a recurrent network reads whole sequences, so "
        f"{name} is rechunked to one chunk along every axis but the first (samples). "
        f"Chunk {name} along samples only to avoid this copy.", PerformanceWarning, stacklevel=3)
    return X.rechunk({ax: -1 for ax in range(1, X.ndim)})


def _output_spec(est, method):
    """``(shape of one sample's output, dtype)`` of ``est.method`` (a fitted
    fastseq estimator), or a TypeError when its output is not an array."""
    from .estimators import RNNClassifier, RNNRegressor, Seq2SeqRegressor

    name = type(est).__name__
    if not hasattr(est, method):
        raise TypeError(f"{name} has no {method} method")
    if isinstance(est, RNNClassifier):
        if method == "predict":
            return (), est.classes_.dtype
        n_classes = len(est.classes_)
        if method == "decision_function" and n_classes == 2:
            return (), est.model_.flat.dtype
        return (n_classes,), est.model_.flat.dtype
    if isinstance(est, RNNRegressor) and method == "predict":
        return tuple(est.y_shape_), np.dtype(np.float64)
    if isinstance(est, Seq2SeqRegressor) and method == "predict":
        return (int(est._steps()), int(est.n_outputs_)), np.dtype(np.float64)
    raise TypeError(
        f"fastseq.dask.{method} maps estimators whose {method} returns one array row per "
        f"sample (RNNClassifier, RNNRegressor, Seq2SeqRegressor); {name}.{method} returns "
        "something else (a list of arrays of different lengths for SequenceTagger and "
        f"Seq2SeqClassifier). Map it over the blocks yourself: "
        f"[dask.delayed(est.{method})(block) for block in X.to_delayed().ravel()]")


def _check_fitted(est):
    check = getattr(est, "_check_fitted", None)
    if check is not None:
        check()
    else:
        check_is_fitted(est)


def _apply_block(block, est, method, tail, dtype):
    """``est.method(block)`` as ``dtype`` (an empty block gives an empty result)."""
    if len(block) == 0:
        return np.empty((0,) + tail, dtype=dtype)
    out = np.asarray(getattr(est, method)(block))
    return out.astype(dtype, copy=False).reshape((len(block),) + tail)


def _map(est, X, method, spec=None):
    # token= (a key prefix), never name=: dask then names the output by a hash
    # of the estimator, the method and X, so two estimators mapped over one X
    # get different keys (a fixed name made the scheduler hand one's blocks
    # to the other whenever both were in memory at once).
    _check_fitted(est)  # NotFittedError before any graph is built
    X = _one_chunk_per_sample_block(_check_dask_array(X, "X", method), "X")
    tail, dtype = _output_spec(est, method) if spec is None else spec(X)
    out_ndim = 1 + len(tail)
    kwargs = {}
    if out_ndim < X.ndim:
        kwargs["drop_axis"] = list(range(out_ndim, X.ndim))
    elif out_ndim > X.ndim:
        kwargs["new_axis"] = list(range(X.ndim, out_ndim))
    return X.map_blocks(_apply_block, est, method, tail, dtype, dtype=dtype,
                        chunks=(X.chunks[0],) + tuple((s,) for s in tail),
                        meta=np.empty((0,) + tail, dtype=dtype),
                        token=f"fastseq-{method}", **kwargs)


# --------------------------------------------------------- batch inference
def transform(est, X):
    """``est.transform`` over the blocks of a dask array, lazily: the per-step
    transformers (:class:`fastseq.SequenceScaler`,
    :class:`fastseq.TimeDistributed`) on ``(n, T, F)`` or ``(n, T)``.

    The output's shape per sample (``(T, F_out)``, or ``(T,)`` for a 2-D X of
    one value per step) is read from the transform of one all-zero sample,
    computed here; every block then runs ``est.transform`` on a worker.
    Chunks along time or features are merged as in :func:`predict`.

    Raises
    ------
    NotFittedError
        ``est`` is not fitted (before any graph is built).
    TypeError
        X is not a dask array, or ``est`` has no ``transform``.
    """
    if not hasattr(est, "transform"):
        raise TypeError(f"{type(est).__name__} has no transform method: fastseq.dask.transform "
                        "maps SequenceScaler, TimeDistributed and other per-step transformers")

    def spec(X):
        probe = np.asarray(est.transform(np.zeros((1,) + X.shape[1:], dtype=X.dtype)))
        return tuple(probe.shape[1:]), probe.dtype

    return _map(est, X, "transform", spec)


def predict(est, X):
    """``est.predict`` over the blocks of a dask array, lazily.

    Parameters
    ----------
    est : fitted RNNClassifier, RNNRegressor or Seq2SeqRegressor
        Pickled into the graph once; each block runs ``est.predict``.
    X : dask array (n, T, F) or (n, T)
        Chunked along samples.  Chunks along time or features are merged
        (``X.rechunk``, with a :class:`PerformanceWarning`): a recurrent
        network reads whole sequences.

    Returns
    -------
    dask array, chunked as X along samples: labels ``(n,)`` (dtype of
    ``classes_``) for a classifier; ``(n,)``, ``(n, k)`` or
    ``(n, horizon, k)`` float64 (the shape of y at fit) for a regressor;
    ``(n, T_out, k)`` for Seq2SeqRegressor.  Equal to
    ``est.predict(X.compute())`` (bit for bit when ``n_jobs`` is fixed: the
    default thread count of a worker's task may differ from the local one).

    Raises
    ------
    NotFittedError
        ``est`` is not fitted (before any graph is built).
    TypeError
        X is not a dask array, or ``est.predict`` does not return an array
        (SequenceTagger, Seq2SeqClassifier: lists of different lengths).
    """
    return _map(est, X, "predict")


def predict_proba(est, X):
    """``est.predict_proba`` over the blocks of a dask array, lazily:
    ``(n, n_classes)`` in the model's dtype, columns ordered as
    ``est.classes_``.  See :func:`predict`."""
    return _map(est, X, "predict_proba")


def predict_log_proba(est, X):
    """``est.predict_log_proba`` over the blocks, lazily.  See :func:`predict`."""
    return _map(est, X, "predict_log_proba")


def decision_function(est, X):
    """``est.decision_function`` over the blocks, lazily: ``(n, n_classes)``
    logits, ``(n,)`` for two classes.  See :func:`predict`."""
    return _map(est, X, "decision_function")


# ---------------------------------------------------- incremental training
def _aligned_y(y, X):
    """``y`` cut as ``X`` along samples: a dask array with X's chunks along
    samples and one chunk along its other axes, or an in-memory array (sliced
    here, block by block, never shipped to the cluster whole at each block)."""
    if not isinstance(y, da.Array):
        y = np.asarray(y)
        if y.ndim == 0:
            raise ValueError("y must have one entry per sample, got a scalar")
        if not np.isnan(X.shape[0]) and len(y) != X.shape[0]:
            raise ValueError(f"X and y have different lengths: {X.shape[0]} samples but {len(y)}")
        if any(np.isnan(c) for c in X.chunks[0]):
            raise ValueError("X has unknown chunk sizes along samples: call X.compute_chunk_sizes() "
                             "first (y is an in-memory array and must be cut as X is)")
        return y
    if y.ndim == 0:
        raise ValueError("y must have one entry per sample, got a 0-d dask array")
    if y.ndim > 1 and any(len(c) > 1 for c in y.chunks[1:]):
        y = y.rechunk({ax: -1 for ax in range(1, y.ndim)})
    if y.chunks[0] == X.chunks[0]:
        return y
    if any(np.isnan(c) for c in X.chunks[0] + y.chunks[0]):
        raise ValueError(
            f"X and y must have the same chunks along samples, and theirs are unknown or differ "
            f"({X.chunks[0]} and {y.chunks[0]}): call compute_chunk_sizes() on both, or cut them "
            "alike")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y have different lengths: {X.shape[0]} samples but {y.shape[0]}")
    return y.rechunk({0: X.chunks[0]})


def _needs_classes(est):
    """Whether ``est.partial_fit`` takes ``classes`` and ``est`` is unfitted."""
    import inspect

    try:
        takes = "classes" in inspect.signature(est.partial_fit).parameters
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        takes = False
    if not takes:
        return False
    try:
        check_is_fitted(est)
    except NotFittedError:
        return True
    except TypeError:  # not a scikit-learn estimator (no fit): it knows best
        return False
    return False


def partial_fit(est, X, y, classes=None, epochs=1, shuffle_blocks=True, random_state=None):
    """Train ``est`` on dask arrays block by block with ``est.partial_fit``.

    Each block of samples is computed on its own (on the cluster when a
    ``distributed.Client`` is the default scheduler), brought here and
    passed to ``est.partial_fit`` (one epoch of mini-batches over the
    block); only one block is in memory at a time, so X may be larger than
    memory.  This is dask-ml's ``Incremental`` for sequences.

    Parameters
    ----------
    est : fastseq estimator with ``partial_fit``
        Trained in place (here, in this process) and returned.
    X : dask array (n, T, F) or (n, T)
        Chunked along samples (chunks along time or features are merged,
        with a :class:`PerformanceWarning`).
    y : dask array or array-like, one entry (row) per sample
        Rechunked to X's chunks along samples when they differ (an
        in-memory y is cut as X is).
    classes : array-like, optional
        Every label, for a classifier (or tagger): required when ``est`` is
        not fitted yet, since a block may not hold every class (as
        scikit-learn's ``partial_fit``); passed to every call.
    epochs : int, default 1
        Passes over the blocks.
    shuffle_blocks : bool, default True
        Visit the blocks in a new random order at each epoch (the samples
        inside a block are shuffled by ``est`` itself when ``est.shuffle``).
        With False the blocks go in order: the same as calling
        ``est.partial_fit(X_block, y_block, classes=classes)`` on each block
        by hand.
    random_state : None, int or RandomState
        Seeds the block order.

    Returns
    -------
    est
    """
    if not hasattr(est, "partial_fit"):
        raise TypeError(f"{type(est).__name__} has no partial_fit method")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    X = _one_chunk_per_sample_block(_check_dask_array(X, "X", "partial_fit"), "X")
    y = _aligned_y(y, X)
    if classes is None and _needs_classes(est):
        raise ValueError(
            f"classes must be given for the first partial_fit of {type(est).__name__} (every "
            "label, e.g. classes=np.unique(y) or a known list): a block may not hold every class")
    kwargs = {} if classes is None else {"classes": np.asarray(classes)}
    rng = check_random_state(random_state)
    n_blocks = X.numblocks[0]
    if isinstance(y, da.Array):
        def block(i):
            return dask.compute(X.blocks[i], y.blocks[i])
    else:
        ends = np.cumsum(X.chunks[0]).astype(int)

        def block(i):
            return X.blocks[i].compute(), y[ends[i] - X.chunks[0][i]:ends[i]]
    for _ in range(epochs):
        order = rng.permutation(n_blocks) if shuffle_blocks else range(n_blocks)
        for i in order:
            Xb, yb = block(int(i))
            if len(Xb) == 0:
                continue
            est.partial_fit(Xb, yb, **kwargs)
            del Xb, yb
    return est


# --------------------------------------------------------------- warm-up
def _default_warm_up_estimators():
    from .estimators import RNNClassifier, RNNRegressor

    return [cls(cell=cell, hidden_size=8, max_iter=1)
            for cell in ("lstm", "gru", "rnn") for cls in (RNNClassifier, RNNRegressor)]


def _tiny_problem(est, n=8, T=5, F=2):
    """A few short sequences and targets that ``est`` (a fastseq estimator)
    fits in one epoch."""
    from .estimators import RNNClassifier, RNNRegressor, Seq2SeqRegressor, SequenceTagger

    rng = np.random.default_rng(0)
    if getattr(est, "embedding_dim", None) is not None:
        X = [list(rng.integers(0, 4, size=T)) for _ in range(n)]
    else:
        X = rng.standard_normal((n, T, F))
    if isinstance(est, RNNClassifier):
        return X, np.arange(n) % 2
    if isinstance(est, RNNRegressor):
        return X, rng.standard_normal(n)
    if isinstance(est, SequenceTagger):
        return X, np.arange(n * T).reshape(n, T) % 2
    if isinstance(est, Seq2SeqRegressor):
        return X, rng.standard_normal((n, 3, 1))
    raise TypeError(
        f"warm_up takes RNNClassifier, RNNRegressor, SequenceTagger or Seq2SeqRegressor "
        f"templates, got {type(est).__name__}")


def _warm_up_worker(templates):
    """Fit and predict each template (cloned, one epoch) on a tiny problem
    in this process; returns the seconds it took."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for template in templates:
            est = clone(template).set_params(max_iter=1, early_stopping=False, verbose=False)
            X, y = _tiny_problem(est)
            est.fit(X, y)
            est.predict(X)
            if hasattr(est, "predict_proba"):
                est.predict_proba(X)
    return time.perf_counter() - start


def warm_up(client=None, estimators=None):
    """Load (or compile) fastseq's kernels on every worker of a Dask cluster.

    Runs one task on each worker that fits and predicts a small copy of each
    estimator (one epoch on 8 sequences of 5 steps), so that the first real
    task does not pay numba's compilation (or the loading of its cache).

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    estimators : estimator or list of estimators, optional
        Templates of the estimators the real tasks will run (cloned: their
        parameters count, such as ``cell``, ``dtype``, ``bidirectional``,
        ``embedding_dim``, ``n_jobs``; fitted state is ignored):
        RNNClassifier, RNNRegressor, SequenceTagger or Seq2SeqRegressor.
        Default: a classifier and a regressor for each cell, float32.  The
        tiny problem reaches the kernels of small batches; those that only
        large batches on several threads take compile at their first use.

    Returns
    -------
    dict : worker address -> seconds its warm-up took.
    """
    import distributed

    if client is None:
        client = distributed.get_client()
    if estimators is None:
        templates = _default_warm_up_estimators()
    elif isinstance(estimators, (list, tuple)):
        templates = list(estimators)
    else:
        templates = [estimators]
    for t in templates:
        _tiny_problem(t)  # refuse an unsupported estimator here, not on a worker
    workers = sorted(client.nthreads())
    futures = [client.submit(_warm_up_worker, templates, workers=[w], allow_other_workers=False,
                             pure=False)
               for w in workers]
    return dict(zip(workers, client.gather(futures)))
