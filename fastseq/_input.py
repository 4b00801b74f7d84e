"""Turning the user's input formats into validated sequences, padded batches
and lengths (with length bucketing).

Accepted ``X`` (see DESIGN.md):

- a 3-D array ``(n, T, F)``;
- a 2-D array ``(n, T)``: univariate series of one fixed length T (one feature
  per step); :attr:`Sequences.n_columns` keeps T, since for an estimator the
  width of a 2-D X is fixed at fit (scikit-learn's ``n_features_in_``), while
  the 3-D and ragged forms carry any length;
- a list of 2-D arrays ``(T_i, F)`` of different lengths (1-D ``(T_i,)`` items
  count as univariate; a list of equal-length 1-D items is a 2-D array, a list
  of equal-length ``(T, F)`` items a 3-D one);
- token sequences (lists of int or str tokens, or raw strings cut by a
  tokenizer: "char", "word" or a callable) when the estimator embeds tokens.

Everything is checked here, in Python, before any compiled kernel runs.
"""

import numbers
import re
from collections import Counter

import numpy as np

from ._config import INDEX_DTYPE

#: reserved token indices of every vocabulary
PAD_INDEX = 0
UNKNOWN_INDEX = 1
N_RESERVED = 2

#: the "word" tokenizer's pattern, applied to ``str.lower()``: runs of word
#: characters with an optional inner apostrophe ("don't", "it's"), or any one
#: other non-space character (punctuation)
WORD_PATTERN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def char_tokenizer(text):
    """``"abc"`` -> ``["a", "b", "c"]`` (the default: a string read as characters)."""
    return list(text)


def word_tokenizer(text):
    """Lower-cased word tokens and punctuation: ``"It's GOOD!"`` ->
    ``["it's", "good", "!"]`` (:data:`WORD_PATTERN`)."""
    return WORD_PATTERN.findall(text.lower())


#: the built-in tokenizers, by the name given as ``tokenizer``
TOKENIZERS = {"char": char_tokenizer, "word": word_tokenizer}


def resolve_tokenizer(tokenizer):
    """The function of ``tokenizer`` ("char", "word" or a callable str -> list
    of tokens); ValueError naming ``tokenizer`` for anything else."""
    if callable(tokenizer):
        return tokenizer
    if isinstance(tokenizer, str) and tokenizer in TOKENIZERS:
        return TOKENIZERS[tokenizer]
    raise ValueError(f"tokenizer must be 'char', 'word' or a callable str -> list of tokens, "
                     f"got {tokenizer!r}")


# --------------------------------------------------------------------- checks
def real_array(a, name):
    """``a`` as an array of real numbers (object arrays converted to
    float64), not yet cast or checked for NaN: TypeError for strings, other
    non-numbers and their dtypes, ValueError for complex numbers."""
    if isinstance(a, str):
        raise TypeError(f"{name} must hold real numbers, got a string {a!r}")
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype.kind == "c":
        raise ValueError(f"{name}: Complex data not supported (dtype {arr.dtype}); "
                         "fastseq needs real numbers")
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must hold real numbers: argument must be a string or a "
                            f"real number, not the objects given ({exc})") from None
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr


def _check_real(a, name, dtype):
    """``a`` as a real array cast to ``dtype``, finite (:func:`real_array`)."""
    out = np.ascontiguousarray(real_array(a, name), dtype=dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} contains NaN or infinity")
    return out


def _is_token_seq(item):
    return isinstance(item, str) or (
        isinstance(item, (list, tuple, np.ndarray))
        and len(item) > 0
        and all(isinstance(t, (str, numbers.Integral)) and not isinstance(t, (bool, np.bool_))
                for t in (item.tolist() if isinstance(item, np.ndarray) else item))
    )


