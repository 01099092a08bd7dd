"""The modality registry: the single source of truth for every modality MOSAIC knows.

Names, kinds, lengths, units, axis grids, photometric softenings and the transform into the space the
network learns in all live here. The catalog generator, the importer, the dataset schema, the model and
the evaluation read this module; none of them re-declares a length or a grid. It depends on numpy only,
because the model's remote code (configuration_mosaic.py) imports it relatively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------------------------- grids
#: Diffsky/Diffstar cosmic-time table: 100 points from 0.01 Gyr to t0 = 13.8 Gyr.
SFH_TIME_GYR = tuple(float(t) for t in np.linspace(0.01, 13.8, 100))

#: Rest-frame SED grid: 256 log-spaced wavelengths from 1000 A to 5 um (covers LSST u at z = 3 down to
#: the rest-frame near-infrared that SPHEREx sees at z ~ 0).
SED_WAVELENGTH_AA = tuple(float(w) for w in np.logspace(3.0, math.log10(5.0e4), 256))

LSST_BANDS = ("u", "g", "r", "i", "z", "y")
#: Approximate pivot wavelengths of the speclite `lsst2023-*` curves (for plots and documentation).
LSST_CENTRES_AA = (3694.0, 4840.0, 6250.0, 7560.0, 8700.0, 9710.0)
#: LSST 10-year coadd point-source 5-sigma depths (photerr 1.6.0 LsstErrorModel).
LSST_M5_10YR = (25.70, 26.92, 27.06, 26.51, 25.78, 24.86)

#: Flux-weighted centres of the 102 SPHEREx channels (sedpy's measured curves, 6 bands x 17 channels).
SPHEREX_BANDS = tuple(f"b{b}c{c:02d}" for b in range(1, 7) for c in range(1, 18))
SPHEREX_CENTRES_AA = (
    7588.2, 7762.9, 7936.9, 8118.9, 8303.8, 8490.4, 8678.5, 8882.9, 9085.5,
    9295.2, 9508.4, 9720.6, 9942.1, 10165.5, 10402.9, 10646.5, 10903.5, 11169.9,
    11436.3, 11708.9, 11989.3, 12265.9, 12552.1, 12843.5, 13146.8, 13453.0, 13767.9,
    14095.1, 14421.9, 14769.3, 15124.6, 15496.4, 15874.3, 16262.7, 16602.1, 16984.2,
    17385.6, 17789.6, 18206.1, 18642.4, 19076.9, 19522.4, 19976.7, 20454.5, 20921.4,
    21410.0, 21917.7, 22426.8, 22945.0, 23472.3, 24016.1, 24603.5, 25203.6, 25900.4,
    26595.2, 27293.5, 28029.3, 28808.0, 29564.8, 30385.8, 31227.0, 32080.8, 32954.0,
    33849.1, 34770.9, 35697.3, 36645.9, 37628.4, 38277.9, 38612.9, 38954.0, 39300.8,
    39644.7, 39998.6, 40351.0, 40708.1, 41066.1, 41425.2, 41792.0, 42152.9, 42521.1,
    42890.0, 43259.6, 43632.3, 44007.2, 44309.4, 44633.6, 44961.0, 45286.9, 45618.7,
    45956.7, 46301.9, 46638.2, 46995.2, 47331.1, 47685.4, 48027.9, 48363.7, 48720.0,
    49082.3, 49443.0, 49802.9,
)

# 1-sigma point-source noise of the SPHEREx deep fields at each channel (v28 CBE, nJy): the asinh softening.
SPHEREX_SOFTENING_NJY = (
    1472, 1488, 1502, 1515, 1527, 1538, 1549, 1559, 1567, 1575, 1582, 1588,
    1593, 1598, 1602, 1605, 1598, 1584, 1573, 1573, 1572, 1571, 1568, 1566,
    1563, 1559, 1555, 1550, 1544, 1539, 1532, 1525, 1518, 1511, 1540, 1558,
    1549, 1540, 1532, 1522, 1513, 1503, 1494, 1484, 1474, 1464, 1454, 1443,
    1433, 1423, 1413, 1332, 1282, 1271, 1261, 1251, 1241, 1233, 1225, 1220,
    1217, 1217, 1222, 1234, 1253, 1283, 1324, 1380, 2036, 2867, 2917, 2971,
    3029, 3092, 3159, 3231, 3307, 3388, 3474, 3564, 3659, 3759, 3864, 3973,
    4088, 4418, 4906, 5029, 5156, 5288, 5426, 5572, 5717, 5875, 6028, 6193,
    6355, 6519, 6695, 6879, 7065, 7255,
)

AB_ZERO_POINT_NJY = 3631.0e9  # 3631 Jy in nJy

#: The largest physical value `from_learning` returns: float32's largest finite number. Predictions are float32,
#: and a log-space posterior several dex wide (an SFR that may be quenched or bursting) has tails and moments
#: beyond it, which would otherwise come back as inf (or NaN, as inf - inf in a variance).
PHYSICAL_MAXIMUM = float(np.finfo(np.float32).max)


def _lsst_softening_njy() -> tuple[float, ...]:
    """1-sigma 10-year noise per LSST band, in nJy: the asinh softening of the `lsst` magnitudes."""
    return tuple(round(AB_ZERO_POINT_NJY * 10 ** (-0.4 * m5) / 5.0, 3) for m5 in LSST_M5_10YR)


# ----------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Modality:
    """One modality: what it is, how long, in which units, on which axis, and how it is learned.

    The learning transform is `y = scale * log10(x + offset)` when `log` is true, else `y = x`; its inverse
    is clipped below at `minimum`, the smallest physical value (0 for rates and luminosities), and above at
    PHYSICAL_MAXIMUM.
    """

    name: str
    kind: str  # "scalar" or "vector"
    length: int
    unit: str
    description: str
    axis_name: str | None = None
    axis_unit: str | None = None
    axis: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None
    log: bool = False
    offset: float = 0.0
    scale: float = 1.0
    minimum: float = -math.inf
    patch_size: int = 1
    softening_njy: tuple[float, ...] | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in ("scalar", "vector"):
            raise ValueError(f"modality {self.name!r}: kind must be 'scalar' or 'vector', got {self.kind!r}")
        if self.kind == "scalar" and self.length != 1:
            raise ValueError(f"modality {self.name!r}: a scalar has length 1, got {self.length}")
        for attr in ("axis", "labels", "softening_njy"):
            value = getattr(self, attr)
            if value is not None and len(value) != self.length:
                raise ValueError(f"modality {self.name!r}: {attr} has {len(value)} entries, expected {self.length}")

    @property
    def is_scalar(self) -> bool:
        return self.kind == "scalar"

    def to_learning(self, x):
        """Physical units -> the space the network learns in (numpy, any shape)."""
        x = np.asarray(x, dtype=np.float64)
        if not self.log:
            return x
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.scale * np.log10(np.maximum(x + self.offset, 1e-30))

    def below_minimum(self, x) -> np.ndarray:
        """Which values lie below the physical minimum (a negative redshift, rate or luminosity): no galaxy has
        one, and where a log-learned value has no logarithm the transform would floor it to an absurd input."""
        return np.asarray(x) < self.minimum

    def from_learning(self, y):
        """Inverse of `to_learning`, clipped to [the physical minimum, PHYSICAL_MAXIMUM]."""
        y = np.asarray(y, dtype=np.float64)
        if not self.log:
            return np.clip(y, self.minimum, PHYSICAL_MAXIMUM)
        with np.errstate(over="ignore"):
            return np.clip(10.0 ** (y / self.scale) - self.offset, self.minimum, PHYSICAL_MAXIMUM)


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "redshift", "scalar", 1, "", "cosmological redshift",
            # learned as log10(1 + z): an error there is ~ dz / (1 + z), the photo-z community's metric.
            log=True, offset=1.0, minimum=0.0,
        ),
        Modality("log_halo_mass", "scalar", 1, "log10(Msun)", "peak halo mass"),
        Modality("log_stellar_mass", "scalar", 1, "log10(Msun)", "surviving stellar mass"),
        Modality(
            "sfh", "vector", 100, "Msun/yr", "star-formation rate on the Diffsky cosmic-time table",
            axis_name="cosmic time", axis_unit="Gyr", axis=SFH_TIME_GYR,
            # 1e-3 Msun/yr floor: below it a rate is indistinguishable from zero (and after the epoch it is 0).
            log=True, offset=1.0e-3, minimum=0.0, patch_size=10,
        ),
        Modality(
            "sed", "vector", 256, "erg/s/Hz", "rest-frame L_nu (dust-attenuated, emission lines included), averaged over log bins",
            axis_name="rest wavelength", axis_unit="Angstrom", axis=SED_WAVELENGTH_AA,
            log=True, offset=1.0e15, minimum=0.0, patch_size=32,
        ),
        Modality(
            "lsst", "vector", 6, "AB asinh mag", "LSST ugrizy asinh magnitudes (finite for any flux)",
            axis_name="band", axis_unit="Angstrom", axis=LSST_CENTRES_AA, labels=LSST_BANDS,
            # one token for the six bands: photo-z from LSST then costs two tokens (LSST in, redshift out).
            softening_njy=_lsst_softening_njy(), patch_size=6,
        ),
        Modality(
            "spherex", "vector", 102, "AB asinh mag", "SPHEREx 102-channel asinh magnitudes",
            axis_name="channel centre", axis_unit="Angstrom", axis=SPHEREX_CENTRES_AA, labels=SPHEREX_BANDS,
            softening_njy=SPHEREX_SOFTENING_NJY, patch_size=17,
        ),
    )
}

MODALITY_NAMES: tuple[str, ...] = tuple(MODALITIES)


def get_modality(name: str) -> Modality:
    """Look a modality up by name, with an error that lists the valid names."""
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; valid names are {', '.join(MODALITY_NAMES)}") from None


# ------------------------------------------------------------------------------------ asinh magnitudes
def asinh_magnitude(flux_njy, softening_njy):
    """Lupton et al. (1999) asinh magnitude of a flux in nJy: equal to the AB magnitude for fluxes well
    above the softening, finite (never NaN or inf) for zero and negative fluxes."""
    f = np.asarray(flux_njy, dtype=np.float64)
    b = np.asarray(softening_njy, dtype=np.float64)
    return -2.5 / math.log(10.0) * (np.arcsinh(f / (2.0 * b)) + np.log(b / AB_ZERO_POINT_NJY))


def flux_from_asinh_magnitude(mag, softening_njy):
    """Inverse of `asinh_magnitude`: flux in nJy."""
    m = np.asarray(mag, dtype=np.float64)
    b = np.asarray(softening_njy, dtype=np.float64)
    return 2.0 * b * np.sinh(-m * math.log(10.0) / 2.5 - np.log(b / AB_ZERO_POINT_NJY))
