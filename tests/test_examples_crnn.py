"""Smoke test of examples/crnn_digits.py: the line generator keeps the image
split, the lines have the documented shapes, and a tiny fit runs (seconds;
no accuracy asserted)."""


import numpy as np
import pytest

from bench.example_loader import load_example

pytest.importorskip("mlxtend")


pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def mod():
    return load_example("crnn_digits")


@pytest.fixture(scope="module")
def splits(mod):
    return mod.load_digits(random_state=0)


def test_image_split_is_disjoint_and_stratified(splits):
    train, val, test = splits
    assert (len(train["index"]), len(val["index"]), len(test["index"])) == (3600, 400, 1000)
    sets = [set(s["index"].tolist()) for s in splits]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert len(sets[0] | sets[1] | sets[2]) == 5000
    assert np.bincount(test["labels"], minlength=10).tolist() == [100] * 10
    for s in splits:
        assert s["images"].shape == (len(s["index"]), 28, 28)
        assert s["images"].dtype == np.float32
        assert 0.0 <= s["images"].min() and s["images"].max() <= 1.0


def test_lines_shapes_labels_and_held_out_images(mod, splits):
    train, val, test = splits
    X_tr, y_tr, src_tr = mod.make_lines(train, 40, seed=1)
    X_te, y_te, src_te = mod.make_lines(test, 40, seed=2)
    used_tr = set(np.concatenate(src_tr).tolist())
    used_te = set(np.concatenate(src_te).tolist())
    # every digit of a line comes from its own split: no test image in training
    assert used_tr <= set(train["index"].tolist())
    assert used_te <= set(test["index"].tolist())
    assert not used_tr & used_te
    label_of = dict(zip(np.concatenate([s["index"] for s in splits]).tolist(),
                        np.concatenate([s["labels"] for s in splits]).tolist()))
    lengths = set()
    for X, y, src in ((X_tr, y_tr, src_tr), (X_te, y_te, src_te)):
        assert len(X) == len(y) == len(src) == 40
        for x, t, s in zip(X, y, src):
            assert isinstance(t, str) and 3 <= len(t) <= 8 and t.isdigit()
            assert t == "".join(str(label_of[i]) for i in s)  # the label is the digits drawn
            assert x.ndim == 2 and x.shape[1] == 28 and x.dtype == np.float32
            assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
            # long enough for CTC after the pooling of 4 (2 steps per digit)
            assert x.shape[0] >= mod.MIN_WIDTH * len(t)
            lengths.add(x.shape[0])
    assert len(lengths) > 20  # ragged: widths vary
    # the same seed gives the same lines
    X2, y2, _ = mod.make_lines(train, 40, seed=1)
    assert y2 == y_tr and all(np.array_equal(a, b) for a, b in zip(X2, X_tr))


def test_digit_columns_crop_scale_and_min_width(mod, splits):
    img = splits[0]["images"][0]
    rng = np.random.default_rng(0)
    ink = np.flatnonzero((img.T > mod.INK).any(axis=1))
    w = ink[-1] - ink[0] + 1
    for _ in range(20):
        cols = mod.digit_columns(img, rng)
        assert cols.shape[1] == 28
        assert max(mod.MIN_WIDTH, round(0.8 * w)) <= cols.shape[0] <= max(mod.MIN_WIDTH,
                                                                           round(1.2 * w))
    thin = np.zeros((28, 28), np.float32)
    thin[5:20, 14] = 1.0  # one ink column, padded to MIN_WIDTH
    cols = mod.digit_columns(thin, rng)
    assert cols.shape == (mod.MIN_WIDTH, 28) and cols.max() == 1.0
    assert mod.digit_columns(thin, rng, crop=False).shape[0] >= round(0.8 * 28)
    # no crop, no stretch, no shift: the image's columns as they are
    assert np.array_equal(mod.digit_columns(img, rng, scale=(1, 1), crop=False, max_shift=0),
                          img.T)
    # a shift moves the rows (features) by at most max_shift, blank rows enter
    rows = set()
    for _ in range(30):
        cols = mod.digit_columns(thin, rng, scale=(1, 1), max_shift=2)
        ink_rows = np.flatnonzero(cols.max(axis=0) > 0)
        assert len(ink_rows) == 15 and abs(ink_rows[0] - 5) <= 2
        rows.add(int(ink_rows[0]))
    assert len(rows) > 1


def test_tiny_fit_runs(mod, tmp_path):
    png = tmp_path / "lines.png"
    res = mod.main(n_train_lines=60, n_test_lines=12, epochs=1, hidden_size=8,
                   plot=str(png), conv_filters=(4, 4))
    assert res["epochs"] == 1 and res["n_val_lines"] == 6
    assert np.isfinite(res["cer"]) and res["cer"] >= 0.0
    assert 0.0 <= res["exact"] <= 1.0
    assert png.exists() and png.stat().st_size > 0


def test_tail_holdout_is_exactly_the_validation_lines():
    # main() appends n // 10 validation lines and passes their fraction; the
    # estimator holds out round(fraction * total): the same count
    for n in range(10, 30001, 7):
        n_val = max(1, n // 10)
        assert int(round(n_val / (n + n_val) * (n + n_val))) == n_val
