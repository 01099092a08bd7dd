"""Observed-frame photometry: filter curves, synthetic fluxes of redshifted spectra, and depth-model noise.

Filters: LSST ugrizy from speclite (`lsst2023-*`), SPHEREx's 102 channels from sedpy's measured responses
(`spherex_band{1..6}.par`, 17 channels each, clipped below 1% of the peak where the measurement noise floor
begins). Fluxes are photon-counting AB means, <f_nu> = int f_nu T dlnlambda / int T dlnlambda, in nJy.

Depths: LSST 10-year point-source 5-sigma depths from the modality registry; SPHEREx 5-sigma depths of the
all-sky survey or the deep fields from the public v28 CBE sensitivity table (data/spherex_psf_sens_v28_cbe.txt),
interpolated to the channel centres.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from ..modalities import AB_ZERO_POINT_NJY, LSST_BANDS, LSST_M5_10YR, SPHEREX_CENTRES_AA
from .physics import madau95_transmission

SPHEREX_NOISE_FLOOR = 0.01  # fraction of a channel's peak response below which sedpy's curve is noise
SPHEREX_DEPTH_FILE = "spherex_psf_sens_v28_cbe.txt"
SPHEREX_DEPTHS = ("deep", "allsky")
_SUPERSAMPLE = 16  # sub-samples per pixel when averaging a filter curve over a pixel
LYMAN_ALPHA_AA = 1215.67


# ------------------------------------------------------------------------------------------ filter curves
def lsst_filter_curves() -> list[tuple[np.ndarray, np.ndarray]]:
    """(wavelength A, response) of LSST u, g, r, i, z, y (speclite lsst2023-*)."""
    import speclite.filters

    curves = []
    for band in LSST_BANDS:
        f = speclite.filters.load_filter(f"lsst2023-{band}")
        curves.append((np.asarray(f.wavelength, dtype=np.float64), np.asarray(f.response, dtype=np.float64)))
    return curves


def spherex_filter_curves() -> list[tuple[np.ndarray, np.ndarray]]:
    """(wavelength A, response) of the 102 SPHEREx channels, band 1 channel 1 first (sedpy's measurements)."""
    spec = find_spec("sedpy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the SPHEREx filter curves come from sedpy: pip install 'mosaic-galaxy[sim]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "filters"
    curves = []
    for band in range(1, 7):
        table = np.loadtxt(folder / f"spherex_band{band}.par")
        for channel in range(1, 18):
            response = np.clip(table[:, channel], 0.0, None)
            response = np.where(response > SPHEREX_NOISE_FLOOR * response.max(), response, 0.0)
            curves.append((table[:, 0], response))
    return curves


def pixel_average(wave, response, centres, resolution) -> np.ndarray:
    """Mean of a filter curve over each pixel of a log-wavelength grid (zero outside the curve)."""
    offsets = (np.arange(_SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - 0.5
    fine = centres[:, None] * np.exp(offsets[None, :] / resolution)
    return np.interp(fine, wave, response, left=0.0, right=0.0).mean(axis=1)


# ------------------------------------------------------------------------------------------ synthesis
class FilterBank:
    """Band-averaged luminosities of rest-frame spectra seen at redshift z.

    The rest grid is log-spaced, lambda_j = lambda_0 exp(j / R), so at redshift z rest pixel j lands on pixel
    j + R ln(1 + z) of the same grid extended redwards (the observed grid). With R ln(1 + z) = k + phi (k an
    integer), the observed pixel-mean spectrum is (1 - phi) L_{m-k} + phi L_{m-k-1} (exact for piecewise-
    constant pixels). Each row is shifted by one strided copy from a zero-padded buffer; then all bands are one
    matmul against [T_m, T_(m+1)], whose two halves are mixed with weights (1 - phi, phi). The IGM multiplies
    the rest pixels blueward of Lyman alpha, the only ones it touches."""

    def __init__(self, rest_wavelength, resolution, curves, z_max: float):
        self.rest_wavelength = np.asarray(rest_wavelength, dtype=np.float64)
        self.resolution = float(resolution)
        self.z_max = float(z_max)
        self.max_shift = int(np.ceil(resolution * np.log1p(z_max))) + 1
        self.n_obs = self.rest_wavelength.size + self.max_shift + 1
        obs = self.rest_wavelength[0] * np.exp(np.arange(self.n_obs) / resolution)
        t = np.stack([pixel_average(w, r, obs, resolution) for w, r in curves], axis=1)  # (n_obs, B)
        total = t.sum(axis=0)
        if np.any(total <= 0):
            raise ValueError("a filter curve does not overlap the observed-frame grid")
        t /= total
        self.n_bands = t.shape[1]
        # [T_m, T_{m+1}]: sum_m T_m ((1 - phi) a_m + phi a_{m-1}) = (1 - phi) sum T_m a_m + phi sum T_{m+1} a_m
        self._curve_pairs = np.ascontiguousarray(
            np.concatenate([t, np.vstack([t[1:], np.zeros((1, self.n_bands))])], axis=1), dtype=np.float32
        )
        self._n_igm = int(np.searchsorted(self.rest_wavelength, LYMAN_ALPHA_AA, side="right"))
        self._igm_table = None

    def _igm(self, z) -> np.ndarray:
        """(n, n_igm) Madau transmission of the rest pixels blueward of Lyman alpha, interpolated linearly in
        z from a table on 0.001 steps (in rest pixels the absorption edges barely move with z)."""
        if self._igm_table is None:
            zg = np.linspace(0.0, self.z_max, round(self.z_max / 1e-3) + 1)
            lam = self.rest_wavelength[None, : self._n_igm] * (1.0 + zg[:, None])
            self._igm_table = (zg, madau95_transmission(lam, zg).astype(np.float32))
        zg, table = self._igm_table
        j = np.clip(np.searchsorted(zg, z) - 1, 0, zg.size - 2)
        w = ((z - zg[j]) / (zg[j + 1] - zg[j])).astype(np.float32)[:, None]
        return table[j] * (1.0 - w) + table[j + 1] * w

    def observed_spectra(self, lnu, z):
        """Rest L_nu (n, W) moved to the observed grid with the IGM applied (lnu is not modified): returns
        (at_k, phi) with at_k[i, m] = L_i[m - k_i] (n, n_obs) float32, the observed pixel-mean spectrum being
        (1 - phi) at_k[:, m] + phi at_k[:, m - 1]."""
        z = np.asarray(z, dtype=np.float64)
        if np.any(z < 0) or np.any(z > self.z_max + 1e-9):
            raise ValueError(f"redshifts must lie in [0, {self.z_max}]")
        n, n_rest = lnu.shape
        shift = self.resolution * np.log1p(z)
        k = np.floor(shift).astype(np.int64)
        pad = self.max_shift
        padded = np.zeros((n, pad + self.n_obs), dtype=np.float32)
        padded[:, pad: pad + n_rest] = lnu
        padded[:, pad: pad + self._n_igm] *= self._igm(z)
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.n_obs, axis=1)
        return windows[np.arange(n), pad - k], shift - k

    def band_lnu(self, lnu, z) -> np.ndarray:
        """(n, B) photon-weighted mean rest L_nu over each band's observed-frame response (IGM included)."""
        at_k, phi = self.observed_spectra(lnu, z)
        both = (at_k @ self._curve_pairs).astype(np.float64)
        return (1.0 - phi)[:, None] * both[:, : self.n_bands] + phi[:, None] * both[:, self.n_bands:]


def flux_njy(band_lnu, z, luminosity_distance_cm) -> np.ndarray:
    """Observed <f_nu> in nJy from band-averaged rest L_nu (erg/s/Hz): f_nu = (1 + z) L_nu / (4 pi d_L^2)."""
    z = np.asarray(z, dtype=np.float64)
    factor = (1.0 + z) / (4.0 * np.pi * np.asarray(luminosity_distance_cm, dtype=np.float64) ** 2) * 1e32
    return np.asarray(band_lnu, dtype=np.float64) * factor[:, None]


# ------------------------------------------------------------------------------------------ depths, noise
def depth_sigma_njy(m5_ab) -> np.ndarray:
    """1-sigma flux error of a 5-sigma point-source depth (AB mag), in nJy."""
    return AB_ZERO_POINT_NJY * 10 ** (-0.4 * np.asarray(m5_ab, dtype=np.float64)) / 5.0


def lsst_sigma_njy() -> np.ndarray:
    """(6,) LSST 10-year 1-sigma errors (the registry's depths)."""
    return depth_sigma_njy(LSST_M5_10YR)


@lru_cache(maxsize=2)
def spherex_m5(depth: str) -> np.ndarray:
    """(102,) SPHEREx 5-sigma AB depths at the registry's channel centres ('deep' or 'allsky')."""
    if depth not in SPHEREX_DEPTHS:
        raise ValueError(f"spherex_depth must be one of {SPHEREX_DEPTHS}, got {depth!r}")
    text = resources.files("modeling_mosaic.catalog").joinpath("data", SPHEREX_DEPTH_FILE).read_text()
    table = np.loadtxt(text.splitlines())
    column = 2 if depth == "deep" else 1
    return np.interp(np.asarray(SPHEREX_CENTRES_AA) / 1e4, table[:, 0], table[:, column])


def spherex_sigma_njy(depth: str) -> np.ndarray:
    """(102,) SPHEREx 1-sigma errors at the chosen depth."""
    return depth_sigma_njy(spherex_m5(depth))
