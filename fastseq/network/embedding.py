"""``Embedding``: a learned table of token vectors (PyTorch's ``nn.Embedding``).

Index 0 pads (its row is never read at valid steps and gets no gradient),
index 1 stands for every token unseen at fit (see :mod:`fastseq._input`).
"""

import numpy as np


class Embedding:
    """Table ``weight`` (V, E): token index -> vector.

    Parameters
    ----------
    num_embeddings : int
        V, vocabulary size including the reserved indices.
    embedding_dim : int
        E.
    dtype, rng
        Float dtype and numpy Generator (initial values N(0, 1), as PyTorch).
    """

    def __init__(self, num_embeddings, embedding_dim, dtype, rng):
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.dtype = np.dtype(dtype)
        self.n_params = self.num_embeddings * self.embedding_dim
        self.bind(np.zeros(self.n_params, dtype=self.dtype), copy=False)
        self.params["weight"][...] = rng.standard_normal(self.params["weight"].shape)
        self.params["weight"][0] = 0.0

    def bind(self, flat, copy=True):
        if copy:
            flat[...] = self.flat
        self.flat = flat
        self.params = {"weight": flat.reshape(self.num_embeddings, self.embedding_dim)}
        return self

    def forward(self, idx):
        """idx (B, T) int64, all in ``0..V-1`` -> (B, T, E)."""
        return self.params["weight"][idx]

    def backward(self, d, idx, out):
        """Scatter-add the rows ``d`` (N, E) into the rows ``idx`` (N,) of the
        gradient ``out`` (P,) (overwritten)."""
        g = out.reshape(self.num_embeddings, self.embedding_dim)
        g[...] = 0
        np.add.at(g, idx, d)
