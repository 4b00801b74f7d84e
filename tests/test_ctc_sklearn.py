"""scikit-learn's estimator checks on CTCClassifier (as
tests/test_estimators_sklearn.py does for the other estimators).

CTCClassifier lists the checks that fit with one scalar label per sample in
its ``_expected_failed_checks`` (y is a label sequence per sample); xfails
are strict.  A test-only adapter then runs every check with each scalar
label read as a one-label sequence, and predictions joined into strings.
"""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from fastseq import CTCClassifier
from conftest import assert_expected_failures_name_real_checks, sklearn_checks

SMALL = dict(hidden_size=8, max_iter=20, learning_rate=0.03, batch_size=16, random_state=0,
             cell="gru", dtype="float64")


def _one_label_sequences(y):
    if y is None or np.ndim(y) != 1 or isinstance(y, str):
        return y
    return [[v] for v in np.asarray(y).tolist()]


class OneLabelCTC(CTCClassifier):
    """Test adapter: each scalar label is a one-label sequence; a prediction
    is its one label, or -1 when the decoded sequence is not one label long
    (the checks compare predictions as numbers)."""

    def fit(self, X, y):
        return super().fit(X, _one_label_sequences(y))

    def partial_fit(self, X, y):
        return super().partial_fit(X, _one_label_sequences(y))

    def predict(self, X):
        return np.array([float(p[0]) if len(p) == 1 else -1.0 for p in super().predict(X)])

    def score(self, X, y):
        return float(np.mean(self.predict(X) == np.asarray(y, dtype=float)))

    @classmethod
    def _expected_failed_checks(cls):
        return {}


ESTIMATORS = [CTCClassifier(**SMALL), OneLabelCTC(**SMALL)]
@sklearn_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_every_expected_failure_names_a_check_that_runs_and_gives_a_reason():
    est = CTCClassifier(**SMALL)
    assert_expected_failures_name_real_checks(est)


def test_parameters_are_base_rnn_s_plus_beam_width():
    from fastseq.estimators import BaseRNN
    assert set(CTCClassifier().get_params()) == set(BaseRNN().get_params()) | {"beam_width"}
