"""SequenceScaler and TimeDistributed: equal to their scikit-learn
transformer on the stacked valid steps, the input's format kept, pipelines
with the estimators on every input format, and scikit-learn's checks."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastseq import RNNClassifier, RNNRegressor, SequenceScaler, SequenceTagger, TimeDistributed


def ragged(seed=0, n=7, F=3, one_d=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        T = int(rng.integers(1, 9))
        a = rng.normal(loc=[2.0, -1.0, 10.0][:F], scale=[0.5, 3.0, 0.1][:F], size=(T, F))
        out.append(a[:, 0] if one_d else a)
    return out


# ----------------------------------------------------------------- scaler
@pytest.mark.parametrize("with_mean", [True, False])
@pytest.mark.parametrize("with_std", [True, False])
def test_scaler_equals_standard_scaler_on_stacked_steps(with_mean, with_std):
    X = ragged()
    ref = StandardScaler(with_mean=with_mean, with_std=with_std).fit(np.concatenate(X))
    sc = SequenceScaler(with_mean=with_mean, with_std=with_std).fit(X)
    for name in ("mean_", "var_", "scale_"):
        a, b = getattr(sc, name), getattr(ref, name)
        assert (a is None and b is None) or np.array_equal(a, b), name
    assert sc.n_samples_seen_ == sum(len(x) for x in X)
    Z = sc.transform(X)
    assert isinstance(Z, list) and len(Z) == len(X)
    np.testing.assert_array_equal(np.concatenate(Z), ref.transform(np.concatenate(X)))
    for z, x in zip(Z, X):
        assert z.shape == x.shape
    back = sc.inverse_transform(Z)
    for b, x in zip(back, X):
        np.testing.assert_allclose(b, x, rtol=1e-12, atol=1e-12)


def test_scaler_3d_stays_3d_and_every_step_counts():
    X = np.random.default_rng(1).normal(3.0, 2.0, size=(5, 6, 2))
    sc = SequenceScaler().fit(X)
    ref = StandardScaler().fit(X.reshape(-1, 2))
    Z = sc.transform(X)
    assert Z.shape == X.shape
    np.testing.assert_array_equal(Z.reshape(-1, 2), ref.transform(X.reshape(-1, 2)))
    np.testing.assert_array_equal(sc.fit_transform(X), Z)
    assert sc.n_features_in_ == 2 and sc.n_timesteps_in_ is None


def test_scaler_2d_is_one_feature_over_all_steps():
    X = np.random.default_rng(2).normal(size=(6, 9)) * np.arange(1, 10)  # columns differ
    sc = SequenceScaler().fit(X)
    assert sc.mean_.shape == (1,) and sc.n_features_in_ == 9 and sc.n_timesteps_in_ == 9
    np.testing.assert_allclose(sc.mean_, [X.mean()], rtol=1e-12)
    np.testing.assert_allclose(sc.scale_, [X.std()], rtol=1e-12)
    Z = sc.transform(X)
    assert Z.shape == X.shape
    np.testing.assert_allclose(Z, (X - X.mean()) / X.std(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sc.inverse_transform(Z), X, rtol=1e-12, atol=1e-12)
    # the same series as 3-D (n, T, 1) or ragged give the same numbers
    np.testing.assert_allclose(sc.transform(X[:, :, None])[:, :, 0], Z, rtol=0, atol=0)
    with pytest.raises(ValueError, match="X has 8 features, but SequenceScaler is expecting 9"):
        sc.transform(X[:, :8])
    Z1 = sc.transform([x[:5] for x in X])  # ragged 1-D items: any length
    assert all(z.shape == (5,) for z in Z1)


def test_scaler_ragged_1d_items_stay_1d_and_float32_stays_float32():
    X = [x.astype(np.float32) for x in ragged(one_d=True)]
    Z = SequenceScaler().fit_transform(X)
    assert all(z.ndim == 1 and z.dtype == np.float32 and len(z) == len(x) for z, x in zip(Z, X))


def test_scaler_zero_variance_feature_left_unscaled():
    X = [np.column_stack([np.full(4, 5.0), np.arange(4.0)]), np.column_stack([np.full(3, 5.0),
                                                                                np.arange(3.0)])]
    sc = SequenceScaler().fit(X)
    assert sc.scale_[0] == 1.0
    Z = sc.transform(X)
    assert np.all(np.concatenate(Z)[:, 0] == 0.0)  # centred, not divided by 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_scaler_nan_or_inf_is_a_clear_error(bad):
    X = ragged()
    X[2] = X[2].copy()
    X[2][0, 1] = bad
    with pytest.raises(ValueError, match=r"X\[2\] contains NaN or infinity"):
        SequenceScaler().fit(X)
    A = np.zeros((3, 4, 2))
    A[1, 2, 0] = bad
    with pytest.raises(ValueError, match="X contains NaN or infinity"):
        SequenceScaler().fit(A)


@pytest.mark.parametrize("X, match", [
    ([], "X is empty"),
    ([np.zeros((0, 2)), np.zeros((0, 2))], "X has no step"),
    ([np.zeros((3, 2)), np.zeros((3, 4))], "mixes feature counts"),
    (np.zeros((2, 3, 4, 5)), "must be 3-D"),
    (np.zeros(5), "must be 3-D"),
    ("abc", "got a string"),
    ([np.array(["a", "b"])], "must hold real numbers"),
])
def test_bad_input_names_the_argument(X, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SequenceScaler().fit(X)


def test_empty_items_pass_through_transform():
    """Streams without new steps: empty items keep their place."""
    X = ragged()
    sc = SequenceScaler().fit(X)
    Z = sc.transform([X[0][:2], X[1][:0], np.zeros(0)[:, None][:, :0].reshape(0, 3)])
    assert [z.shape for z in Z] == [(2, 3), (0, 3), (0, 3)]
    Z = sc.transform([x[:0] for x in X])
    assert all(z.shape == (0, 3) for z in Z)
    td = TimeDistributed(PCA(2)).fit(X)
    assert [z.shape for z in td.transform([X[0][:0], X[1]])] == [(0, 2), (len(X[1]), 2)]
    uni = SequenceScaler().fit(ragged(one_d=True))
    assert uni.transform([np.zeros(0), np.ones(3)])[0].shape == (0,)


def test_unfitted_and_wrong_feature_count():
    with pytest.raises(NotFittedError):
        SequenceScaler().transform(ragged())
    sc = SequenceScaler().fit(ragged(F=3))
    with pytest.raises(ValueError, match="2 features per step, but SequenceScaler is expecting 3"):
        sc.transform(ragged(F=2))
    with pytest.raises(ValueError, match="read as univariate series"):
        sc.transform(np.zeros((2, 5)))
    with pytest.raises(InvalidParameterError, match="with_mean"):
        SequenceScaler(with_mean="yes").fit(ragged())


def test_scaler_partial_fit_equals_fit():
    X = ragged(seed=3, n=10)
    sc = SequenceScaler()
    sc.partial_fit(X[:4]).partial_fit(X[4:])
    ref = SequenceScaler().fit(X)
    np.testing.assert_allclose(sc.mean_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(sc.var_, ref.var_, rtol=1e-10)
    assert sc.n_samples_seen_ == ref.n_samples_seen_


def test_scaler_pickles_and_names_features():
    sc = SequenceScaler().fit(ragged())
    sc2 = pickle.loads(pickle.dumps(sc))
    X = ragged(seed=5)
    for a, b in zip(sc.transform(X), sc2.transform(X)):
        np.testing.assert_array_equal(a, b)
    assert list(sc.get_feature_names_out()) == ["x0", "x1", "x2"]
    assert list(sc.get_feature_names_out(["a", "b", "c"])) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="input_features"):
        sc.get_feature_names_out(["a"])


# ---------------------------------------------------------- TimeDistributed
def test_time_distributed_pca_per_frame():
    X = ragged(seed=4, n=9)
    td = TimeDistributed(PCA(2, random_state=0)).fit(X)
    ref = PCA(2, random_state=0).fit(np.concatenate(X))
    Z = td.transform(X)
    assert [z.shape for z in Z] == [(len(x), 2) for x in X]
    np.testing.assert_allclose(np.concatenate(Z), ref.transform(np.concatenate(X)),
                               rtol=1e-10, atol=1e-12)
    assert td.n_features_out_ == 2
    assert list(td.get_feature_names_out()) == ["pca0", "pca1"]
    back = td.inverse_transform(Z)
    assert [b.shape for b in back] == [x.shape for x in X]
    A = np.stack([x[:1] for x in X])  # 3-D (9, 1, 3) -> (9, 1, 2)
    assert td.transform(A).shape == (9, 1, 2)


def test_time_distributed_clones_and_passes_y_per_step():
    X = [np.random.default_rng(i).normal(size=(5 + i, 3)) + (i % 2) * 4 for i in range(6)]
    y = np.array([i % 2 for i in range(6)])
    lda = LinearDiscriminantAnalysis(n_components=1)
    td = TimeDistributed(lda).fit(X, y)
    assert not hasattr(lda, "scalings_")  # the given transformer is not fitted
    ref = LinearDiscriminantAnalysis(n_components=1).fit(
        np.concatenate(X), np.repeat(y, [len(x) for x in X]))
    np.testing.assert_allclose(np.concatenate(td.transform(X)),
                               ref.transform(np.concatenate(X)), rtol=1e-10, atol=1e-10)
    # one label per step (a tagger's y): concatenated
    ys = [np.full(len(x), i % 2) for i, x in enumerate(X)]
    td2 = TimeDistributed(LinearDiscriminantAnalysis(n_components=1)).fit(X, ys)
    np.testing.assert_allclose(np.concatenate(td2.transform(X)),
                               ref.transform(np.concatenate(X)), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="one entry per sequence"):
        TimeDistributed(LinearDiscriminantAnalysis()).fit(X, y[:3])


def test_time_distributed_2d_input_output_width():
    X = np.random.default_rng(5).normal(size=(4, 7))
    Z = TimeDistributed(StandardScaler()).fit_transform(X)
    assert Z.shape == (4, 7)  # one value per step: stays 2-D
    enc = TimeDistributed(OneHotEncoder()).fit(np.array([[0, 1, 2], [2, 1, 0]]))
    Z = enc.transform(np.array([[0, 1, 2], [2, 1, 0]]))
    assert Z.shape == (2, 3, 3)  # three values per step: 3-D (sparse made dense)
    np.testing.assert_array_equal(Z[0], np.eye(3))


def test_time_distributed_nan_follows_the_transformer():
    X = [np.array([[1.0, np.nan], [3.0, 4.0]]), np.array([[np.nan, 2.0]])]
    Z = TimeDistributed(SimpleImputer()).fit_transform(X)
    np.testing.assert_array_equal(Z[0], [[1.0, 3.0], [3.0, 4.0]])
    np.testing.assert_array_equal(Z[1], [[2.0, 2.0]])
    with pytest.raises(ValueError, match="NaN"):
        TimeDistributed(PCA(1)).fit(X)


def test_time_distributed_rejects_non_transformer():
    with pytest.raises(InvalidParameterError, match="transformer"):
        TimeDistributed("pca").fit(ragged())
    assert not hasattr(TimeDistributed(SimpleImputer(add_indicator=False)), "partial_fit")
    assert hasattr(TimeDistributed(StandardScaler()), "partial_fit")


# ----------------------------------------------------------------- pipelines
def _formats():
    rng = np.random.default_rng(0)
    n, T = 24, 6
    y = np.arange(n) % 2
    sign = np.where(y == 1, 1.0, -1.0)
    X3 = 50.0 + 10.0 * sign[:, None, None] + rng.normal(size=(n, T, 2))
    X2 = X3[:, :, 0]
    Xr = [X3[i, :3 + i % 4] for i in range(n)]
    return {"3d": X3, "2d": X2, "ragged": Xr}, y


@pytest.mark.parametrize("form", ["3d", "2d", "ragged"])
def test_pipeline_in_grid_search_on_every_format(form):
    Xs, y = _formats()
    X = Xs[form]
    pipe = make_pipeline(SequenceScaler(),
                         RNNClassifier(cell="gru", hidden_size=3, max_iter=2, batch_size=8,
                                       random_state=0, n_jobs=1))
    grid = GridSearchCV(pipe, {"rnnclassifier__hidden_size": [2, 3],
                               "sequencescaler__with_std": [True, False]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert set(grid.cv_results_["params"][0]) == {"rnnclassifier__hidden_size",
                                                  "sequencescaler__with_std"}
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    pred = grid.predict(X)
    assert pred.shape == (len(y),) and set(pred) <= {0, 1}
    # the pipeline's classifier sees exactly the scaled data
    best = grid.best_estimator_
    scaled = best[0].transform(X)
    np.testing.assert_array_equal(best[-1].predict_proba(scaled), best.predict_proba(X))


def test_pipeline_time_distributed_pca_then_rnn_regressor_and_tagger():
    Xs, y = _formats()
    X = Xs["ragged"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = make_pipeline(SequenceScaler(), TimeDistributed(PCA(1)),
                            RNNRegressor(hidden_size=3, max_iter=2, random_state=0, n_jobs=1))
        reg.fit(X, y.astype(float))
        assert reg.predict(X).shape == (len(y),)
        assert reg[-1].n_features_in_ == 1
        tags = [np.full(len(x), yi) for x, yi in zip(X, y)]
        tag = make_pipeline(SequenceScaler(), SequenceTagger(hidden_size=3, max_iter=2,
                                                             random_state=0, n_jobs=1))
        tag.fit(X, tags)
        assert [len(p) for p in tag.predict(X)] == [len(x) for x in X]


# ------------------------------------------------------ scikit-learn checks
@parametrize_with_checks([SequenceScaler(), SequenceScaler(with_mean=False, with_std=False),
                          TimeDistributed(StandardScaler()), TimeDistributed(PCA(1))],
                         expected_failed_checks=lambda est: {})
def test_sklearn_compatible(estimator, check):
    check(estimator)
