"""Reduced-budget runs of the seq2seq examples (seconds, not minutes)."""


import numpy as np
import pytest

from bench.example_loader import load_example


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def test_date_generator_formats_and_iso_targets():
    mod = load_example("date_normalization")
    X, y = mod.make_dates(300, seed=3)
    assert len(set(X)) > 250
    assert all(len(t) == 10 and t[4] == "-" and t[7] == "-" for t in y)
    assert mod.ordinal(1) == "1st" and mod.ordinal(12) == "12th" and mod.ordinal(23) == "23rd"


def test_date_normalization_reduced(tmp_path):
    mod = load_example("date_normalization")
    png = tmp_path / "att.png"
    res = mod.main(n_train=200, n_test=50, max_iter=1, hidden_size=8, embedding_dim=4,
                   plot_path=str(png))
    assert 0.0 <= res["exact_match"] <= 1.0
    assert png.exists() and png.stat().st_size > 0


def test_weather_forecast_reduced():
    mod = load_example("weather_forecast")
    res = mod.main("daily", horizons=(3,), input_steps=6, hidden_size=4, max_iter=1,
                   max_windows=40, verbose=False)
    assert set(res) == {(m, 3) for m in mod.MODELS}
    for r in res.values():
        assert np.isfinite(r["val"]) and np.isfinite(r["test"])
    table = mod.format_table(res, (3,), mod.MODELS, "daily", ["x"], 6)
    assert "seq2seq" in table and "persistence" in table
