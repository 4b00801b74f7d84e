"""fastseq: recurrent networks on the CPU, compiled with Numba, behind
scikit-learn estimators."""

__version__ = "0.1.0"

from .network.recurrent import Recurrent  # noqa: E402
from .estimators import RNNClassifier, RNNRegressor, SequenceTagger  # noqa: E402
from .estimators.seq2seq import Seq2SeqClassifier, Seq2SeqRegressor  # noqa: E402
from .estimators.ctc import CTCClassifier  # noqa: E402
from . import ctc, metrics  # noqa: E402
from .persistence import load  # noqa: E402
from .preprocessing import SequenceScaler, TimeDistributed  # noqa: E402


__all__ = ["Recurrent", "RNNClassifier", "RNNRegressor", "SequenceTagger", "Seq2SeqClassifier",
           "Seq2SeqRegressor", "CTCClassifier", "SequenceScaler", "TimeDistributed", "ctc",
           "metrics", "load", "to_onnx", "__version__"]


def __getattr__(name):
    """``fastseq.dask``, ``fastseq.onnx`` and ``fastseq.to_onnx`` load on first
    use: they import dask / onnx, which ``import fastseq`` must not."""
    import importlib

    if name == "dask":
        return importlib.import_module(".dask", __name__)
    if name in ("to_onnx", "onnx"):
        mod = importlib.import_module(".onnx", __name__)
        return mod if name == "onnx" else mod.to_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
