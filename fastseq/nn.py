"""Low-level layer API (see DESIGN.md): ``from fastseq.nn import Recurrent``."""

from .network.recurrent import CELLS, Recurrent

__all__ = ["CELLS", "Recurrent"]
