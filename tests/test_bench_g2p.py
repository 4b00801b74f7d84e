"""bench/g2p.py's torch loop is the same model as fastseq's Seq2Seq: with the
weights copied across, both give the same loss and gradients on a padded
batch (so its epoch-time ratio compares like with like)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

torch = pytest.importorskip("torch")


def _pair(n_src=9, n_tgt=7, H=5, M=4, seed=0):
    from bench.g2p import torch_model
    from fastseq.interop import to_torch_state_dict
    from fastseq.network.seq2seq import Seq2Seq

    fs = Seq2Seq(n_tgt, outputs="tokens", src_vocab=n_src, embedding_dim=M, cell="gru",
                 hidden_size=H, bidirectional=True, attention="bahdanau", dtype="float64",
                 random_state=seed)
    tm = torch_model(n_src, n_tgt, hidden=H, embed=M).double()
    p = fs.params
    sd = {"src_emb.weight": p["src_embedding"], "tgt_emb.weight": p["tgt_embedding"],
          "decoder.weight_ih": p["decoder.weight_ih"], "decoder.weight_hh": p["decoder.weight_hh"],
          "decoder.bias_ih": p["decoder.bias_ih"], "decoder.bias_hh": p["decoder.bias_hh"],
          "W1.weight": p["attention.W1"], "W2.weight": p["attention.W2"],
          "v.weight": p["attention.v"][None, :], "out.weight": p["output.weight"],
          "out.bias": p["output.bias"]}
    sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
    sd.update({f"encoder.{k}": v for k, v in to_torch_state_dict(fs.encoder).items()})
    tm.load_state_dict(sd)
    return fs, tm


def test_torch_loop_model_matches_fastseq_seq2seq():
    rng = np.random.default_rng(1)
    fs, tm = _pair()
    lengths = np.array([6, 3, 5, 1])
    y_len = np.array([4, 5, 2, 3])
    X = np.zeros((4, 6), dtype=np.int64)
    Y = np.zeros((4, 5), dtype=np.int64)
    for b in range(4):
        X[b, :lengths[b]] = rng.integers(2, 9, lengths[b])
        Y[b, :y_len[b]] = rng.integers(1, 7, y_len[b])
    fs.train()
    loss_fs = fs.forward_loss(X, lengths, Y, y_len)
    grad = fs.backward()
    prev = np.zeros_like(Y)
    prev[:, 1:] = Y[:, :-1]
    mask = torch.from_numpy(np.arange(5)[None, :] < y_len[:, None])
    logits = tm(torch.from_numpy(X), torch.from_numpy(lengths), torch.from_numpy(prev))
    loss_t = torch.nn.functional.cross_entropy(logits[mask], torch.from_numpy(Y)[mask])
    loss_t.backward()
    assert loss_fs == pytest.approx(loss_t.item(), rel=1e-9, abs=1e-12)
    g = fs._views(grad)
    np.testing.assert_allclose(g["attention.W1"], tm.W1.weight.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(g["decoder.weight_ih"], tm.decoder.weight_ih.grad.numpy(),
                               atol=1e-9)
    np.testing.assert_allclose(g["output.weight"], tm.out.weight.grad.numpy(), atol=1e-9)
    np.testing.assert_allclose(g["src_embedding"], tm.src_emb.weight.grad.numpy(), atol=1e-9)
