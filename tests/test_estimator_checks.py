"""scikit-learn's estimator checks on the six estimators.

They run twice: at the defaults (what users get, and what
``check_estimator(cyrnn.LSTMRegressor())`` sees), and with small settings that
keep the run short. Checks that cannot hold for a minibatch-trained sequence
model are listed, with reasons, in
``cyrnn.estimator_checks.expected_failed_checks``.
"""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.utils.estimator_checks import parametrize_with_checks

from cyrnn.estimator_checks import expected_failed_checks
from cyrnn.estimators import ESTIMATORS
from cyrnn.preprocessing import SequenceStandardScaler

CHECK_SETTINGS = dict(hidden_size=16, optimizer="adam", learning_rate=1e-2, max_iter=50)


@parametrize_with_checks([cls(**CHECK_SETTINGS) for cls in ESTIMATORS],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@parametrize_with_checks([cls() for cls in ESTIMATORS],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible_at_the_defaults(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_subset_invariance_holds_in_float64(cls):
    from sklearn.utils.estimator_checks import check_methods_subset_invariance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_methods_subset_invariance(cls.__name__, cls(**CHECK_SETTINGS, dtype="float64"))


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_expected_failed_checks_are_few_and_explained(cls):
    failing = expected_failed_checks(cls())
    assert 0 < len(failing) <= 2
    for name, reason in failing.items():
        assert name.startswith("check_") and len(reason) > 40


def test_expected_failed_checks_of_other_estimators_is_empty():
    assert expected_failed_checks(Ridge()) == {}


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_tags_are_truthful(cls):
    tags = cls().__sklearn_tags__()
    assert tags.input_tags.three_d_array and tags.input_tags.two_d_array
    assert not tags.input_tags.allow_nan and not tags.input_tags.sparse
    assert not tags.non_deterministic and not tags.no_validation and not tags._skip_test
    if cls.__name__.endswith("Classifier"):
        assert tags.estimator_type == "classifier" and tags.classifier_tags.multi_class
    else:
        assert tags.estimator_type == "regressor" and tags.target_tags.multi_output


@parametrize_with_checks([SequenceStandardScaler()])
def test_scaler_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_dataframe_column_names(cls):
    # feature_names_in_ as scikit-learn's own estimators keep it (a check that
    # check_estimator does not run in scikit-learn 1.9)
    pytest.importorskip("pandas")
    from sklearn.utils.estimator_checks import check_dataframe_column_names_consistency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_dataframe_column_names_consistency(
            cls.__name__, cls(hidden_size=4, max_iter=2, random_state=0))
