"""The evaluation's metrics as plain numpy functions.

The `evaluate` modules beside this file (`mosaic_regression/`, `photoz/`) wrap these, so the report, the
baselines and the tests call the very same code without importing `evaluate` (a 5 s import).
Non-finite truth or prediction marks an element as missing: it is left out of every score.
"""

from __future__ import annotations

import math

import numpy as np

#: Gaussian-equivalent scatter from an interquartile range and from a median absolute deviation.
IQR_TO_SIGMA = 1.349
MAD_TO_SIGMA = 1.4826
#: The RAIL outlier threshold: |ez| > max(OUTLIER_FLOOR, 3 sigma_IQR).
OUTLIER_FLOOR = 0.06


def _scored_pairs(predictions, references, mask=None):
    """Predictions and references as 2-D float arrays (galaxies, elements) and the boolean array of
    elements to score: inside `mask` (broadcast over galaxies) and finite in both."""
    pred = np.asarray(predictions, dtype=np.float64)
    true = np.asarray(references, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"predictions have shape {pred.shape} but references have shape {true.shape}")
    if pred.ndim not in (1, 2) or pred.shape[0] == 0:
        raise ValueError(f"predictions must be a non-empty (galaxies,) or (galaxies, elements) array, got {pred.shape}")
    if pred.ndim == 1:
        pred, true = pred[:, None], true[:, None]
    scored = np.isfinite(pred) & np.isfinite(true)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        try:
            scored &= np.broadcast_to(mask, scored.shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not fit predictions of shape {pred.shape}") from None
    if not scored.any():
        raise ValueError("no element to score: every scored element has a non-finite prediction or reference")
    return pred, true, scored


def mean_absolute_error(predictions, references, mask=None) -> float:
    """MAE for a scalar; MAE-bar for a vector: the mean of |prediction - truth| over every scored
    (galaxy, element) pair."""
    pred, true, scored = _scored_pairs(predictions, references, mask)
    return float(np.abs(pred - true)[scored].mean())


def truth_spread(references, mask=None) -> np.ndarray:
    """Per element, the standard deviation (ddof 0) of the truth over the galaxies where it is scored
    (finite and inside `mask`): the scale of the normalised MAE. NaN where nothing is scored."""
    true = np.asarray(references, dtype=np.float64)
    true = true[:, None] if true.ndim == 1 else true
    scored = np.isfinite(true)
    if mask is not None:
        scored &= np.broadcast_to(np.asarray(mask, dtype=bool), true.shape)
    counts = scored.sum(axis=0)
    safe = np.where(scored, true, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = safe.sum(axis=0) / counts
        var = (np.where(scored, true - mean, 0.0) ** 2).sum(axis=0) / counts
    return np.sqrt(var)


def normalised_absolute_errors(predictions, references, mask=None, spread=None) -> np.ndarray:
    """Per galaxy, the mean over its scored elements of |prediction - truth| / spread, where the spread of
    an element is the standard deviation of the truth over the test set (`truth_spread`, or the given
    `spread`). Elements whose spread is zero or non-finite (e.g. an SFH bin that is zero for every galaxy)
    carry no scale and are left out. NaN for a galaxy with nothing scored."""
    return _per_galaxy_nmae(*_scored_pairs(predictions, references, mask), spread)


def _per_galaxy_nmae(pred, true, scored, spread) -> np.ndarray:
    spread = truth_spread(true, scored) if spread is None else np.asarray(spread, dtype=np.float64).reshape(-1)
    if spread.shape[0] not in (1, true.shape[1]):
        raise ValueError(f"spread has {spread.shape[0]} elements, predictions have {true.shape[1]}")
    usable = np.isfinite(spread) & (spread > 0)
    scored = scored & np.broadcast_to(usable, scored.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(scored, np.abs(pred - true) / np.where(usable, spread, 1.0), 0.0)
        return ratio.sum(axis=1) / scored.sum(axis=1)


def regression_metrics(predictions, references, mask=None, spread=None) -> dict:
    """MAE (MAE-bar for vectors) and the normalised MAE per galaxy summarised by its median and 16th/84th
    percentiles over galaxies; see `normalised_absolute_errors` for the normalisation."""
    pred, true, scored = _scored_pairs(predictions, references, mask)
    per_galaxy = _per_galaxy_nmae(pred, true, scored, spread)
    per_galaxy = per_galaxy[np.isfinite(per_galaxy)]
    if per_galaxy.size == 0:
        raise ValueError("no element to score has a non-zero spread of the truth: the normalised MAE is undefined")
    p16, p50, p84 = np.percentile(per_galaxy, [16.0, 50.0, 84.0])
    return {
        "mae": float(np.abs(pred - true)[scored].mean()),
        "nmae_median": float(p50),
        "nmae_p16": float(p16),
        "nmae_p84": float(p84),
        "n_galaxies": int(scored.any(axis=1).sum()),
        "n_elements": int(scored.sum()),
    }


def photoz_errors(z_pred, z_true) -> np.ndarray:
    """ez = (z_pred - z_true) / (1 + z_true) over the galaxies where both are finite."""
    pred, true, scored = _scored_pairs(z_pred, z_true)
    if pred.shape[1] != 1:
        raise ValueError(f"redshifts must be 1-D, got shape {np.shape(z_pred)}")
    if np.any(true[scored] <= -1.0):
        raise ValueError("true redshifts must be > -1")
    keep = scored[:, 0]
    return (pred[keep, 0] - true[keep, 0]) / (1.0 + true[keep, 0])


def outlier_threshold(sigma_iqr: float) -> float:
    """The RAIL outlier bound on |ez|: max(0.06, 3 sigma_IQR)."""
    return max(OUTLIER_FLOOR, 3.0 * sigma_iqr)


def photoz_metrics(z_pred, z_true) -> dict:
    """RAIL point-estimate metrics on ez: bias = median(ez); sigma_IQR = IQR(ez) / 1.349 (numpy's linear
    percentiles); sigma_NMAD = 1.4826 median|ez - median(ez)|; outlier rate = fraction with
    |ez| > max(0.06, 3 sigma_IQR)."""
    ez = photoz_errors(z_pred, z_true)
    bias = float(np.median(ez))
    q25, q75 = np.percentile(ez, [25.0, 75.0])
    sigma_iqr = float((q75 - q25) / IQR_TO_SIGMA)
    threshold = outlier_threshold(sigma_iqr)
    return {
        "bias": bias,
        "sigma_iqr": sigma_iqr,
        "sigma_nmad": float(MAD_TO_SIGMA * np.median(np.abs(ez - bias))),
        "outlier_rate": float(np.mean(np.abs(ez) > threshold)),
        "outlier_threshold": float(threshold),
        "n_galaxies": int(ez.size),
    }


def gain(mae_with: float | None, mae_without: float | None) -> float | None:
    """Relative improvement 1 - MAE_with / MAE_without (the paper's figure-2 gains); None when either MAE
    is missing or MAE_without is zero."""
    if mae_with is None or mae_without is None or not mae_without > 0:
        return None
    return float(1.0 - mae_with / mae_without)


# ------------------------------------------------------------------------------- probabilistic calibration
# Scores of predictive distributions against the truth, per galaxy then averaged: the probability integral
# transform (PIT = the predictive CDF at the truth; uniform for a calibrated model), the coverage of central
# intervals, the CRPS (a proper score in the truth's units) and RAIL's CDE loss for photo-z posteriors.

def _normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def _finite_rows(*arrays):
    """The rows where every array is finite (over all but the first axis)."""
    keep = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        a = np.asarray(a, dtype=np.float64)
        keep &= np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    if not keep.any():
        raise ValueError("no galaxy to score: every row has a non-finite prediction or truth")
    return keep


def _check_grid(grid, pdf, truth):
    grid = np.asarray(grid, dtype=np.float64)
    pdf = np.asarray(pdf, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1)
    if grid.ndim != 1 or grid.size < 2 or (np.diff(grid) <= 0).any():
        raise ValueError(f"grid must be 1-D and strictly increasing with >= 2 points, got shape {grid.shape}")
    if pdf.shape != (truth.size, grid.size):
        raise ValueError(f"pdf has shape {pdf.shape}; expected (galaxies, grid points) = {(truth.size, grid.size)}")
    keep = _finite_rows(pdf, truth)
    return grid, pdf[keep], truth[keep]


def _interpolate_rows(grid, values, x):
    """Per row, values (N, G) on grid linearly interpolated at x (N,); end values outside the grid."""
    right = np.clip(np.searchsorted(grid, x), 1, grid.size - 1)
    left = right - 1
    t = np.clip((x - grid[left]) / (grid[right] - grid[left]), 0.0, 1.0)
    rows = np.arange(len(x))
    return (1.0 - t) * values[rows, left] + t * values[rows, right]


def _cumulative(grid, values):
    """Cumulative trapezoid integral of each row of values (N, G) over the grid, starting at 0."""
    steps = 0.5 * (values[:, 1:] + values[:, :-1]) * np.diff(grid)
    return np.concatenate([np.zeros((len(values), 1)), np.cumsum(steps, axis=1)], axis=1)


def _grid_cdf(grid, pdf):
    """Cumulative trapezoid integral of each row, scaled to end at 1."""
    cdf = _cumulative(grid, pdf)
    return cdf / cdf[:, -1:]


def pit_gaussian(mean, std, truth) -> np.ndarray:
    """PIT of Gaussian predictions: Phi((truth - mean) / std), over galaxies where all three are finite."""
    mean, std, truth = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, std, truth))
    keep = _finite_rows(mean, std, truth) & (std > 0)
    return _normal_cdf((truth[keep] - mean[keep]) / std[keep])


def pit_from_grid(grid, pdf, truth) -> np.ndarray:
    """PIT of densities tabulated on a grid (N, G): their CDF (trapezoid rule, normalised on the grid) at the
    truth; 0 below and 1 above the grid."""
    grid, pdf, truth = _check_grid(grid, pdf, truth)
    pit = _interpolate_rows(grid, _grid_cdf(grid, pdf), truth)
    return np.where(truth < grid[0], 0.0, np.where(truth > grid[-1], 1.0, pit))


def coverage(pit, level: float) -> float:
    """Fraction of galaxies whose truth lies in the central `level` interval: |PIT - 1/2| <= level / 2."""
    return float(np.mean(np.abs(np.asarray(pit, dtype=np.float64) - 0.5) <= level / 2.0))


def pit_ks(pit) -> float:
    """Kolmogorov-Smirnov statistic of the PIT values against the uniform distribution on [0, 1]."""
    u = np.sort(np.asarray(pit, dtype=np.float64))
    n = u.size
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - u), np.max(u - (i - 1) / n)))


