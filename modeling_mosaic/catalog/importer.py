"""Turn a user's real catalog (HDF5 or Parquet) into a MOSAIC catalog folder with the standard schema.

Accepted columns, per file:
- our canonical names (`schema.COLUMN_NAMES`); vectors as Parquet list columns or 2-D HDF5 datasets of the
  registry's length;
- Diffsky / OpenCosmo names where a counterpart exists: `redshift_true` (else `redshift_obs`) -> redshift,
  `logmp_obs` -> log_halo_mass, `logsm_obs` -> log_stellar_mass, `av` -> dust_av, `mc_sfh_type` -> quenched
  (type 0 is quenched), `lsst_u` ... `lsst_y` AB magnitudes -> nJy fluxes and asinh magnitudes. Diffsky
  magnitudes are noise-free model magnitudes: they fill both the true and the observed LSST columns, with
  zero errors.
An HDF5 file's columns are read from its `data/` group when it has one (OpenCosmo), else from its root;
the attributes of a `header/` group are kept in the provenance. Canonical names win over aliases; asinh
magnitudes missing but fluxes present are computed from the fluxes with the registry's softenings.

What is required: galaxy_id only. If absent it is the row number over all inputs; if present every value
must be a finite integer, and all must be unique. Every other value may be NaN (= missing; +-inf too, stored
as NaN), so a photometric catalog without redshifts imports fine. A modality the catalog lacks becomes an
all-NaN column (`quenched` unknown is -1), but a catalog with no finite value in any of the seven modalities is
an error.
Errors name the file and the column.

Rows are split by a seeded random draw (`test_fraction`), not by position: real catalogs are often ordered
(Diffsky files by lightcone step, i.e. by redshift), so the last rows would be a biased test set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..modalities import AB_ZERO_POINT_NJY, LSST_BANDS, MODALITIES, MODALITY_NAMES, asinh_magnitude
from .presets import split_sizes
from .schema import COLUMN_NAMES, COLUMNS, COLUMNS_BY_NAME
from .writer import DEFAULT_ROWS_PER_FILE, Layout, write_catalog

#: Diffsky/OpenCosmo names of scalar columns, in order of preference.
SCALAR_ALIASES = {
    "redshift": ("redshift_true", "redshift_obs"),
    "log_halo_mass": ("logmp_obs",),
    "log_stellar_mass": ("logsm_obs",),
    "dust_av": ("av",),
}
DIFFSKY_LSST_MAGS = tuple(f"lsst_{b}" for b in LSST_BANDS)
DIFFSKY_SFH_TYPE = "mc_sfh_type"  # 0 quenched, 1 smooth main sequence, 2 bursty
REQUIRED = ("galaxy_id",)
SUFFIXES = (".parquet", ".pq", ".h5", ".hdf5", ".hdf")
#: Every column name the importer reads; the rest of a file is left on disk.
KNOWN_COLUMNS = frozenset(
    (*COLUMN_NAMES, *(a for aliases in SCALAR_ALIASES.values() for a in aliases), *DIFFSKY_LSST_MAGS, DIFFSKY_SFH_TYPE)
)
#: The asinh-magnitude columns and the flux columns they derive from.
ASINH_FROM_FLUX = {"lsst": "lsst_flux", "lsst_true": "lsst_flux_true", "spherex": "spherex_flux",
                   "spherex_true": "spherex_flux_true"}


@dataclass
class ImportedFile:
    """One input file mapped to the schema: its columns, and where each came from."""

    path: Path
    columns: dict[str, np.ndarray]
    sources: dict[str, str]  # schema column -> input column(s) or "derived"
    header: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.columns["redshift"])

    def provenance(self) -> dict:
        return {"file": self.path.name, "rows": self.rows, "columns": self.sources, "header": self.header}


# ------------------------------------------------------------------------------------------ raw readers
def _jsonable(value):
    """An HDF5 attribute as a JSON-safe value (long arrays summarised by their shape)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    value = np.asarray(value)
    if value.dtype.kind == "S":
        value = value.astype(str)
    if value.size > 64:
        return f"array{value.shape}"
    return value.tolist()


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: cannot open as HDF5 (truncated or corrupt file?): {err}") from err
    with f:
        group = f["data"] if isinstance(f.get("data"), h5py.Group) else f
        raw = {}
        for name in sorted(KNOWN_COLUMNS & set(group)):
            if not isinstance(group[name], h5py.Dataset):
                continue
            try:
                raw[name] = group[name][()]
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: column {name!r} cannot be read (truncated or corrupt file?): {err}") from err
            if np.ndim(raw[name]) == 0:
                raise ValueError(f"{path}: column {name!r} holds one value; expected one per galaxy")
            if np.asarray(raw[name]).dtype.kind not in "biuf":
                raise ValueError(f"{path}: column {name!r} must be numeric, got {np.asarray(raw[name]).dtype}")
        header = {}
        if isinstance(f.get("header"), h5py.Group):
            f["header"].visititems(lambda key, obj: header.update(
                {f"{key}/{a}": _jsonable(v) for a, v in obj.attrs.items()}))
            header.update({a: _jsonable(v) for a, v in f["header"].attrs.items()})
    return raw, header


