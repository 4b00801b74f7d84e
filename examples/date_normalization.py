"""Date normalisation with an attention seq2seq: human-readable dates -> ISO.

Dates in many formats ("25th of May 2019", "Sat 3 Aug 1991", "1991/08/03",
"march 7, 2004", ...) are generated with the standard library, read
character by character by a bidirectional encoder, and written as
``YYYY-MM-DD`` by a decoder with Bahdanau attention.  The held-out exact-match
accuracy is printed, and the attention heatmap of one example is saved as a
PNG (the decoder looks at the day when it writes the day, and so on).

Run::

    python examples/date_normalization.py            # full budget
    python examples/date_normalization.py --quick    # seconds
"""

import argparse
import datetime as dt
import random
import time


from fastseq import Seq2SeqClassifier

START = dt.date(1950, 1, 1)
END = dt.date(2035, 12, 31)


def ordinal(n):
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def _formats():
    """Functions date -> human-readable string (no ambiguous day/month orders
    other than the documented ones, no two-digit years)."""
    return [
        lambda d: d.strftime("%d %B %Y"),                            # 03 August 1991
        lambda d: f"{d.day} {d.strftime('%B %Y')}",                  # 3 August 1991
        lambda d: f"{d.day} {d.strftime('%b %Y')}",                  # 3 Aug 1991
        lambda d: f"{d.strftime('%a')} {d.day} {d.strftime('%b %Y')}",  # Sat 3 Aug 1991
        lambda d: f"{d.strftime('%A')}, {d.day} {d.strftime('%B %Y')}",  # Saturday, 3 August 1991
        lambda d: f"{ordinal(d.day)} of {d.strftime('%B %Y')}",     # 3rd of August 1991
        lambda d: f"{d.strftime('%B')} {ordinal(d.day)}, {d.year}",  # August 3rd, 1991
        lambda d: f"{d.strftime('%B')} {d.day}, {d.year}",           # August 3, 1991
        lambda d: f"{d.strftime('%b')} {d.day} {d.year}",            # Aug 3 1991
        lambda d: d.strftime("%Y/%m/%d"),                            # 1991/08/03
        lambda d: d.strftime("%d/%m/%Y"),                            # 03/08/1991 (day first)
        lambda d: d.strftime("%d.%m.%Y"),                            # 03.08.1991
        lambda d: f"{d.day}.{d.month}.{d.year}",                     # 3.8.1991
        lambda d: d.strftime("%Y%m%d"),                              # 19910803
        lambda d: d.strftime("%d %b %Y").upper(),                    # 03 AUG 1991
        lambda d: f"{d.strftime('%B').lower()} {d.day}, {d.year}",   # august 3, 1991
        lambda d: f"{d.strftime('%a').lower()} {d.strftime('%d %b %Y').lower()}",
    ]


def make_dates(n, seed=0):
    """``n`` (human, iso) pairs of random dates in random formats."""
    rng = random.Random(seed)
    fmts = _formats()
    span = (END - START).days
    X, y = [], []
    for _ in range(n):
        d = START + dt.timedelta(days=rng.randrange(span + 1))
        X.append(rng.choice(fmts)(d))
        y.append(d.isoformat())
    return X, y


def main(n_train=10000, n_test=2000, max_iter=20, hidden_size=64, embedding_dim=24,
         batch_size=64, learning_rate=3e-3, attention="bahdanau", beam_width=1,
         plot_path="date_attention.png", random_state=0, verbose=False):
    """Train on ``n_train`` generated dates, report exact match on ``n_test``
    others (different seed); save the attention heatmap to ``plot_path``
    (None: no plot).  Returns a dict of results."""
    X_train, y_train = make_dates(n_train, seed=random_state)
    X_test, y_test = make_dates(n_test, seed=random_state + 1)
    est = Seq2SeqClassifier(cell="gru", hidden_size=hidden_size, bidirectional=True,
                            embedding_dim=embedding_dim, attention=attention,
                            batch_size=batch_size, max_iter=max_iter,
                            learning_rate=learning_rate, clip_norm=5.0,
                            early_stopping=True, validation_fraction=0.05,
                            n_iter_no_change=4, beam_width=beam_width,
                            random_state=random_state, verbose=verbose)
    t0 = time.perf_counter()
    est.fit(X_train, y_train)
    fit_time = time.perf_counter() - t0
    acc = est.score(X_test, y_test)
    pred = est.predict(X_test[:8])
    res = {"exact_match": acc, "fit_time_s": fit_time, "epochs": est.n_iter_,
           "train_loss": est.loss_curve_[-1], "n_train": n_train, "n_test": n_test}
    print(f"held-out exact match: {acc:.4f} on {n_test} dates "
          f"({est.n_iter_} epochs, {fit_time:.1f} s)")
    for x, p, t in zip(X_test[:8], pred, y_test[:8]):
        print(f"  {x!r:>34} -> {p}  {'ok' if p == t else 'expected ' + t}")
    if plot_path:
        example = "Saturday, 3 August 1991" if n_train >= 1000 else X_test[0]
        fig = est.plot_attention(example)
        fig.savefig(plot_path, dpi=120, bbox_inches="tight")
        res["plot"] = plot_path
        print(f"attention heatmap saved to {plot_path}")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--beam-width", type=int, default=1)
    ap.add_argument("--plot", default="date_attention.png")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    if a.quick:
        main(n_train=300, n_test=100, max_iter=2, hidden_size=16, plot_path=a.plot)
    else:
        main(n_train=a.n_train, max_iter=a.max_iter, beam_width=a.beam_width,
             plot_path=a.plot, verbose=a.verbose)
