import numpy as np
import pytest


def ragged_batch(rng, B, T, F, lengths=None, fill=np.nan):
    """A padded batch (B, T, F) whose padded steps hold ``fill`` (NaN by default,
    to prove they are never read), with its lengths."""
    if lengths is None:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[rng.integers(B)] = T
    lengths = np.asarray(lengths)
    X = rng.standard_normal((B, T, F))
    for b, n in enumerate(lengths):
        X[b, n:] = fill
    return X, lengths


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
