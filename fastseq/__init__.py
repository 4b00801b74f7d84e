"""fastseq: recurrent networks on the CPU, compiled with Numba, behind
scikit-learn estimators."""

__version__ = "0.1.0"

from .network.recurrent import Recurrent  # noqa: E402

__all__ = ["Recurrent", "__version__"]
