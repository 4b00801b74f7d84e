"""The course's weather table on real hourly data: RNN, LSTM, GRU and seq2seq.

Data: the TMY3 file of Greensboro, NC (``723170TYA.CSV``) that ships inside
the ``pvlib`` package (read with the standard library's ``csv``, no pvlib
import, no download): 8,760 hourly rows.  A TMY3 "typical meteorological
year" stitches twelve real months taken from different years (January 1988,
February 1996, ...), so each calendar month is one contiguous record and
consecutive months are not consecutive in time.  Windows are therefore cut
inside a month only, and the split is by whole months in calendar order:
January-August train, September-October validation, November-December test
(no window and no hour is shared between parts).

Five physical variables, six columns:

- dry-bulb temperature (C), dew point (C), station pressure (mbar), wind
  speed (m/s);
- wind direction as its sine and cosine (two columns, so 360 and 0 degrees
  meet), both set to 0 in calm hours (speed 0, direction undefined).

Every column is standardised with the mean and standard deviation of the
training months only.  48 hours in; 24, 48 and 72 hours out (all six
columns); windows with a stride of ``stride`` hours.

Models, all trained with Adam on the MSE of the standardised values for a
fixed number of epochs (no early stopping: the validation months are only
scored):

- ``persistence``: the last observed hour, repeated;
- ``seasonal naive``: the same hour of the last observed day (step h is the
  value observed at h - 24 h, wrapping every 24 hours);
- ``rnn`` / ``lstm`` / ``gru``: :class:`fastseq.RNNRegressor`, direct
  multi-horizon (the whole horizon from the last state, y (n, horizon, 6));
- ``seq2seq``: :class:`fastseq.Seq2SeqRegressor` (GRU encoder-decoder,
  Luong's "general" multiplicative attention, scheduled sampling
  ``teacher_forcing=0.5``).  Bahdanau's additive score evaluates a tanh
  layer for every (output step, input step) pair: about 1.4 times Luong's
  training time here (48 hours in, 48 out, one thread; it was 6-8 times
  before its tanh was vectorised).

The table gives, per horizon, the validation and test MSE in standardised
units (averaged over steps and the six columns) and the test MSE per column
in the original units (C^2, mbar^2, (m/s)^2; sine and cosine unitless).

Run::

    python examples/weather_hourly.py            # the full table (a few minutes)
    python examples/weather_hourly.py --quick    # seconds
"""

import argparse
import csv
import importlib.util
import os
import time
import warnings

import numpy as np

MODELS = ("persistence", "seasonal_naive", "rnn", "lstm", "gru", "seq2seq")
COLUMNS = ("temperature", "dew_point", "pressure", "wind_speed", "wind_dir_sin", "wind_dir_cos")
UNITS = ("C^2", "C^2", "mbar^2", "(m/s)^2", "", "")
STATION = "723170TYA.CSV"
TRAIN_MONTHS, VAL_MONTHS, TEST_MONTHS = range(1, 9), (9, 10), (11, 12)


def tmy3_path(name=STATION):
    """Path of a TMY3 file shipped in pvlib's data folder (pvlib not imported)."""
    spec = importlib.util.find_spec("pvlib")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the pvlib package (which ships the TMY3 file) is not installed: "
                          "pip install pvlib")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", name)


def load_tmy3(path=None):
    """(values (8760, 6) float64, months (8760,) int, station name): the six
    columns of :data:`COLUMNS` hour by hour, and each hour's calendar month."""
    with open(path or tmy3_path(), newline="") as f:
        rows = csv.reader(f)
        meta = next(rows)
        head = next(rows)
        col = {name: i for i, name in enumerate(head)}
        data = list(rows)
    get = lambda name: np.array([float(r[col[name]]) for r in data])  # noqa: E731
    temp, dew = get("Dry-bulb (C)"), get("Dew-point (C)")
    pres, wdir, wspd = get("Pressure (mbar)"), get("Wdir (degrees)"), get("Wspd (m/s)")
    calm = wspd == 0
    rad = np.deg2rad(wdir)
    sin, cos = np.where(calm, 0.0, np.sin(rad)), np.where(calm, 0.0, np.cos(rad))
    months = np.array([int(r[col["Date (MM/DD/YYYY)"]][:2]) for r in data])
    values = np.column_stack([temp, dew, pres, wspd, sin, cos])
    return values, months, f"{meta[1].strip()} {meta[2].strip()}"


def month_windows(values, months, which, n_in, horizon, stride):
    """X (n, n_in, k) and y (n, horizon, k), cut inside each month of ``which``."""
    Xs, ys = [], []
    for m in which:
        z = values[months == m]
        starts = np.arange(0, len(z) - n_in - horizon + 1, stride)
        Xs += [z[s:s + n_in] for s in starts]
        ys += [z[s + n_in:s + n_in + horizon] for s in starts]
    return np.stack(Xs), np.stack(ys)


