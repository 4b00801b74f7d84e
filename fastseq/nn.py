"""Low-level layer API (see DESIGN.md): ``from fastseq.nn import Recurrent, ConvStack``."""

from .network.conv import ConvStack
from .network.recurrent import CELLS, Recurrent

__all__ = ["CELLS", "ConvStack", "Recurrent"]
