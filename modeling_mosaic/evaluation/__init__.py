"""Evaluation of MOSAIC: the figure-2 input conditions, metrics, single-task baselines, figures, report.

    mosaic-evaluate --model DIR_OR_REPO --data DIR --out DIR
    python -m modeling_mosaic.evaluation.cli ...
"""

from .conditions import CONDITIONS, SFH_CUT_GYR, SFH_LATE, Condition, get_condition
from .metrics import metric_path, photoz_metrics, regression_metrics
from .report import run_evaluation

__all__ = [
    "CONDITIONS", "SFH_CUT_GYR", "SFH_LATE", "Condition", "get_condition", "metric_path", "photoz_metrics",
    "regression_metrics", "run_evaluation",
]