def ks_p_value(statistic: float, n: int) -> float:
    """Probability that n draws from the uniform distribution give a KS statistic at least this large: the
    Kolmogorov distribution at (sqrt(n) + 0.12 + 0.11 / sqrt(n)) * statistic (Stephens 1970), accurate to a
    few per cent in p for n >= 35. "PIT flat within noise" at the 5% level means p >= 0.05."""
    if n < 1:
        raise ValueError(f"ks_p_value: n must be >= 1, got {n}")
    x = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * float(statistic)
    if x < 0.2:
        return 1.0
    k = np.arange(1, 101)
    return float(np.clip(2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * x**2)), 0.0, 1.0))


def crps_gaussian(mean, std, truth) -> float:
    """Mean CRPS of Gaussian predictions, closed form (Gneiting & Raftery 2007):
    std * [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)], z = (truth - mean) / std; |truth - mean| where std = 0."""
    mean, std, truth = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, std, truth))
    keep = _finite_rows(mean, std, truth)
    mean, std, truth = mean[keep], std[keep], truth[keep]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(std > 0, (truth - mean) / std, 0.0)
    density = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    crps = std * (z * (2.0 * _normal_cdf(z) - 1.0) + 2.0 * density - 1.0 / math.sqrt(math.pi))
    return float(np.mean(np.where(std > 0, crps, np.abs(truth - mean))))