class Sequences:
    """Validated input sequences.

    Either ``dense``: one C-contiguous array ``(n, T, F)`` (all lengths T), or
    ``items``: a list of ``(T_i, F)`` float arrays, or of ``(T_i,)`` int64 token
    index arrays when ``tokens``.

    Attributes
    ----------
    n_samples : int
    lengths : (n,) int64
    n_features : int
        F (0 for tokens).
    n_columns : int or None
        T when X was a 2-D array ``(n, T)`` (univariate series of one fixed
        length); None for a 3-D array, a ragged list or tokens.
    """

    def __init__(self, dense=None, items=None, tokens=False, n_columns=None):
        self.dense, self.items, self.tokens = dense, items, tokens
        self.n_columns = n_columns
        if dense is not None:
            n, T, F = dense.shape
            self.lengths = np.full(n, T, dtype=INDEX_DTYPE)
            self.n_features = F
        else:
            self.lengths = np.array([len(s) for s in items], dtype=INDEX_DTYPE)
            self.n_features = 0 if tokens else items[0].shape[1]
        self.n_samples = len(self.lengths)

    def take(self, idx):
        idx = np.asarray(idx, dtype=INDEX_DTYPE)
        if self.dense is not None:
            return Sequences(dense=self.dense[idx], n_columns=self.n_columns)
        return Sequences(items=[self.items[i] for i in idx], tokens=self.tokens)

    def pad(self, idx):
        """Padded batch of the samples ``idx``: ``X`` (B, T_max, F) float (or
        (B, T_max) int64 token indices, padding = :data:`PAD_INDEX`) and
        ``lengths`` (B,) int64."""
        idx = np.asarray(idx, dtype=INDEX_DTYPE)
        lengths = self.lengths[idx]
        if self.dense is not None:
            return np.ascontiguousarray(self.dense[idx]), lengths
        T = int(lengths.max())
        if self.tokens:
            X = np.full((len(idx), T), PAD_INDEX, dtype=INDEX_DTYPE)
        else:
            X = np.zeros((len(idx), T, self.n_features), dtype=self.items[0].dtype)
        for b, i in enumerate(idx):
            X[b, :lengths[b]] = self.items[i]
        return X, lengths


def refuse_non_sequences(X, name="X"):
    """Errors naming ``name`` for what is no sequence data at all: None, a
    string, a sparse matrix or array."""
    if X is None:
        raise ValueError(f"{name} is None; expected an array or a list of sequences")
    if isinstance(X, str):
        raise TypeError(f"{name} must be an array or a list of sequences, got a string")
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a sparse matrix/array: sparse input is not supported; "
                        "pass a dense array or a list of sequences")


