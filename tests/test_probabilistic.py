"""The gaussian head, measurement errors as inputs, on-the-fly noise and `mosaic-predict`: toy problems whose
answers are known (heteroscedastic noise, a bimodal redshift, a band with a huge error), the maths of the
predictive summaries, and the plumbing (remote-code reload, CLI, qp export)."""

import os
import sysconfig

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import test_remote_code
import torch

from modeling_mosaic import (
    MODALITIES,
    MosaicConfig,
    MosaicMaskingCollator,
    MosaicModel,
    predict_cli,
)
from modeling_mosaic.modalities import PHYSICAL_MAXIMUM, asinh_magnitude
from modeling_mosaic.modeling_mosaic import (
    DEFAULT_REDSHIFT_GRID,
    PDF_ROWS,
    PIT_MAP_BINS,
    PIT_MAP_FLOOR,
    learning_quantile,
    predictive_moments,
    tabulated_quantile,
)
from modeling_mosaic.noise import asinh_magnitude_error, noise_columns

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
GRID = np.linspace(0.0, 3.5, 351)


pytestmark = pytest.mark.usefixtures("one_thread")


def train_toy(config, columns, shown, steps, errors=None):
    """Fit a fresh model on fixed masks (the `shown` modalities in, the rest scored); returns (model in eval
    mode, losses per step)."""
    config.set_normalization_from_data(columns)
    torch.manual_seed(0)
    model = MosaicModel(config)
    values = torch.from_numpy(config.flatten(columns))
    input_mask = torch.zeros_like(values, dtype=torch.bool)
    for name in shown:
        input_mask[:, config.modality_slices[name]] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        rows = slice((step % 32) * 256, (step % 32 + 1) * 256)
        loss = model(values[rows], input_mask[rows], errors=None if errors is None else errors[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), np.array(losses)


def random_columns(rng, n):
    return {
        "redshift": rng.uniform(0.05, 3.0, n),
        "log_halo_mass": rng.uniform(11.0, 14.0, n),
        "log_stellar_mass": rng.uniform(8.0, 11.0, n),
        "sfh": rng.uniform(0.0, 20.0, (n, 100)),
        "sed": 10.0 ** rng.uniform(26.0, 29.0, (n, 256)),
        "lsst": rng.normal(25.0, 1.0, (n, 6)),
        "spherex": rng.normal(23.0, 1.0, (n, 102)),
    }


@pytest.fixture(scope="module")
def gaussian_model():
    torch.manual_seed(0)
    return MosaicModel(MosaicConfig(**TINY, head_type="gaussian", error_inputs=True)).eval()


# ------------------------------------------------------------------------------------------- toy problems
def toy_sigma(x):
    return 0.05 + 0.2 * (x - 11.0) / 3.0


def toy_stellar_mass(rng, x, noise_factor=1.0):
    """y = 0.8 x + 0.5 + noise_factor * sigma(x) eps: noise whose spread varies 5x over x."""
    return 0.8 * x + 0.5 + noise_factor * toy_sigma(x) * rng.normal(size=x.size)


@pytest.fixture(scope="module")
def heteroscedastic():
    """A gaussian head trained on the toy, and its losses per step."""
    rng = np.random.default_rng(0)
    x = rng.uniform(11.0, 14.0, 8192)
    columns = {"log_halo_mass": x, "log_stellar_mass": toy_stellar_mass(rng, x)}
    config = MosaicConfig(modalities=["log_halo_mass", "log_stellar_mass"], head_type="gaussian", **TINY)
    return train_toy(config, columns, ["log_halo_mass"], steps=1000)


def test_heteroscedastic_noise_is_recovered(heteroscedastic):
    """The NLL falls and the predicted std matches sigma(x) (median ratio over a grid within 10%, every point
    within 25%)."""
    model, losses = heteroscedastic
    sigma = toy_sigma
    assert losses[-32:].mean() < losses[:10].mean() - 1.0

    grid = np.linspace(11.2, 13.8, 27)
    out = model.predict({"log_halo_mass": grid}, targets=["log_stellar_mass"], return_uncertainty=True)
    ratio = out["log_stellar_mass_std"] / sigma(grid)
    assert abs(np.median(ratio) - 1.0) < 0.1
    assert np.all(np.abs(ratio - 1.0) < 0.25), ratio
    # stellar mass is learned linearly: the distribution is Gaussian, mean = median, p16/p84 = mean -+ std
    np.testing.assert_allclose(out["log_stellar_mass"], out["log_stellar_mass_p50"], atol=1e-5)
    np.testing.assert_allclose(out["log_stellar_mass_p84"] - out["log_stellar_mass"],
                               out["log_stellar_mass_std"] * 0.9944579, rtol=1e-4)


def test_calibrate_recovers_a_known_bias_and_noise_inflation_and_touches_only_matching_rows(heteroscedastic, tmp_path):
    """Held-out galaxies whose truth sits 0.5 sigma(x) above the training relation with 1.6x its noise:
    `calibrate` finds the shift that moves the model's means onto the new relation (0.5 less the model's own
    bias, in predicted sigmas; within 0.05) and a temperature of 1.6 (within 10%), after which the 68%
    and 95% coverages are nominal within 0.03 and the PIT is flat (KS p >= 0.01) on other rows; means move by
    the shift times the predicted std, rows given other elements are left alone, and the entry survives
    save/load. The PIT map fitted with them (checked without it first) keeps the PIT flat."""
    import copy

    from modeling_mosaic.evaluation.metrics.functions import (
        coverage,
        ks_p_value,
        pit_gaussian,
        pit_ks,
    )

    model = copy.deepcopy(heteroscedastic[0])
    rng = np.random.default_rng(7)
    x = rng.uniform(11.0, 14.0, 6000)
    truth = toy_stellar_mass(rng, x, noise_factor=1.6) + 0.5 * toy_sigma(x)
    before = model.predict({"log_halo_mass": x}, targets=["log_stellar_mass"], return_uncertainty=True)
    fitted = model.calibrate({"log_halo_mass": x[:3000]}, {"log_stellar_mass": truth[:3000]})["log_stellar_mass"]
    assert fitted["temperature"] == pytest.approx(1.6, rel=0.1)
    relation = 0.8 * x[:3000] + 0.5 + 0.5 * toy_sigma(x[:3000])
    bias = np.mean((relation - before["log_stellar_mass"][:3000]) / before["log_stellar_mass_std"][:3000])
    assert 0.3 < bias < 0.7 and fitted["shift"] == pytest.approx(bias, abs=0.05)
    knots = fitted["pit_knots"]
    assert knots[0] == 0.0 and knots[-1] == 1.0 and np.all(np.diff(knots) > 0)
    assert model.config.calibration == [{"given": {"log_halo_mass": [[0, 1]]},
                                         "temperature": {"log_stellar_mass": fitted["temperature"]},
                                         "shift": {"log_stellar_mass": fitted["shift"]},
                                         "pit_knots": {"log_stellar_mass": knots}}]
    assert model.calibration_for({"log_halo_mass": x[:1]}) == {
        "temperature": {"log_stellar_mass": fitted["temperature"]}, "shift": {"log_stellar_mass": fitted["shift"]},
        "pit_knots": {"log_stellar_mass": knots}}
    mapped = model.cdf({"log_halo_mass": x[3000:]}, {"log_stellar_mass": truth[3000:]})["log_stellar_mass"]
    assert abs(coverage(mapped, 0.68) - 0.68) < 0.03 and abs(coverage(mapped, 0.95) - 0.95) < 0.03
    assert ks_p_value(pit_ks(mapped), mapped.size) >= 0.01
    del model.config.calibration[0]["pit_knots"]  # the shift and the temperature alone, from here on

    after = model.predict({"log_halo_mass": x}, targets=["log_stellar_mass"], return_uncertainty=True)
    point = model.predict({"log_halo_mass": x}, targets=["log_stellar_mass"])
    np.testing.assert_allclose(after["log_stellar_mass"] - before["log_stellar_mass"],
                               fitted["shift"] * before["log_stellar_mass_std"], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(point["log_stellar_mass"], after["log_stellar_mass"], rtol=1e-6)
    np.testing.assert_allclose(after["log_stellar_mass_std"], before["log_stellar_mass_std"] * fitted["temperature"],
                               rtol=1e-5)
    pit = pit_gaussian(after["log_stellar_mass"][3000:], after["log_stellar_mass_std"][3000:], truth[3000:])
    unmapped = model.cdf({"log_halo_mass": x[3000:]}, {"log_stellar_mass": truth[3000:]})["log_stellar_mass"]
    np.testing.assert_allclose(unmapped, pit, atol=1e-5)  # a Gaussian in linear units: Phi((y - mean) / std)
    assert abs(coverage(pit, 0.68) - 0.68) < 0.03 and abs(coverage(pit, 0.95) - 0.95) < 0.03
    assert ks_p_value(pit_ks(pit), pit.size) >= 0.01

    mixed = np.where(np.arange(4) < 2, 12.0, np.nan)  # two rows given the halo mass, two given nothing
    raw = heteroscedastic[0].predict({"log_halo_mass": mixed}, targets=["log_stellar_mass"], return_uncertainty=True)
    scaled = model.predict({"log_halo_mass": mixed}, targets=["log_stellar_mass"], return_uncertainty=True)
    ratio = scaled["log_stellar_mass_std"] / raw["log_stellar_mass_std"]
    np.testing.assert_allclose(ratio, [fitted["temperature"]] * 2 + [1.0] * 2, rtol=1e-5)
    np.testing.assert_array_equal(scaled["log_stellar_mass"][2:], raw["log_stellar_mass"][2:])

    model.save_pretrained(tmp_path)
    reloaded = MosaicModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.calibration == model.config.calibration
    again = reloaded.predict({"log_halo_mass": mixed}, targets=["log_stellar_mass"], return_uncertainty=True)
    np.testing.assert_allclose(again["log_stellar_mass_std"], scaled["log_stellar_mass_std"], rtol=1e-6)
    np.testing.assert_allclose(again["log_stellar_mass"], scaled["log_stellar_mass"], rtol=1e-6)
    with pytest.raises(ValueError, match="same elements"):
        model.calibrate({"log_halo_mass": mixed}, {"log_stellar_mass": np.ones(4)})


def test_a_shifted_redshift_mixture_moves_its_pdf_percentiles_samples_and_mean_together(tmp_path):
    """A calibration shift d moves every view of the redshift posterior consistently: in learning space the
    percentiles and the samples all move by d times the mixture's std, the physical mean moves the same way,
    and the pdf on the grid has the shifted median."""
    torch.manual_seed(0)
    config = MosaicConfig(modalities=["redshift", "log_halo_mass"], head_type="gaussian", **TINY)
    model = MosaicModel(config).eval()
    with torch.no_grad():  # a narrow bimodal posterior that lies well inside the pdf's grid
        model.redshift_head.weight.mul_(0.1)
        k = config.redshift_mixture_components
        model.redshift_head.bias.copy_(
            torch.cat([torch.zeros(k), torch.linspace(-0.4, 0.4, k), torch.full((k,), -2.0)]))
    inputs = {"log_halo_mass": np.linspace(11.0, 14.0, 16)}
    kwargs = {"targets": ["redshift"], "return_uncertainty": True, "num_samples": 64, "seed": 3}
    before = model.predict(inputs, **kwargs)
    model.config.calibration = [{"given": {"log_halo_mass": [[0, 1]]}, "temperature": {"redshift": 1.0},
                                 "shift": {"redshift": 0.3}}]
    after = model.predict(inputs, **kwargs)
    to_learning = MODALITIES["redshift"].to_learning
    values = torch.from_numpy(config.flatten(inputs))
    raw = model(values, torch.isfinite(values))
    element = config.modality_slices["redshift"].start
    sigma = np.exp(0.5 * raw.log_variances[:, element].detach().double().numpy()) * model.layout.std[element].item()
    move = 0.3 * sigma
    for key in ("redshift_p16", "redshift_p50", "redshift_p84"):
        np.testing.assert_allclose(to_learning(after[key]) - to_learning(before[key]), move, rtol=1e-4, atol=1e-6)
    moved_samples = to_learning(after["redshift_samples"]) - to_learning(before["redshift_samples"])
    unclipped = (before["redshift_samples"] > 0) & (after["redshift_samples"] > 0)  # z < 0 is clipped to 0
    assert unclipped.mean() > 0.5
    np.testing.assert_allclose(moved_samples[unclipped], np.broadcast_to(move[:, None], moved_samples.shape)[unclipped],
                               rtol=1e-4, atol=1e-6)
    assert (after["redshift"] > before["redshift"]).all()  # the physical mean follows the move
    pdf = after["redshift_pdf"]
    cdf = np.concatenate([np.zeros((16, 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]) * np.diff(GRID), axis=1)], 1)
    median_of_pdf = np.array([np.interp(0.5, c, GRID) for c in cdf])
    np.testing.assert_allclose(median_of_pdf, after["redshift_p50"], atol=0.01)  # the grid's spacing


def test_the_pit_map_flattens_a_skewed_redshift_posterior_in_pdf_percentiles_and_samples():
    """Truths drawn at the posterior's quantile v^1.5 (v uniform): a PIT histogram piled at 0 (KS 0.15) that no
    shift and width can flatten. After `calibrate` on 4,000 galaxies the PIT of 4,000 others, read from the
    pdf on the grid as the evaluation reads it, is flat (KS p >= 0.01, coverages within 0.03); percentiles
    agree with the pdf's CDF (to the grid's spacing), with the samples (to Monte Carlo error) and exactly with
    `cdf`, which gives the PIT values the pdf gives (to the grid's spacing)."""
    from modeling_mosaic.evaluation.metrics.functions import (
        coverage,
        ks_p_value,
        pit_from_grid,
        pit_ks,
    )

    torch.manual_seed(0)
    config = MosaicConfig(modalities=["redshift", "log_halo_mass"], head_type="gaussian", **TINY)
    model = MosaicModel(config).eval()
    with torch.no_grad():  # varied narrow bimodal posteriors, inside the grid
        k = config.redshift_mixture_components
        model.redshift_head.bias.copy_(
            torch.cat([torch.zeros(k), torch.linspace(-0.4, 0.4, k), torch.full((k,), -2.0)]))
    rng = np.random.default_rng(5)
    inputs = {"log_halo_mass": rng.uniform(11.0, 14.0, 8000)}
    fine = np.linspace(0.0, 3.5, 7001)
    pdf = model.predict(inputs, targets=["redshift"], redshift_grid=fine)["redshift_pdf"].astype(np.float64)
    cdf = np.concatenate([np.zeros((len(pdf), 1)), np.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]) * np.diff(fine), 1)], 1)
    level = rng.uniform(size=len(pdf)) ** 1.5
    truth = np.array([np.interp(u, c / c[-1], fine) for u, c in zip(level, cdf)])
    first, second = slice(0, 4000), slice(4000, None)
    raw = model.predict({"log_halo_mass": inputs["log_halo_mass"][second]}, targets=["redshift"], redshift_grid=GRID)
    assert pit_ks(pit_from_grid(GRID, raw["redshift_pdf"], truth[second])) > 0.12

    fitted = model.calibrate({"log_halo_mass": inputs["log_halo_mass"][first]}, {"redshift": truth[first]})
    assert len(fitted["redshift"]["pit_knots"]) == 17
    out = model.predict({"log_halo_mass": inputs["log_halo_mass"][second]}, targets=["redshift"],
                        return_uncertainty=True, num_samples=200, redshift_grid=GRID)
    pit = pit_from_grid(GRID, out["redshift_pdf"], truth[second])
    assert ks_p_value(pit_ks(pit), pit.size) >= 0.01, pit_ks(pit)
    assert abs(coverage(pit, 0.68) - 0.68) < 0.03 and abs(coverage(pit, 0.95) - 0.95) < 0.03

    mapped_cdf = np.concatenate([np.zeros((len(pit), 1)), np.cumsum(
        0.5 * (out["redshift_pdf"][:, 1:] + out["redshift_pdf"][:, :-1]) * np.diff(GRID), 1)], 1)
    for q in (16, 50, 84):
        from_pdf = np.array([np.interp(q / 100, c, GRID) for c in mapped_cdf])
        np.testing.assert_allclose(out[f"redshift_p{q}"], from_pdf, atol=0.015)
        below = (out["redshift_samples"] <= out[f"redshift_p{q}"][:, None]).mean()
        assert below == pytest.approx(q / 100, abs=0.01)  # 800,000 draws
    at_percentiles = model.cdf({"log_halo_mass": inputs["log_halo_mass"][second]},
                               {"redshift": np.stack([out[f"redshift_p{q}"] for q in (16, 50, 84)], axis=1)})
    np.testing.assert_allclose(at_percentiles["redshift"], np.broadcast_to([0.16, 0.5, 0.84], (4000, 3)), atol=1e-4)
    at_truth = model.cdf({"log_halo_mass": inputs["log_halo_mass"][second]}, {"redshift": truth[second]})
    np.testing.assert_allclose(at_truth["redshift"], pit, atol=0.01)
    np.testing.assert_allclose(out["redshift"], out["redshift_samples"].mean(axis=1),
                               atol=4 * out["redshift_std"].max() / np.sqrt(200))


