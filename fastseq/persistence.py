"""``save`` / ``load``: estimators as arrays plus JSON metadata, versioned.

The file is a numpy ``.npz`` (zip) archive read with ``allow_pickle=False``:
loading runs no code.  It holds ``__meta__`` (UTF-8 JSON as uint8: format
name, version, estimator class, constructor parameters, scalar fitted
attributes, model configuration) and one array per fitted array attribute
plus ``model.flat``.  A corrupt or truncated file raises ``ValueError``.
"""

import json
import numbers
import zipfile

import numpy as np

FORMAT = "fastseq-estimator"
VERSION = 1

#: estimator classes that ``load`` may construct (others register themselves)
REGISTRY = {}


def register(cls):
    """Allow :func:`load` to rebuild ``cls`` (a class decorator)."""
    REGISTRY[cls.__name__] = cls
    return cls


def _registry():
    from .estimators import RNNClassifier, RNNRegressor, SequenceTagger
    for cls in (RNNClassifier, RNNRegressor, SequenceTagger):
        REGISTRY.setdefault(cls.__name__, cls)
    return REGISTRY


def _json_value(v):
    """JSON-safe form of a parameter or scalar attribute, or raise TypeError."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    raise TypeError(type(v).__name__)


def save(est, path):
    """Write a fitted (or unfitted) estimator to ``path``."""
    params, dropped = {}, []
    for k, v in est.get_params(deep=False).items():
        if callable(v):
            raise TypeError(
                f"cannot save {type(est).__name__} with {k}={v!r}: a callable cannot go in "
                f"the save format (arrays plus JSON, which runs no code at load). Pickle or "
                f"joblib the estimator instead (the callable must be picklable), or use a "
                f"built-in {k}" + (" ('char' or 'word')" if k == "tokenizer" else ""))
        try:
            params[k] = _json_value(v)
        except TypeError:
            params[k] = None
            dropped.append(k)
    meta = {"format": FORMAT, "version": VERSION, "class": type(est).__name__,
            "params": params, "dropped_params": dropped, "attrs": {}, "arrays": {}}
    arrays = {}
    for k, v in vars(est).items():
        if not k.endswith("_") or k.startswith("_") or k == "model_":
            continue
        if k == "vocabulary_":
            meta["vocabulary"] = None if v is None else v.to_json()
        elif isinstance(v, np.ndarray):
            kind = v.dtype.kind
            if kind == "O":
                if all(isinstance(x, str) for x in v.ravel()):
                    v, kind = v.astype(str), "O-str"
                else:
                    raise TypeError(f"cannot save attribute {k}: object array of non-strings")
            arrays["attr/" + k] = v
            meta["arrays"][k] = kind
        else:
            try:
                meta["attrs"][k] = _json_value(v)
            except TypeError:
                raise TypeError(f"cannot save attribute {k} of type {type(v).__name__}") from None
    if hasattr(est, "model_"):
        meta["model"] = est.model_.config
        arrays["model/flat"] = est.model_.flat
    raw = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez(f, __meta__=raw, **arrays)


def load(path):
    """Read an estimator written by ``est.save(path)``.  Raises ``ValueError``
    for a file that is not one, is corrupt or truncated, or has a newer version.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, fastseq
    >>> X = np.random.default_rng(0).normal(size=(30, 8, 2))
    >>> clf = fastseq.RNNClassifier(hidden_size=8, max_iter=2, random_state=0)
    >>> clf = clf.fit(X, X[:, :, 0].sum(axis=1) > 0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.fastseq")
    >>> clf.save(path)
    >>> same = fastseq.load(path)
    >>> bool((same.predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path!r} is not a readable fastseq file (corrupt or truncated?): {exc}") from None
    try:
        meta = json.loads(files.pop("__meta__").tobytes().decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r}: missing or corrupt metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a fastseq estimator file")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise ValueError(f"{path!r} has format version {meta.get('version')!r}; this fastseq "
                         f"reads versions up to {VERSION}")
    try:
        return _rebuild(meta, files)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path!r}: corrupt fastseq file ({type(exc).__name__}: {exc})") from None


def _build_sequence_model(config):
    from .estimators._model import SequenceModel
    return SequenceModel(config, np.random.default_rng(0))


def _build_seq2seq(config):
    from .network.seq2seq import Seq2Seq
    return Seq2Seq.from_config(config, random_state=0)


#: model_class in the metadata -> builder from the JSON config (no code is
#: loaded from the file: the class must be one of these)
_MODEL_BUILDERS = {"SequenceModel": _build_sequence_model, "Seq2Seq": _build_seq2seq}


def _rebuild(meta, files):
    from ._input import Vocabulary
    reg = _registry()
    name = meta["class"]
    if name not in reg:
        raise ValueError(f"unknown estimator class {name!r}")
    cls = reg[name]
    est = cls(**meta["params"])
    for k, v in meta["attrs"].items():
        if not k.endswith("_"):
            raise ValueError(f"bad attribute name {k!r}")
        setattr(est, k, tuple(v) if k == "y_shape_" else v)
    for k, kind in meta["arrays"].items():
        a = files["attr/" + k]
        setattr(est, k, a.astype(object) if kind == "O-str" else a)
    if "vocabulary" in meta:
        est.vocabulary_ = None if meta["vocabulary"] is None else Vocabulary.from_json(meta["vocabulary"])
    if "model" in meta:
        flat = files["model/flat"]
        model = _MODEL_BUILDERS[meta["model"].get("model_class", "SequenceModel")](meta["model"])
        if flat.shape != model.flat.shape or flat.dtype != model.flat.dtype:
            raise ValueError(f"parameter vector of shape {flat.shape} {flat.dtype} does not "
                             f"match the model ({model.flat.shape} {model.flat.dtype})")
        if not np.all(np.isfinite(flat)):
            raise ValueError("parameters contain NaN or infinity")
        model.flat[...] = flat
        model.eval()
        est.model_ = model
        from .estimators._base import make_optimizer
        est._rng = np.random.default_rng()
        est._optimizer = make_optimizer(est, flat.shape[0], flat.dtype)
    return est
