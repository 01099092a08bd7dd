"""MOSAIC regression metric: MAE (MAE-bar for vectors) and the per-galaxy normalised MAE.

Load it offline by path: `evaluate.load("/abs/path/to/modeling_mosaic/evaluation/metrics/mosaic_regression")`.
The numbers come from `modeling_mosaic.evaluation.metrics.functions.regression_metrics`.
"""

import datasets
import evaluate
import numpy as np

from modeling_mosaic.evaluation.metrics.functions import regression_metrics

_DESCRIPTION = """\
Scores predictions of a scalar or of a fixed-length vector (one row per galaxy) against the truth.
mae: mean of |prediction - truth| over every scored (galaxy, element) pair (MAE for a scalar, MAE-bar for
a vector). Normalised MAE of a galaxy: the mean over its scored elements of |prediction - truth| divided by
the standard deviation of the truth over the galaxies given (the test set), per element; elements whose
truth does not vary are left out. nmae_median, nmae_p16, nmae_p84 summarise it over galaxies.
Non-finite predictions or references are not scored.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: one float (scalar) or one list of floats (vector) per galaxy.
    references: the truth, same shape.
    mask (optional): booleans of shape (elements,) or (galaxies, elements); only True elements are scored.
    spread (optional): per-element scale replacing the standard deviation of the references.
Returns:
    mae, nmae_median, nmae_p16, nmae_p84, n_galaxies, n_elements.
Example:
    >>> metric = evaluate.load("/path/to/metrics/mosaic_regression")
    >>> metric.compute(predictions=[1.0, 2.0, 4.0], references=[1.0, 3.0, 5.0])["mae"]
    0.6666666666666666
"""

_CITATION = """\
@article{xia2025mosaic, title={Multi-modal Foundation Model for Cosmological Simulation Data},
  author={Xia and Ramachandra and Wells and Habib and Wise}, journal={arXiv e-prints}, eprint={2510.07684}, year={2025}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MosaicRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
                datasets.Features(
                    {
                        "predictions": datasets.List(datasets.Value("float64")),
                        "references": datasets.List(datasets.Value("float64")),
                    }
                ),
            ],
        )

    def _compute(self, predictions, references, mask=None, spread=None):
        return regression_metrics(np.asarray(predictions, float), np.asarray(references, float), mask, spread)