def test_bimodal_redshift_is_recovered_as_two_modes():
    """Identical inputs, z = 0.5 or 2.0 by a hidden coin: the posterior has two separated modes of about equal
    mass, and the samples split the same way."""
    rng = np.random.default_rng(1)
    n = 8192
    z = np.where(rng.random(n) < 0.5, 0.5, 2.0) * (1.0 + 0.01 * rng.normal(size=n))
    columns = {"redshift": z, "log_halo_mass": rng.uniform(11.0, 14.0, n)}
    config = MosaicConfig(modalities=["redshift", "log_halo_mass"], head_type="gaussian", **TINY)
    model, losses = train_toy(config, columns, ["log_halo_mass"], steps=400)
    assert losses[-32:].mean() < losses[:10].mean()

    out = model.predict({"log_halo_mass": np.linspace(11.5, 13.5, 5)}, targets=["redshift"],
                        return_uncertainty=True, num_samples=400)
    pdf = out["redshift_pdf"]
    assert pdf.shape == (5, GRID.size)
    np.testing.assert_allclose(np.trapezoid(pdf, GRID, axis=1), 1.0, rtol=1e-4)
    low, high = GRID < 1.25, GRID >= 1.25
    mass_low = np.trapezoid(np.where(low, pdf, 0.0), GRID, axis=1)
    assert np.all((mass_low > 0.35) & (mass_low < 0.65))
    np.testing.assert_allclose(GRID[np.argmax(np.where(low, pdf, 0.0), axis=1)], 0.5, atol=0.05)
    np.testing.assert_allclose(GRID[np.argmax(np.where(high, pdf, 0.0), axis=1)], 2.0, atol=0.1)
    valley = pdf[:, np.argmin(np.abs(GRID - 1.25))]
    assert np.all(valley < 0.05 * pdf.max(axis=1))  # two separated modes, not one broad hump
    assert np.all(np.abs((out["redshift_samples"] < 1.25).mean(axis=1) - mass_low) < 0.1)
    assert np.all((out["redshift_p16"] < 0.6) & (out["redshift_p84"] > 1.9))


