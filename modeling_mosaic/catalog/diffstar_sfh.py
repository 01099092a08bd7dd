"""Diffstar star-formation histories: the population model behind the Diffsky mocks (optional 'diffstar' extra).

Halo assembly histories come from DiffmahPop and central-galaxy SFHs from DiffstarPop, for halos (z, M_h)
drawn from the Last-Journey lightcone of `physics.sample_lightcone` (the same HMF calibration as diffsky's
LJ_HMF_PARAMS). This follows diffsky.experimental.mc_lightcone_halos.mc_lightcone_diffstar_cens step by step,
except that the halos are given rather than drawn inside it: its Poisson-sized output changes shape at every
call, which costs a fresh JIT compilation (~7 s) per block, whereas a fixed block shape compiles once per
process and yields exactly the rows asked for.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _diffstar():
    """Import the jax stack once, in 64-bit mode (diffsky's own setting), and return the pieces used."""
    import jax

    jax.config.update("jax_enable_x64", True)
    from diffmah import logmh_at_t_obs
    from diffmah.diffmahpop_kernels.bimod_censat_params import DEFAULT_DIFFMAHPOP_PARAMS
    from diffmah.diffmahpop_kernels.mc_bimod_cens import mc_cenpop
    from diffstar.defaults import FB
    from diffstar.diffstarpop import mc_diffstar_sfh_galpop
    from diffstar.diffstarpop.defaults import DEFAULT_DIFFSTARPOP_PARAMS
    from dsps.constants import T_TABLE_MIN
    from dsps.cosmology.flat_wcdm import CosmoParams, age_at_z0

    from .physics import LAST_JOURNEY

    cosmo = CosmoParams(LAST_JOURNEY["Om0"], -1.0, 0.0, LAST_JOURNEY["H0"] / 100.0)
    t0 = float(age_at_z0(*cosmo))

    @jax.jit
    def draw(key, log_mh_obs, t_obs):
        mah_key, sfh_key = jax.random.split(key)
        lgt0 = np.log10(t0)
        # DiffmahPop is calibrated for 10 <= log M_h <= 14.5: draw there, then shift logm0 so that every
        # halo has its own mass at t_obs (diffsky's clip-and-correct)
        clipped = jax.numpy.clip(log_mh_obs, 10.0, 14.5)
        mah = mc_cenpop(DEFAULT_DIFFMAHPOP_PARAMS, np.array([t0]), clipped, t_obs, mah_key, lgt0)[0]
        mah = mah._replace(logm0=mah.logm0 - (logmh_at_t_obs(mah, t_obs, lgt0) - log_mh_obs))
        logmp0 = logmh_at_t_obs(mah, t0, lgt0)
        zeros = jax.numpy.zeros_like(logmp0)
        t_table = jax.numpy.linspace(T_TABLE_MIN, t0, 100)
        upid, lgmu_infall, logmhost_infall, gyr_since_infall = zeros.astype(int) - 1, zeros, logmp0, zeros  # centrals
        _, _, sfh_ms, sfh_q, _, is_q = mc_diffstar_sfh_galpop(
            DEFAULT_DIFFSTARPOP_PARAMS, mah, logmp0, upid, lgmu_infall, logmhost_infall, gyr_since_infall, sfh_key,
            t_table, lgt0=lgt0, fb=FB,
        )
        return t_table, jax.numpy.where(is_q[:, None], sfh_q, sfh_ms), is_q

    return jax.random, draw


def draw_diffstar_sfh(rng, log_halo_mass, t_obs_gyr, times_gyr):
    """(SFR (n, T) in Msun/yr at cosmic times times_gyr (T,), quenched (n,)) of central galaxies in halos of
    log10 M_h at t_obs. The jax key is drawn from rng, so the result is fixed by rng's state."""
    random, draw = _diffstar()
    key = random.PRNGKey(int(rng.integers(2**62)))
    t_table, sfh, quenched = (np.asarray(a) for a in draw(key, np.asarray(log_halo_mass, np.float64),
                                                           np.asarray(t_obs_gyr, np.float64)))
    return interpolate_rows(t_table, sfh, np.asarray(times_gyr, np.float64)), quenched.astype(bool)


def interpolate_rows(x, y, x_new):
    """np.interp of every row of y (n, T) from the shared grid x (T,) onto x_new, clamped at the ends."""
    q = np.clip(x_new, x[0], x[-1])
    j = np.clip(np.searchsorted(x, q) - 1, 0, x.size - 2)
    w = (q - x[j]) / (x[j + 1] - x[j])
    return y[:, j] * (1.0 - w) + y[:, j + 1] * w
