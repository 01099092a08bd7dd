"""Calibration metrics of predictive distributions against hand-computed values, and their place in the
evaluation of a probabilistic model (metrics entries, REPORT table, PIT figure)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import norm

from modeling_mosaic.evaluation import report
from modeling_mosaic.evaluation.conditions import get_condition
from modeling_mosaic.evaluation.figures import figure_pit
from modeling_mosaic.evaluation.metrics import (
    cde_loss,
    coverage,
    crps_from_grid,
    crps_gaussian,
    pit_from_grid,
    pit_gaussian,
    ks_p_value,
    pit_ks,
)

PITS = [0.1, 0.2, 0.5, 0.9, 0.99]


def test_coverage_and_ks_of_five_pit_values():
    assert coverage(PITS, 0.68) == pytest.approx(2 / 5)  # 0.2 and 0.5 lie in [0.16, 0.84]
    assert coverage(PITS, 0.95) == pytest.approx(4 / 5)  # all but 0.99 lie in [0.025, 0.975]
    # KS: max over i of i/n - u_(i) and u_(i) - (i-1)/n; the largest is 0.9 - 3/5
    assert pit_ks(PITS) == pytest.approx(0.3)
    assert pit_ks((np.arange(100) + 0.5) / 100) == pytest.approx(0.005)


@pytest.mark.parametrize("n", [50, 2000, 20000])
def test_ks_p_value_matches_the_exact_kolmogorov_distribution(n):
    """Within 5% of scipy's exact one-sample KS survival function at the p-values that decide "flat within
    noise" (0.2 to 0.01), and 1 at a distance of 0."""
    from scipy.stats import kstwo

    for p in (0.2, 0.05, 0.01):
        statistic = kstwo.isf(p, n)
        assert ks_p_value(statistic, n) == pytest.approx(p, rel=0.05)
    assert ks_p_value(0.0, n) == 1.0


def test_gaussian_pit_and_crps_closed_forms():
    assert pit_gaussian([0.0], [2.0], [2.0])[0] == pytest.approx(0.8413447460685429)
    # CRPS(N(0, 1), 0) = 2 phi(0) - 1/sqrt(pi) = sqrt(2/pi) - 1/sqrt(pi)
    assert crps_gaussian([0.0], [1.0], [0.0]) == pytest.approx(math.sqrt(2 / math.pi) - 1 / math.sqrt(math.pi))
    # scales with sigma; a zero sigma is the absolute error; rows with NaN are left out
    assert crps_gaussian([1.0, 5.0, np.nan], [3.0, 0.0, 1.0], [1.0, 7.0, 0.0]) == pytest.approx(
        (3 * 0.2336949772551 + 2.0) / 2)


def test_grid_metrics_of_a_uniform_density():
    """p = 1 on [0, 1], truth 0.5: CRPS = int_0^.5 z^2 + int_.5^1 (1 - z)^2 = 1/12; CDE = 1 - 2 = -1."""
    grid = np.linspace(0.0, 1.0, 1001)
    pdf = np.ones((2, grid.size))
    assert crps_from_grid(grid, pdf, [0.5, 0.5]) == pytest.approx(1 / 12, rel=1e-4)
    assert cde_loss(grid, pdf, [0.5, 0.5]) == pytest.approx(-1.0)
    assert cde_loss(grid, pdf, [0.5, 2.0]) == pytest.approx(1.0 - 2 * 0.5)  # outside the grid p = 0
    np.testing.assert_allclose(pit_from_grid(grid, pdf, [0.3, -1.0]), [0.3, 0.0])


def test_grid_metrics_of_a_gaussian_match_the_closed_forms():
    grid = np.linspace(-1.0, 3.0, 8001)  # wide enough that the truncated tails weigh < 1e-9
    mu, sigma, truth = np.array([1.0, 0.8]), np.array([0.1, 0.2]), np.array([1.05, 0.5])
    pdf = norm.pdf(grid[None, :], mu[:, None], sigma[:, None])
    np.testing.assert_allclose(pit_from_grid(grid, pdf, truth), norm.cdf(truth, mu, sigma), atol=1e-6)
    assert crps_from_grid(grid, pdf, truth) == pytest.approx(crps_gaussian(mu, sigma, truth), rel=1e-5)
    expected_cde = np.mean(1 / (2 * sigma * math.sqrt(math.pi))) - 2 * np.mean(norm.pdf(truth, mu, sigma))
    assert cde_loss(grid, pdf, truth) == pytest.approx(expected_cde, rel=1e-6)
    with pytest.raises(ValueError, match="pdf has shape"):
        cde_loss(grid, pdf[:, :-1], truth)