def test_a_band_with_a_huge_error_counts_less():
    """mass = mean of six true magnitudes, each observed with its own error: shifting a band by 1 mag moves
    the prediction by ~1/6 when that band is precise and by far less when its error is 3 mag."""
    rng = np.random.default_rng(2)
    n = 8192
    true = rng.normal(25.0, 1.0, (n, 6))
    sigma = 10.0 ** rng.uniform(-2.0, 0.5, (n, 6))
    columns = {"log_stellar_mass": 10.0 + true.mean(axis=1) - 25.0, "lsst": true + sigma * rng.normal(size=(n, 6))}
    config = MosaicConfig(modalities=["log_stellar_mass", "lsst"], error_inputs=True, **TINY)
    errors = torch.full((n, config.num_elements), float("nan"))
    errors[:, config.modality_slices["lsst"]] = torch.from_numpy(sigma).float()
    model, _ = train_toy(config, columns, ["lsst"], steps=400, errors=errors)

    def shift_response(band_error):
        lsst = np.full((2, 6), 25.0)
        lsst[1, 0] += 1.0
        error = np.full((2, 6), 0.02)
        error[:, 0] = band_error
        mass = model.predict({"lsst": lsst}, targets=["log_stellar_mass"], errors={"lsst": error})["log_stellar_mass"]
        return mass[1] - mass[0]

    precise, noisy = shift_response(0.02), shift_response(3.0)
    assert abs(precise - 1 / 6) < 0.05
    assert abs(noisy) < 0.3 * precise


# ------------------------------------------------------------------------- the summaries' mathematics
def test_predictive_moments_and_quantiles_of_a_log_gaussian_are_exact():
    """sfh is learned as log10(x + 1e-3): for y ~ N(mu, s) far above the clip at x = 0, E[x] = 10^mu exp((s ln10)^2
    / 2) - 1e-3, and the percentiles are the transformed Gaussian percentiles."""
    sfh = MODALITIES["sfh"]
    mu, s = np.array([[[0.5]], [[-1.0]]]), np.array([[[0.3]], [[0.1]]])
    mean, std = predictive_moments(sfh, np.ones_like(mu), mu, s)
    k = (s * np.log(10.0)) ** 2
    expected_mean = 10 ** mu * np.exp(k / 2) - 1e-3
    expected_std = 10 ** mu * np.sqrt(np.exp(k) * (np.exp(k) - 1))
    np.testing.assert_allclose(mean, expected_mean[..., 0], rtol=1e-12)
    np.testing.assert_allclose(std, expected_std[..., 0], rtol=1e-10)
    np.testing.assert_allclose(learning_quantile(np.ones_like(mu), mu, s, 0.84), (mu + 0.9944579 * s)[..., 0],
                               rtol=1e-6)
    # a two-component mixture of identical Gaussians has the one Gaussian's quantiles (the mixture path)
    two = np.concatenate([mu, mu], axis=-1), np.concatenate([s, s], axis=-1)
    np.testing.assert_allclose(learning_quantile(np.full((2, 1, 2), 0.5), *two, 0.16),
                               learning_quantile(np.ones_like(mu), mu, s, 0.16), atol=1e-12)


def numerical_moments(modality, weights, means, sigmas, knots=None):
    """Mean and std of g(y), y from a Gaussian mixture (K,) through the PIT map `knots` (default the identity),
    by adaptive quadrature of g(y) R'(F(y)) f(y) between the mixture's quantiles at the knots (brentq), with g
    `from_learning` itself (clips included): the reference `predictive_moments` must match."""
    from scipy.integrate import quad
    from scipy.optimize import brentq
    from scipy.stats import norm

    knots = np.linspace(0.0, 1.0, 2) if knots is None else knots
    low, high = (means - 40 * sigmas).min(), (means + 40 * sigmas).max()
    edges = [low] + [brentq(lambda y, u=u: (weights * norm.cdf(y, means, sigmas)).sum() - u, low, high, xtol=1e-15)
                     for u in knots[1:-1]] + [high]
    breaks = np.sort(np.concatenate([means + k * sigmas for k in (-8, -3, 0, 3, 8)]))
    if modality.log:  # where g meets its lower clip
        breaks = np.append(breaks, modality.scale * np.log10(modality.minimum + modality.offset))

    def integral(function):
        total = 0.0
        for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            slope = 1.0 / ((len(knots) - 1) * (knots[j + 1] - knots[j]))
            inside = [x for x in breaks if a < x < b]
            def integrand(y):
                return function(float(modality.from_learning(y))) * (weights * norm.pdf(y, means, sigmas)).sum()

            value = quad(integrand, a, b, points=inside or None, limit=500, epsabs=0.0, epsrel=1e-13)[0]
            total += slope * value
        return total

    mass = integral(lambda x: 1.0)
    mean = integral(lambda x: x) / mass
    return mean, np.sqrt(integral(lambda x: (x - mean) ** 2) / mass)


def test_predictive_moments_match_quadrature_through_clips_and_pit_maps():
    """The closed forms against adaptive quadrature of the same distributions: 5-component redshift mixtures in
    log10(1 + z), straddling z = 0 where the transform clips (half their mass at z = 0) or not; a stellar-mass
    Gaussian (identity transform); each plain and through a random PIT map (rtol 1e-8). Through the identity map
    the moments are the plain ones. A posterior wider than float32's range saturates at its largest value (finite,
    never NaN)."""
    rng = np.random.default_rng(4)
    redshift = MODALITIES["redshift"]
    cases = [(redshift, rng.dirichlet(np.ones(5)), rng.normal(0.3, 0.1, 5), np.exp(rng.normal(-3.0, 0.5, 5))),
             (redshift, rng.dirichlet(np.ones(5)), rng.normal(0.0, 0.01, 5), np.exp(rng.normal(-4.0, 0.5, 5))),
             (MODALITIES["log_stellar_mass"], np.ones(1), np.array([10.3]), np.array([0.04]))]
    identity = np.linspace(0.0, 1.0, PIT_MAP_BINS + 1)
    pit_map = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 1.0, PIT_MAP_BINS - 1)), [1.0]])
    pit_map = (1.0 - PIT_MAP_FLOOR) * pit_map + PIT_MAP_FLOOR * identity
    for modality, weights, means, sigmas in cases:
        mixture = (weights[None, None], means[None, None], sigmas[None, None])
        plain = predictive_moments(modality, *mixture)
        through_identity = predictive_moments(modality, *mixture, identity[None])
        mapped = predictive_moments(modality, *mixture, pit_map[None])
        np.testing.assert_allclose(np.ravel(through_identity), np.ravel(plain), rtol=1e-9)
        np.testing.assert_allclose(np.ravel(plain), numerical_moments(modality, weights, means, sigmas), rtol=1e-8)
        np.testing.assert_allclose(np.ravel(mapped), numerical_moments(modality, weights, means, sigmas, pit_map),
                                   rtol=1e-8)
    straddling = cases[1]
    assert 0.2 < (straddling[1] * (straddling[2] < 0)).sum() < 0.8  # the clip at z = 0 is exercised
    sed = MODALITIES["sed"]
    mean, std = predictive_moments(sed, np.ones((1, 1, 1)), np.full((1, 1, 1), 36.0), np.full((1, 1, 1), 8.0))
    assert np.isfinite([mean, std]).all() and 0.0 < mean[0, 0] <= PHYSICAL_MAXIMUM and std[0, 0] <= PHYSICAL_MAXIMUM


