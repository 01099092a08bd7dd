"""Photometric noise drawn on the fly, and measurement errors in the space the network learns in.

A catalog stores each galaxy's noise-free fluxes and their 1-sigma errors (`lsst_flux_true`, `lsst_flux_err`,
and the same for SPHEREx). With `noise_on_the_fly` the training collator draws a new realisation
flux = true + s * err * N(0, 1) every epoch, s uniform in the config's `noise_scale` range, so one catalog
serves many noise levels and the model never memorises one realisation. The normals come from the same
counter-based hash as the masks (a separate stream), so a galaxy's noise is a pure function of
(seed, epoch, galaxy_id) and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np

from .modalities import MODALITIES, asinh_magnitude

#: The modalities whose values are asinh magnitudes of fluxes the catalog stores with errors.
NOISY_MODALITIES = ("lsst", "spherex")
#: The `uniforms` stream of the noise (the masks use stream 0).
NOISE_STREAM = 1
#: The stream of the noise an evaluation draws at chosen depths (`mosaic-evaluate --depth-scale`): independent of
#: training's draws even for the same galaxies.
EVALUATION_NOISE_STREAM = 2
#: The stream of the noise the held-out photometry is redrawn with to calibrate a model over a range of depths
#: (training with `noise_scale`, `mosaic-calibrate --depth-scale`).
CALIBRATION_NOISE_STREAM = 3


def asinh_magnitude_error(flux_njy, flux_err_njy, softening_njy):
    """1-sigma error of an asinh magnitude, to first order: 2.5 / ln 10 * sigma_f / sqrt(f^2 + 4 b^2). It tends
    to the AB-magnitude error 1.0857 sigma_f / f for bright sources and stays finite at zero flux."""
    f = np.asarray(flux_njy, dtype=np.float64)
    b = np.asarray(softening_njy, dtype=np.float64)
    return 2.5 / math.log(10.0) * np.abs(np.asarray(flux_err_njy, dtype=np.float64)) / np.sqrt(f**2 + 4.0 * b**2)


def noise_columns(config) -> list[str]:
    """The catalog columns the collator reads for on-the-fly noise (none when the config does not ask)."""
    if not config.noise_on_the_fly:
        return []
    return [f"{name}_{kind}" for name in NOISY_MODALITIES if name in config.modalities
            for kind in ("flux_true", "flux_err")]


def error_columns(modalities, error_inputs: bool = True) -> list[str]:
    """The catalog columns the measurement errors of the photometry among `modalities` are computed from
    (`evaluation.conditions.Condition.errors`): its measured and true fluxes and flux errors; none for a model
    without `error_inputs`."""
    if not error_inputs:
        return []
    return [f"{n}_{kind}" for n in NOISY_MODALITIES if n in modalities for kind in ("flux", "flux_true", "flux_err")]


def noise_draws(seed: int, epoch: int, galaxy_ids, num: int,
                stream: int = NOISE_STREAM) -> tuple[np.ndarray, np.ndarray]:
    """From the noise stream (or another `stream`): one uniform per galaxy (its noise scale) and
    (len(galaxy_ids), num) standard normals (Box-Muller on pairs of uniforms)."""
    from .masking import uniforms  # masking imports this module

    u = uniforms(seed, epoch, galaxy_ids, 1 + 2 * num, stream=stream)
    radius = np.sqrt(-2.0 * np.log1p(-u[:, 1::2]))  # 1 - u lies in (0, 1]: the log is finite
    return u[:, 0], radius * np.cos(2.0 * math.pi * u[:, 2::2])


def noisy_fluxes(columns, names, noise_scale, seed: int, epoch: int, galaxy_ids,
                 stream: int = NOISE_STREAM) -> tuple[np.ndarray, dict]:
    """One noise realisation of the fluxes of `names` (of NOISY_MODALITIES) -> (each galaxy's scale s (B,),
    {name: (flux, its 1-sigma error s * flux_err)}), s uniform in `noise_scale` = (min, max). The columns
    `{name}_flux_true` and `{name}_flux_err` must be present; NaN true fluxes stay NaN (missing)."""
    lengths = [MODALITIES[n].length for n in names]
    u_scale, normals = noise_draws(seed, epoch, galaxy_ids, sum(lengths), stream)
    low, high = noise_scale
    scale = low + (high - low) * u_scale
    fluxes = {}
    for name, start in zip(names, np.cumsum([0, *lengths[:-1]])):
        true = np.asarray(columns[f"{name}_flux_true"], dtype=np.float64)
        error = scale[:, None] * np.asarray(columns[f"{name}_flux_err"], dtype=np.float64)
        fluxes[name] = (true + error * normals[:, start:start + MODALITIES[name].length], error)
    return scale, fluxes


def noisy_photometry(columns, config, seed: int, epoch: int, galaxy_ids) -> tuple[dict, dict]:
    """One noise realisation of the config's noisy modalities -> ({name: asinh magnitudes (B, L)},
    {name: their 1-sigma errors in asinh magnitudes (B, L)}), the errors evaluated at the noisy flux (what an
    observer knows). NaN true fluxes stay NaN (missing)."""
    names = [n for n in NOISY_MODALITIES if n in config.modalities]
    for column in noise_columns(config):
        if column not in columns:
            raise ValueError(f"batch: noise_on_the_fly needs the column {column!r}, which the batch lacks")
    _, fluxes = noisy_fluxes(columns, names, config.noise_scale, seed, epoch, galaxy_ids)
    magnitudes, errors = {}, {}
    for name, (flux, error) in fluxes.items():
        softening = MODALITIES[name].softening_njy
        magnitudes[name] = asinh_magnitude(flux, softening).astype(np.float32)
        errors[name] = asinh_magnitude_error(flux, error, softening).astype(np.float32)
    return magnitudes, errors


def depth_columns(modalities) -> list[str]:
    """The columns `redraw_photometry` draws from: the noise-free fluxes and the depth model's errors of the
    photometry among `modalities`, and the galaxy ids that seed each galaxy's draw."""
    return ["galaxy_id", *(f"{n}_{kind}" for n in NOISY_MODALITIES if n in modalities
                           for kind in ("flux_true", "flux_err"))]