def _parquet_vector(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """A list column as a (rows, length) float64 array, every row checked to have the registry's length."""
    length = COLUMNS_BY_NAME[name].length
    col = col.combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise ValueError(f"{path}: column {name!r} must be a list column of {length} values, got type {col.type}")
    if not (pa.types.is_floating(col.type.value_type) or pa.types.is_integer(col.type.value_type)
            or pa.types.is_null(col.type.value_type)):
        raise ValueError(f"{path}: column {name!r} must hold numbers, got lists of {col.type.value_type}")
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(valid & (lengths != length))
    if wrong.size:
        raise ValueError(
            f"{path}: column {name!r} has vectors of length {lengths[wrong[0]]} (row {wrong[0]}), expected {length}"
        )
    out = np.full((len(col), length), np.nan)
    out[valid] = col.flatten().cast(pa.float64()).fill_null(np.nan).to_numpy().reshape(-1, length)
    return out


def _read_parquet(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    try:
        parquet = pq.ParquetFile(path)
        names = [n for n in parquet.schema_arrow.names if n in KNOWN_COLUMNS]
    except (OSError, pa.ArrowException) as err:
        raise ValueError(f"{path}: cannot open as Parquet (truncated or corrupt file?): {err}") from err
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{path}: column {repeated[0]!r} appears more than once; which one to read is ambiguous")
    raw = {}
    for name in names:
        try:
            col = parquet.read(columns=[name]).column(name)
        except (OSError, pa.ArrowException) as err:
            raise ValueError(f"{path}: column {name!r} cannot be read (truncated or corrupt file?): {err}") from err
        if name in COLUMNS_BY_NAME and COLUMNS_BY_NAME[name].length:
            raw[name] = _parquet_vector(col, path, name)
        elif name == "galaxy_id" and pa.types.is_integer(col.type) and col.null_count == 0:
            raw[name] = col.to_numpy()  # exact: a float64 holds integers only up to 2**53
        elif pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type):
            raw[name] = col.cast(pa.float64()).fill_null(np.nan).to_numpy()
        else:
            raise ValueError(f"{path}: column {name!r} must be numeric, got type {col.type}")
    return raw, {}


def _read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unknown catalog format {suffix or '(no extension)'!r}; accepted: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return (_read_parquet if suffix in (".parquet", ".pq") else _read_hdf5)(path)


# ---------------------------------------------------------------------------------------------- mapping
def _check_shape(path: Path, name: str, values: np.ndarray, rows: int) -> np.ndarray:
    length = COLUMNS_BY_NAME[name].length
    expected = (rows,) if length == 0 else (rows, length)
    if values.shape != expected:
        what = f"vectors of length {values.shape[1]}" if values.ndim == 2 and length else f"shape {values.shape}"
        raise ValueError(f"{path}: column {name!r} has {what}, expected shape {expected}")
    return values


def _per_galaxy(path: Path, name: str, values, rows: int) -> np.ndarray:
    """An input column that holds one number per galaxy (a Diffsky magnitude or label), as float64."""
    values = np.asarray(values, float)
    if values.shape != (rows,):
        raise ValueError(f"{path}: column {name!r} has shape {values.shape}, expected ({rows},): one value a galaxy")
    return values


def _lsst_flux_from_diffsky(path: Path, raw: dict, rows: int) -> np.ndarray | None:
    """nJy fluxes from the Diffsky `lsst_u` ... `lsst_y` AB magnitudes (a band not given is NaN)."""
    if not any(b in raw for b in DIFFSKY_LSST_MAGS):
        return None
    mags = np.column_stack([_per_galaxy(path, b, raw[b], rows) if b in raw else np.full(rows, np.nan)
                            for b in DIFFSKY_LSST_MAGS])
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(np.isfinite(mags), AB_ZERO_POINT_NJY * 10.0 ** (-0.4 * mags), np.nan)


def _map_file(path: Path, raw: dict[str, np.ndarray], header: dict) -> ImportedFile:
    """Raw columns of one file -> every schema column (NaN where unknown), with their sources."""
    lengths = {name: len(v) for name, v in raw.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{path}: columns have different numbers of rows: {lengths}")
    rows = next(iter(lengths.values()), 0)
    cols, sources = {}, {}
    for name in COLUMN_NAMES:
        if name in raw:
            cols[name], sources[name] = _check_shape(path, name, np.asarray(raw[name]), rows), name
    for name, aliases in SCALAR_ALIASES.items():
        alias = next((a for a in aliases if a in raw), None)
        if name not in cols and alias is not None:
            cols[name], sources[name] = _check_shape(path, name, np.asarray(raw[alias], float), rows), alias
    if "quenched" not in cols and DIFFSKY_SFH_TYPE in raw:
        sfh_type = _per_galaxy(path, DIFFSKY_SFH_TYPE, raw[DIFFSKY_SFH_TYPE], rows)
        cols["quenched"] = np.where(np.isfinite(sfh_type), sfh_type == 0, np.nan)
        sources["quenched"] = DIFFSKY_SFH_TYPE
    flux = _lsst_flux_from_diffsky(path, raw, rows)
    if flux is not None:
        given = ",".join(b for b in DIFFSKY_LSST_MAGS if b in raw)
        # Zero errors say that the observed fluxes are these noise-free ones: not so for a file's own lsst_flux.
        noise_free = np.where(np.isfinite(flux), 0.0, np.nan) if "lsst_flux" not in cols else None
        for name, values in (("lsst_flux_true", flux), ("lsst_flux", flux), ("lsst_flux_err", noise_free)):
            if name not in cols and values is not None:
                cols[name], sources[name] = values, given
    for mag, flux_name in ASINH_FROM_FLUX.items():
        if mag not in cols and flux_name in cols:
            softening = MODALITIES[mag.removesuffix("_true")].softening_njy
            cols[mag], sources[mag] = asinh_magnitude(cols[flux_name], softening), f"derived from {flux_name}"

    if not any(name in cols and np.isfinite(cols[name]).any() for name in MODALITY_NAMES):
        raise ValueError(
            f"{path}: no finite value in any modality column; expected some of {', '.join(MODALITY_NAMES)} "
            f"(or the Diffsky names {', '.join(sorted(KNOWN_COLUMNS - set(COLUMN_NAMES)))})"
        )
    for c in COLUMNS:
        if c.name not in cols and c.name not in ("galaxy_id", "quenched"):
            cols[c.name] = np.full((rows,) if c.length == 0 else (rows, c.length), np.nan, np.float32)
    cols["quenched"] = _quenched(path, cols.get("quenched"), rows)
    if "galaxy_id" in cols:
        cols["galaxy_id"] = _galaxy_ids(path, cols["galaxy_id"])
    for name, values in cols.items():  # the float32 cast below would make these inf, then missing
        huge = (np.isfinite(values) & (np.abs(values) > np.finfo(np.float32).max)
                if COLUMNS_BY_NAME[name].dtype == "float32" else np.zeros(0, dtype=bool))
        if huge.any():
            row = int(np.argwhere(huge)[0][0])
            raise ValueError(f"{path}: column {sources[name]!r} gives {name} {values[huge][0]:g} in row {row}, "
                             "beyond float32's range (a sentinel such as -99? NaN marks a missing value)")
    cols = {c.name: cols[c.name].astype(c.dtype, copy=False) for c in COLUMNS if c.name in cols}
    for values in cols.values():  # +-inf means missing, as NaN does: the catalog stores one missing value
        if values.dtype.kind == "f":
            values[np.isinf(values)] = np.nan
    for name in MODALITY_NAMES:
        below = MODALITIES[name].below_minimum(cols[name])
        if below.any():
            row = int(np.argwhere(below)[0][0])
            raise ValueError(f"{path}: column {sources[name]!r} has {int(below.sum())} value(s) below the physical "
                             f"minimum {MODALITIES[name].minimum:g} of {name} (first in row {row}: "
                             f"{cols[name][below][0]:g}); NaN marks a missing value")
    return ImportedFile(path, cols, sources, header)


def _quenched(path: Path, values, rows: int) -> np.ndarray:
    """int8 quenched label: 1/0, and -1 where unknown (absent or NaN)."""
    if values is None:
        return np.full(rows, -1, np.int8)
    values = np.asarray(values, float)
    bad = np.isfinite(values) & ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"{path}: column 'quenched' must be 0 or 1 (or NaN), got {values[bad][0]}")
    return np.where(np.isfinite(values), values, -1).astype(np.int8)


def _galaxy_ids(path: Path, values: np.ndarray) -> np.ndarray:
    """The required column: finite integers that fit int64 (a uint64 id past 2**63 would wrap around)."""
    values = np.asarray(values)
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{path}: required column 'galaxy_id' has {values[row]} in row {row}; ids must be integers")
        outside = (values < -(2.0**63)) | (values >= 2.0**63)
    else:
        outside = values > np.iinfo(np.int64).max if values.dtype.kind == "u" else np.zeros(len(values), bool)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ValueError(f"{path}: required column 'galaxy_id' has {values[row]} in row {row}, beyond int64's range")
    return values.astype(np.int64)


# ------------------------------------------------------------------------------------------------ import
def read_catalog(paths: Sequence[str | os.PathLike]) -> tuple[dict[str, np.ndarray], list[ImportedFile]]:
    """Every input mapped to the schema and concatenated in order: (columns, per-file records)."""
    if not paths:
        raise ValueError("no input catalog given")
    resolved = [Path(p).resolve() for p in paths]
    twice = next((p for p, r in zip(paths, resolved) if resolved.count(r) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice}: given more than once; its galaxies would be imported twice")
    files = [_map_file(Path(p), *_read_raw(Path(p))) for p in paths]
    with_ids = [f for f in files if "galaxy_id" in f.sources]
    if with_ids and len(with_ids) != len(files):
        lacking = next(f.path for f in files if "galaxy_id" not in f.sources)
        raise ValueError(f"{lacking}: has no 'galaxy_id' column while other inputs do; give ids in all or none")
    columns = {name: np.concatenate([f.columns[name] for f in files]) for name in COLUMN_NAMES if name != "galaxy_id"}
    n = len(columns["redshift"])
    columns["galaxy_id"] = np.concatenate([f.columns["galaxy_id"] for f in files]) if with_ids else np.arange(n)
    unique, counts = np.unique(columns["galaxy_id"], return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{', '.join(map(str, paths))}: required column 'galaxy_id' repeats id {unique[counts > 1][0]}")
    return columns, files


def import_catalog(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Import the input files into the catalog folder OUT; returns its catalog.json content."""
    target = Path(out).resolve()
    inside = [str(p) for p in inputs if target == Path(p).resolve() or target in Path(p).resolve().parents]
    if inside:
        raise ValueError(f"{', '.join(inside)}: inside --out {out}, which the import writes; choose another --out")
    columns, files = read_catalog(inputs)
    n = len(columns["galaxy_id"])
    n_train, n_test = split_sizes(n, test_fraction)
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).choice(n, n_test, replace=False)] = True
    order = np.concatenate([np.flatnonzero(~is_test), np.flatnonzero(is_test)])  # input order kept within a split

    def source(start: int, stop: int, chunk_rows: int = 4096):
        for lo in range(start, stop, chunk_rows):
            rows = order[lo : min(lo + chunk_rows, stop)]
            yield {name: values[rows] for name, values in columns.items()}

    missing = [m for m in MODALITY_NAMES if not np.isfinite(columns[m]).any()]
    provenance = {"origin": "imported", "inputs": [f.provenance() for f in files], "test_fraction": test_fraction,
                  "split_seed": seed, "missing_modalities": missing}
    layout = Layout(n_train, n_test, rows_per_file)
    return write_catalog(out, source, layout, provenance, overwrite=overwrite, progress=progress)
