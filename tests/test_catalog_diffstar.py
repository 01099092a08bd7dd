"""The Diffstar SFH model of the catalog generator (the optional 'diffstar' extra): schema, determinism,
sharding, the quenched fraction of DiffstarPop, mass bookkeeping and the SFH conventions."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_mosaic.catalog import physics
from modeling_mosaic.catalog.generator import (
    BLOCK_SIZE,
    CatalogOptions,
    block_draws,
    generate,
    synthesis,
)
from modeling_mosaic.catalog.schema import COLUMNS
from modeling_mosaic.modalities import SFH_TIME_GYR

N_TEST = 12
SEED = 7


def _catalog(start=0, stop=None, **kw) -> dict[str, np.ndarray]:
    options = CatalogOptions(**{"n": N_TEST, "seed": SEED, "sfh_model": "diffstar", **kw})
    chunks = list(generate(options, start, stop))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


@pytest.fixture(scope="module")
def cat():
    return _catalog()


@pytest.fixture(scope="module")
def full_cat():
    return _catalog(sfh_convention="full")


@pytest.fixture(scope="module")
def population():
    """A whole block of the Diffstar population (BLOCK_SIZE galaxies; no SED synthesis)."""
    return block_draws(CatalogOptions(n=1, seed=SEED, sfh_model="diffstar"), 0)[0]


def test_columns_dtypes_and_finite(cat):
    assert list(cat) == [c.name for c in COLUMNS]
    for c in COLUMNS:
        assert cat[c.name].dtype == np.dtype(c.dtype), c.name
        assert cat[c.name].shape == ((N_TEST,) if c.length == 0 else (N_TEST, c.length)), c.name
        assert np.all(np.isfinite(cat[c.name])), c.name
    np.testing.assert_array_equal(cat["galaxy_id"], np.arange(N_TEST))
    assert set(np.unique(cat["quenched"])) <= {0, 1}


def test_same_seed_same_catalog(cat):
    again = _catalog()
    for name in cat:
        np.testing.assert_array_equal(again[name], cat[name], err_msg=name)


def test_other_seed_other_catalog(cat):
    other = _catalog(seed=SEED + 1)
    assert not np.array_equal(other["sfh"], cat["sfh"])


def test_shards_concatenate_to_the_catalog(cat):
    parts = [_catalog(0, 5), _catalog(5, N_TEST)]
    for name in cat:
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), cat[name], err_msg=name)


def test_quenched_fraction_of_diffstarpop(population):
    """DiffstarPop's quenched label (mc_is_q, the real mocks' label: the SFH has a quenching event, often
    still ahead at the epoch of a high-z galaxy) marks about a third of the centrals of an M_h > 1e11
    lightcone (~0.36 in diffsky's own lightcone); the galaxies already below the quiescent sSFR cut at their
    epoch are almost all among them."""
    assert population.quenched.size == BLOCK_SIZE
    assert 0.25 <= population.quenched.mean() <= 0.5
    quiescent = physics.quenched_by_ssfr(population.log_sfr_100myr, population.log_stellar_mass,
                                         population.cosmic_time_gyr)
    assert quiescent[~population.quenched].mean() <= 0.02
    assert quiescent[population.quenched].mean() > 2 * quiescent[~population.quenched].mean()


def test_mass_bookkeeping_of_the_population(population):
    """Mass per age bin adds up to the formed mass, and surviving it to the stellar mass (both < formed)."""
    formed = population.mass_in_age_bins.sum(axis=1)
    np.testing.assert_allclose(np.log10(formed), population.log_formed_mass, atol=1e-9)
    surviving = synthesis().ssp.surviving_fraction(population.log_metallicity)
    np.testing.assert_allclose(
        np.log10((population.mass_in_age_bins * surviving).sum(axis=1)), population.log_stellar_mass, atol=1e-9
    )
    assert np.all(population.log_stellar_mass < population.log_formed_mass)
    assert np.all((population.log_halo_mass >= 11.0) & (population.redshift <= 3.0))


def test_stored_sfh_integral_times_surviving_fraction_is_the_stellar_mass(full_cat):
    """Integrate the stored (float32) SFH numerically over each SSP age bin, on a fine grid of ages, and
    weight by the grid's surviving fraction: within 0.1 dex of the stored stellar mass."""
    grid = synthesis().ssp
    t = np.asarray(SFH_TIME_GYR)
    surviving = grid.surviving_fraction(full_cat["log_metallicity"].astype(np.float64))
    for i in range(N_TEST):
        t_obs = float(full_cat["cosmic_time_gyr"][i])
        sfr = full_cat["sfh"][i].astype(np.float64)
        mass = np.zeros(grid.n_ages)
        for a in range(grid.n_ages):
            ages = np.linspace(grid.age_edges[a], grid.age_edges[a + 1], 201)  # yr
            times = t_obs - ages / 1e9
            rate = np.where(times >= t[0], np.interp(times, t, sfr), 0.0)
            mass[a] = np.sum(0.5 * (rate[1:] + rate[:-1]) * np.diff(ages))
        assert abs(np.log10(mass.sum()) - full_cat["log_formed_mass"][i]) <= 0.1, i
        assert abs(np.log10(np.sum(mass * surviving[i])) - full_cat["log_stellar_mass"][i]) <= 0.1, i


def test_observed_convention_is_the_full_history_cut_at_the_epoch(cat, full_cat):
    t = np.asarray(SFH_TIME_GYR)[None, :]
    after = t > cat["cosmic_time_gyr"][:, None]
    assert np.all(cat["sfh"][after] == 0.0)
    np.testing.assert_array_equal(cat["sfh"][~after], full_cat["sfh"][~after])
    assert np.all(full_cat["sfh"][after] > 0.0)
    for name in cat:
        if name != "sfh":
            np.testing.assert_array_equal(cat[name], full_cat[name], err_msg=name)
