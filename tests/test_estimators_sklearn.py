"""scikit-learn's estimator checks on every fastseq estimator.

RNNClassifier and RNNRegressor pass all of them, with no expected failure.
The others list the checks that cannot apply to them by design, each with
its reason, in their ``_expected_failed_checks`` (the sequence targets of
SequenceTagger and Seq2SeqRegressor, the token input of Seq2SeqClassifier);
xfails are strict, so a listed check that starts passing fails here.  Two
test-only adapters then run the checks that the targets keep out: one repeats
each sample's label over its steps for SequenceTagger, one gives
Seq2SeqRegressor's predictions the shape of a 2-D y.
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from fastseq import (RNNClassifier, RNNRegressor, Seq2SeqClassifier, Seq2SeqRegressor,
                     SequenceTagger)
from conftest import assert_expected_failures_name_real_checks, sklearn_checks

SMALL = dict(hidden_size=8, max_iter=40, learning_rate=0.03, batch_size=16, random_state=0,
             cell="gru", dtype="float64")
# float64: results of a sequence must not depend on its batch to rtol=1e-7, which
# holds in float64; float32 differs at the last ulp (see test_estimators.py).


def _per_step(X, y):
    """One label per sample -> that label at every step of a 2-D X (n, T)."""
    shape = getattr(X, "shape", None)
    if y is None or shape is None or len(shape) != 2 or np.ndim(y) != 1:
        return y
    return np.repeat(np.asarray(y)[:, None], shape[1], axis=1)


class PerStepTagger(SequenceTagger):
    """Test adapter: SequenceTagger fitted and scored on each sample's label
    repeated over its steps (a tagging problem the checks' data can express)."""

    def fit(self, X, y):
        return super().fit(X, _per_step(X, y))

    def partial_fit(self, X, y, classes=None):
        return super().partial_fit(X, _per_step(X, y), classes)

    def score(self, X, y):
        return super().score(X, _per_step(X, y))

    @classmethod
    def _expected_failed_checks(cls):
        return {}


class SqueezedSeq2SeqRegressor(Seq2SeqRegressor):
    """Test adapter: predictions (n, T_out) after a fit on a 2-D y (n, T_out)."""

    def _prepare_fit(self, X, y, reset):
        if reset:
            self.y_2d_ = np.asarray(y).ndim == 2
        return super()._prepare_fit(X, y, reset)

    def predict(self, X, return_attention=False):
        y = super().predict(X)
        return y[:, :, 0] if self.y_2d_ else y

    @classmethod
    def _expected_failed_checks(cls):
        return {}


ESTIMATORS = [RNNClassifier(**SMALL), RNNRegressor(**SMALL), SequenceTagger(**SMALL),
              Seq2SeqClassifier(**SMALL), Seq2SeqRegressor(**SMALL), PerStepTagger(**SMALL),
              SqueezedSeq2SeqRegressor(**SMALL)]
@sklearn_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("cls", [RNNClassifier, RNNRegressor])
def test_many_to_one_estimators_have_no_expected_failures(cls):
    assert cls._expected_failed_checks() == {}


@pytest.mark.parametrize("est", ESTIMATORS[2:5], ids=lambda e: type(e).__name__)
def test_every_expected_failure_names_a_check_that_runs_and_gives_a_reason(est):
    assert_expected_failures_name_real_checks(est)