def baseline(name, X, horizon):
    """Forecasts (n, horizon, k) of the two baselines from the inputs X."""
    if name == "persistence":
        return np.repeat(X[:, -1:, :], horizon, axis=1)
    if name == "seasonal_naive":
        last_day = X[:, -24:, :]
        return last_day[:, np.arange(horizon) % 24, :]
    raise ValueError(f"unknown baseline {name!r}")


def make_model(name, hidden_size, max_iter, learning_rate, batch_size, random_state):
    from fastseq import RNNRegressor, Seq2SeqRegressor
    common = dict(hidden_size=hidden_size, max_iter=max_iter, learning_rate=learning_rate,
                  batch_size=batch_size, random_state=random_state, early_stopping=False,
                  clip_norm=1.0)
    if name == "seq2seq":
        return Seq2SeqRegressor(cell="gru", attention="luong", teacher_forcing=0.5, **common)
    return RNNRegressor(cell=name, conv_filters=None, **common)  # the course: plain RNN / LSTM / GRU


def main(horizons=(24, 48, 72), input_steps=48, models=MODELS, hidden_size=32, max_iter=20,
         learning_rate=3e-3, batch_size=64, stride=3, max_windows=None, random_state=0,
         verbose=True):
    """Every model for every horizon; returns ``{(model, horizon): {"val": mse,
    "test": mse, "test_per_column": (6,) original units, "fit_time_s": s}}``
    and prints the table.  ``max_windows`` keeps the first windows of each part
    (tiny runs)."""
    values, months, station = load_tmy3()
    train_mask = np.isin(months, TRAIN_MONTHS)
    mean = values[train_mask].mean(axis=0)
    std = values[train_mask].std(axis=0)
    z = (values - mean) / std
    results = {}
    for h in horizons:
        parts = [month_windows(z, months, which, input_steps, h, stride)
                 for which in (TRAIN_MONTHS, VAL_MONTHS, TEST_MONTHS)]
        if max_windows:
            parts = [(X[:max_windows], y[:max_windows]) for X, y in parts]
        (Xtr, ytr), (Xva, yva), (Xte, yte) = parts
        for name in models:
            t0 = time.perf_counter()
            if name in ("persistence", "seasonal_naive"):
                pv, pt = baseline(name, Xva, h), baseline(name, Xte, h)
            else:
                est = make_model(name, hidden_size, max_iter, learning_rate, batch_size,
                                 random_state)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
                    est.fit(Xtr, ytr)
                pv, pt = est.predict(Xva), est.predict(Xte)
            per_col = (((pt - yte) * std) ** 2).mean(axis=(0, 1))
            results[(name, h)] = {"val": float(np.mean((pv - yva) ** 2)),
                                  "test": float(np.mean((pt - yte) ** 2)),
                                  "test_per_column": per_col,
                                  "fit_time_s": time.perf_counter() - t0,
                                  "n_windows": (len(Xtr), len(Xva), len(Xte))}
            if verbose:
                r = results[(name, h)]
                print(f"  horizon {h:3d} {name:15s} val {r['val']:.4f}  test {r['test']:.4f}"
                      f"  ({r['fit_time_s']:.1f} s)", flush=True)
    if verbose:
        n = results[(models[0], horizons[0])]["n_windows"]
        print(f"\n{station} TMY3, {input_steps} h in, stride {stride} h; windows "
              f"train/val/test {n[0]}/{n[1]}/{n[2]} (horizon {horizons[0]} h); "
              f"hidden {hidden_size}, {max_iter} epochs\n")
        print(format_table(results, horizons, models))
    return results


def format_table(results, horizons, models):
    """Markdown table: one row per (horizon, model)."""
    head = ("| horizon | model | val MSE (std.) | test MSE (std.) | "
            + " | ".join(f"{c} {u}".strip() for c, u in zip(COLUMNS, UNITS)) + " |")
    sep = "|---|---|---|---|" + "---|" * len(COLUMNS)
    rows = []
    for h in horizons:
        for m in models:
            r = results[(m, h)]
            cells = [f"{h} h", m, f"{r['val']:.3f}", f"{r['test']:.3f}"]
            cells += [f"{v:.3g}" for v in r["test_per_column"]]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep] + rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budget (seconds)")
    ap.add_argument("--max-iter", type=int, default=20)
    ap.add_argument("--hidden-size", type=int, default=32)
    ap.add_argument("--stride", type=int, default=3)
    a = ap.parse_args()
    if a.quick:
        main(horizons=(24,), hidden_size=4, max_iter=1, max_windows=64)
    else:
        main(max_iter=a.max_iter, hidden_size=a.hidden_size, stride=a.stride)
