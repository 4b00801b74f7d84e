"""fastseq: recurrent networks on the CPU, compiled with Numba, behind
scikit-learn estimators."""

__version__ = "0.1.0"

from .network.recurrent import Recurrent  # noqa: E402
from .estimators import RNNClassifier, RNNRegressor, SequenceTagger  # noqa: E402
from .estimators.seq2seq import Seq2SeqClassifier, Seq2SeqRegressor  # noqa: E402
from .persistence import load  # noqa: E402
from .preprocessing import SequenceScaler, TimeDistributed  # noqa: E402

__all__ = ["Recurrent", "RNNClassifier", "RNNRegressor", "SequenceTagger", "Seq2SeqClassifier",
           "Seq2SeqRegressor", "SequenceScaler", "TimeDistributed", "load", "__version__"]
