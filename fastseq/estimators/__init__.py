"""scikit-learn estimators over the recurrent engine."""

from ._base import BaseRNN, FitInterruptedWarning, NumericalWarning
from .classifier import RNNClassifier
from .regressor import RNNRegressor
from .tagger import SequenceTagger

__all__ = ["BaseRNN", "FitInterruptedWarning", "NumericalWarning", "RNNClassifier",
           "RNNRegressor", "SequenceTagger"]