def check_sequences(X, *, dtype, tokens=False, name="X", tokenizer="char"):
    """Validate ``X`` in any accepted format; return :class:`Sequences` of raw
    values (token sequences are returned as lists of Python objects in
    ``items`` with ``tokens=True``; encode them with a :class:`Vocabulary`).
    With ``tokens``, raw strings are cut by ``tokenizer`` ("char", "word" or a
    callable); lists of tokens are taken as they are."""
    refuse_non_sequences(X, name)
    if tokens:
        return _check_tokens(X, name, tokenizer)
    if isinstance(X, np.ndarray) and X.dtype.kind == "O" and X.ndim >= 2:
        return _dense(_check_real(X, name, np.float64), name, dtype)
    if isinstance(X, np.ndarray) and X.dtype.kind != "O":
        return _dense(X, name, dtype)
    if hasattr(X, "__array__") and not isinstance(X, (list, tuple, np.ndarray)):
        return _dense(np.asarray(X), name, dtype)
    if not hasattr(X, "__len__"):
        raise TypeError(f"{name} must be an array or a list of sequences, got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"{name} is empty: at least one sequence is required")
    # a list: regular (lists of lists) or ragged
    try:
        arr = np.asarray(X)
        regular = arr.dtype.kind != "O"
    except ValueError:
        regular = False
    if regular:
        return _dense(arr, name, dtype)
    return _ragged(list(X), name, dtype)


def _dense(arr, name, dtype):
    if arr.dtype.kind in "US":
        raise TypeError(
            f"{name} must hold real numbers, got strings (dtype {arr.dtype}); "
            "set embedding_dim to read token sequences"
        )
    shape = arr.shape
    n_columns = arr.shape[1] if arr.ndim == 2 else None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        raise ValueError(
            f"{name} must be 3-D (n_samples, n_timesteps, n_features), 2-D "
            f"(n_samples, n_timesteps) or a list of 2-D arrays; got shape {arr.shape}. "
            "Reshape your data: a single univariate sequence is X.reshape(1, -1)"
        )
    n, T, F = arr.shape
    if n == 0:
        raise ValueError(f"{name} is empty: got shape {shape}, at least one sequence is required")
    if T == 0:
        raise ValueError(f"{name} has zero time steps: 0 feature(s) (shape={shape}) while a "
                         "minimum of 1 is required.")
    if F == 0:
        raise ValueError(f"{name} has zero features per step (shape {arr.shape})")
    return Sequences(dense=_check_real(arr, name, dtype), n_columns=n_columns)


def _ragged(items, name, dtype):
    out, F = [], None
    for i, s in enumerate(items):
        a = _check_real(s, f"{name}[{i}]", dtype)
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise ValueError(
                f"{name}[{i}] must be a 2-D array (n_timesteps, n_features), got shape {a.shape}"
            )
        if a.shape[0] == 0:
            raise ValueError(f"{name}[{i}] is a zero-length sequence; every sequence needs >= 1 step")
        if a.shape[1] == 0:
            raise ValueError(f"{name}[{i}] has zero features per step")
        if F is None:
            F = a.shape[1]
        elif a.shape[1] != F:
            raise ValueError(
                f"{name} mixes feature counts: {name}[0] has {F} features per step, "
                f"{name}[{i}] has {a.shape[1]}"
            )
        out.append(np.ascontiguousarray(a))
    return Sequences(items=out)


def _check_tokens(X, name, tokenizer="char"):
    tokenize = resolve_tokenizer(tokenizer)
    label = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "__name__",
                                                                 type(tokenizer).__name__)
    if isinstance(X, np.ndarray) and X.ndim == 2 and len(X) and X.shape[1] == 0:
        raise ValueError(f"{name} has zero time steps: 0 feature(s) (shape={X.shape}) while a "
                         "minimum of 1 is required.")
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "iu":
        X = list(X)
    if not hasattr(X, "__len__"):
        raise TypeError(f"{name} must be a list of token sequences, got {type(X).__name__}")
    if len(X) == 0:
        raise ValueError(f"{name} is empty: at least one sequence is required")
    items = []
    for i, s in enumerate(X):
        cut = isinstance(s, str)
        if cut:
            if not s:
                raise ValueError(f"{name}[{i}] is a zero-length sequence (an empty string); every "
                                 "sequence needs >= 1 token (a recurrent network needs a step)")
            seq = tokenize(s)
            if not isinstance(seq, (list, tuple)):
                raise TypeError(
                    f"tokenizer {label!r} returned {type(seq).__name__} for {name}[{i}]; a "
                    "tokenizer must return a list of tokens (ints or strings)")
            seq = list(seq)
            if len(seq) == 0:
                raise ValueError(
                    f"{name}[{i}] = {s[:40]!r} gives no tokens with tokenizer {label!r}; every "
                    "sequence needs >= 1 token (a recurrent network needs at least one step): "
                    "drop or fill such samples")
        elif isinstance(s, (list, tuple, np.ndarray)):
            seq = s.tolist() if isinstance(s, np.ndarray) else list(s)
        else:
            raise TypeError(
                f"{name}[{i}] must be a token sequence (a string or a list of ints/strings), "
                f"got {type(s).__name__}"
            )
        if len(seq) == 0:
            raise ValueError(f"{name}[{i}] is a zero-length sequence; every sequence needs >= 1 token")
        for t in seq:
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (str, numbers.Integral)):
                where = f" (from tokenizer {label!r})" if cut else ""
                raise TypeError(
                    f"{name}[{i}] holds {t!r} of type {type(t).__name__}{where}; tokens must "
                    "be ints or strings"
                )
        items.append([int(t) if isinstance(t, numbers.Integral) else t for t in seq])
    return Sequences(items=items, tokens=True)