def crps_from_grid(grid, pdf, truth) -> float:
    """Mean CRPS of densities on a grid (their CDFs by the trapezoid rule; `crps_from_cdf`)."""
    grid, pdf, truth = _check_grid(grid, pdf, truth)
    return crps_from_cdf(grid, _grid_cdf(grid, pdf), truth)


def crps_from_cdf(grid, cdf, truth) -> float:
    """Mean CRPS of CDFs tabulated on a grid (N, G): the integral over the grid of (F(z) - H(z - t))^2, expanded
    as int F^2 - 2 int_t F + (end - t) so the step at the truth t (clipped to the grid) is integrated exactly."""
    grid, cdf, truth = _check_grid(grid, cdf, truth)
    integral_f = _cumulative(grid, cdf)
    t = np.clip(truth, grid[0], grid[-1])
    above_truth = integral_f[:, -1] - _interpolate_rows(grid, integral_f, t)
    return float(np.mean(_cumulative(grid, cdf**2)[:, -1] - 2.0 * above_truth + (grid[-1] - t)))


def cde_loss(grid, pdf, truth) -> float:
    """RAIL's conditional density estimation loss: mean over galaxies of the integral of p(z)^2 dz, minus twice
    the mean of p(z_true) (p normalised on the grid, 0 outside it). Lower is better."""
    grid, pdf, truth = _check_grid(grid, pdf, truth)
    steps = np.diff(grid)
    pdf = pdf / (0.5 * (pdf[:, 1:] + pdf[:, :-1]) * steps).sum(axis=1, keepdims=True)
    squared = (0.5 * (pdf[:, 1:] ** 2 + pdf[:, :-1] ** 2) * steps).sum(axis=1)
    inside = (truth >= grid[0]) & (truth <= grid[-1])
    at_truth = np.where(inside, _interpolate_rows(grid, pdf, truth), 0.0)
    return float(np.mean(squared) - 2.0 * np.mean(at_truth))


def _pit_scores(pit) -> dict:
    statistic = pit_ks(pit)
    return {"coverage_68": coverage(pit, 0.68), "coverage_95": coverage(pit, 0.95), "pit_ks": statistic,
            "pit_ks_p": ks_p_value(statistic, np.size(pit))}


def gaussian_calibration(mean, std, truth) -> dict:
    """coverage_68, coverage_95, pit_ks and crps of Gaussian predictions."""
    return {**_pit_scores(pit_gaussian(mean, std, truth)), "crps": crps_gaussian(mean, std, truth)}


def cdf_calibration(pit, grid, cdf, truth) -> dict:
    """coverage_68, coverage_95, pit_ks and crps from a model's own CDF: at the truth (the PIT values) and
    tabulated on a grid (N, G) for the CRPS."""
    return {**_pit_scores(pit), "crps": crps_from_cdf(grid, cdf, truth)}


def grid_calibration(grid, pdf, truth) -> dict:
    """coverage_68, coverage_95, pit_ks, crps and cde_loss of densities tabulated on a grid."""
    return {**_pit_scores(pit_from_grid(grid, pdf, truth)), "crps": crps_from_grid(grid, pdf, truth),
            "cde_loss": cde_loss(grid, pdf, truth)}