def test_mixture_quantiles_match_a_root_finder_for_separated_modes_and_extreme_levels():
    """The safeguarded Newton iteration finds every quantile of 5-component mixtures (modes from overlapping to
    50 sigma apart, weights down to ~1e-4) to 1e-9 of the widest sigma, as scipy's brentq on the same CDF does,
    at levels from 1e-6 to 1 - 1e-6 broadcast against the mixtures; the CDF table's inversion to 1e-5."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    rng = np.random.default_rng(9)
    weights = rng.dirichlet(np.full(5, 0.3), (40, 1))
    means = rng.normal(0.0, 1.0, (40, 1, 5)) * rng.choice([0.1, 1.0, 5.0], (40, 1, 1))
    sigmas = np.exp(rng.normal(-2.0, 0.8, (40, 1, 5)))
    levels = np.array([1e-6, 0.004, 0.16, 0.5, 0.84, 0.996, 1 - 1e-6])
    got = learning_quantile(weights[..., None, :], means[..., None, :], sigmas[..., None, :], levels)
    assert got.shape == (40, 1, 7)
    for i in range(40):
        w, m, s = weights[i, 0], means[i, 0], sigmas[i, 0]
        for j, q in enumerate(levels):
            root = brentq(lambda y: (w * norm.cdf((y - m) / s)).sum() - q, (m - 12 * s).min(), (m + 12 * s).max(),
                          xtol=1e-14, rtol=1e-14)
            assert abs(got[i, 0, j] - root) <= 1e-9 * s.max(), (i, q)
    # the table inversion that predictive_moments uses for the inner knots of a PIT map (whose levels lie at least
    # PIT_MAP_FLOOR / PIT_MAP_BINS from 0 and 1) agrees to 2e-5 sigma
    edge = PIT_MAP_FLOOR / PIT_MAP_BINS
    levels = np.concatenate([[edge, 1e-3], np.linspace(0.01, 0.99, 13), [1 - 1e-3, 1 - edge]])
    table = tabulated_quantile(weights, means, sigmas, np.broadcast_to(levels, (40, 1, levels.size)))
    newton = learning_quantile(weights[..., None, :], means[..., None, :], sigmas[..., None, :], levels)
    assert (np.abs(table - newton) / sigmas.max(axis=-1, keepdims=True)).max() < 2e-5


def test_uncertainty_outputs_have_the_right_keys_shapes_and_are_never_nan(gaussian_model):
    rng = np.random.default_rng(3)
    columns = random_columns(rng, 5)
    for special in (np.nan, np.inf, 1e30, -1e30):
        lsst = columns["lsst"].copy()
        lsst[rng.random(lsst.shape) < 0.4] = special
        errors = np.abs(rng.normal(0.1, 1.0, (5, 6)))
        errors[0, 0] = np.nan
        out = gaussian_model.predict({"lsst": lsst, "redshift": np.where(np.arange(5) < 2, 1.0, np.nan)},
                                     targets=["redshift", "sfh", "log_stellar_mass"], return_uncertainty=True,
                                     num_samples=3, errors={"lsst": errors})
        for name, shape in (("redshift", (5,)), ("log_stellar_mass", (5,)), ("sfh", (5, 100))):
            for suffix in ("", "_std", "_p16", "_p50", "_p84"):
                assert out[name + suffix].shape == shape, name + suffix
            assert out[f"{name}_samples"].shape == (*shape, 3)
        assert out["redshift_pdf"].shape == (5, GRID.size)
        assert not any(np.isnan(v).any() for v in out.values()), special
        assert np.all(out["sfh_p16"] <= out["sfh_p50"]) and np.all(out["sfh_p50"] <= out["sfh_p84"])
        assert np.all(out["sfh_std"] >= 0) and np.all(out["sfh_p16"] >= 0)  # a rate is never negative
        # the rows where redshift was given come back as given, with zero spread and a one-point pdf
        np.testing.assert_array_equal(out["redshift"][:2], 1.0)
        np.testing.assert_array_equal(out["redshift_std"][:2], 0.0)
        np.testing.assert_array_equal(out["redshift_samples"][:2], 1.0)
        assert np.all(GRID[out["redshift_pdf"][:2].argmax(axis=1)] == 1.0)


def test_each_row_of_a_mixed_batch_gets_the_calibration_entry_of_exactly_its_given_elements(gaussian_model):
    """Rows giving different elements in one batch: a row's stellar-mass spread is scaled by the temperature of
    the entry that `calibration_for` (an exact comparison of given ranges, one row at a time) names for it, and
    by 1 where none matches: a row giving a subset or a superset of an entry's elements is not its, nor is an
    entry that gives a modality outside the query."""
    import copy

    model = copy.deepcopy(gaussian_model)
    entries = [({"lsst": [[0, 6]]}, 1.5), ({"lsst": [[0, 6]], "redshift": [[0, 1]]}, 2.0),
               ({"lsst": [[0, 3]]}, 0.5), ({"redshift": [[0, 1]]}, 3.0), ({}, 0.25),
               ({"lsst": [[0, 6]], "spherex": [[0, 102]]}, 4.0)]  # gives SPHEREx, outside the query: no row's
    model.config.calibration = [{"given": given, "temperature": {"log_stellar_mass": t},
                                 "shift": {"log_stellar_mass": 0.0}} for given, t in entries]
    rng = np.random.default_rng(5)
    lsst = rng.normal(24.0, 1.0, (40, 6))
    redshift = rng.uniform(0.1, 2.0, 40)
    lsst[rng.random(40) < 0.3] = np.nan  # no photometry
    lsst[rng.random(40) < 0.3, 3:] = np.nan  # u, g, r only
    lsst[rng.random(40) < 0.2, 5] = np.nan  # no y
    redshift[rng.random(40) < 0.5] = np.nan
    redshift[:10] = np.nan  # the first batch of 10 gives no redshift at all
    inputs = {"lsst": lsst, "redshift": redshift}
    kwargs = {"targets": ["log_stellar_mass"], "return_uncertainty": True, "batch_size": 10}
    calibrated = model.predict(inputs, **kwargs)["log_stellar_mass_std"]
    calibration, model.config.calibration = model.config.calibration, []
    raw = model.predict(inputs, **kwargs)["log_stellar_mass_std"]
    model.config.calibration = calibration
    expected = [model.calibration_for({"lsst": lsst[i:i + 1], "redshift": redshift[i:i + 1]}).get(
        "temperature", {}).get("log_stellar_mass", 1.0) for i in range(40)]
    assert len(set(expected)) == 6 and 1.5 in expected[:10]  # every entry and "none" occur
    # The std in dex of a Gaussian in log mass: the temperature scales it exactly.
    np.testing.assert_allclose(calibrated / raw, expected, rtol=1e-5)


def test_a_target_is_answered_alike_alone_or_among_others_after_calibration(gaussian_model):
    """`predict` decodes only the elements of the tokens it runs, so each target's columns (and its calibration
    entry's, which may name targets the query does not ask for) are found among a different set of elements
    in each query; a query token attends only to visible tokens, so the answers must agree."""
    import copy

    model = copy.deepcopy(gaussian_model)
    rng = np.random.default_rng(5)
    columns = random_columns(rng, 300)
    inputs = {"lsst": columns["lsst"], "spherex": columns["spherex"]}
    truth = {n: columns[n] for n in ("redshift", "log_stellar_mass", "sfh")}
    model.calibrate(inputs, truth)
    assert set(model.calibration_for(inputs)["temperature"]) == set(truth)
    together = model.predict(inputs, targets=list(truth), return_uncertainty=True, redshift_grid=GRID)
    for name in truth:
        alone = model.predict(inputs, targets=[name], return_uncertainty=True, redshift_grid=GRID)
        assert set(alone) == {k for k in together if k.startswith(name)}
        for key, value in alone.items():
            np.testing.assert_allclose(value, together[key], rtol=1e-5, atol=1e-6, err_msg=key)
    uncalibrated = gaussian_model.predict(inputs, targets=["log_stellar_mass"], return_uncertainty=True)
    assert not np.allclose(uncalibrated["log_stellar_mass_std"], together["log_stellar_mass_std"])


def test_a_given_elements_untrained_spread_never_overflows(gaussian_model):
    """A given element's predicted spread is untrained (only hidden elements are scored) and can be e^10 sigma:
    pushed through the SED's log transform its physical variance would overflow. `predict` gives such
    elements zero spread before it computes any moment, so no floating-point warning is raised."""
    import copy
    import warnings

    model = copy.deepcopy(gaussian_model)
    with torch.no_grad():
        model.heads.bias[:, model.layout.patch_size:] = 20.0  # every log-variance at its clamp
    sed = random_columns(np.random.default_rng(4), 3)["sed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.predict({"sed": sed}, targets=["sed"], return_uncertainty=True, num_samples=2)
    np.testing.assert_array_equal(out["sed_std"], 0.0)
    np.testing.assert_allclose(out["sed"], sed, rtol=1e-6)


def test_a_hidden_elements_widest_posterior_saturates_instead_of_overflowing(gaussian_model):
    """A hidden element may be predicted many dex wide (an SFR that could be quenched or bursting: the paper-scale
    model gives some SFH bins 5 dex). Pushed through a log transform, its physical mean, std, upper percentiles
    and samples pass float32's range; they saturate at its largest finite value instead of coming back as inf,
    or as NaN from inf - inf in a variance. Here every log-variance and mixture log-scale sits at its clamp."""
    import copy
    import warnings

    model = copy.deepcopy(gaussian_model)
    with torch.no_grad():
        model.heads.bias[:, model.layout.patch_size:] = 20.0
        model.redshift_head.bias[2 * model.redshift_head.num_components:] = 20.0
    lsst = random_columns(np.random.default_rng(5), 3)["lsst"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model.predict({"lsst": lsst}, targets=["redshift", "sfh", "sed"], return_uncertainty=True,
                            num_samples=4)
    largest = np.finfo(np.float32).max
    for key, array in out.items():
        assert np.isfinite(array).all(), key
    for name in ("redshift", "sfh", "sed"):
        assert (out[f"{name}_std"] > 1e30).all() and (out[f"{name}_p84"] == largest).all(), name
        assert (out[f"{name}_p16"] >= MODALITIES[name].minimum).all(), name


def test_point_predictions_are_the_medians_and_samples_are_seeded(gaussian_model):
    lsst = random_columns(np.random.default_rng(4), 6)["lsst"]
    point = gaussian_model.predict({"lsst": lsst}, targets=["sfh", "redshift"])
    full = gaussian_model.predict({"lsst": lsst}, targets=["sfh", "redshift"], return_uncertainty=True,
                                  num_samples=5, seed=7)
    np.testing.assert_allclose(point["sfh"], full["sfh_p50"], rtol=1e-5)  # median of a monotonic transform
    assert set(point) == {"sfh", "redshift"}
    again = gaussian_model.predict({"lsst": lsst}, targets=["sfh", "redshift"], num_samples=5, seed=7)
    np.testing.assert_array_equal(again["sfh_samples"], full["sfh_samples"])
    other = gaussian_model.predict({"lsst": lsst}, targets=["sfh", "redshift"], num_samples=5, seed=8)
    assert not np.array_equal(other["sfh_samples"], full["sfh_samples"])


def test_gaussian_forward_shapes_and_hidden_values_and_errors_do_not_leak(gaussian_model):
    rng = np.random.default_rng(5)
    values = torch.from_numpy(gaussian_model.config.flatten(random_columns(rng, 4)))
    input_mask = torch.from_numpy(rng.random(values.shape) < 0.5)
    errors = torch.from_numpy(rng.random(values.shape)).float()
    reference = gaussian_model(values, input_mask, errors=errors)
    k = gaussian_model.config.redshift_mixture_components
    assert reference.log_variances.shape == values.shape and reference.redshift_mixture.shape == (4, 3, k)
    assert torch.isfinite(reference.loss)
    hidden = ~input_mask
    changed = gaussian_model(torch.where(hidden, 7.0, values), input_mask,
                             errors=torch.where(hidden, 100.0, errors))
    for key in ("predictions", "log_variances", "redshift_mixture", "last_hidden_state"):
        assert torch.equal(changed[key], reference[key]), key
    shown_error_changed = gaussian_model(values, input_mask, errors=torch.where(input_mask, 5.0, errors))
    assert not torch.equal(shown_error_changed.predictions, reference.predictions)
    assert {"log_variances", "redshift_mixture"} <= set(gaussian_model.config.keys_to_ignore_at_inference)


def test_point_head_refuses_uncertainty_and_bad_arguments_are_named(gaussian_model):
    point = MosaicModel(MosaicConfig(**TINY)).eval()
    lsst = np.full((2, 6), 25.0)
    for kwargs in ({"return_uncertainty": True}, {"num_samples": 3}, {"redshift_grid": GRID}):
        with pytest.raises(ValueError, match="has none .head_type='point'"):
            point.predict({"lsst": lsst}, **kwargs)
    with pytest.raises(ValueError, match="without error inputs"):
        point.predict({"lsst": lsst}, errors={"lsst": lsst})
    with pytest.raises(ValueError, match="not among the given inputs"):
        gaussian_model.predict({"lsst": lsst}, errors={"spherex": np.ones((2, 102))})
    with pytest.raises(ValueError, match="redshift_grid must be"):
        gaussian_model.predict({"lsst": lsst}, targets=["redshift"], redshift_grid=[1.0, 0.5])
    with pytest.raises(ValueError, match="head_type"):
        MosaicConfig(head_type="laplace")
    with pytest.raises(ValueError, match="cdf needs a probabilistic head"):
        point.cdf({"lsst": lsst}, {"redshift": np.ones(2)})
    for values, match in (({"sfh": np.ones((2, 100))}, "'sfh' must be a scalar target"),
                          ({"lsst": np.ones(2)}, "'lsst' must be a scalar target that no row gives among the inputs"),
                          ({"redshift": [1.0, np.nan]}, "'redshift' must be finite"),
                          ({"redshift": np.ones(3)}, "3 rows, but the inputs have 2"),
                          ({}, "at least one scalar target")):
        with pytest.raises(ValueError, match=match):
            gaussian_model.cdf({"lsst": lsst}, values)
    prior = gaussian_model.cdf({}, {"redshift": np.linspace(0.1, 3.0, 4)})["redshift"]  # nothing given: the prior
    assert prior.shape == (4,) and np.all(np.diff(prior) > 0) and np.all((prior > 0) & (prior < 1))


# ------------------------------------------------------------------------------------ on-the-fly noise
def noisy_batch(n, flux=1.0e4, error=100.0):
    return {
        "galaxy_id": np.arange(n) * 7 + 3,
        "redshift": np.full(n, 0.5),
        "lsst_flux_true": np.full((n, 6), flux),
        "lsst_flux_err": np.full((n, 6), error),
    }


def test_on_the_fly_noise_is_reproducible_and_standard_normal():
    config = MosaicConfig(modalities=["redshift", "lsst"], noise_on_the_fly=True, error_inputs=True)
    assert noise_columns(config) == ["lsst_flux_true", "lsst_flux_err"]
    collator = MosaicMaskingCollator(config, seed=3)
    batch = noisy_batch(3000)
    first = collator(batch)
    softening = MODALITIES["lsst"].softening_njy
    magnitudes = first["values"][:, 1:].numpy().astype(np.float64)
    errors = first["errors"][:, 1:].numpy().astype(np.float64)
    pull = (magnitudes - asinh_magnitude(batch["lsst_flux_true"], softening)) / errors
    assert abs(pull.mean()) < 0.03 and abs(pull.std() - 1.0) < 0.03  # 18000 draws: 4-5 sigma bounds
    np.testing.assert_allclose(errors, asinh_magnitude_error(batch["lsst_flux_true"], 100.0, softening), rtol=0.05)
    assert torch.isnan(first["errors"][:, 0]).all()  # redshift has no measurement error

    # a galaxy's draw is a function of (seed, epoch, galaxy_id) only: same in another batch, new next epoch
    subset = {k: v[[10, 2, 7]] for k, v in batch.items()}
    again = MosaicMaskingCollator(config, seed=3)(subset)
    torch.testing.assert_close(again["values"], first["values"][[10, 2, 7]], rtol=0, atol=0)
    torch.testing.assert_close(again["errors"], first["errors"][[10, 2, 7]], rtol=0, atol=0, equal_nan=True)
    rows = [{k: v[i] for k, v in subset.items()} for i in range(3)]  # a list of rows collates the same
    torch.testing.assert_close(MosaicMaskingCollator(config, seed=3)(rows)["values"], again["values"], rtol=0, atol=0)
    collator.set_epoch(1)
    assert not torch.equal(collator(batch)["values"], first["values"])


def test_noise_scale_zero_gives_the_true_magnitudes_and_missing_columns_are_named():
    config = MosaicConfig(modalities=["redshift", "lsst"], noise_on_the_fly=True, noise_scale=(0.0, 0.0))
    batch = noisy_batch(4)
    out = MosaicMaskingCollator(config)(batch)
    expected = asinh_magnitude(batch["lsst_flux_true"], MODALITIES["lsst"].softening_njy)
    np.testing.assert_allclose(out["values"][:, 1:].numpy(), expected, rtol=1e-6)
    assert "errors" not in out  # the model does not take errors
    with pytest.raises(ValueError, match="lsst_flux_err"):
        MosaicMaskingCollator(config)({k: v for k, v in batch.items() if k != "lsst_flux_err"})


# ------------------------------------------------------------------------------- reload and the CLI
GAUSSIAN_CHILD = test_remote_code.CHILD.replace(
    "np.savez(checkpoint + f\"/{route}.npz\", ",
    "full = model.predict({'lsst': data['lsst']}, targets=['redshift', 'sfh'], return_uncertainty=True)\n"
    "np.savez(checkpoint + f\"/{route}.npz\", log_variances=out.log_variances.detach().numpy(), "
    "mixture=out.redshift_mixture.detach().numpy(), redshift_pdf=full['redshift_pdf'], sfh_std=full['sfh_std'], ")


def test_mosaic_predict_cli_streams_chunks_with_independent_samples_and_writes_nothing_on_failure(gaussian_model,
                                                                                                  tmp_path):
    """A table read in chunks (a multiple of the batch size) predicts what it does in one piece, bitwise; the
    samples of identical galaxies in different chunks are independent draws, reproducible from --seed; a bad
    chunk after good ones leaves neither the output nor its temporary file."""
    gaussian_model.save_pretrained(tmp_path / "model")
    lsst = np.tile(random_columns(np.random.default_rng(8), 5)["lsst"], (2, 1))  # rows 5-9 repeat rows 0-4
    pq.write_table(pa.table({"galaxy_id": np.arange(10), "lsst": list(lsst)}), tmp_path / "in.parquet")

    def run(out, *flags):
        argv = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"), "--output",
                str(tmp_path / out), "--targets", "redshift", "log_stellar_mass", "--batch-size", "5", *flags]
        assert predict_cli.main(argv) == 0
        return pq.read_table(tmp_path / out)

    whole = run("whole.parquet", "--uncertainty")
    chunked = run("chunked.parquet", "--uncertainty", "--chunk-rows", "5")
    assert chunked.equals(whole)
    assert chunked.column("galaxy_id").to_pylist() == list(range(10))
    samples = np.asarray(run("s.parquet", "--samples", "4", "--chunk-rows", "5").column("redshift_samples").to_pylist())
    again = np.asarray(run("s2.parquet", "--samples", "4", "--chunk-rows", "5").column("redshift_samples").to_pylist())
    np.testing.assert_array_equal(samples, again)
    assert not np.isclose(samples[:5], samples[5:]).any()

    bad = [list(row) for row in lsst[:5]] + [list(row[:5]) for row in lsst[5:]]  # the second chunk's lists are short
    pq.write_table(pa.table({"lsst": pa.array(bad, pa.list_(pa.float32()))}), tmp_path / "bad.parquet")
    with pytest.raises(SystemExit, match="bad.parquet: column 'lsst' must hold lists of 6 values"):
        predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / "bad.parquet"),
                          "--output", str(tmp_path / "bad_out.parquet"), "--chunk-rows", "5"])
    assert not list(tmp_path.glob("*bad_out*"))  # nor the hidden temporary file


def test_each_condition_is_calibrated_on_the_held_out_rows_that_show_all_of_it():
    """A held-out row missing a value the condition shows (a band not observed) is another query: it is left out
    of that condition's calibration instead of stopping it (at the end of training, after the run), and a
    condition that no row shows in full gets no entry."""
    from modeling_mosaic.evaluation.conditions import CONDITIONS, calibrate_for_conditions, get_condition

    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY, head_type="gaussian")).eval()
    columns = random_columns(np.random.default_rng(12), 80)
    columns["lsst"][[3, 40], 2] = np.nan  # two galaxies without an r band
    columns["spherex"][7, 50] = np.inf  # and one without a SPHEREx channel
    columns["sfh"][11, -1] = np.nan  # one with a late SFH value missing: in the late window only
    columns["log_stellar_mass"][:] = np.nan
    fitted = calibrate_for_conditions(model, columns)
    assert set(fitted) == {"lsst", "lsst+spherex", "lsst+sfh_late", "lsst+sfh_early"}
    found = model.config.calibration
    missing = {"lsst": [3, 40], "lsst+spherex": [3, 7, 40], "lsst+sfh_late": [3, 11, 40], "lsst+sfh_early": [3, 40]}
    model.config.calibration = []
    for name, rows in missing.items():
        condition, keep = get_condition(name), np.setdiff1d(np.arange(80), rows)
        kept = {k: v[keep] for k, v in columns.items()}
        model.calibrate(condition.inputs(kept), {t: kept[t] for t in condition.targets(model.config.modalities)})
    assert found == model.config.calibration
    assert "stellar_mass" in {c.name for c in CONDITIONS}  # the condition left out above exists


def test_zero_rows_and_bad_arguments_of_the_probabilistic_queries(gaussian_model):
    lsst = random_columns(np.random.default_rng(9), 3)["lsst"]
    asked = {"targets": ["redshift", "sfh"], "return_uncertainty": True, "num_samples": 2}
    one, none = (gaussian_model.predict({"lsst": lsst[:n]}, **asked) for n in (1, 0))
    assert set(none) == set(one) and "redshift_pdf" in none and "sfh_samples" in none
    for key, array in one.items():
        assert none[key].shape == (0, *array.shape[1:]), key
    for points in (np.zeros(0), np.zeros((0, 5))):
        assert gaussian_model.cdf({"lsst": lsst[:0]}, {"redshift": points})["redshift"].shape == points.shape
    with pytest.raises(ValueError, match="num_samples must be >= 0, got -1"):
        gaussian_model.predict({"lsst": lsst}, targets="redshift", num_samples=-1)
    with pytest.raises(ValueError, match=r"values: 'redshift' must be finite, \(N,\) or \(N, G\).*got shape \(\)"):
        gaussian_model.cdf({"lsst": lsst}, {"redshift": 0.5})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        gaussian_model.cdf({"lsst": lsst}, {"redshift": np.ones(3)}, batch_size=0)


def test_mosaic_predict_cli_loses_no_file_and_names_what_it_cannot_read(gaussian_model, tmp_path):
    """Every path is checked before the model runs: the output may not be the input, a folder, or in a missing
    folder, and --qp must be HDF5; a failed run leaves the folder as it was (a user's own `.tmp` file included);
    unreadable input names the file, and a bad CSV value its column."""
    gaussian_model.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    lsst = random_columns(np.random.default_rng(7), 6)["lsst"]
    pq.write_table(pa.table({"lsst": list(lsst)}), data / "in.parquet")
    table = [[f"{m:.6f}" for m in lsst[i % 6]] for i in range(30_000)]  # ~1.9 MB: past the CSV's first block
    table[29_000][2] = "oops"  # lsst_r
    lines = ["lsst_u,lsst_g,lsst_r,lsst_i,lsst_z,lsst_y", *map(",".join, table)]
    (data / "bad.csv").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"lsst": [["a"] * 6] * 2}), data / "strings.parquet")
    (data / "fake.parquet").write_text("not a parquet file")
    (data / "out.parquet.tmp").write_text("a user's file")
    (data / "folder.parquet").mkdir()
    before = {p: p.read_bytes() for p in data.iterdir() if p.is_file()}

    def refused(message, *argv):
        with pytest.raises(SystemExit, match=message):
            predict_cli.main(["--model", str(tmp_path / "model"), "--targets", "redshift", *argv])

    source = str(data / "in.parquet")
    refused("--output .*in.parquet: the same file as --input", "--input", source, "--output", source)
    refused("--output .*: no folder", "--input", source, "--output", str(data / "missing" / "out.parquet"))
    refused("--output .*folder.parquet: is a folder", "--input", source, "--output", str(data / "folder.parquet"),
            "--qp", str(data / "z.hdf5"))
    refused("--qp .*z.parquet: the file must end in .hdf5", "--input", source, "--output", str(data / "out.parquet"),
            "--qp", str(data / "z.parquet"))
    refused("--input .*bad.csv: cannot be read as CSV: In column 'lsst_r'", "--input", str(data / "bad.csv"),
            "--output", str(data / "out.parquet"), "--chunk-rows", "2")
    refused("strings.parquet: column 'lsst' holds lists of string; expected numbers", "--input",
            str(data / "strings.parquet"), "--output", str(data / "out.parquet"))
    refused("--input .*fake.parquet: cannot be read as PARQUET", "--input", str(data / "fake.parquet"),
            "--output", str(data / "out.parquet"))
    assert {p: p.read_bytes() for p in data.iterdir() if p.is_file()} == before
    with pytest.raises(SystemExit, match="--model .*missing: no such folder"):
        predict_cli.main(["--model", str(tmp_path / "missing"), "--input", source, "--output", "out.parquet"])


def test_mosaic_predict_cli_fixes_its_columns_once_and_names_ambiguous_input(gaussian_model, tmp_path):
    """Default targets follow the input's columns, not each chunk's values: a chunk with a galaxy that lacked all of
    LSST added lsst to its targets, and the writer failed mid-run on the changed columns. A repeated column, a
    fixed-size list of the wrong size and a negative --seed are named before any work. The output gets the mode
    open() gives (mkstemp's 0600 leaked into it), or keeps the mode of the file it replaces."""
    gaussian_model.save_pretrained(tmp_path / "model")
    lsst = random_columns(np.random.default_rng(3), 8)["lsst"]
    lsst[0] = np.nan
    pq.write_table(pa.table({"galaxy_id": np.arange(8), "lsst": list(lsst)}), tmp_path / "in.parquet")
    argv = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"), "--batch-size", "4"]
    assert predict_cli.main([*argv, "--output", str(tmp_path / "chunked.parquet"), "--chunk-rows", "4"]) == 0
    assert predict_cli.main([*argv, "--output", str(tmp_path / "whole.parquet")]) == 0
    chunked = pq.read_table(tmp_path / "chunked.parquet")
    assert chunked.equals(pq.read_table(tmp_path / "whole.parquet"))
    assert "redshift" in chunked.column_names and "lsst_u" not in chunked.column_names
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "whole.parquet").st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / "whole.parquet", 0o640)
    assert predict_cli.main([*argv, "--output", str(tmp_path / "whole.parquet")]) == 0
    assert os.stat(tmp_path / "whole.parquet").st_mode & 0o777 == 0o640

    pq.write_table(pa.Table.from_arrays([pa.array(list(lsst))] * 2, names=["lsst", "lsst"]), tmp_path / "dup.parquet")
    pq.write_table(pa.table({"lsst": pa.array(list(lsst[:, :5]), pa.list_(pa.float32(), 5))}), tmp_path / "five.parquet")
    for source, extra, message in (("dup", [], "--input .*dup.parquet: column 'lsst' appears more than once"),
                                   ("five", [], "five.parquet: column 'lsst' must hold lists of 6 values"),
                                   ("in", ["--seed", "-1"], r"--seed must be in \[0, 2\*\*63\), got -1")):
        with pytest.raises(SystemExit, match=message):
            predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / f"{source}.parquet"),
                              "--output", str(tmp_path / "out.parquet"), *extra])
    assert not list(tmp_path.glob("*out.parquet*"))


