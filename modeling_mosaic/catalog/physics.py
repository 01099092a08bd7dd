"""The galaxy population: lightcone, halos, stellar masses, star-formation histories, metals and dust.

Each ingredient is a published relation, one function each:
  cosmology          Last Journey (flat LCDM, Om0 0.30964, Ob0 0.048975, h 0.6766), astropy, tabulated
  halo lightcone     diffsky's Last-Journey-calibrated cumulative halo mass function x comoving volume
  stellar mass       Behroozi, Wechsler & Conroy (2013) stellar-to-halo relation and its scatter
  star formation     Speagle et al. (2014) main sequence; quenched galaxies leave it at a quenching time
                     and their SFR drops exponentially (see `ParametricSFH`)
  metallicity        a stellar mass-metallicity relation with the shape of Gallazzi et al. (2005)
  dust               Garn & Best (2010) A_Halpha(M*), A_V(stars) = 0.44 A_V(gas), Calzetti et al. (2000) curve
  IGM                Madau (1995) Lyman-series and Lyman-continuum absorption
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
from scipy.special import gammainc, gammaln

from ..modalities import SFH_TIME_GYR

# ------------------------------------------------------------------------------------------ cosmology
LAST_JOURNEY = {"H0": 67.66, "Om0": 0.30964, "Ob0": 0.048975}
MPC_CM = 3.0856775814913673e24
_Z_TABLE_MAX = 3.0
_Z_TABLE_STEP = 5.0e-4


@dataclass(frozen=True)
class CosmologyTable:
    """Age, luminosity distance and comoving volume tabulated once on a fine redshift grid (linear
    interpolation on 0.0005 steps is exact to ~1e-7, and far faster than astropy per galaxy)."""

    z: np.ndarray
    age_gyr: np.ndarray
    luminosity_distance_cm: np.ndarray
    dvdz_mpc3_sr: np.ndarray  # differential comoving volume per unit redshift and steradian

    def age(self, z):
        return np.interp(z, self.z, self.age_gyr)

    def luminosity_distance(self, z):
        return np.interp(z, self.z, self.luminosity_distance_cm)


@lru_cache(maxsize=1)
def cosmology() -> CosmologyTable:
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(**LAST_JOURNEY, Tcmb0=0.0, name="Last Journey")
    z = np.linspace(0.0, _Z_TABLE_MAX, round(_Z_TABLE_MAX / _Z_TABLE_STEP) + 1)
    return CosmologyTable(
        z=z,
        age_gyr=cosmo.age(z).value,
        luminosity_distance_cm=cosmo.luminosity_distance(z).value * MPC_CM,
        dvdz_mpc3_sr=cosmo.differential_comoving_volume(z).value,
    )


# ------------------------------------------------------------------------------------------ halos
# diffsky's Last Journey fit (diffsky/mass_functions/hmf_calibrations/lj_hmf_params.txt, BSD-3)
_LJ_HMF = {"ytp": (-5.63, 0.70, 0.97, -0.35, -1.19), "x0": (13.43, 2.06, 0.65, -1.00, -0.29),
           "lo": (3.55, 0.73, -0.72, -2.90), "hi": (-5.34, 4.47, 1.22, -0.47, -0.29)}
LOG_HALO_MASS_MAX = 16.0


def _sigmoid(x, x0, k, lo, hi):
    return lo + (hi - lo) / (1.0 + np.exp(-k * (x - x0)))


def _sigmoid_slope(x, x_tp, y_tp, x0, k, lo, hi):
    return y_tp + _sigmoid(x, x0, k, lo, hi) * (x - x_tp)


def log_cumulative_hmf(log_mass, z):
    """log10 n(>M) in comoving Mpc^-3 (M in Msun), diffsky's Last Journey calibration."""
    p = _LJ_HMF
    y_tp = _sigmoid_slope(z, 3.0, *p["ytp"])
    x0 = _sigmoid_slope(z, 3.0, *p["x0"])
    lo = _sigmoid(z, *p["lo"])
    hi = _sigmoid_slope(z, 3.0, *p["hi"])
    return _sigmoid_slope(log_mass, 13.0, y_tp, x0, 1.2, lo, hi)


