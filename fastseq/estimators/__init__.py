"""scikit-learn estimators over the recurrent engine."""

from ._base import BaseRNN, FitInterruptedWarning, NumericalWarning
from .classifier import RNNClassifier
from .ctc import CTCClassifier
from .regressor import RNNRegressor
from .seq2seq import Seq2SeqClassifier, Seq2SeqRegressor
from .tagger import SequenceTagger

__all__ = ["BaseRNN", "CTCClassifier", "FitInterruptedWarning", "NumericalWarning",
           "RNNClassifier", "RNNRegressor", "Seq2SeqClassifier", "Seq2SeqRegressor",
           "SequenceTagger"]
