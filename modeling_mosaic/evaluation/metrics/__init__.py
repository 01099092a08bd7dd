"""Evaluation metrics: plain numpy functions, and `evaluate` modules loadable offline by path.

    evaluate.load(metric_path("photoz"))            # or "mosaic_regression"
"""

from pathlib import Path

from .functions import (
    cde_loss,
    cdf_calibration,
    coverage,
    crps_from_cdf,
    crps_from_grid,
    crps_gaussian,
    gain,
    gaussian_calibration,
    grid_calibration,
    ks_p_value,
    mean_absolute_error,
    normalised_absolute_errors,
    outlier_threshold,
    photoz_errors,
    photoz_metrics,
    pit_from_grid,
    pit_gaussian,
    pit_ks,
    regression_metrics,
    truth_spread,
)

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("mosaic_regression", "photoz")


def metric_path(name: str) -> str:
    """Absolute path of a local `evaluate` metric module, for `evaluate.load(path)`."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; valid names are {', '.join(METRIC_NAMES)}")
    return str(METRICS_DIR / name)


__all__ = [
    "METRICS_DIR",
    "METRIC_NAMES",
    "cde_loss",
    "cdf_calibration",
    "coverage",
    "crps_from_cdf",
    "crps_from_grid",
    "crps_gaussian",
    "gain",
    "gaussian_calibration",
    "grid_calibration",
    "ks_p_value",
    "mean_absolute_error",
    "metric_path",
    "normalised_absolute_errors",
    "outlier_threshold",
    "photoz_errors",
    "photoz_metrics",
    "pit_from_grid",
    "pit_gaussian",
    "pit_ks",
    "regression_metrics",
    "truth_spread",
]