def sample_lightcone(rng, n: int, z_max: float, log_mass_min: float):
    """(z, log10 M_halo) of n halos above log_mass_min in a lightcone 0 < z <= z_max: z from the marginal
    n(>M_min, z) dV/dz, then the mass by inverting the cumulative mass function at that z."""
    table = cosmology()
    zg = table.z[table.z <= z_max + 1e-12]
    density = 10 ** log_cumulative_hmf(log_mass_min, zg) * table.dvdz_mpc3_sr[: zg.size]
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(zg))])
    z = np.interp(rng.random(n) * cdf[-1], cdf, zg)
    z = np.clip(z, 1e-4, z_max)
    # n(>M) = u n(>M_min): bisection on the monotonic cumulative mass function
    target = np.log10(rng.random(n)) + log_cumulative_hmf(log_mass_min, z)
    lo, hi = np.full(n, float(log_mass_min)), np.full(n, LOG_HALO_MASS_MAX)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        above = log_cumulative_hmf(mid, z) > target
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return z, 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------ stellar mass
def behroozi13_log_mstar(log_halo_mass, z):
    """Median log10 M* at a peak halo mass (Behroozi, Wechsler & Conroy 2013, eqs. 3-4)."""
    a = 1.0 / (1.0 + z)
    nu = np.exp(-4.0 * a * a)
    log_eps = -1.777 + (-0.006 * (a - 1.0)) * nu - 0.119 * (a - 1.0)
    log_m1 = 11.514 + (-1.793 * (a - 1.0) - 0.251 * z) * nu
    alpha = -1.412 + (0.731 * (a - 1.0)) * nu
    delta = 3.508 + (2.608 * (a - 1.0) - 0.043 * z) * nu
    gamma = 0.316 + (1.319 * (a - 1.0) + 0.279 * z) * nu

    def f(x):
        return -np.log10(10 ** (alpha * x) + 1.0) + delta * np.log10(1.0 + np.exp(x)) ** gamma / (1.0 + np.exp(10 ** (-x)))

    return log_eps + log_m1 + f(log_halo_mass - log_m1) - f(0.0)


def behroozi13_scatter(z):
    """Log-normal scatter of M* at fixed halo mass (Behroozi+13: xi = 0.218 - 0.023 (a - 1))."""
    return 0.218 - 0.023 * (1.0 / (1.0 + z) - 1.0)


# ------------------------------------------------------------------------------------------ star formation
def speagle14_log_sfr(log_mstar, t_gyr):
    """Main-sequence log10 SFR (Msun/yr) at cosmic time t (Speagle et al. 2014, eq. 28)."""
    return (0.84 - 0.026 * t_gyr) * log_mstar - (6.51 - 0.11 * t_gyr)


MAIN_SEQUENCE_SCATTER = 0.25


def quenched_fraction(log_mstar, z):
    """Fraction of central galaxies that are quenched: logistic in log M*, rising with mass and moving to
    higher mass with redshift: ~0.4 at 10^10.5 Msun and z ~ 0.25, ~0.8 at 10^11, ~0.06 at 10^10.5 and z = 2
    (the observed quiescent fractions of e.g. Baldry et al. 2006, Muzzin et al. 2013)."""
    return 1.0 / (1.0 + np.exp(-(log_mstar - (10.55 + 0.45 * z)) / 0.35))


def quenched_by_ssfr(log_sfr, log_mstar, t_gyr):
    """The usual evolving cut: quenched when sSFR < 0.2 / t_universe (Pacifici et al. 2016)."""
    return log_sfr - log_mstar < np.log10(0.2 / (t_gyr * 1e9))


