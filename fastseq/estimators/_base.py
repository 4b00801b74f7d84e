"""The shared training loop of every fastseq estimator.

Model protocol
==============

The loop trains any *model* object that provides:

``flat`` : (P,) ndarray
    Every parameter in one C-contiguous vector (float32 or float64).  Layers
    hold views into it, so the optimiser, clipping, best-weight snapshots and
    persistence touch this one array.  The loop writes into it in place
    (``model.flat[...] = ...``); it never rebinds it.
``train()`` / ``eval()``
    Switch dropout on / off.  The loop calls ``train()`` before an epoch and
    ``eval()`` after it; a fitted model is always left in eval mode, so
    prediction never switches modes (safe from several threads).
``loss_and_grad(batch, grad) -> float``
    Mean data loss of a :class:`fastseq._input.Batch` (without the L2 term),
    and its gradient written into ``grad`` (P,) (overwritten, not
    accumulated).
``loss(batch) -> float``
    The same mean loss, no gradient (used for the validation loss).
``predict_batch(X, lengths)``
    Raw outputs for a padded batch (eval mode; no state is written that a
    concurrent call could read), one row per sequence.
``summary_rows() -> list of (name, type, output shape, n_params)``
    For :meth:`BaseRNN.summary`.
``clear_cache()``
    Drop forward caches (before pickling).

And the *data* it iterates is a :class:`fastseq._input.Dataset`-like object:
``n_samples``, ``lengths`` (n,) int64 (for length bucketing), ``take(idx)``
(a subset) and ``batch(idx)`` (a padded :class:`~fastseq._input.Batch`).

Estimator hooks
===============

A concrete estimator subclasses :class:`BaseRNN` and implements:

``_prepare_fit(X, y, reset) -> Dataset``
    Validate ``X``/``y`` (set ``n_features_in_``, ``classes_``, vocabulary...
    when ``reset``; check consistency with them otherwise).
``_build_model(data, rng) -> model``
    A fresh model following the protocol above.
``_validation_score(data) -> float``
    Higher is better (accuracy, R^2...); used by early stopping.
``_score_name`` : str
    Label of that score in progress bars and plots.

It may override ``_split_validation(data, rng)`` (stratified for classifiers).
``fit`` and ``partial_fit`` are thin doors into ``_fit(incremental=...)``; the
loop is split into small named steps (``_init_training``, ``_run_epochs``,
``_train_epoch``, ``_apply_update``, ``_end_epoch``).
"""

import numbers
import time
import warnings
from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _check_feature_names, check_is_fitted

from .. import kernels as K
from .._config import resolve_dtype
from .._input import TOKENIZERS, Vocabulary, check_sequences, iter_batches
from .._threads import limit
from .._validation import check_fitted_width
from .._workspace import release as release_scratch
from ..network.recurrent import CELLS


#: ``conv_filters="auto"``: the many-to-one estimators get a convolution front
#: end of one layer of AUTO_CONV_FILTERS filters (kernel AUTO_CONV_KERNEL, max
#: pooling AUTO_CONV_POOL) when the real-valued training sequences have a
#: median length of at least AUTO_CONV_MIN_STEPS steps and none is shorter than
#: the pooling (the evidence: bench/defaults.py)
AUTO_CONV_MIN_STEPS = 32
AUTO_CONV_FILTERS = (32,)
AUTO_CONV_KERNEL = 7
AUTO_CONV_POOL = 4


class NumericalWarning(RuntimeWarning):
    """A non-finite loss or gradient: the update was skipped."""


class FitInterruptedWarning(UserWarning):
    """``fit`` was stopped by KeyboardInterrupt; the best weights so far are kept."""