def redraw_photometry(columns, modalities, depth_scale, seed: int, stream: int = EVALUATION_NOISE_STREAM) -> dict:
    """The rows observed afresh at other depths: each galaxy's fluxes drawn from its noise-free ones with the
    catalog's flux errors times a factor s, uniform in `depth_scale` = (min, max) per galaxy (s = 2 is a survey
    0.75 mag shallower), the asinh magnitudes and the `*_flux`/`*_flux_err` columns the errors are computed from
    replaced, and s kept as `depth_scale`. Seeded by (seed, galaxy_id) on `stream`, so the same rows get the
    same draws in any order and never training's."""
    names = [n for n in NOISY_MODALITIES if n in modalities]
    missing = [c for c in depth_columns(names) if c not in columns]
    if missing:
        raise ValueError(f"redrawing the photometry at other depths needs the column(s) {missing}, which the "
                         "catalog lacks (a generated catalog stores them; an imported one has no noise-free fluxes)")
    scale, fluxes = noisy_fluxes(columns, names, depth_scale, seed, 0, columns["galaxy_id"], stream)
    out = {**columns, "depth_scale": scale}
    for name, (flux, error) in fluxes.items():
        out[name] = asinh_magnitude(flux, MODALITIES[name].softening_njy).astype(np.float32)
        out[f"{name}_flux"], out[f"{name}_flux_err"] = flux, error
    return out


__all__ = ["CALIBRATION_NOISE_STREAM", "EVALUATION_NOISE_STREAM", "NOISY_MODALITIES", "asinh_magnitude_error",
           "depth_columns", "error_columns", "noise_columns", "noise_draws", "noisy_fluxes", "noisy_photometry",
           "redraw_photometry"]