@dataclass(frozen=True)
class ParametricSFH:
    """SFR(t) = A x^p exp(-x), x = (t - t_start) / tau (t in Gyr, SFR in Msun/yr), up to the quenching time
    t_quench; afterwards SFR(t_quench) exp(-(t - t_quench) / tau_quench). Star-forming galaxies have
    t_quench = inf. Everything is per galaxy (arrays of length n); the formed mass has a closed form, so
    mass per SSP age bin is exact however narrow the bin."""

    t_start: np.ndarray
    tau: np.ndarray
    p: np.ndarray
    log_a: np.ndarray  # natural log of A
    t_quench: np.ndarray
    tau_quench: np.ndarray

    def _gamma_x(self, t):
        return np.clip(t - self.t_start[:, None], 0.0, None) / self.tau[:, None]

    def _gamma_sfr(self, t):
        x = self._gamma_x(t)
        with np.errstate(divide="ignore"):
            return np.where(x > 0, np.exp(self.log_a[:, None] + self.p[:, None] * np.log(x) - x), 0.0)

    def _gamma_mass(self, t):
        x = self._gamma_x(t)
        s = self.p[:, None] + 1.0
        log_mass = self.log_a[:, None] + np.log(self.tau)[:, None] + gammaln(s) + np.log(np.maximum(gammainc(s, x), 1e-300))
        return np.where(x > 0, np.exp(log_mass) * 1e9, 0.0)

    def _times(self, t_gyr):
        return np.broadcast_to(np.asarray(t_gyr, dtype=np.float64), (self.t_start.size, np.shape(t_gyr)[-1]))

    def sfr(self, t_gyr) -> np.ndarray:
        """(n, T) SFR in Msun/yr at cosmic times t (T,) or (n, T)."""
        t = self._times(t_gyr)
        tq = self.t_quench[:, None]
        return self._gamma_sfr(np.minimum(t, tq)) * np.exp(-np.clip(t - tq, 0.0, None) / self.tau_quench[:, None])

    def formed_mass(self, t_gyr) -> np.ndarray:
        """(n, T) mass formed (Msun) before cosmic times t (T,) or (n, T)."""
        t = self._times(t_gyr)
        tq = self.t_quench[:, None]
        before = np.minimum(t, tq)
        after = np.clip(t - tq, 0.0, None)
        tail = self._gamma_sfr(before) * self.tau_quench[:, None] * 1e9 * -np.expm1(-after / self.tau_quench[:, None])
        return self._gamma_mass(before) + tail

    def scaled(self, factor) -> ParametricSFH:
        return ParametricSFH(**{**self.__dict__, "log_a": self.log_a + np.log(factor)})

    def take(self, rows) -> ParametricSFH:
        return ParametricSFH(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


@dataclass(frozen=True)
class TabulatedSFH:
    """SFR tabulated on the registry's SFH_TIME_GYR (n, 100) in Msun/yr, linear between the points and zero
    before the first; the formed mass is the exact integral of that piecewise-linear SFR, so the mass per SSP
    age bin agrees with the stored table however narrow the bin."""

    table: np.ndarray

    def sfr(self, t_gyr) -> np.ndarray:
        """(n, T) SFR in Msun/yr at cosmic times t (T,) or (n, T)."""
        j, w, inside = self._locate(t_gyr)
        return np.where(inside, self._lerp(self.table, j, w), 0.0)

    def formed_mass(self, t_gyr) -> np.ndarray:
        """(n, T) mass formed (Msun) before cosmic times t (T,) or (n, T)."""
        grid = np.asarray(SFH_TIME_GYR)
        step = np.diff(grid) * 1e9
        cum = np.concatenate([np.zeros((self.table.shape[0], 1)),
                              np.cumsum(0.5 * (self.table[:, 1:] + self.table[:, :-1]) * step, axis=1)], axis=1)
        j, w, inside = self._locate(t_gyr)
        start = np.take_along_axis(self.table, j, axis=1)
        end = self._lerp(self.table, j, w)
        partial = 0.5 * (start + end) * w * step[j]
        return np.where(inside, np.take_along_axis(cum, j, axis=1) + partial, 0.0)

    def _locate(self, t_gyr):
        """Interval index j, fraction w within it (clamped after the last point), and t >= the first point."""
        grid = np.asarray(SFH_TIME_GYR)
        t = np.broadcast_to(np.asarray(t_gyr, dtype=np.float64), (self.table.shape[0], np.shape(t_gyr)[-1]))
        q = np.clip(t, grid[0], grid[-1])
        j = np.clip(np.searchsorted(grid, q) - 1, 0, grid.size - 2)
        return j, (q - grid[j]) / (grid[j + 1] - grid[j]), t >= grid[0]

    @staticmethod
    def _lerp(table, j, w):
        return np.take_along_axis(table, j, axis=1) * (1.0 - w) + np.take_along_axis(table, j + 1, axis=1) * w

    def take(self, rows) -> TabulatedSFH:
        return TabulatedSFH(self.table[rows])


def _x_at_ssfr_age(g, p):
    """x such that sSFR x age = x^(p+1) e^-x / lower_gamma(p+1, x) equals g (decreasing in x; bisection)."""
    s = p + 1.0
    lo, hi = np.full(g.shape, -8.0), np.full(g.shape, 6.0)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        x = np.exp(mid)
        log_g = s * mid - x - gammaln(s) - np.log(np.maximum(gammainc(s, x), 1e-300))
        big = log_g > np.log(g)
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    return np.exp(0.5 * (lo + hi))


def draw_parametric_sfh(rng, log_mstar, z, t_obs):
    """Draw SFHs (unnormalised: A = 1 at the reference time) and the quenched label.

    A galaxy starts forming stars at t_start and is on the main sequence (Speagle+14 with 0.25 dex scatter)
    at a reference time: its epoch t_obs if star-forming; if quenched, its quenching time t_q, which lies
    20-80% of its star-forming lifetime before t_obs. After t_q the SFR falls by 1.75-3.25 dex by t_obs
    (exponential with tau_q = (t_obs - t_q) / (drop ln 10)), which puts quenched galaxies below
    sSFR = 0.2 / t_universe and makes their stars old. The shape parameter p is raised where the main
    sequence requires a rising history (sSFR x age up to p + 1)."""
    n = z.size
    quenched = rng.random(n) < quenched_fraction(log_mstar, z)
    t_start = np.minimum(rng.uniform(0.0, 1.5, n), 0.4 * t_obs)
    lifetime = t_obs - t_start
    t_ref = np.where(quenched, t_obs - rng.uniform(0.2, 0.8, n) * lifetime, t_obs)
    log_ssfr = speagle14_log_sfr(log_mstar, t_ref) - log_mstar + MAIN_SEQUENCE_SCATTER * rng.standard_normal(n)
    g = np.minimum(10 ** log_ssfr * 1e9 * (t_ref - t_start), 10.0)
    p = np.maximum(rng.uniform(0.5, 3.0, n), g / 0.85 - 1.0)
    x_ref = _x_at_ssfr_age(g, p)
    drop_dex = rng.uniform(1.75, 3.25, n)
    sfh = ParametricSFH(
        t_start=t_start,
        tau=(t_ref - t_start) / x_ref,
        p=p,
        log_a=-(p * np.log(x_ref) - x_ref),
        t_quench=np.where(quenched, t_ref, np.inf),
        tau_quench=np.where(quenched, (t_obs - t_ref) / (drop_dex * np.log(10.0)), 1.0),
    )
    return sfh, quenched


# ------------------------------------------------------------------------------------------ metals, dust
def mass_metallicity(log_mstar, z):
    """Median stellar log10(Z/Zsun): flat ~0.1 above 10^10.5 Msun, falling ~0.5 dex per dex below
    10^9.8 Msun (the shape of Gallazzi et al. 2005 at z ~ 0.1), 0.1 dex lower per unit redshift."""
    return 0.1 - np.log10(1.0 + 10 ** (-0.6 * (log_mstar - 9.8))) - 0.1 * z


METALLICITY_SCATTER = 0.15


def calzetti_k(lam_um):
    """Calzetti et al. (2000) k(lambda) (R_V = 4.05), linear in 1/lambda below 0.12 um, zero where the
    red branch turns negative (> 3.1 um)."""
    lam = np.asarray(lam_um, dtype=np.float64)

    def blue(x):
        return 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + 4.05

    k = np.where(lam < 0.63, blue(np.maximum(lam, 0.12)), 2.659 * (-1.857 + 1.040 / lam) + 4.05)
    slope = (blue(0.11) - blue(0.12)) / (1.0 / 0.11 - 1.0 / 0.12)
    k = np.where(lam < 0.12, blue(0.12) + slope * (1.0 / lam - 1.0 / 0.12), k)
    return np.clip(k, 0.0, None)


def dust_av(rng, log_mstar, quenched):
    """A_V of the stellar continuum: Garn & Best (2010) A_Halpha(M*), converted with Calzetti to A_V of the
    gas, times 0.44 for the stars; quenched galaxies have 0.3 of it; 0.15 dex log-normal scatter."""
    x = log_mstar - 10.0
    a_halpha = np.clip(0.91 + 0.77 * x + 0.11 * x**2 - 0.09 * x**3, 0.0, 3.0)
    av_gas = a_halpha * 4.05 / calzetti_k(0.6563)
    return 0.44 * av_gas * np.where(quenched, 0.3, 1.0) * 10 ** (0.15 * rng.standard_normal(log_mstar.size))


_LYMAN_SERIES = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.54, 1.2e-3), (949.74, 9.3e-4))
_LYMAN_LIMIT_AA = 911.75


