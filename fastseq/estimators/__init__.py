"""scikit-learn estimators over the recurrent engine."""

from ._base import BaseRNN, FitInterruptedWarning, NumericalWarning

__all__ = ["BaseRNN", "FitInterruptedWarning", "NumericalWarning"]