class CalibratedModel:
    """A probabilistic fake: Gaussian predictions whose PIT values are exactly (i + 0.5) / n."""

    config = SimpleNamespace(modalities=["redshift", "log_stellar_mass", "lsst"], head_type="gaussian")

    def __init__(self, truth, seed=0):
        n = len(truth["redshift"])
        self.truth = truth
        self.z = norm.ppf((np.random.default_rng(seed).permutation(n) + 0.5) / n)

    def calibration_for(self, inputs):
        assert set(inputs) == {"lsst"} and len(inputs["lsst"]) == 1
        return {"temperature": {"redshift": 1.25}, "shift": {"redshift": -0.1}}

    def predict(self, inputs, targets=None, batch_size=4096, return_uncertainty=False, redshift_grid=None):
        assert return_uncertainty and redshift_grid is not None
        mass_std, z_std = 0.1, 0.05
        mass = self.truth["log_stellar_mass"] - mass_std * self.z
        z = self.truth["redshift"] - z_std * self.z
        pdf = norm.pdf(redshift_grid[None, :], z[:, None], z_std)
        return {"log_stellar_mass": mass, "log_stellar_mass_std": np.full(mass.shape, mass_std),
                "redshift": z, "redshift_std": np.full(z.shape, z_std), "redshift_pdf": pdf}


class CalibratedModelWithCdf(CalibratedModel):
    """The same, with its own `cdf` for stellar mass (as `MosaicModel.cdf`), which the evaluation must prefer to
    the Gaussian of `predict`'s mean and std: here that std is twice the true one."""

    def predict(self, *args, **kwargs):
        return {**super().predict(*args, **kwargs), "log_stellar_mass_std": np.full(len(self.z), 0.2)}

    def cdf(self, inputs, values, batch_size=4096):
        (name, points), = values.items()
        mass = self.truth["log_stellar_mass"] - 0.1 * self.z
        return {name: norm.cdf(points, mass.reshape(-1, *[1] * (np.ndim(points) - 1)), 0.1)}


@pytest.mark.parametrize("model_class", [CalibratedModel, CalibratedModelWithCdf])
def test_a_probabilistic_model_gets_calibration_entries_a_table_and_a_pit_figure(tmp_path, model_class):
    rng = np.random.default_rng(1)
    n = 400
    test = {"redshift": rng.uniform(0.5, 2.5, n), "log_stellar_mass": rng.normal(10.0, 0.5, n),
            "lsst": rng.normal(25.0, 1.0, (n, 6))}
    results, _, _, pits = report.evaluate_model(model_class(test), test, [get_condition("lsst")], 4096)
    for name in ("redshift", "log_stellar_mass"):
        entry = results["lsst"][name]
        assert entry["coverage_68"] == pytest.approx(0.68, abs=1.5 / n)
        assert entry["coverage_95"] == pytest.approx(0.95, abs=1.5 / n)
        assert entry["pit_ks"] < 0.01
    assert results["lsst"]["log_stellar_mass"]["crps"] == pytest.approx(  # a CDF on a 0.005 grid: within 1e-3
        crps_gaussian(test["log_stellar_mass"] - 0.1 * CalibratedModel(test).z, np.full(n, 0.1),
                      test["log_stellar_mass"]), rel=1e-3)
    assert "cde_loss" in results["lsst"]["redshift"] and "cde_loss" not in results["lsst"]["log_stellar_mass"]
    assert set(pits) == {"lsst"} and pits["lsst"].shape == (n,)
    assert results["lsst"]["redshift"]["temperature"] == 1.25
    assert results["lsst"]["log_stellar_mass"]["temperature"] == 1.0
    assert results["lsst"]["redshift"]["shift"] == -0.1 and results["lsst"]["log_stellar_mass"]["shift"] == 0.0
    assert all(results["lsst"][name]["pit_ks_p"] > 0.99 for name in ("redshift", "log_stellar_mass"))

    table = "\n".join(report._calibration_section({"conditions": results}))
    assert "## Calibration" in table and "| lsst | redshift | 0.68" in table
    png = figure_pit(pits, tmp_path / "pit.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
