"""`mosaic-predict`: predictions with uncertainties for a table of galaxies, and photo-z posteriors for RAIL.

    mosaic-predict --model DIR_OR_REPO --input photometry.parquet --output predictions.parquet
                   [--targets redshift log_stellar_mass] [--uncertainty] [--samples N] [--qp posteriors.hdf5]

Input columns are named like the modalities: a scalar `redshift`; a vector either as one list column `lsst`
or as one column per element, `lsst_u` ... `lsst_y` (the registry's labels, else `sfh_0` ... `sfh_99`).
Optional 1-sigma errors of the inputs (models with `error_inputs`): `lsst_err` or `lsst_u_err` ..., in the
input's units (asinh magnitudes for lsst and spherex). A `galaxy_id` column is copied to the output.
Output columns: `name` (vectors: one column per element), plus with --uncertainty `name_std`, `name_p16`,
`name_p50`, `name_p84`; --samples adds list columns `name_samples` (Parquet only). --qp writes the redshift
posteriors as a `qp` ensemble (qp.interp on the default redshift grid, 0-3.5 in steps of 0.01; needs
`pip install mosaic-galaxy[qp]`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .modalities import MODALITIES, get_modality
from .modeling_mosaic import DEFAULT_REDSHIFT_GRID

FORMATS = (".parquet", ".csv")


def element_names(name: str) -> list[str]:
    """Per-element column names of a modality: `name` for a scalar, else `name_label` (or `name_index`)."""
    m = get_modality(name)
    if m.is_scalar:
        return [name]
    return [f"{name}_{label}" for label in (m.labels or range(m.length))]


def _format(path: str, flag: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise SystemExit(f"{flag} {path}: the file must end in .parquet or .csv")
    return suffix


def read_table(path: str) -> pa.Table:
    """A Parquet or CSV file as an Arrow table."""
    suffix = _format(path, "--input")
    if not Path(path).is_file():
        raise SystemExit(f"--input {path}: no such file")
    return pq.read_table(path) if suffix == ".parquet" else pacsv.read_csv(path)


def _column_array(table: pa.Table, column: str, length: int, path: str) -> np.ndarray:
    """One column as float (N,) or, for a list column, (N, length); nulls become NaN."""
    array = table.column(column).combine_chunks()
    if pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.asarray(array.value_lengths().fill_null(length))
        if (lengths != length).any():
            raise ValueError(f"{path}: column {column!r} must hold lists of {length} values")
        values = array.fill_null([None] * length).flatten().fill_null(np.nan)
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(array), length)
    if not (pa.types.is_floating(array.type) or pa.types.is_integer(array.type) or pa.types.is_null(array.type)):
        raise ValueError(f"{path}: column {column!r} has type {array.type}; expected numbers")
    return np.asarray(array.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), dtype=np.float32)


def read_modality(table: pa.Table, name: str, path: str, suffix: str = "") -> np.ndarray | None:
    """Modality `name` (or its errors, suffix "_err") from a list/scalar column or per-element columns; None
    when absent. A partial set of per-element columns is an error that names the missing ones."""
    length = MODALITIES[name].length
    whole = f"{name}{suffix}"
    if whole in table.column_names:
        array = _column_array(table, whole, length, path)
        if length > 1 and array.ndim == 1:
            raise ValueError(f"{path}: column {whole!r} must hold lists of {length} values (or use the columns "
                             f"{element_names(name)[0]} ...)")
        return array
    columns = [f"{c}{suffix}" for c in element_names(name)]
    present = [c for c in columns if c in table.column_names]
    if not present:
        return None
    if len(present) < len(columns):
        missing = [c for c in columns if c not in table.column_names]
        raise ValueError(f"{path}: {name!r} needs all of its {length} columns; missing {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}")
    return np.column_stack([_column_array(table, c, 1, path) for c in columns])


def read_inputs(table: pa.Table, modalities, path: str) -> tuple[dict, dict]:
    """The model's `inputs` and `errors` dicts from a table."""
    inputs = {n: a for n in modalities if (a := read_modality(table, n, path)) is not None}
    if not inputs:
        expected = ", ".join(f"{n} (or {element_names(n)[0]} ...)" if MODALITIES[n].length > 1 else n
                             for n in modalities)
        raise ValueError(f"{path}: no input column; expected some of {expected}")
    errors = {n: a for n in inputs if (a := read_modality(table, n, path, "_err")) is not None}
    return inputs, errors