def madau95_transmission(lam_obs_aa, z):
    """IGM transmission (Madau 1995) at observed wavelengths lam_obs (n, W) or (W,) for sources at z (n,)."""
    lo = np.asarray(lam_obs_aa, dtype=np.float64)
    zp1 = (1.0 + np.asarray(z, dtype=np.float64))[:, None]
    lo = np.broadcast_to(lo, (zp1.shape[0], lo.shape[-1]))
    tau = np.zeros(lo.shape)
    for lam_j, a_j in _LYMAN_SERIES:
        tau += np.where((lo < lam_j * zp1) & (lo > lam_j), a_j * (lo / lam_j) ** 3.46, 0.0)
    xc = lo / _LYMAN_LIMIT_AA
    continuum = (0.25 * xc**3 * (zp1**0.46 - xc**0.46) + 9.4 * xc**1.5 * (zp1**0.18 - xc**0.18)
                 - 0.7 * xc**3 * (xc**-1.32 - zp1**-1.32) - 0.023 * (zp1**1.68 - xc**1.68))
    tau += np.where((lo < _LYMAN_LIMIT_AA * zp1) & (xc > 1.0), np.clip(continuum, 0.0, None), 0.0)
    return np.where(lo < _LYMAN_LIMIT_AA, 0.0, np.exp(-tau))


