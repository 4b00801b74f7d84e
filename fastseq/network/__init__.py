"""Layers that own parameters and buffers and call the kernels."""

from .recurrent import CELLS, Recurrent

__all__ = ["CELLS", "Recurrent"]