class Vocabulary:
    """Token -> index map built at fit: 0 pads, 1 is every unseen (or cut)
    token, kept tokens take 2.. in order of first appearance (deterministic)."""

    def __init__(self, tokens=()):
        self.index = {}
        for t in tokens:
            if t not in self.index:
                self.index[t] = len(self.index) + N_RESERVED

    @classmethod
    def build(cls, seqs, max_vocabulary=None, min_frequency=1):
        """The vocabulary of raw token :class:`Sequences` ``seqs``.

        Parameters
        ----------
        max_vocabulary : int or None
            Size of the whole vocabulary, the :data:`N_RESERVED` reserved
            indices (padding, unknown) included: at most ``max_vocabulary -
            N_RESERVED`` tokens are kept, the most frequent ones (ties broken
            by first appearance).  None: no cap.
        min_frequency : int >= 1
            Tokens seen fewer times are left out.

        Tokens left out map to :data:`UNKNOWN_INDEX`, also at fit, so that the
        unknown token's vector is trained on them.
        """
        if max_vocabulary is not None and int(max_vocabulary) <= N_RESERVED:
            raise ValueError(
                f"max_vocabulary={max_vocabulary} leaves no room for tokens: it counts the "
                f"{N_RESERVED} reserved indices (padding, unknown) too, so it must be at least "
                f"{N_RESERVED + 1} (or None for no cap)")
        if int(min_frequency) < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        if max_vocabulary is None and min_frequency == 1:
            return cls(t for s in seqs.items for t in s)
        counts = Counter(t for s in seqs.items for t in s)  # insertion order = first appearance
        first = {t: r for r, t in enumerate(counts)}
        kept = [t for t, c in counts.items() if c >= min_frequency]
        if max_vocabulary is not None and len(kept) > max_vocabulary - N_RESERVED:
            kept.sort(key=lambda t: (-counts[t], first[t]))
            kept = sorted(kept[:int(max_vocabulary) - N_RESERVED], key=first.__getitem__)
        return cls(kept)

    def __len__(self):
        return len(self.index) + N_RESERVED

    def encode(self, seqs):
        """Raw token :class:`Sequences` -> index :class:`Sequences` (int64)."""
        get = self.index.get
        items = [np.fromiter((get(t, UNKNOWN_INDEX) for t in s), dtype=INDEX_DTYPE, count=len(s))
                 for s in seqs.items]
        return Sequences(items=items, tokens=True)

    def to_json(self):
        return [[type(t).__name__, t] for t in self.index]

    @classmethod
    def from_json(cls, data):
        conv = {"int": int, "str": str}
        toks = []
        for kind, value in data:
            if kind not in conv:
                raise ValueError(f"corrupt vocabulary entry of kind {kind!r}")
            toks.append(conv[kind](value))
        return cls(toks)


# ------------------------------------------------------------------- batching
def iter_batches(lengths, batch_size, rng=None, shuffle=False, bucket=32):
    """Index arrays of mini-batches over samples with these ``lengths``.

    Equal lengths: plain (shuffled) consecutive batches.  Ragged: samples are
    sorted by length within buckets of ``bucket * batch_size`` (after a
    shuffle, when ``shuffle``) so that a batch holds similar lengths and padding
    costs little; the order of the batches is then shuffled.  Without shuffle,
    all samples are sorted by length (stable) - use for prediction, then
    scatter the results back by index.
    """
    n = len(lengths)
    order = rng.permutation(n) if shuffle else np.arange(n)
    ragged = n > 0 and lengths.min() != lengths.max()
    if ragged:
        if shuffle:
            chunk = max(1, bucket * batch_size)
            parts = [order[i:i + chunk] for i in range(0, n, chunk)]
            order = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in parts])
        else:
            order = order[np.argsort(-lengths[order], kind="stable")]
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if shuffle and ragged:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class Batch:
    """One padded mini-batch: ``X`` (B, T, F) or token indices (B, T), ``lengths``
    (B,) int64, target ``y`` (model-specific, or None), ``index`` (B,) positions
    in the dataset."""

    __slots__ = ("X", "lengths", "y", "index")

    def __init__(self, X, lengths, y=None, index=None):
        self.X, self.lengths, self.y, self.index = X, lengths, y, index

    @property
    def size(self):
        return len(self.lengths)


class Dataset:
    """Sequences plus aligned targets: the data protocol of the training loop.

    ``y`` is None, an array indexed along axis 0, or a list of per-sequence
    arrays (padded per batch with ``y_pad``; then ``Batch.y`` is (B, T_max, ...)).
    """

    def __init__(self, X, y=None, y_pad=None):
        self.X, self.y, self.y_pad = X, y, y_pad

    @property
    def n_samples(self):
        return self.X.n_samples

    @property
    def lengths(self):
        return self.X.lengths

    def take(self, idx):
        idx = np.asarray(idx, dtype=INDEX_DTYPE)
        y = self.y
        if isinstance(y, np.ndarray):
            y = y[idx]
        elif y is not None:
            y = [y[i] for i in idx]
        return Dataset(self.X.take(idx), y, self.y_pad)

    def batch(self, idx):
        idx = np.asarray(idx, dtype=INDEX_DTYPE)
        X, lengths = self.X.pad(idx)
        y = self.y
        if isinstance(y, np.ndarray):
            y = y[idx]
        elif y is not None:
            T = int(lengths.max())
            first = y[idx[0]]
            out = np.full((len(idx), T) + first.shape[1:], self.y_pad, dtype=first.dtype)
            for b, i in enumerate(idx):
                out[b, :len(y[i])] = y[i]
            y = out
        return Batch(X, lengths, y, idx)