# ------------------------------------------------------------------------------------------ the population
@dataclass(frozen=True)
class Population:
    """Everything about n galaxies that the SED synthesis needs, and the catalog's physical columns."""

    redshift: np.ndarray
    cosmic_time_gyr: np.ndarray
    log_halo_mass: np.ndarray
    log_stellar_mass: np.ndarray
    log_formed_mass: np.ndarray
    log_metallicity: np.ndarray
    dust_av: np.ndarray
    log_sfr_100myr: np.ndarray
    quenched: np.ndarray
    mass_in_age_bins: np.ndarray  # (n, A) Msun formed in each SSP age bin
    sfh: ParametricSFH | TabulatedSFH

    def take(self, rows) -> Population:
        return Population(**{f.name: getattr(self, f.name)[rows] if f.name != "sfh" else self.sfh.take(rows)
                             for f in fields(self)})

    def sfh_table(self, convention: str) -> np.ndarray:
        """(n, 100) SFR on the registry's SFH_TIME_GYR; 'observed' sets it to zero after the epoch."""
        t = np.asarray(SFH_TIME_GYR)
        sfr = self.sfh.sfr(t)
        if convention == "observed":
            sfr = np.where(t[None, :] <= self.cosmic_time_gyr[:, None], sfr, 0.0)
        return sfr


