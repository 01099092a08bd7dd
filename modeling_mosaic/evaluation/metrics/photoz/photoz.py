"""Photometric-redshift point metrics with the RAIL (LSST-DESC) definitions.

Load it offline by path: `evaluate.load("/abs/path/to/modeling_mosaic/evaluation/metrics/photoz")`.
The numbers come from `modeling_mosaic.evaluation.metrics.functions.photoz_metrics`.
"""

import datasets
import evaluate
import numpy as np

from modeling_mosaic.evaluation.metrics.functions import photoz_metrics

_DESCRIPTION = """\
Point photo-z metrics on ez = (z_pred - z_true) / (1 + z_true), as RAIL defines them:
bias = median(ez); sigma_iqr = IQR(ez) / 1.349; sigma_nmad = 1.4826 * median|ez - median(ez)|;
outlier_rate = fraction of galaxies with |ez| > max(0.06, 3 sigma_iqr) (the bound is outlier_threshold).
Galaxies with a non-finite prediction or truth are not scored.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: predicted redshifts, one float per galaxy.
    references: true redshifts (> -1).
Returns:
    bias, sigma_iqr, sigma_nmad, outlier_rate, outlier_threshold, n_galaxies.
"""

_CITATION = """\
@article{schmidt2020, title={Evaluation of probabilistic photometric redshift estimation approaches for
  the Rubin Observatory Legacy Survey of Space and Time (LSST)}, author={Schmidt, S. J. and others},
  journal={MNRAS}, volume={499}, pages={1587}, year={2020}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Photoz(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return photoz_metrics(np.asarray(predictions, float), np.asarray(references, float))
