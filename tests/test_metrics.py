"""The evaluation metrics against values worked out by hand, and the `evaluate` modules against the numpy
functions they wrap (loaded offline, by path)."""

import math

import numpy as np
import pytest

from modeling_mosaic.evaluation.metrics import (
    gain,
    mean_absolute_error,
    metric_path,
    normalised_absolute_errors,
    outlier_threshold,
    photoz_errors,
    photoz_metrics,
    regression_metrics,
    truth_spread,
)

# Five galaxies. ez = (z_pred - z_true) / (1 + z_true):
#   z_true 0.0, z_pred 0.01 ->  0.01 / 1.0 =  0.01
#   z_true 0.5, z_pred 0.47 -> -0.03 / 1.5 = -0.02
#   z_true 1.0, z_pred 1.10 ->  0.10 / 2.0 =  0.05
#   z_true 1.5, z_pred 1.50 ->  0.00 / 2.5 =  0.00
#   z_true 3.0, z_pred 2.00 -> -1.00 / 4.0 = -0.25
# sorted ez: -0.25, -0.02, 0.00, 0.01, 0.05 -> bias = median = 0.
# numpy's linear percentiles of 5 values sit on ranks 0..4: q25 = rank 1 = -0.02, q75 = rank 3 = 0.01,
# so IQR = 0.03 and sigma_IQR = 0.03 / 1.349 = 0.0222387...
# |ez - 0| sorted: 0, 0.01, 0.02, 0.05, 0.25 -> median 0.02 -> sigma_NMAD = 1.4826 * 0.02 = 0.029652.
# threshold = max(0.06, 3 * 0.0222387 = 0.0667161) = 0.0667161: only |-0.25| exceeds it -> rate 1/5.
Z_TRUE = [0.0, 0.5, 1.0, 1.5, 3.0]
Z_PRED = [0.01, 0.47, 1.1, 1.5, 2.0]
PHOTOZ_BY_HAND = {
    "bias": 0.0,
    "sigma_iqr": 0.03 / 1.349,
    "sigma_nmad": 1.4826 * 0.02,
    "outlier_rate": 0.2,
    "outlier_threshold": 3 * 0.03 / 1.349,
    "n_galaxies": 5,
}

# Scalars: truth 1, 3, 5; predictions 1, 2, 4 -> |err| 0, 1, 1 -> MAE 2/3.
# Spread of the truth: mean 3, variance (4 + 0 + 4) / 3 -> sigma = sqrt(8/3) = 1.632993.
# nMAE per galaxy: 0, 1/sigma, 1/sigma = 0, 0.612372, 0.612372 -> median 0.612372;
# p16 at rank 0.32: 0.32 * 0.612372 = 0.195959; p84 at rank 1.68: 0.612372.
SIGMA = math.sqrt(8.0 / 3.0)
SCALAR_BY_HAND = {"mae": 2.0 / 3.0, "nmae_median": 1 / SIGMA, "nmae_p16": 0.32 / SIGMA, "nmae_p84": 1 / SIGMA,
                  "n_galaxies": 3, "n_elements": 3}

# Vectors, 2 galaxies x 3 elements, only elements 0 and 2 scored (element 1 has huge errors, unscored):
#   truth [[0, 10, 2], [2, 20, 6]], prediction [[1, 0, 2], [2, 0, 3]]
#   scored |err|: galaxy 0 -> 1, 0; galaxy 1 -> 0, 3  => MAE-bar = (1 + 0 + 0 + 3) / 4 = 1.0
#   spreads: element 0 truth (0, 2) -> sigma 1; element 2 truth (2, 6) -> sigma 2
#   nMAE: galaxy 0 = (1/1 + 0/2) / 2 = 0.5; galaxy 1 = (0/1 + 3/2) / 2 = 0.75
#   median 0.625; p16 = 0.5 + 0.16 * 0.25 = 0.54; p84 = 0.5 + 0.84 * 0.25 = 0.71
V_TRUE = [[0.0, 10.0, 2.0], [2.0, 20.0, 6.0]]
V_PRED = [[1.0, 0.0, 2.0], [2.0, 0.0, 3.0]]
V_MASK = [True, False, True]
VECTOR_BY_HAND = {"mae": 1.0, "nmae_median": 0.625, "nmae_p16": 0.54, "nmae_p84": 0.71,
                  "n_galaxies": 2, "n_elements": 4}


def assert_dict_close(got, expected):
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_photoz_errors_by_hand():
    np.testing.assert_allclose(photoz_errors(Z_PRED, Z_TRUE), [0.01, -0.02, 0.05, 0.0, -0.25], atol=1e-15)


def test_photoz_metrics_by_hand():
    assert_dict_close(photoz_metrics(Z_PRED, Z_TRUE), PHOTOZ_BY_HAND)


