"""fastseq: recurrent networks on the CPU, compiled with Numba, behind
scikit-learn estimators."""

__version__ = "0.1.0"

from .network.recurrent import Recurrent  # noqa: E402
from .estimators import RNNClassifier, RNNRegressor, SequenceTagger  # noqa: E402
from .estimators.seq2seq import Seq2SeqClassifier, Seq2SeqRegressor  # noqa: E402
from .persistence import load  # noqa: E402


def __getattr__(name):
    """``fastseq.dask`` on first use (it imports dask, which ``import fastseq``
    must not)."""
    if name == "dask":
        import importlib

        return importlib.import_module(".dask", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Recurrent", "RNNClassifier", "RNNRegressor", "SequenceTagger", "Seq2SeqClassifier",
           "Seq2SeqRegressor", "load", "__version__"]
