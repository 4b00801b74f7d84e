"""Multi-horizon weather forecasting: RNN, LSTM, GRU and attention seq2seq.

The course's experiment on an offline record shipped with ``vega_datasets``:
48 past steps of the weather in, the next 24 / 48 / 72 steps out.

- ``dataset="daily"``: Seattle's daily weather 2012-2015, four variables
  (precipitation, temp_max, temp_min, wind), all forecast;
- ``dataset="hourly"``: Seattle's hourly temperature in 2010.

Each variable is standardised with the training period's mean and standard
deviation; the series is split in time (70 % train, 15 % validation, 15 %
test) and cut into overlapping windows.  Models, all trained with Adam on the
mean squared error:

- ``persistence``: the last observed value, repeated (baseline);
- ``rnn`` / ``lstm`` / ``gru``: :class:`fastseq.RNNRegressor`, direct
  multi-horizon (the whole horizon from the last state, y of shape
  (n, horizon, k));
- ``seq2seq``: :class:`fastseq.Seq2SeqRegressor` (GRU encoder-decoder with
  Bahdanau attention; the decoder feeds back its own previous output; trained
  with scheduled sampling, ``teacher_forcing=0.5``: with full teacher forcing
  the 72-step forecasts drift at prediction time, exposure bias).

The table gives the validation and test MSE (standardised units, averaged over
steps and variables) per horizon.

Run::

    python examples/weather_forecast.py                  # daily, full budget
    python examples/weather_forecast.py --dataset hourly
    python examples/weather_forecast.py --quick          # seconds
"""

import argparse
import time
import warnings

import numpy as np

MODELS = ("persistence", "rnn", "lstm", "gru", "seq2seq")


def load_series(dataset="daily"):
    """(n_steps, k) float64 array of the record and the variable names."""
    from vega_datasets import data
    if dataset == "daily":
        df = data.seattle_weather()
        cols = ["precipitation", "temp_max", "temp_min", "wind"]
        return df[cols].to_numpy(dtype=np.float64), cols
    if dataset == "hourly":
        df = data.seattle_temps()
        return df[["temp"]].to_numpy(dtype=np.float64), ["temp"]
    raise ValueError(f"dataset must be 'daily' or 'hourly', got {dataset!r}")


def split_standardise(series, fractions=(0.7, 0.15)):
    """Chronological train / validation / test parts, standardised with the
    training part's statistics."""
    n = len(series)
    a = int(fractions[0] * n)
    b = int((fractions[0] + fractions[1]) * n)
    mean = series[:a].mean(axis=0)
    std = series[:a].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    z = (series - mean) / std
    return z[:a], z[a:b], z[b:]


def windows(z, n_in, horizon, stride=1):
    """X (n, n_in, k) and y (n, horizon, k) from a standardised part."""
    starts = np.arange(0, len(z) - n_in - horizon + 1, stride)
    X = np.stack([z[s:s + n_in] for s in starts])
    y = np.stack([z[s + n_in:s + n_in + horizon] for s in starts])
    return X, y


def make_model(name, hidden_size, max_iter, learning_rate, batch_size, random_state):
    from fastseq import RNNRegressor, Seq2SeqRegressor
    common = dict(hidden_size=hidden_size, max_iter=max_iter, learning_rate=learning_rate,
                  batch_size=batch_size, random_state=random_state, early_stopping=True,
                  validation_holdout="tail", validation_fraction=0.15, n_iter_no_change=6,
                  clip_norm=1.0)
    if name == "seq2seq":
        return Seq2SeqRegressor(cell="gru", attention="bahdanau", teacher_forcing=0.5, **common)
    return RNNRegressor(cell=name, conv_filters=None, **common)  # the course: plain RNN / LSTM / GRU


def mse(pred, y):
    return float(np.mean((pred - y) ** 2))


def main(dataset="daily", horizons=(24, 48, 72), input_steps=48, models=MODELS,
         hidden_size=32, max_iter=40, learning_rate=3e-3, batch_size=32, max_windows=None,
         random_state=0, verbose=True):
    """Train every model for every horizon; returns ``{(model, horizon):
    {"val": mse, "test": mse, "fit_time_s": s}}`` and prints the table.
    ``max_windows`` keeps only the first windows of each part (tiny runs)."""
    series, names = load_series(dataset)
    train, val, test = split_standardise(series)
    results = {}
    for h in horizons:
        parts = [windows(p, input_steps, h) for p in (train, val, test)]
        if max_windows:
            parts = [(X[:max_windows], y[:max_windows]) for X, y in parts]
        (Xtr, ytr), (Xva, yva), (Xte, yte) = parts
        for name in models:
            t0 = time.perf_counter()
            if name == "persistence":
                pv = np.repeat(Xva[:, -1:, :], h, axis=1)
                pt = np.repeat(Xte[:, -1:, :], h, axis=1)
            else:
                est = make_model(name, hidden_size, max_iter, learning_rate, batch_size,
                                 random_state)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est.fit(Xtr, ytr)
                pv, pt = est.predict(Xva), est.predict(Xte)
            results[(name, h)] = {"val": mse(pv, yva), "test": mse(pt, yte),
                                  "fit_time_s": time.perf_counter() - t0}
            if verbose:
                r = results[(name, h)]
                print(f"  horizon {h:3d} {name:12s} val MSE {r['val']:.4f}  "
                      f"test MSE {r['test']:.4f}  ({r['fit_time_s']:.1f} s)", flush=True)
    if verbose:
        print(format_table(results, horizons, models, dataset, names, input_steps))
    return results


def format_table(results, horizons, models, dataset, names, input_steps):
    head = (f"\n{dataset} Seattle weather ({', '.join(names)}), {input_steps} steps in; "
            "MSE in standardised units (validation / test)\n")
    cols = "| model | " + " | ".join(f"{h} steps val | {h} steps test" for h in horizons) + " |"
    sep = "|---|" + "---|---|" * len(horizons)
    rows = []
    for m in models:
        cells = []
        for h in horizons:
            r = results[(m, h)]
            cells += [f"{r['val']:.4f}", f"{r['test']:.4f}"]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return head + "\n".join([cols, sep] + rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="daily", choices=["daily", "hourly"])
    ap.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    ap.add_argument("--max-iter", type=int, default=40)
    ap.add_argument("--hidden-size", type=int, default=32)
    a = ap.parse_args()
    if a.quick:
        main(a.dataset, horizons=(4,), input_steps=8, hidden_size=4, max_iter=1,
             max_windows=64)
    else:
        main(a.dataset, max_iter=a.max_iter, hidden_size=a.hidden_size)
