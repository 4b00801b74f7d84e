"""Named views into one flat parameter vector (shared by every network)."""

import numpy as np


def layout_size(layout):
    """Total number of entries of a layout ``[(name, shape), ...]``."""
    return sum(int(np.prod(shape)) for _, shape in layout)


def flat_views(layout, flat):
    """``{name: view}``: consecutive slices of ``flat`` (P,) reshaped to each
    ``shape`` of ``layout`` (writes through the views land in ``flat``)."""
    views, pos = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        views[name] = flat[pos:pos + size].reshape(shape)
        pos += size
    return views