def output_table(predictions: dict, targets, ids: pa.Array | None) -> pa.Table:
    """Flat output columns: scalars as they are, vectors one column per element, samples as list columns."""
    columns = {} if ids is None else {"galaxy_id": ids}
    for name in targets:
        for key in (name, *(f"{name}_{s}" for s in ("std", "p16", "p50", "p84"))):
            if key not in predictions:
                continue
            statistic = key[len(name):]
            array = predictions[key].reshape(len(predictions[name]), -1)
            for column, values in zip(element_names(name), array.T, strict=True):
                columns[f"{column}{statistic}"] = values
        if f"{name}_samples" in predictions:
            samples = predictions[f"{name}_samples"]
            columns[f"{name}_samples"] = pa.FixedSizeListArray.from_arrays(
                pa.array(samples.reshape(-1)), int(np.prod(samples.shape[1:])))
    return pa.table(columns)


def write_table(table: pa.Table, path: str) -> None:
    """Write Parquet or CSV atomically (a temporary file beside it, then rename)."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    if Path(path).suffix.lower() == ".parquet":
        pq.write_table(table, tmp)
    else:
        pacsv.write_csv(table, tmp)
    os.replace(tmp, path)


def to_qp_ensemble(redshift_grid, pdf):
    """Photo-z posteriors tabulated on a grid (N, G) as a `qp` ensemble of `qp.interp` distributions, the
    format RAIL's estimators exchange and its metrics score."""
    try:
        import qp
    except ImportError as error:
        raise ImportError("to_qp_ensemble needs the qp-prob package: pip install 'mosaic-galaxy[qp]'") from error
    grid, pdf = np.asarray(redshift_grid, dtype=np.float64), np.asarray(pdf, dtype=np.float64)
    if pdf.ndim != 2 or grid.ndim != 1 or pdf.shape[1] != grid.size:
        raise ValueError(f"pdf must be (galaxies, {grid.size}) for a grid of {grid.size} points, got {pdf.shape}")
    return qp.Ensemble(qp.interp, data={"xvals": grid, "yvals": pdf})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic-predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hub repo id (AutoModel, trust_remote_code)")
    parser.add_argument("--input", required=True, help="Parquet or CSV table of the given modalities")
    parser.add_argument("--output", required=True, help="predictions, Parquet or CSV (by the extension)")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="modalities to predict (default: every modality the input lacks)")
    parser.add_argument("--uncertainty", action="store_true", help="add std and 16/50/84 percentiles (gaussian head)")
    parser.add_argument("--samples", type=int, default=0, help="draws per galaxy from the predictive distribution")
    parser.add_argument("--qp", default=None, help="write the redshift posteriors here as a qp ensemble (HDF5)")
    parser.add_argument("--batch-size", type=int, default=4096, help="galaxies per model.predict batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--compile", action="store_true",
                        help="compile the transformer blocks first (torch.compile; faster on large tables, a C++ "
                             "compiler on a CPU)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.samples < 0:
        raise SystemExit("--batch-size must be positive and --samples non-negative")
    if _format(args.output, "--output") == ".csv" and args.samples:
        raise SystemExit("--samples writes list columns, which CSV cannot hold: use a .parquet --output")
    table = read_table(args.input)
    from .evaluation.cli import load_model

    model = load_model(args.model)
    if args.compile:
        if not hasattr(model, "compile_encoder"):
            raise SystemExit(f"--compile: the code of checkpoint {args.model} predates compile_encoder")
        model.compile_encoder()
    try:
        inputs, errors = read_inputs(table, model.config.modalities, args.input)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    try:
        predictions = model.predict(inputs, targets=args.targets, batch_size=args.batch_size,
                                    return_uncertainty=args.uncertainty, num_samples=args.samples,
                                    redshift_grid=DEFAULT_REDSHIFT_GRID if args.qp else None, errors=errors or None,
                                    seed=args.seed)
    except ValueError as error:
        raise SystemExit(f"{args.input}: {error}") from None
    if args.qp and "redshift_pdf" not in predictions:
        raise SystemExit("--qp: redshift is not a target (it was given in the input or left out of --targets)")
    targets = [n for n in model.config.modalities if n in predictions]
    ids = table.column("galaxy_id").combine_chunks() if "galaxy_id" in table.column_names else None
    write_table(output_table(predictions, targets, ids), args.output)
    if args.qp:
        tmp = Path(args.qp).with_name("tmp_" + Path(args.qp).name)
        to_qp_ensemble(DEFAULT_REDSHIFT_GRID, predictions["redshift_pdf"]).write_to(str(tmp))
        os.replace(tmp, args.qp)
    print(f"predictions: {args.output} ({len(table)} galaxies, targets {', '.join(targets)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