def _mass_in_age_bins(sfh, t_obs, ssp) -> np.ndarray:
    """(n, A) Msun formed in each SSP age bin before the epoch t_obs."""
    cum = sfh.formed_mass(t_obs[:, None] - ssp.age_edges[None, :] / 1e9)
    return np.clip(cum[:, :-1] - cum[:, 1:], 0.0, None)


def _population(z, t_obs, log_mh, log_ms, log_z, av, quenched, mass_bins, sfh) -> Population:
    """Assemble a Population, adding the formed mass and the SFR averaged over the last 100 Myr."""
    formed = sfh.formed_mass(np.stack([t_obs - 0.1, t_obs], axis=1))
    sfr_100 = (formed[:, 1] - formed[:, 0]) / 1e8
    return Population(
        redshift=z, cosmic_time_gyr=t_obs, log_halo_mass=log_mh, log_stellar_mass=log_ms,
        log_formed_mass=np.log10(formed[:, 1]), log_metallicity=log_z, dust_av=av,
        log_sfr_100myr=np.log10(np.maximum(sfr_100, 1e-6)), quenched=quenched, mass_in_age_bins=mass_bins, sfh=sfh,
    )


def sample_population(rng, n: int, z_max: float, log_halo_mass_min: float, ssp) -> Population:
    """Draw n galaxies of the lightcone with the parametric SFH model; ssp gives the age bins and the
    surviving fractions that turn the target stellar mass into the SFH normalisation."""
    z, log_mh = sample_lightcone(rng, n, z_max, log_halo_mass_min)
    t_obs = cosmology().age(z)
    log_ms = behroozi13_log_mstar(log_mh, z) + behroozi13_scatter(z) * rng.standard_normal(n)
    sfh, quenched = draw_parametric_sfh(rng, log_ms, z, t_obs)
    log_z = mass_metallicity(log_ms, z) + METALLICITY_SCATTER * rng.standard_normal(n)
    av = dust_av(rng, log_ms, quenched)

    mass_bins = _mass_in_age_bins(sfh, t_obs, ssp)
    norm = 10**log_ms / (mass_bins * ssp.surviving_fraction(log_z)).sum(axis=1)
    return _population(z, t_obs, log_mh, log_ms, log_z, av, quenched, mass_bins * norm[:, None], sfh.scaled(norm))


def sample_diffstar_population(rng, n: int, z_max: float, log_halo_mass_min: float, ssp) -> Population:
    """Draw n galaxies of the lightcone with Diffstar SFHs (the optional 'diffstar' extra): the SFH fixes the
    stellar mass (formed mass x surviving fraction), which sets the metallicity (from the mass at solar
    surviving fractions, a <0.05 dex difference) and the dust, as in the parametric model."""
    from .diffstar_sfh import draw_diffstar_sfh

    z, log_mh = sample_lightcone(rng, n, z_max, log_halo_mass_min)
    t_obs = cosmology().age(z)
    sfr, quenched = draw_diffstar_sfh(rng, log_mh, t_obs, SFH_TIME_GYR)
    sfh = TabulatedSFH(sfr)
    mass_bins = _mass_in_age_bins(sfh, t_obs, ssp)
    log_ms_solar = np.log10((mass_bins * ssp.surviving_fraction(np.zeros(n))).sum(axis=1))
    log_z = mass_metallicity(log_ms_solar, z) + METALLICITY_SCATTER * rng.standard_normal(n)
    log_ms = np.log10((mass_bins * ssp.surviving_fraction(log_z)).sum(axis=1))
    av = dust_av(rng, log_ms, quenched)
    return _population(z, t_obs, log_mh, log_ms, log_z, av, quenched, mass_bins, sfh)
