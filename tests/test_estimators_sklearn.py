"""scikit-learn's estimator checks on RNNClassifier and RNNRegressor."""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastseq import RNNClassifier, RNNRegressor

SMALL = dict(hidden_size=8, max_iter=40, learning_rate=0.03, batch_size=16, random_state=0,
             cell="gru", dtype="float64")
# float64: results of a sequence must not depend on its batch to rtol=1e-7, which
# holds in float64; float32 differs at the last ulp (see test_estimators.py).


@parametrize_with_checks(
    [RNNClassifier(**SMALL), RNNRegressor(**SMALL)],
    expected_failed_checks=lambda est: est._expected_failed_checks(),
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