def test_a_sigterm_while_predicting_unwinds_and_the_previous_handler_returns():
    """A batch scheduler's SIGTERM at a time limit killed mosaic-predict outright, leaving its temporary output."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped, predict_cli.terminating_as_exit():
        os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before its next instruction
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_gaussian_checkpoint_reloads_identically_by_remote_code(tmp_path, monkeypatch):
    assert GAUSSIAN_CHILD != test_remote_code.CHILD
    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY, head_type="gaussian", error_inputs=True)).eval()
    model.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    values = rng.normal(20.0, 3.0, (5, model.config.num_elements)).astype(np.float32)
    input_mask = rng.random(values.shape) < 0.5
    lsst = rng.normal(25.0, 1.0, (5, 6)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", values=values, input_mask=input_mask, lsst=lsst)
    out = model(torch.from_numpy(values), torch.from_numpy(input_mask))
    full = model.predict({"lsst": lsst}, targets=["redshift", "sfh"], return_uncertainty=True)
    monkeypatch.setattr(test_remote_code, "CHILD", GAUSSIAN_CHILD)
    site_packages = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    got = test_remote_code.run_child(tmp_path, "remote", ["-S"], site_packages)
    expected = {"predictions": out.predictions, "log_variances": out.log_variances, "mixture": out.redshift_mixture}
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value.detach().numpy(), err_msg=key)
    np.testing.assert_array_equal(got["redshift_pdf"], full["redshift_pdf"])
    np.testing.assert_array_equal(got["sfh_std"], full["sfh_std"])


def test_mosaic_predict_cli_writes_uncertainties_and_a_qp_ensemble(gaussian_model, tmp_path, capsys, monkeypatch):
    import qp

    gaussian_model.save_pretrained(tmp_path / "model")
    lsst = random_columns(np.random.default_rng(6), 4)["lsst"]
    columns = {"galaxy_id": np.arange(4) + 100}
    for j, band in enumerate(MODALITIES["lsst"].labels):
        columns[f"lsst_{band}"] = lsst[:, j]
        columns[f"lsst_{band}_err"] = np.full(4, 0.05)
    pacsv.write_csv(pa.table(columns), tmp_path / "in.csv")
    argv = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.csv"),
            "--targets", "redshift", "log_stellar_mass", "--uncertainty", "--qp", str(tmp_path / "z.hdf5")]
    assert predict_cli.main([*argv, "--output", str(tmp_path / "out.csv")]) == 0
    table = pacsv.read_csv(tmp_path / "out.csv")
    expected = gaussian_model.predict({"lsst": lsst}, targets=["redshift", "log_stellar_mass"],
                                      return_uncertainty=True, errors={"lsst": np.full((4, 6), 0.05)})
    assert table.column("galaxy_id").to_pylist() == [100, 101, 102, 103]
    for key in ("redshift", "redshift_std", "redshift_p84", "log_stellar_mass_p16"):
        np.testing.assert_allclose(table.column(key).to_numpy(), expected[key], rtol=1e-6)
    ensemble = qp.read(str(tmp_path / "z.hdf5"))
    assert ensemble.npdf == 4
    np.testing.assert_allclose(ensemble.pdf(np.array([1.0]))[:, 0],
                               expected["redshift_pdf"][:, np.argmin(np.abs(GRID - 1.0))], rtol=1e-4)

    # Parquet: the vector as one list column, samples as list columns
    pq.write_table(pa.table({"lsst": list(lsst), "lsst_err": list(np.full((4, 6), 0.05))}), tmp_path / "in.parquet")
    assert predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"),
                             "--output", str(tmp_path / "out.parquet"), "--targets", "redshift", "--samples", "3"]) == 0
    written = pq.read_table(tmp_path / "out.parquet")
    point = gaussian_model.predict({"lsst": lsst}, targets="redshift", errors={"lsst": np.full((4, 6), 0.05)})
    np.testing.assert_allclose(written.column("redshift").to_numpy(), point["redshift"], rtol=1e-6)
    assert np.asarray(written.column("redshift_samples").to_pylist()).shape == (4, 3)

    # --compile compiles the encoder before predicting (recorded here, not run: no C++ compiler needed)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: compiled.append(function.__name__) or function)
    assert predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"),
                             "--output", str(tmp_path / "fast.parquet"), "--targets", "redshift", "--compile"]) == 0
    assert compiled == ["_encode"]
    np.testing.assert_array_equal(pq.read_table(tmp_path / "fast.parquet").column("redshift").to_numpy(),
                                  written.column("redshift").to_numpy())

    # --bf16 runs the blocks' products in bfloat16 where they are native (taken as so here), and is refused,
    # before anything is written, where they are not; so is a --device torch cannot see
    bf16 = [*argv[:2], "--input", str(tmp_path / "in.parquet"), "--targets", "redshift", "--bf16", "--device", "cpu"]
    monkeypatch.setattr(predict_cli, "native_bf16", lambda device: True)
    assert predict_cli.main([*bf16, "--output", str(tmp_path / "bf16.parquet")]) == 0
    half = pq.read_table(tmp_path / "bf16.parquet").column("redshift").to_numpy()
    full = written.column("redshift").to_numpy()
    assert not np.array_equal(half, full)
    # bf16 keeps 8 bits of mantissa (relative steps of 2**-8) in the blocks; the residual stream, the embeddings
    # and the heads stay float32, so log10(1 + z) moves by far less than one such step of its ~0.1-1 scale
    assert np.max(np.abs(np.log10(1 + half) - np.log10(1 + full))) < 2**-8
    monkeypatch.setattr(predict_cli, "native_bf16", lambda device: False)
    with pytest.raises(SystemExit, match="--bf16: this cpu has no native bfloat16 matrix products"):
        predict_cli.main([*bf16, "--output", str(tmp_path / "slow.parquet")])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device"):
        predict_cli.main([*bf16[:-1], "cuda", "--output", str(tmp_path / "slow.parquet")])
    assert not (tmp_path / "slow.parquet").exists()

    del columns["lsst_y"]
    pacsv.write_csv(pa.table(columns), tmp_path / "bad.csv")
    with pytest.raises(SystemExit, match=r"bad.csv: 'lsst' needs all of its 6 columns; missing \['lsst_y'\]"):
        predict_cli.main([*argv[:2], "--input", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "b.csv")])
    with pytest.raises(SystemExit, match="CSV cannot hold"):
        predict_cli.main([*argv, "--output", str(tmp_path / "out.csv"), "--samples", "3"])
    assert not (tmp_path / "b.csv").exists()


def test_the_pit_map_is_fitted_on_every_calibration_row(heteroscedastic, monkeypatch):
    """The shift and the temperature are fitted on at most CALIBRATION_POINTS strided values, but a scalar's PIT
    map on every row: its knots are the quantiles of all the held-out PIT values after the shift and the
    temperature (those `cdf` gives once the map is removed). Fitted on a stride, the knots would carry the
    noise of the smaller sample into every later PIT (a perfectly calibrated model's PIT through a 16-bin map of
    20,000 rows shows KS >= 0.012 on 20,583 test galaxies in ~9% of draws; 0.0091 is an exact map's 95% point)."""
    import copy

    from modeling_mosaic import modeling_mosaic

    monkeypatch.setattr(modeling_mosaic, "CALIBRATION_POINTS", 300)
    model = copy.deepcopy(heteroscedastic[0])
    rng = np.random.default_rng(5)
    x = rng.uniform(11.0, 14.0, 3000)
    truth = toy_stellar_mass(rng, x, noise_factor=1.3)
    knots = model.calibrate({"log_halo_mass": x}, {"log_stellar_mass": truth})["log_stellar_mass"]["pit_knots"]
    del model.config.calibration[0]["pit_knots"]
    pit = model.cdf({"log_halo_mass": x}, {"log_stellar_mass": truth})["log_stellar_mass"]
    levels = np.linspace(0.0, 1.0, PIT_MAP_BINS + 1)
    expected = np.quantile(pit, levels)
    expected[0], expected[-1] = 0.0, 1.0
    np.testing.assert_allclose(knots, (1.0 - PIT_MAP_FLOOR) * expected + PIT_MAP_FLOOR * levels, atol=1e-5)


def test_calibrate_and_cdf_do_not_depend_on_the_batch_size(gaussian_model):
    """Fitted over several batches, the calibration (shift, temperature, PIT knots per target) and the CDFs read
    with it are those of one batch: each batch encodes the same rows the same way, and the scored rows of every
    target are pooled before fitting."""
    import copy

    rng = np.random.default_rng(11)
    columns = random_columns(rng, 90)
    inputs = {"lsst": columns["lsst"]}
    truth = {n: columns[n] for n in ("redshift", "log_stellar_mass")}
    fits, cdfs = [], []
    for batch_size in (4096, 32):
        model = copy.deepcopy(gaussian_model)
        fits.append(model.calibrate(inputs, truth, batch_size=batch_size))
        cdfs.append(model.cdf(inputs, truth, batch_size=batch_size))
    for name in truth:
        for key in ("shift", "temperature"):
            assert fits[1][name][key] == pytest.approx(fits[0][name][key], rel=1e-6, abs=1e-9), (name, key)
        np.testing.assert_allclose(fits[1][name]["pit_knots"], fits[0][name]["pit_knots"], atol=1e-6)
        np.testing.assert_allclose(cdfs[1][name], cdfs[0][name], atol=1e-6)


def test_uncertainties_do_not_depend_on_how_the_rows_are_split(gaussian_model):
    """The redshift pdf is tabulated PDF_ROWS rows at a time within a batch: over more rows than that, a calibrated
    model's pdf (through each row's PIT map), moments and percentiles are those of the same rows in small batches."""
    import copy

    rng = np.random.default_rng(12)
    model = copy.deepcopy(gaussian_model)
    calibration = random_columns(rng, 300)
    model.calibrate({"lsst": calibration["lsst"]}, {"redshift": calibration["redshift"]})
    lsst = random_columns(rng, PDF_ROWS + 88)["lsst"]
    lsst[::3, 0] = np.nan  # rows the calibration does not match: their PIT map is the identity
    inputs = {"lsst": lsst}
    whole = model.predict(inputs, targets=["redshift"], return_uncertainty=True)
    split = model.predict(inputs, targets=["redshift"], return_uncertainty=True, batch_size=100)
    assert whole["redshift_pdf"].shape == (PDF_ROWS + 88, DEFAULT_REDSHIFT_GRID.size)
    for key in ("redshift_pdf", "redshift", "redshift_std", "redshift_p16", "redshift_p84"):
        np.testing.assert_allclose(split[key], whole[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_a_calibrated_redshift_pdf_is_the_derivative_of_its_calibrated_cdf(gaussian_model):
    """Through a PIT map R the posterior's CDF is R(F(z)) and its density R'(F(z)) f(z): the pdf `predict`
    tabulates (with or without the moments) must be the slope of what `cdf` gives, the map's bins included, on
    every grid point away from where R(F) crosses a knot level j / PIT_MAP_BINS (there the slope jumps)."""
    import copy

    rng = np.random.default_rng(14)
    model = copy.deepcopy(gaussian_model)
    calibration = random_columns(rng, 2000)
    level = rng.uniform(size=2000) ** 1.5  # a skewed PIT, so that the map's bins differ in slope
    model.calibrate({"lsst": calibration["lsst"]}, {"redshift": np.quantile(calibration["redshift"], level)})
    knots = np.array(model.config.calibration[0]["pit_knots"]["redshift"])
    assert np.ptp(np.diff(knots)) > 0.02  # far from the identity map
    inputs = {"lsst": random_columns(rng, 40)["lsst"]}
    fine = np.linspace(0.0, 3.5, 14001)
    calibrated = model.cdf(inputs, {"redshift": np.broadcast_to(fine, (40, fine.size))})["redshift"]
    slope = (calibrated[:, 2:] - calibrated[:, :-2]) / (fine[2:] - fine[:-2])
    smooth = np.floor(calibrated[:, 2:] * PIT_MAP_BINS) == np.floor(calibrated[:, :-2] * PIT_MAP_BINS)
    for asked in ({"return_uncertainty": True}, {}):
        pdf = model.predict(inputs, targets=["redshift"], redshift_grid=fine, **asked)["redshift_pdf"]
        mass = calibrated[:, -1:] - calibrated[:, :1]  # the pdf integrates to 1 over the grid, the CDF to this
        expected = slope / mass
        assert smooth.mean() > 0.99
        np.testing.assert_allclose(pdf[:, 1:-1][smooth], expected[smooth], rtol=2e-3, atol=1e-3 * expected.max())


def test_return_pdf_false_leaves_out_only_the_pdf(gaussian_model, tmp_path):
    """Without the pdf (what `mosaic-predict --uncertainty` asks for unless --qp) every other output is the same,
    in Python and through the CLI; a grid with the pdf turned off is refused by name."""
    lsst = random_columns(np.random.default_rng(13), 50)["lsst"]
    lsst[::4, 2] = np.nan
    asked = {"targets": ["redshift", "log_stellar_mass"], "return_uncertainty": True, "num_samples": 3}
    full = gaussian_model.predict({"lsst": lsst}, **asked)
    lean = gaussian_model.predict({"lsst": lsst}, **asked, return_pdf=False)
    assert set(full) - set(lean) == {"redshift_pdf"} and set(lean) <= set(full)
    for key in lean:
        np.testing.assert_array_equal(lean[key], full[key], err_msg=key)
    with pytest.raises(ValueError, match="redshift_grid.*return_pdf=False"):
        gaussian_model.predict({"lsst": lsst}, targets=["redshift"], redshift_grid=GRID, return_pdf=False)

    gaussian_model.save_pretrained(tmp_path / "model")
    pq.write_table(pa.table({"lsst": list(lsst)}), tmp_path / "in.parquet")
    tables = []
    for extra in ([], ["--qp", str(tmp_path / "z.hdf5")]):
        out = tmp_path / f"out{len(extra)}.parquet"
        assert predict_cli.main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.parquet"),
                                 "--output", str(out), "--uncertainty", *extra]) == 0
        tables.append(pq.read_table(out))
    assert tables[0].equals(tables[1])


def test_calibrating_one_target_keeps_the_others_and_bad_calls_change_nothing(gaussian_model, caplog):
    """Calibrating redshift, then stellar mass, on the same inputs keeps both fits; a truth no row scores (NaN, or
    given as an input) leaves the calibration as it was; zero rows, and a target without a truth column, are
    named errors; fewer rows than CALIBRATION_ROWS fit but warn."""
    import copy

    from modeling_mosaic.modeling_mosaic import CALIBRATION_ROWS

    model = copy.deepcopy(gaussian_model)
    model.config.calibration = []
    columns = random_columns(np.random.default_rng(21), 300)
    inputs = {"lsst": columns["lsst"]}
    redshift = model.calibrate(inputs, {"redshift": columns["redshift"]})["redshift"]
    mass = model.calibrate(inputs, {"log_stellar_mass": columns["log_stellar_mass"]})["log_stellar_mass"]
    (entry,) = model.config.calibration
    assert entry["temperature"] == {"redshift": redshift["temperature"], "log_stellar_mass": mass["temperature"]}
    assert entry["pit_knots"] == {"redshift": redshift["pit_knots"], "log_stellar_mass": mass["pit_knots"]}
    before = copy.deepcopy(model.config.calibration)
    assert model.calibrate(inputs, {"redshift": np.full(300, np.nan)}) == {}
    assert model.calibrate({"lsst": columns["lsst"], "redshift": columns["redshift"]},
                           {"redshift": columns["redshift"]}) == {}
    assert model.config.calibration[0] == before[0]
    with pytest.raises(ValueError, match="inputs: no rows to calibrate on"):
        model.calibrate({"lsst": columns["lsst"][:0]}, {"redshift": columns["redshift"][:0]})
    with pytest.raises(ValueError, match=r"targets: \['log_stellar_mass'\] have no column in truth"):
        model.calibrate(inputs, {"redshift": columns["redshift"]}, targets=["log_stellar_mass"])
    assert model.config.calibration[0] == before[0]
    with caplog.at_level("WARNING"):
        model.calibrate(inputs, {"redshift": columns["redshift"]})
    assert f"300 rows score redshift; below {CALIBRATION_ROWS}" in caplog.text


def test_cdf_reads_an_empty_target_column_as_not_given_and_puts_no_mass_below_zero(gaussian_model):
    """A catalog's all-NaN spec-z column among the inputs is no input (NaN = not given), as in `predict`; a column
    some row gives is still refused. Redshift predictions are clipped at z = 0: the CDF is 0 below it, and at 0
    it holds the mass piled there, the fraction of `predict`'s samples that are exactly 0."""
    lsst = random_columns(np.random.default_rng(22), 4)["lsst"]
    at = {"redshift": np.tile([-0.3, -1e-9, 0.0, 0.5, 1.0], (4, 1))}
    plain = gaussian_model.cdf({"lsst": lsst}, at)["redshift"]
    empty = gaussian_model.cdf({"lsst": lsst, "redshift": np.full(4, np.nan)}, at)["redshift"]
    np.testing.assert_array_equal(empty, plain)
    assert np.all(plain[:, :2] == 0.0) and np.all(np.diff(plain, axis=1) >= 0) and np.all(plain <= 1.0)
    samples = gaussian_model.predict({"lsst": lsst}, targets="redshift", num_samples=4000)["redshift_samples"]
    np.testing.assert_allclose((samples == 0.0).mean(axis=1), plain[:, 2], atol=0.03)
    with pytest.raises(ValueError, match="'redshift' must be a scalar target that no row gives among the inputs"):
        gaussian_model.cdf({"lsst": lsst, "redshift": np.array([np.nan, 1.0, np.nan, np.nan])}, at)


def test_a_given_redshift_beyond_the_grid_has_no_pdf_on_it_and_the_seed_is_checked(gaussian_model):
    """A given redshift comes back as given; its pdf is a unit spike at the nearest grid point when the grid
    covers it and zeros when it does not (z = 5 on the default 0-3.5 grid was a spike at 3.5, z = 1e30 one at
    0). `seed` is an integer in [0, 2**63): None, 1.5 (read as 1) and 2**64 are named errors."""
    lsst = random_columns(np.random.default_rng(23), 3)["lsst"]
    z = np.array([0.5, 5.0, 1e30], np.float32)
    out = gaussian_model.predict({"lsst": lsst, "redshift": z}, targets="redshift", return_uncertainty=True)
    np.testing.assert_array_equal(out["redshift"], z)
    pdf = out["redshift_pdf"]
    assert np.argmax(pdf[0]) == np.argmin(np.abs(GRID - 0.5))
    np.testing.assert_allclose(np.trapezoid(pdf[0], GRID), 1.0, rtol=1e-6)
    assert np.all(pdf[1:] == 0.0)
    for seed in (None, 1.5, 2**64, -1, True):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
            gaussian_model.predict({"lsst": lsst}, targets="redshift", num_samples=2, seed=seed)
    assert gaussian_model.predict({"lsst": lsst}, targets="redshift", num_samples=2, seed=np.int64(3))