# ----------------------------------------------------------------- optimisers
class Adam:
    """Adam over one flat vector (``torch.optim.Adam``; L2 as weight decay)."""

    def __init__(self, n, dtype, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = np.zeros(n, dtype=dtype)
        self.v = np.zeros(n, dtype=dtype)
        self.t = 0

    def reset(self):
        self.m[...] = 0
        self.v[...] = 0
        self.t = 0

    def step(self, params, grad, weight_decay):
        self.t += 1
        K.adam_update(params, grad, self.m, self.v, self.t, self.lr, self.beta1,
                      self.beta2, self.eps, weight_decay)


class SGD:
    """SGD with (Nesterov) momentum over one flat vector (``torch.optim.SGD``)."""

    def __init__(self, n, dtype, lr, momentum=0.9, nesterov=False):
        self.lr, self.momentum, self.nesterov = lr, momentum, bool(nesterov)
        self.velocity = np.zeros(n, dtype=dtype)

    def reset(self):
        self.velocity[...] = 0

    def step(self, params, grad, weight_decay):
        K.sgd_update(params, grad, self.velocity, self.lr, self.momentum, self.nesterov,
                     weight_decay)


def make_optimizer(est, n, dtype):
    if est.optimizer == "adam":
        return Adam(n, dtype, est.learning_rate, est.beta_1, est.beta_2, est.epsilon)
    return SGD(n, dtype, est.learning_rate, est.momentum, est.nesterovs_momentum)


# ------------------------------------------------------------------ estimator
class BaseRNN(BaseEstimator):
    """Base of the recurrent estimators: parameters, training loop, reporting.

    Parameters
    ----------
    cell : {"rnn", "lstm", "gru"}, default "gru"
        The GRU learned better than the LSTM on most small real sets
        measured (``bench/defaults.py``); it is also the cheaper cell.
    hidden_size : int, default 64
        H, units per direction and layer.
    num_layers : int, default 1
    bidirectional : bool, default False
    nonlinearity : {"tanh", "relu"}, default "tanh"
        Activation of the Elman RNN.
    dropout : float in [0, 1), default 0
        Dropout on the inputs of recurrent layers 2.. and on the features fed to
        the output layer.
    recurrent_dropout : float in [0, 1), default 0
        Variational dropout on the recurrent state (one mask per sequence).
    embedding_dim : int or None, default None
        When set, X holds token sequences (lists of ints or strings, or raw
        strings cut by ``tokenizer``) embedded by a learned table; the
        vocabulary is built at fit (see ``max_vocabulary``,
        ``min_frequency``) and unseen tokens map to a reserved index.
    pretrained_embeddings : dict token -> vector, or KeyedVectors-like, optional
        Initial vectors (length ``embedding_dim``) for the tokens of the
        vocabulary they name: a dict, or any object with gensim's
        ``KeyedVectors`` interface (``__contains__``, ``get_vector`` or
        ``__getitem__``, and ``vector_size``, checked against
        ``embedding_dim``).  Only tokens kept in the vocabulary get one: a
        token left out by ``max_vocabulary`` or ``min_frequency`` stays
        unknown even when it has a pretrained vector.  Not stored by
        ``save`` (it only initialises the fitted weights, which are).
    pooling : {"last", "mean", "max"}, default "last"
        Many-to-one estimators: read the last valid state of each sequence
        (both directions when bidirectional), or pool ``out`` over valid steps.
    conv_filters : "auto", int, tuple of int or None, default "auto"
        A temporal convolution front end before the recurrent layer (a hybrid
        CNN + RNN): one 1-D convolution over time per entry, with that many
        filters, each followed by ReLU and max pooling of ``conv_pool`` steps
        (see :mod:`fastseq.network.conv`).  None: no front end.  "auto" (the
        default) decides at the first fit, from the data: the many-to-one
        estimators (``RNNClassifier``, ``RNNRegressor``) reading real-valued
        sequences of a median length of at least :data:`AUTO_CONV_MIN_STEPS`
        steps (and every one at least :data:`AUTO_CONV_POOL`) get one layer
        of :data:`AUTO_CONV_FILTERS` filters; anything else (shorter
        sequences, tokens, the per-step and sequence-output estimators)
        none.  A model fitted with that front end refuses sequences shorter
        than its pooling (4 steps) at predict.  The evidence behind this rule is in
        ``bench/defaults.py`` and the README's defaults table.
    conv_kernel_size : "auto" or int, default "auto"
        Odd width K of every convolution; "same" zero padding at the ends of
        each sequence's own valid steps (a padded batch gives what each
        sequence gives alone).  "auto": 7 for the automatic front end, 3 for
        filters given explicitly.
    conv_pool : "auto" or int, default "auto"
        Max-pooling size and stride after each convolution (1: none).  "auto":
        4 for the automatic front end, 1 for filters given explicitly.  Each
        layer shortens a sequence of L steps to ``L // conv_pool``; a sequence
        shorter than ``conv_pool ** n_layers`` is refused with a ValueError.
        ``SequenceTagger`` (one label per step) refuses ``conv_pool > 1``.
    optimizer : {"adam", "sgd"}, default "adam"
    learning_rate : float, default 1e-3
    momentum : float, default 0.9 (SGD)
    nesterovs_momentum : bool, default False (SGD)
    beta_1, beta_2, epsilon : float (Adam)
    batch_size : int or "auto", default "auto"
        Sequences per update.  "auto": ``min(32, max(4, n_samples // 10))``,
        so that a small training set still gets about ten updates per epoch
        (a fixed 32 gives 50 series 2 updates an epoch and training stalls);
        the rule follows Fawaz et al. (2019), who train FCN and ResNet on the
        UCR archive with ``min(n_samples / 10, 16)``.
    max_iter : int, default 100
        Epochs.
    clip_norm : float or None, default 5.0
        Rescale the gradient when its global norm exceeds this.
    clip_value : float or None, default None
        Clamp every gradient entry to ``[-clip_value, clip_value]``.
    alpha : float, default 0
        L2 penalty, scaled as in ``MLPClassifier``: ``alpha / (2 B) * ||w||^2``
        added to the mean loss of a batch of B sequences (weight decay
        ``alpha / B`` on every parameter).
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data, stop when its
        score stops improving and restore the best weights.
    validation_fraction : float, default 0.1
    validation_holdout : {"random", "tail"}, default "random"
        "tail" holds out the last samples (time-ordered data).
    n_iter_no_change : int, default 10
    tol : float, default 1e-4
    shuffle : bool, default True
    random_state : None, int or RandomState
    warm_start : bool, default False
    verbose : bool or int, default False
        Progress bar per epoch (tqdm) with loss, validation score and speed.
    n_jobs : int or None, default None
        Threads of each call (``fit``, ``predict``, ...): fastseq's batch
        split and overlapped work, with every BLAS held at one thread
        meanwhile (restored after).  None: every core this process may run
        on, as PyTorch and ``HistGradientBoosting`` do, within the limits set
        around it: the CPU affinity and cgroup CPU quota, ``OMP_NUM_THREADS``
        (which joblib sets to ``cores // n_jobs`` in its workers, e.g. under
        ``GridSearchCV(n_jobs=2)``, and Dask's nanny to 1), a Dask worker's
        share of its cores per task, and ``threadpoolctl.threadpool_limits``
        (see :func:`fastseq._threads.default_num_threads`).  An integer
        fixes it; negative values count back from all cores as in
        scikit-learn (-1 all, -2 all but one).  Results are identical for a
        fixed thread count, and may differ in the last bits between counts:
        fix ``n_jobs`` for bit-identical results across machines.
    dtype : {"float32", "float64"}, default "float32"
    tokenizer : {"char", "word"} or callable, default "char"
        How a raw string of X is cut into tokens (when ``embedding_dim`` is
        set; lists of tokens are used as given): "char" reads characters,
        "word" lower-cases and takes words (an inner apostrophe kept) and
        punctuation marks (:data:`fastseq._input.WORD_PATTERN`), a callable
        maps a str to a list of int or str tokens.  A string that gives no
        token is an error (a recurrent network needs one step).  A callable
        pickles (when it is picklable) but cannot be saved by ``save``.
    max_vocabulary : int or None, default None
        Cap on the size of the vocabulary, the 2 reserved indices (padding,
        unknown) included, i.e. the rows of the embedding table: the most
        frequent ``max_vocabulary - 2`` tokens of the training data are kept
        (ties broken by first appearance), so it must be at least 3.
    min_frequency : int, default 1
        Tokens seen fewer times in the training data are left out.  Tokens
        left out map to the unknown index, also at fit, so its vector learns
        what a rare token means.
    tbptt_steps : int or None, default None
        Truncated backpropagation through time: the state flows through each
        whole sequence, the gradient only within windows of this many steps,
        with one optimiser step per window (PyTorch's ``h.detach()`` idiom,
        Keras's stateful layers; see :mod:`fastseq.estimators._stream` for
        what each window's loss is).  Sequences of at most ``tbptt_steps``
        steps train exactly as with None (plain BPTT).  Needs
        ``bidirectional=False``.

    Attributes
    ----------
    n_features_in_ : int
        scikit-learn's input width: n_timesteps after a fit on a 2-D X, the
        features per step after a 3-D or ragged X, 1 after tokens.
    n_features_per_step_ : int
        What the model reads at each step (1 for a 2-D X and for tokens).
    n_timesteps_in_ : int or None
        The width of a 2-D X at fit (the fixed length of its series); None
        after a 3-D, ragged or token X, whose lengths are free.
    feature_names_in_ : (n_timesteps,) ndarray of str
        Only after a fit on a DataFrame with string column names.

    Notes
    -----
    ``X`` (at fit and after) is one of:

    - a 3-D array ``(n_samples, n_timesteps, n_features)``;
    - a 2-D array ``(n_samples, n_timesteps)``: univariate series of one fixed
      length (a list of equal-length 1-D series is one too).  After a fit on
      2-D X, a 2-D X must have the fitted width (``n_features_in_``): a
      ``ValueError`` otherwise, which points to the ragged form.  After a fit
      on 3-D or ragged X, a 2-D X of any width is accepted when the model
      reads 1 feature per step, refused otherwise;
    - a list of ``(T_i, n_features)`` arrays (ragged; ``(T_i,)`` items are
      univariate);
    - token sequences (lists of ints or strings, or strings read as
      characters) when ``embedding_dim`` is set.

    The 3-D and ragged forms take any lengths, also after a fit on 2-D X: a
    list of ``(T_i, 1)`` arrays or an ``(n, T, 1)`` array holds the same
    univariate series as the 2-D form, and predicts the same.
    """

    _parameter_constraints = {
        "cell": [StrOptions(set(CELLS))],
        "hidden_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "num_layers": [Interval(numbers.Integral, 1, None, closed="left")],
        "bidirectional": ["boolean"],
        "nonlinearity": [StrOptions({"tanh", "relu"})],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "recurrent_dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "embedding_dim": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "pretrained_embeddings": [Mapping, HasMethods(["__getitem__", "__contains__"]), None],
        "pooling": [StrOptions({"last", "mean", "max"})],
        "conv_filters": [Interval(numbers.Integral, 1, None, closed="left"), tuple, list, None,
                         StrOptions({"auto"})],
        "conv_kernel_size": [Interval(numbers.Integral, 1, None, closed="left"),
                             StrOptions({"auto"})],
        "conv_pool": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "beta_1": [Interval(numbers.Real, 0, 1, closed="left")],
        "beta_2": [Interval(numbers.Real, 0, 1, closed="left")],
        "epsilon": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "clip_norm": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "clip_value": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "alpha": [Interval(numbers.Real, 0, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(numbers.Real, 0, 1, closed="neither")],
        "validation_holdout": [StrOptions({"random", "tail"})],
        "n_iter_no_change": [Interval(numbers.Integral, 1, None, closed="left")],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "n_jobs": [numbers.Integral, None],
        "dtype": [StrOptions({"float32", "float64"})],
        "tokenizer": [StrOptions(set(TOKENIZERS)), callable],
        "max_vocabulary": [Interval(numbers.Integral, 1, None, closed="left"), None],
        "min_frequency": [Interval(numbers.Integral, 1, None, closed="left")],
        "tbptt_steps": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, cell="gru", hidden_size=64, num_layers=1, bidirectional=False,
                 nonlinearity="tanh", dropout=0.0, recurrent_dropout=0.0, embedding_dim=None,
                 pretrained_embeddings=None, pooling="last", conv_filters="auto",
                 conv_kernel_size="auto", conv_pool="auto", optimizer="adam",
                 learning_rate=1e-3, momentum=0.9, nesterovs_momentum=False, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, batch_size="auto", max_iter=100, clip_norm=5.0,
                 clip_value=None, alpha=0.0, early_stopping=False, validation_fraction=0.1,
                 validation_holdout="random", n_iter_no_change=10, tol=1e-4, shuffle=True,
                 random_state=None, warm_start=False, verbose=False, n_jobs=None,
                 dtype="float32", tokenizer="char", max_vocabulary=None, min_frequency=1,
                 tbptt_steps=None):
        self.cell = cell
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bidirectional
        self.nonlinearity = nonlinearity
        self.dropout = dropout
        self.recurrent_dropout = recurrent_dropout
        self.embedding_dim = embedding_dim
        self.pretrained_embeddings = pretrained_embeddings
        self.pooling = pooling
        self.conv_filters = conv_filters
        self.conv_kernel_size = conv_kernel_size
        self.conv_pool = conv_pool
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.clip_norm = clip_norm
        self.clip_value = clip_value
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.validation_holdout = validation_holdout
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.shuffle = shuffle
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.max_vocabulary = max_vocabulary
        self.min_frequency = min_frequency
        self.tbptt_steps = tbptt_steps

    # ------------------------------------------------------------ sklearn API
    def fit(self, X, y):
        """Train from scratch (or from the current weights when ``warm_start``)
        for up to ``max_iter`` epochs on ``X`` in any of the forms of the class
        Notes (a fresh fit sets ``n_features_in_`` from it).  Returns ``self``."""
        self._validate_params()
        return self._fit(X, y, incremental=False)

    def _partial_fit(self, X, y):
        if not hasattr(self, "model_"):
            self._validate_params()
        return self._fit(X, y, incremental=True)

    def _check_fitted(self):
        check_is_fitted(self, "model_")

    def _limit(self):
        return limit(self.n_jobs)

    @property
    def _dtype(self):
        return resolve_dtype(self.dtype)

    # ------------------------------------------------------------- the loop
    def _fit(self, X, y, incremental):
        start = time.perf_counter()
        with limit(self.n_jobs):
            first = not (hasattr(self, "model_") and (incremental or self.warm_start))
            data = self._prepare_fit(X, y, reset=first)
            if first:
                self._init_training(data)
            if incremental:
                train, val, epochs = data, None, 1
            else:
                train, val = self._split_validation(data, self._rng)
                epochs = self.max_iter
            try:
                self._run_epochs(train, val, epochs, incremental)
            finally:
                release_scratch()   # the layers' scratch memory goes with the fit
        self.fit_time_ = getattr(self, "fit_time_", 0.0) * (not first) + time.perf_counter() - start
        return self

    def _init_training(self, data):
        """Fresh model, optimiser, random streams and history."""
        rs = np.random.RandomState(self.random_state) if not isinstance(
            self.random_state, np.random.RandomState) else self.random_state
        seeds = rs.randint(0, 2**31 - 1, size=2)
        self._rng = np.random.default_rng(seeds[0])
        self.model_ = self._build_model(data, np.random.default_rng(seeds[1]))
        self.model_.eval()
        self._optimizer = make_optimizer(self, self.model_.flat.shape[0], self.model_.flat.dtype)
        self.loss_curve_ = []
        self.validation_loss_curve_ = []
        self.validation_scores_ = []
        self.grad_norm_curve_ = []
        self.best_loss_ = np.inf
        self.best_validation_score_ = None
        self.n_iter_ = 0
        self.t_ = 0
        self.n_skipped_updates_ = 0
        self._no_improvement = 0

    def _split_validation(self, data, rng):
        """(train, validation) datasets; validation is None without early stopping."""
        if not self.early_stopping:
            return data, None
        n = data.n_samples
        n_val = int(round(self.validation_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(
                f"early_stopping needs at least one training and one validation sample: "
                f"validation_fraction={self.validation_fraction} of {n} samples gives {n_val}"
            )
        if self.validation_holdout == "tail":
            idx = np.arange(n)
            return data.take(idx[:n - n_val]), data.take(idx[n - n_val:])
        perm = rng.permutation(n)
        return data.take(np.sort(perm[n_val:])), data.take(np.sort(perm[:n_val]))

    def _run_epochs(self, train, val, epochs, incremental):
        model = self.model_
        flat = model.flat
        self._grad = np.zeros_like(flat)
        self._backup = np.empty_like(flat)
        self._warned_nonfinite = False
        best_flat = flat.copy() if val is not None else None
        if val is not None:
            self.best_validation_score_ = -np.inf
        self._no_improvement = 0
        stopped = interrupted = False
        try:
            for epoch in range(epochs):
                loss, norm = self._train_epoch(train, epoch, epochs)
                stopped = self._end_epoch(loss, norm, val, best_flat)
                if stopped:
                    break
        except KeyboardInterrupt:
            interrupted = True
            if not np.all(np.isfinite(flat)):
                flat[...] = self._backup
            warnings.warn("fit interrupted (KeyboardInterrupt): keeping the best weights so far",
                          FitInterruptedWarning, stacklevel=3)
        finally:
            model.eval()
            model.clear_cache()
        if val is not None and np.isfinite(self.best_validation_score_):
            flat[...] = best_flat
        if not (stopped or interrupted or incremental):
            warnings.warn(
                f"{type(self).__name__}: maximum iterations ({self.max_iter}) reached and "
                "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        if not np.all(np.isfinite(flat)):  # cannot happen: every update is checked
            raise FloatingPointError("the weights became non-finite during fit")
        del self._grad, self._backup

    def _progress(self, n, epoch, epochs):
        if not self.verbose:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=n, desc=f"epoch {self.n_iter_ + 1}/{self.n_iter_ - epoch + epochs}",
                    unit="seq", leave=True)

    def _train_epoch(self, train, epoch, epochs):
        """One pass over ``train`` in shuffled, length-bucketed mini-batches.
        Returns the mean training loss and mean gradient norm."""
        model = self.model_
        bar = self._progress(train.n_samples, epoch, epochs)
        total = count = 0.0
        norms = []
        model.train()
        try:
            for idx in iter_batches(train.lengths, self._batch_size(train.n_samples), self._rng,
                                    self.shuffle):
                batch = train.batch(idx)
                loss = self._train_batch(batch)
                if loss is None:
                    continue
                total += loss * batch.size
                count += batch.size
                norms.append(self._last_norm)
                if bar is not None:
                    bar.update(batch.size)
                    bar.set_postfix(loss=f"{total / count:.4g}", refresh=False)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        finally:
            model.eval()
        self._bar = bar
        mean_loss = total / count if count else np.nan
        return mean_loss, (float(np.mean(norms)) if norms else np.nan)

    def _train_batch(self, batch):
        """One mini-batch: one update, or one per window of ``tbptt_steps``
        steps (:func:`fastseq.estimators._stream.train_truncated`)."""
        steps = getattr(self, "tbptt_steps", None)
        if steps is None:
            return self._apply_update(batch)
        from ._stream import check_supported, train_truncated
        check_supported(self.model_, "tbptt_steps")
        if batch.X.shape[1] <= steps:
            return self._apply_update(batch)
        return train_truncated(self, batch, steps)

    def _apply_update(self, batch, loss_and_grad=None):
        """Loss and gradient of one batch (``model.loss_and_grad``, or the
        given function of ``(batch, grad)``), clipping, one optimiser step.

        A non-finite loss, gradient or updated weights skip the step (weights
        restored, optimiser state reset) with one warning per fit; returns the
        batch loss (with the L2 term), or None when skipped.
        """
        model, grad, flat = self.model_, self._grad, self.model_.flat
        loss = (loss_and_grad or model.loss_and_grad)(batch, grad)
        ok = np.isfinite(loss)
        if ok and self.clip_value is not None:
            ok = K.clip_grad_value(grad, float(self.clip_value))
        if ok:
            if self.clip_norm is not None:
                norm = K.clip_grad_norm(grad, float(self.clip_norm))
            else:
                norm = K.grad_norm(grad)
            ok = np.isfinite(norm)
        if ok:
            self._backup[...] = flat
            self._optimizer.step(flat, grad, float(self.alpha) / batch.size)
            ok = np.all(np.isfinite(flat))
            if not ok:
                flat[...] = self._backup
                self._optimizer.reset()
        if not ok:
            self.n_skipped_updates_ += 1
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    "non-finite loss or gradient: skipping the update and keeping the last "
                    "good weights (lower learning_rate, set clip_norm, or scale the inputs)",
                    NumericalWarning, stacklevel=5)
            return None
        self.t_ += 1
        self._last_norm = float(norm)
        if self.alpha:
            loss += 0.5 * self.alpha * float(np.dot(flat, flat)) / batch.size
        return float(loss)

    def _end_epoch(self, loss, norm, val, best_flat):
        """Record the epoch; return True when training should stop."""
        self.n_iter_ += 1
        self.loss_curve_.append(float(loss))
        self.grad_norm_curve_.append(float(norm))
        post = {"loss": f"{loss:.4g}"}
        if val is not None:
            vloss, score = self._evaluate(val)
            self.validation_loss_curve_.append(vloss)
            self.validation_scores_.append(score)
            post.update(val_loss=f"{vloss:.4g}", **{f"val_{self._score_name}": f"{score:.4g}"})
            improved = score > self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                best_flat[...] = self.model_.flat
        else:
            improved = loss < self.best_loss_ - self.tol
        if np.isfinite(loss):
            self.best_loss_ = min(self.best_loss_, float(loss))
        self._no_improvement = 0 if improved else self._no_improvement + 1
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.set_postfix(post)
            bar.close()
            self._bar = None
        return self._no_improvement >= self.n_iter_no_change

    def _evaluate(self, data):
        """Mean validation loss and validation score (higher is better)."""
        total = 0.0
        for idx in iter_batches(data.lengths, self._inference_batch_size()):
            b = data.batch(idx)
            total += self.model_.loss(b) * b.size
        return total / data.n_samples, float(self._validation_score(data))

    # ------------------------------------------------------------ reporting
    def summary(self, print_fn=print):
        """Print the layers with their output shapes and parameter counts
        (like Keras's ``model.summary()``)."""
        self._check_fitted()
        rows = [("Layer (type)", "Output shape", "Param #")]
        for name, kind, shape, n in self.model_.summary_rows():
            rows.append((f"{name} ({kind})", str(shape).replace("'", ""), f"{n:,}"))
        w = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        line = "=" * sum(w)
        lines = [f'Model: "{type(self).__name__}"', line,
                 "".join(c.ljust(w[i]) for i, c in enumerate(rows[0])), line]
        lines += ["".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows[1:]]
        lines += [line, f"Total params: {self.model_.flat.shape[0]:,}",
                  f"dtype: {self.model_.flat.dtype}"]
        text = "\n".join(lines)
        print_fn(text)
        return None

    def plot_history(self, ax=None):
        """Plot the loss curves (training, validation) and the validation score
        per epoch; returns the matplotlib Figure (``fig.savefig(path)``)."""
        self._check_fitted()
        try:
            import matplotlib
            import matplotlib.pyplot as plt  # noqa: F401
        except ImportError as exc:  # pragma: no cover
            raise ImportError("plot_history needs matplotlib (pip install matplotlib)") from exc
        from matplotlib.figure import Figure
        del matplotlib
        fig = Figure(figsize=(10, 4))
        ax1, ax2 = fig.subplots(1, 2)
        ep = np.arange(1, len(self.loss_curve_) + 1)
        ax1.plot(ep, self.loss_curve_, label="training loss")
        if self.validation_loss_curve_:
            ax1.plot(np.arange(1, len(self.validation_loss_curve_) + 1),
                     self.validation_loss_curve_, label="validation loss")
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("loss")
        ax1.legend()
        ax1.set_title("loss")
        if self.validation_scores_:
            ax2.plot(np.arange(1, len(self.validation_scores_) + 1), self.validation_scores_,
                     label=f"validation {self._score_name}", color="C1")
            ax2.legend()
        else:
            ax2.text(0.5, 0.5, "no validation data\n(set early_stopping=True)",
                     ha="center", va="center", transform=ax2.transAxes)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(self._score_name)
        ax2.set_title(f"validation {self._score_name}")
        fig.tight_layout()
        return fig

    # ---------------------------------------------------------- persistence
    def save(self, path):
        """Save to ``path`` (arrays + JSON metadata, versioned; loading runs no
        code).  Load with :func:`fastseq.load`."""
        from ..persistence import save
        save(self, path)

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in ("_grad", "_backup", "_bar"):
            state.pop(k, None)
        if "model_" in state:
            state["model_"].clear_cache()
        return state

    # ------------------------------------------------------------- helpers
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.allow_nan = False
        return tags

    @classmethod
    def _expected_failed_checks(cls):
        """scikit-learn checks that cannot apply to this estimator by design,
        check name -> reason (for ``parametrize_with_checks(expected_failed_checks=
        ...)``); none for the many-to-one estimators."""
        return {}

    def _check_X(self, X, reset):
        """Validate X in any accepted format -> :class:`Sequences` (token indices
        when ``embedding_dim`` is set); set or check the fitted input shape."""
        tokens = self.embedding_dim is not None if reset else getattr(self, "vocabulary_", None) is not None
        seqs = check_sequences(X, dtype=self._dtype if reset else self.model_.flat.dtype,
                               tokens=tokens, tokenizer=self.tokenizer)
        if reset:
            self._resolve_auto_conv(seqs, tokens)
        self._check_conv_lengths(seqs, reset)
        if tokens:
            if reset:
                self.vocabulary_ = self._build_vocabulary(seqs)
                self._set_input_shape(X, seqs)
            return self.vocabulary_.encode(seqs)
        if reset:
            self.vocabulary_ = None
            self._set_input_shape(X, seqs)
        else:
            self._check_input_shape(X, seqs)
        return seqs

    def _build_vocabulary(self, seqs):
        """The fitted vocabulary of raw token ``seqs`` (``max_vocabulary``,
        ``min_frequency``)."""
        return Vocabulary.build(seqs, max_vocabulary=self.max_vocabulary,
                                min_frequency=self.min_frequency)

    def _set_input_shape(self, X, seqs):
        """At fit: ``n_features_in_`` (the width of a 2-D X, else the features
        per step; 1 for tokens), ``n_features_per_step_``, ``n_timesteps_in_``
        and ``feature_names_in_`` (string column names of a 2-D DataFrame)."""
        self.n_features_per_step_ = 1 if seqs.tokens else int(seqs.n_features)
        self.n_timesteps_in_ = None if seqs.tokens else seqs.n_columns
        self.n_features_in_ = self.n_timesteps_in_ or self.n_features_per_step_
        if self.n_timesteps_in_ is not None:
            _check_feature_names(self, X, reset=True)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _check_input_shape(self, X, seqs):
        """After fit: the same features per step as at fit; a 2-D X (univariate
        series) of the fitted width when the model was fitted on a 2-D X, and
        of any width when it was fitted on 3-D or ragged X of 1 feature per
        step.  The 3-D and ragged forms take any lengths."""
        check_fitted_width(self, X, seqs.n_features, seqs.n_columns)

    def _model_config(self, n_outputs, loss, pooling=None):
        cfg = dict(
            n_features=int(self.n_features_per_step_), embedding_dim=self.embedding_dim,
            vocab_size=len(self.vocabulary_) if self.vocabulary_ is not None else 0,
            cell=self.cell, hidden_size=int(self.hidden_size), num_layers=int(self.num_layers),
            bidirectional=bool(self.bidirectional), nonlinearity=self.nonlinearity,
            dropout=float(self.dropout), recurrent_dropout=float(self.recurrent_dropout),
            pooling=pooling or self.pooling, n_outputs=int(n_outputs), loss=loss,
            dtype=str(self._dtype), **self._conv_config())
        return cfg

    def _batch_size(self, n_samples):
        """Sequences per update for a training set of ``n_samples``."""
        if isinstance(self.batch_size, str):  # "auto"
            return int(min(32, max(4, n_samples // 10)))
        return int(self.batch_size)

    def _inference_batch_size(self, least=256):
        """Sequences per call when predicting (larger than in training)."""
        return least if isinstance(self.batch_size, str) else max(int(self.batch_size), least)

    #: many-to-one estimators get the automatic convolution front end
    _auto_front_end = False

    def _resolve_auto_conv(self, seqs, tokens):
        """Decide ``conv_filters="auto"`` from the training data (first fit)."""
        lengths = seqs.lengths
        self._auto_conv = bool(self._auto_front_end and not tokens
                               and np.median(lengths) >= AUTO_CONV_MIN_STEPS
                               and int(lengths.min()) >= AUTO_CONV_POOL)

    def _conv_params(self):
        """(filters, kernel_size, pool) with "auto" resolved: None filters for
        no front end."""
        filters, k, p = self.conv_filters, self.conv_kernel_size, self.conv_pool
        automatic = isinstance(filters, str)
        if automatic:
            filters = AUTO_CONV_FILTERS if getattr(self, "_auto_conv", False) else None
        if isinstance(k, str):
            k = AUTO_CONV_KERNEL if automatic else 3
        if isinstance(p, str):
            p = AUTO_CONV_POOL if automatic else 1
        return filters, k, p

    def _conv_config(self):
        """The model's ``conv_*`` entries from the (validated) parameters."""
        from ..network.conv import check_conv_args
        conv_filters, kernel, pool = self._conv_params()
        filters, k, p = check_conv_args(1 if conv_filters is None else conv_filters,
                                        kernel, pool, prefix="conv_")
        if conv_filters is None:
            return dict(conv_filters=None, conv_kernel_size=3, conv_pool=1)
        return dict(conv_filters=list(filters), conv_kernel_size=k, conv_pool=p)

    def _pooled_lengths(self, lengths, reset):
        """The valid steps the recurrent layer sees for inputs of ``lengths``
        (shortened by ``conv_pool`` after each convolution layer)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if not reset and hasattr(getattr(self, "model_", None), "output_lengths"):
            return self.model_.output_lengths(lengths)
        cfg = self._conv_config()
        n = 0 if cfg["conv_filters"] is None else len(cfg["conv_filters"])
        return lengths // (cfg["conv_pool"] ** n)

    def _check_conv_lengths(self, seqs, reset):
        """ValueError naming the first sequence too short for the conv front
        end's pooling (before any kernel runs)."""
        if reset:
            cfg = self._conv_config()
            n = 0 if cfg["conv_filters"] is None else len(cfg["conv_filters"])
            need = cfg["conv_pool"] ** n
        else:
            model = getattr(self, "model_", None)
            need = model.min_length() if hasattr(model, "min_length") else 1
        if need > 1:
            short = np.flatnonzero(seqs.lengths < need)
            if short.size:
                i = int(short[0])
                raise ValueError(
                    f"X[{i}] has {int(seqs.lengths[i])} steps, but the convolution front end "
                    f"(max pooling after each of its layers, conv_pool) needs at least "
                    f"{need} steps per sequence (its pooled length would be 0)")

    def _new_model(self, config, rng):
        from ._model import SequenceModel
        model = SequenceModel(config, rng)
        pre = self.pretrained_embeddings
        if pre is not None and model.emb is not None:
            W = model.emb.params["weight"]
            size = getattr(pre, "vector_size", None)
            if not isinstance(pre, Mapping) and size is None:
                raise ValueError(
                    f"pretrained_embeddings must be a dict token -> vector or a KeyedVectors-"
                    f"like object (with vector_size), got {type(pre).__name__}")
            if not isinstance(pre, Mapping) and size != W.shape[1]:
                raise ValueError(
                    f"pretrained_embeddings has vector_size={size}, but embedding_dim="
                    f"{W.shape[1]}: set embedding_dim to the vectors' size")
            get = getattr(pre, "get_vector", None) if not isinstance(pre, Mapping) else None
            for tok, i in self.vocabulary_.index.items():
                if tok not in pre:
                    continue
                vec = np.asarray(get(tok) if get is not None else pre[tok], dtype=W.dtype)
                if vec.shape != (W.shape[1],):
                    raise ValueError(
                        f"pretrained_embeddings[{tok!r}] must have length embedding_dim="
                        f"{W.shape[1]}, got shape {vec.shape}")
                if not np.all(np.isfinite(vec)):
                    raise ValueError(f"pretrained_embeddings[{tok!r}] contains NaN or infinity")
                W[i] = vec
        return model

    def _predict_raw(self, seqs):
        """Model output for every sample of :class:`Sequences` ``seqs``, in
        input order (batched by length).  The recurrent layers give each
        sequence the same result in any batch; the output layer's BLAS
        product may round a row differently in a batch of another size (last
        bit of float32)."""
        model = self.model_
        outs = [None] * seqs.n_samples
        for idx in iter_batches(seqs.lengths, self._inference_batch_size()):
            X, lengths = seqs.pad(idx)
            res = model.predict_batch(X, lengths)
            for j, i in enumerate(idx):
                outs[i] = res[j]
        return outs


def not_fitted_error(est):
    return NotFittedError(
        f"This {type(est).__name__} instance is not fitted yet. Call 'fit' with "
        "appropriate arguments before using this estimator."
    )
