"""The catalog's column schema: the seven modalities (from the registry) plus the per-galaxy extras.

Every catalog MOSAIC reads or writes, generated or imported, has exactly these columns. Vectors are
fixed-length float32 lists; the lengths of the modality columns come from the modality registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..modalities import MODALITIES

N_LSST = MODALITIES["lsst"].length
N_SPHEREX = MODALITIES["spherex"].length


@dataclass(frozen=True)
class Column:
    name: str
    length: int  # 0 for a scalar
    dtype: str  # numpy dtype name
    unit: str
    description: str
    modality: bool = False  # one of the seven learned modalities


def _modality_columns():
    return [
        Column(m.name, 0 if m.is_scalar else m.length, "float32", m.unit, m.description, modality=True)
        for m in MODALITIES.values()
    ]


COLUMNS: tuple[Column, ...] = (
    Column("galaxy_id", 0, "int64", "", "unique id within the catalog (global across shards)"),
    *_modality_columns(),
    Column("cosmic_time_gyr", 0, "float32", "Gyr", "age of the Universe at the galaxy's redshift (its epoch)"),
    Column("log_formed_mass", 0, "float32", "log10(Msun)", "total mass formed (integral of the SFH)"),
    Column("log_metallicity", 0, "float32", "log10(Z/Zsun)", "stellar metallicity"),
    Column("dust_av", 0, "float32", "mag", "V-band attenuation of the stellar continuum"),
    Column("log_sfr_100myr", 0, "float32", "log10(Msun/yr)", "SFR averaged over the last 100 Myr (floor 1e-6)"),
    Column("quenched", 0, "int8", "", "1 quenched, 0 star-forming (population label); -1 unknown (imported)"),
    Column("lsst_flux_true", N_LSST, "float32", "nJy", "noise-free LSST ugrizy fluxes"),
    Column("lsst_flux", N_LSST, "float32", "nJy", "LSST fluxes with the catalog's noise model applied"),
    Column("lsst_flux_err", N_LSST, "float32", "nJy", "1-sigma error of the LSST 10-year depth model, stored even when noise='none'"),
    Column("lsst_true", N_LSST, "float32", "AB asinh mag", "asinh magnitudes of the noise-free fluxes"),
    Column("spherex_flux_true", N_SPHEREX, "float32", "nJy", "noise-free SPHEREx fluxes"),
    Column("spherex_flux", N_SPHEREX, "float32", "nJy", "SPHEREx fluxes with the catalog's noise model applied"),
    Column("spherex_flux_err", N_SPHEREX, "float32", "nJy", "1-sigma error of the SPHEREx depth model (deep or all-sky), stored even when noise='none'"),
    Column("spherex_true", N_SPHEREX, "float32", "AB asinh mag", "asinh magnitudes of the noise-free fluxes"),
)

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMNS_BY_NAME = {c.name: c for c in COLUMNS}