def test_outlier_threshold_has_a_floor_of_0_06():
    # 3 * 0.01 = 0.03 < 0.06, so the floor holds; 3 * 0.05 = 0.15 above it.
    assert outlier_threshold(0.01) == 0.06
    assert outlier_threshold(0.05) == pytest.approx(0.15)


def test_photoz_outliers_use_the_floor_when_scatter_is_small():
    # ez = 0, 0, 0, 0.001, 0.05 (z_true = 0): IQR = 0.001 - 0 -> 3 sigma_IQR = 0.0022 < 0.06, so the bound is
    # 0.06 and 0.05 is NOT an outlier: rate 0.
    metrics = photoz_metrics([0.0, 0.0, 0.0, 0.001, 0.05], [0.0] * 5)
    assert metrics["outlier_threshold"] == 0.06
    assert metrics["outlier_rate"] == 0.0
    assert metrics["sigma_iqr"] == pytest.approx(0.001 / 1.349)


def test_photoz_skips_missing_galaxies():
    z_pred = Z_PRED + [np.nan, 0.3]
    z_true = Z_TRUE + [0.2, np.inf]
    assert_dict_close(photoz_metrics(z_pred, z_true), PHOTOZ_BY_HAND)


def test_regression_scalar_by_hand():
    assert_dict_close(regression_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 5.0]), SCALAR_BY_HAND)


def test_regression_vector_scores_only_masked_elements():
    assert_dict_close(regression_metrics(V_PRED, V_TRUE, mask=V_MASK), VECTOR_BY_HAND)
    np.testing.assert_allclose(normalised_absolute_errors(V_PRED, V_TRUE, mask=V_MASK), [0.5, 0.75])
    # Without the mask element 1 counts: |err| 10 and 20 -> MAE-bar = (1 + 10 + 0 + 0 + 20 + 3) / 6.
    assert mean_absolute_error(V_PRED, V_TRUE) == pytest.approx(34.0 / 6.0)


def test_a_per_galaxy_mask_equals_setting_the_truth_to_nan():
    mask = np.array([[True, False, True], [False, True, True]])
    nan_truth = np.where(mask, V_TRUE, np.nan)
    assert regression_metrics(V_PRED, V_TRUE, mask=mask) == regression_metrics(V_PRED, nan_truth)


def test_zero_spread_elements_are_left_out_of_the_nmae_but_not_the_mae():
    truth = [[1.0, 0.0], [3.0, 0.0]]  # element 1 is 0 for every galaxy: no scale
    pred = [[2.0, 5.0], [3.0, 5.0]]
    np.testing.assert_allclose(truth_spread(truth), [1.0, 0.0])
    np.testing.assert_allclose(normalised_absolute_errors(pred, truth), [1.0, 0.0])
    assert mean_absolute_error(pred, truth) == pytest.approx((1 + 5 + 0 + 5) / 4)


def test_a_given_spread_replaces_the_truth_spread():
    got = regression_metrics([1.0, 2.0, 4.0], [1.0, 3.0, 5.0], spread=[2.0])
    assert got["nmae_median"] == pytest.approx(0.5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        regression_metrics([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="mask"):
        regression_metrics(V_PRED, V_TRUE, mask=[True, False])
    with pytest.raises(ValueError, match="no element to score"):
        regression_metrics([np.nan, 1.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="> -1"):
        photoz_metrics([0.1], [-1.0])


def test_gain_formula():
    assert gain(0.05, 0.1) == pytest.approx(0.5)
    assert gain(0.037, 0.1) == pytest.approx(0.63)
    assert gain(0.2, 0.1) == pytest.approx(-1.0)
    assert gain(0.1, 0.0) is None
    assert gain(None, 0.1) is None


@pytest.fixture(scope="module")
def evaluate_offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_EVALUATE_OFFLINE", "1")
        import evaluate

        yield evaluate


def test_evaluate_photoz_module_matches_numpy(evaluate_offline):
    metric = evaluate_offline.load(metric_path("photoz"))
    assert_dict_close(metric.compute(predictions=Z_PRED, references=Z_TRUE), PHOTOZ_BY_HAND)


def test_evaluate_regression_module_matches_numpy(evaluate_offline):
    metric = evaluate_offline.load(metric_path("mosaic_regression"))
    assert_dict_close(metric.compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 3.0, 5.0]), SCALAR_BY_HAND)
    got = metric.compute(predictions=V_PRED, references=V_TRUE, mask=np.array(V_MASK))
    assert_dict_close(got, VECTOR_BY_HAND)


def test_evaluate_regression_module_accumulates_batches(evaluate_offline):
    metric = evaluate_offline.load(metric_path("mosaic_regression"))
    metric.add_batch(predictions=[1.0], references=[1.0])
    metric.add_batch(predictions=[2.0, 4.0], references=[3.0, 5.0])
    assert_dict_close(metric.compute(), SCALAR_BY_HAND)


def test_metric_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="photoz"):
        metric_path("accuracy")
