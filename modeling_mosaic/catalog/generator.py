"""The catalog generator: the public entry point that turns options into chunks of catalog rows.

Rows are made in blocks of BLOCK_SIZE. All randomness of block b comes from np.random.default_rng([seed, b])
and every block draws its full BLOCK_SIZE rows of physics and noise, so row i is the same whatever n, start,
stop or chunking is used: shards concatenate exactly to the unsharded catalog. Only the rows asked for go
through the (expensive) SED synthesis, and memory stays bounded by one block at any n.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ..modalities import MODALITIES, SED_WAVELENGTH_AA, asinh_magnitude
from . import photometry, physics, ssp
from .schema import COLUMNS

BLOCK_SIZE = 4096
SYNTHESIS_CHUNK = 1024  # divides BLOCK_SIZE
Z_MAX_SUPPORTED = 3.0  # the SSP rest grid starts at 700 A: LSST u at z = 3
SFH_MODELS = ("parametric", "diffstar")
SFH_CONVENTIONS = ("observed", "full")
NOISE_MODELS = ("none", "realistic")


@dataclass(frozen=True)
class CatalogOptions:
    n: int  # number of galaxies
    seed: int = 0
    z_max: float = 3.0  # 0 < z <= z_max
    log_halo_mass_min: float = 11.0
    sfh_model: str = "parametric"  # or "diffstar" (needs the optional 'diffstar' extra)
    sfh_convention: str = "observed"  # "observed": SFR = 0 after the epoch; "full": the model's history to 13.8 Gyr
    noise: str = "none"  # "none": flux = true flux; "realistic": true + Gaussian noise with the stored errors
    spherex_depth: str = "deep"  # "deep" or "allsky": the SPHEREx 5-sigma depth behind spherex_flux_err

    def to_dict(self) -> dict:
        return asdict(self)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"CatalogOptions.{name} must be one of {choices}, got {value!r}")


def validate_options(options: CatalogOptions) -> None:
    """Raise a ValueError naming the first bad field (ImportError for a model whose extra is missing)."""
    if not isinstance(options, CatalogOptions):
        raise ValueError(f"expected CatalogOptions, got {type(options).__name__}")  # noqa: TRY004 (the contract)
    for name in ("n", "seed"):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"CatalogOptions.{name} must be an integer, got {value!r}")  # noqa: TRY004
    if options.n < 1:
        raise ValueError(f"CatalogOptions.n must be >= 1, got {options.n}")
    if options.seed < 0:
        raise ValueError(f"CatalogOptions.seed must be >= 0, got {options.seed}")
    if not (np.isfinite(options.z_max) and 0.0 < options.z_max <= Z_MAX_SUPPORTED):
        raise ValueError(f"CatalogOptions.z_max must lie in (0, {Z_MAX_SUPPORTED}], got {options.z_max!r}")
    if not (np.isfinite(options.log_halo_mass_min) and 9.0 <= options.log_halo_mass_min <= 15.0):
        raise ValueError(f"CatalogOptions.log_halo_mass_min must lie in [9, 15], got {options.log_halo_mass_min!r}")
    _check_choice("sfh_model", options.sfh_model, SFH_MODELS)
    _check_choice("sfh_convention", options.sfh_convention, SFH_CONVENTIONS)
    _check_choice("noise", options.noise, NOISE_MODELS)
    _check_choice("spherex_depth", options.spherex_depth, photometry.SPHEREX_DEPTHS)
    if options.sfh_model == "diffstar":
        try:
            import diffstar  # noqa: F401
        except ImportError:
            raise ImportError(
                "CatalogOptions.sfh_model='diffstar' needs the optional 'diffstar' extra: "
                "pip install 'mosaic-galaxy[diffstar]'"
            ) from None


# ------------------------------------------------------------------------------------------ the machinery
@dataclass(frozen=True)
class Synthesis:
    """The per-process tables of the pipeline: SSP grid, filters, dust curve, rest-SED rebinning."""

    ssp: ssp.SSPGrid
    bands: photometry.FilterBank  # the LSST bands, then the SPHEREx channels
    attenuation: np.ndarray  # A_lambda / A_V on the SSP grid
    sed_index: np.ndarray  # (256, k) SSP-grid pixels averaged into each bin of the registry's SED grid
    sed_weight: np.ndarray  # (256, k) their weights (ssp.sparse_columns of the bin-averaging matrix)


@lru_cache(maxsize=1)
def synthesis() -> Synthesis:
    grid = ssp.load_ssp_grid()
    sed_edges = np.log(ssp.log_edges(np.asarray(SED_WAVELENGTH_AA)))
    sed_index, sed_weight = ssp.sparse_columns(ssp.overlap_matrix(np.log(ssp.log_edges(grid.wavelength)), sed_edges))
    return Synthesis(
        ssp=grid,
        bands=photometry.FilterBank(
            grid.wavelength, grid.resolution,
            photometry.lsst_filter_curves() + photometry.spherex_filter_curves(), Z_MAX_SUPPORTED,
        ),
        attenuation=physics.calzetti_k(grid.wavelength / 1e4) / 4.05,
        sed_index=sed_index,
        sed_weight=sed_weight,
    )


def block_draws(options: CatalogOptions, block: int):
    """All random draws of one block, in their fixed order: the galaxy population (BLOCK_SIZE rows, with the
    chosen SFH model; Diffstar's jax key is itself drawn from the block's rng) and the standard-normal noise
    realisations of the LSST and SPHEREx fluxes."""
    rng = np.random.default_rng([options.seed, block])
    sample = physics.sample_diffstar_population if options.sfh_model == "diffstar" else physics.sample_population
    pop = sample(rng, BLOCK_SIZE, options.z_max, options.log_halo_mass_min, synthesis().ssp)
    lsst_draw = rng.standard_normal((BLOCK_SIZE, MODALITIES["lsst"].length))
    spherex_draw = rng.standard_normal((BLOCK_SIZE, MODALITIES["spherex"].length))
    return pop, lsst_draw, spherex_draw


def _synthesize(options: CatalogOptions, pop: physics.Population, lsst_draw, spherex_draw, tables: Synthesis):
    """Every per-galaxy column except galaxy_id, for one synthesis chunk."""
    lnu = tables.ssp.synthesize(pop.mass_in_age_bins, pop.log_metallicity, pop.dust_av, tables.attenuation)
    distance = physics.cosmology().luminosity_distance(pop.redshift)
    out = {
        "redshift": pop.redshift,
        "log_halo_mass": pop.log_halo_mass,
        "log_stellar_mass": pop.log_stellar_mass,
        "sfh": pop.sfh_table(options.sfh_convention),
        "sed": ssp.apply_columns(lnu, tables.sed_index, tables.sed_weight),
        "cosmic_time_gyr": pop.cosmic_time_gyr,
        "log_formed_mass": pop.log_formed_mass,
        "log_metallicity": pop.log_metallicity,
        "dust_av": pop.dust_av,
        "log_sfr_100myr": pop.log_sfr_100myr,
        "quenched": pop.quenched,
    }
    errors = {"lsst": photometry.lsst_sigma_njy(), "spherex": photometry.spherex_sigma_njy(options.spherex_depth)}
    fluxes = photometry.flux_njy(tables.bands.band_lnu(lnu, pop.redshift), pop.redshift, distance)
    n_lsst = MODALITIES["lsst"].length
    for name, true, draw in (("lsst", fluxes[:, :n_lsst], lsst_draw), ("spherex", fluxes[:, n_lsst:], spherex_draw)):
        err = np.broadcast_to(errors[name], true.shape)
        flux = true + err * draw if options.noise == "realistic" else true
        softening = MODALITIES[name].softening_njy
        out.update({
            f"{name}_flux_true": true, f"{name}_flux": flux, f"{name}_flux_err": err,
            name: asinh_magnitude(flux, softening), f"{name}_true": asinh_magnitude(true, softening),
        })
    return out


def _block(options: CatalogOptions, block: int, lo: int, hi: int, tables: Synthesis) -> dict[str, np.ndarray]:
    """Rows [lo, hi) of block `block` (offsets within the block). The rows are synthesised in chunks aligned
    to multiples of SYNTHESIS_CHUNK, so each row meets exactly the same arithmetic (BLAS kernels and SIMD
    paths depend on array shapes) whatever range is asked for, and shards match bit for bit. The BLAS runs on
    one thread: with OpenBLAS's Haswell kernels (an AVX2 machine) a catalog's SEDs and fluxes differed in
    their last bit between one BLAS thread and two."""
    from threadpoolctl import threadpool_limits

    pop, lsst_draw, spherex_draw = block_draws(options, block)
    first = lo // SYNTHESIS_CHUNK * SYNTHESIS_CHUNK
    with threadpool_limits(limits=1, user_api="blas"):
        parts = [
            _synthesize(options, pop.take(slice(s, s + SYNTHESIS_CHUNK)), lsst_draw[s:s + SYNTHESIS_CHUNK],
                        spherex_draw[s:s + SYNTHESIS_CHUNK], tables)
            for s in range(first, hi, SYNTHESIS_CHUNK)
        ]
    out = {k: np.concatenate([p[k] for p in parts])[lo - first: hi - first] for k in parts[0]}
    out["galaxy_id"] = np.arange(block * BLOCK_SIZE + lo, block * BLOCK_SIZE + hi, dtype=np.int64)
    return {c.name: np.ascontiguousarray(out[c.name], dtype=c.dtype) for c in COLUMNS}


def generate(
    options: CatalogOptions, start: int = 0, stop: int | None = None, progress: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Yield chunks (column -> array, exactly schema.COLUMNS with their dtypes, vectors as (rows, length))
    covering rows [start, stop) of the catalog, one chunk per block touched. galaxy_id = row index."""
    validate_options(options)
    stop = options.n if stop is None else stop
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"generate: {name} must be an integer, got {value!r}")  # noqa: TRY004
    if not 0 <= start <= stop <= options.n:
        raise ValueError(f"generate: need 0 <= start <= stop <= n = {options.n}, got start={start}, stop={stop}")
    tables = synthesis()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, unit="gal", desc="catalog")
    try:
        row = start
        while row < stop:
            block = row // BLOCK_SIZE
            hi = min(stop, (block + 1) * BLOCK_SIZE)
            yield _block(options, block, row - block * BLOCK_SIZE, hi - block * BLOCK_SIZE, tables)
            if bar is not None:
                bar.update(hi - row)
            row = hi
    finally:
        if bar is not None:
            bar.close()
