"""`mosaic-predict`: predictions with uncertainties for a table of galaxies, and photo-z posteriors for RAIL.

    mosaic-predict --model DIR_OR_REPO --input photometry.parquet --output predictions.parquet
                   [--targets redshift log_stellar_mass] [--uncertainty] [--samples N] [--qp posteriors.hdf5]
                   [--chunk-rows N] [--device auto] [--bf16] [--compile]

Input columns are named like the modalities: a scalar `redshift`; a vector either as one list column `lsst`
or as one column per element, `lsst_u` ... `lsst_y` (the registry's labels, else `sfh_0` ... `sfh_99`).
Optional 1-sigma errors of the inputs (models with `error_inputs`): `lsst_err` or `lsst_u_err` ..., in the
input's units (asinh magnitudes for lsst and spherex). A `galaxy_id` column is copied to the output.
Output columns: `name` (vectors: one column per element), plus with --uncertainty `name_std`, `name_p16`,
`name_p50`, `name_p84`; --samples adds list columns `name_samples` (Parquet only). --qp writes the redshift
posteriors as a `qp` ensemble (qp.interp on the default redshift grid, 0-3.5 in steps of 0.01; needs
`pip install mosaic-galaxy[qp]`).

The table is read, predicted and written in chunks of --chunk-rows rows, so memory stays bounded whatever its
size (the redshift posteriors for --qp are the exception: they are gathered for the one file). The output
appears only when complete; samples are a pure function of --seed, --chunk-rows and --batch-size.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .allocator import keep_freed_memory
from .files import ordinary_mode
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


def check_outputs(args) -> None:
    """Before any work: --output and --qp are files in existing folders and --output is not the --input file (the
    suffixes keep --qp apart from both), so that nothing is lost and a bad path fails before the predictions."""
    if args.qp and Path(args.qp).suffix.lower() != ".hdf5":
        raise SystemExit(f"--qp {args.qp}: the file must end in .hdf5 (a qp ensemble in HDF5)")
    for flag, path in (("--output", args.output), ("--qp", args.qp)):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise SystemExit(f"{flag} {path}: no folder {Path(path).parent}")
        if path is not None and Path(path).is_dir():
            raise SystemExit(f"{flag} {path}: is a folder")
    if Path(args.output).exists() and os.path.samefile(args.output, args.input):
        raise SystemExit(f"--output {args.output}: the same file as --input; write the predictions elsewhere")


def unreadable(path: str, error: Exception, names=()) -> SystemExit:
    """A reader's error about --input as a message that names the file (and a CSV column by name, not number)."""
    message = re.sub(r"CSV column #(\d+)", lambda m: f"column {names[int(m[1])]!r}" if int(m[1]) < len(names)
                     else m[0], str(error).strip())
    return SystemExit(f"--input {path}: cannot be read as {Path(path).suffix[1:].upper()}: {message}")


def read_schema(path: str) -> pa.Schema:
    """The column names and types of a Parquet or CSV file (a CSV's from its first block)."""
    suffix = _format(path, "--input")
    if not Path(path).is_file():
        raise SystemExit(f"--input {path}: no such file")
    try:
        if suffix == ".parquet":
            schema = pq.read_schema(path)
        else:
            with pacsv.open_csv(path) as reader:
                schema = reader.schema
        if not schema.names:  # the names are decoded here: a CSV header that is not UTF-8 fails
            raise SystemExit(f"--input {path}: no columns")
        repeated = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if repeated:
            raise SystemExit(f"--input {path}: column {repeated[0]!r} appears more than once")
    except (pa.ArrowException, UnicodeDecodeError) as error:
        raise unreadable(path, error) from None
    return schema


def input_columns(names, modalities) -> list[str]:
    """The columns of a table with column `names` that `read_inputs` reads, and `galaxy_id`."""
    wanted = {"galaxy_id"}
    for name in modalities:
        for suffix in ("", "_err"):
            wanted.update({f"{name}{suffix}", *(f"{c}{suffix}" for c in element_names(name))})
    return [c for c in names if c in wanted]


def iter_tables(path: str, columns: list[str], rows: int):
    """The file's `columns` as Arrow tables of about `rows` rows each (a CSV's by blocks of a similar size),
    numbers read as float64 (a CSV's per-element columns too, whatever its first block suggests)."""
    if Path(path).suffix.lower() == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
            yield pa.Table.from_batches([batch])
        return
    types = {c: pa.float64() for c in columns if c != "galaxy_id"}
    block = max(1 << 20, min(1 << 30, rows * 16 * max(1, len(columns))))  # ~16 bytes per CSV number
    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=block),
                        convert_options=pacsv.ConvertOptions(include_columns=columns, column_types=types)) as reader:
        for batch in reader:
            yield pa.Table.from_batches([batch])


def _column_array(table: pa.Table, column: str, length: int, path: str) -> np.ndarray:
    """One column as float (N,) or, for a list column, (N, length); nulls become NaN."""
    array = table.column(column).combine_chunks()
    if pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type) or pa.types.is_large_list(array.type):
        value_type = array.type.value_type
        if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type) or pa.types.is_null(value_type)):
            raise ValueError(f"{path}: column {column!r} holds lists of {value_type}; expected numbers")
        lengths = np.asarray(array.value_lengths().fill_null(length))
        if (lengths != length).any() or getattr(array.type, "list_size", length) != length:
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


def temporary_beside(path: str) -> Path:
    """A new, empty, uniquely named hidden file in `path`'s folder (renamed over `path` when complete): never a
    name some other file already has. Its mode is the one `path` would get from open(): mkstemp's 0600 would
    otherwise become the output's (or replace that of the file it replaces)."""
    descriptor, name = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.",
                                        suffix=f".tmp{Path(path).suffix}")
    os.close(descriptor)
    os.chmod(name, ordinary_mode(path))
    return Path(name)


class TableWriter:
    """Appends tables to a Parquet or CSV file that appears, renamed from a temporary file beside it, only when
    `close` is called; `abort` removes the temporary file."""

    def __init__(self, path: str):
        self.path, self.tmp, self.writer, self.rows = path, temporary_beside(path), None, 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            parquet = Path(self.path).suffix.lower() == ".parquet"
            self.writer = (pq.ParquetWriter if parquet else pacsv.CSVWriter)(self.tmp, table.schema)
        self.writer.write_table(table)
        self.rows += len(table)

    def close(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)


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
                        help="modalities to predict (default: every modality with no column in --input)")
    parser.add_argument("--uncertainty", action="store_true", help="add std and 16/50/84 percentiles (gaussian head)")
    parser.add_argument("--samples", type=int, default=0, help="draws per galaxy from the predictive distribution")
    parser.add_argument("--qp", default=None,
                        help="write the redshift posteriors here as a qp ensemble (a .hdf5 file)")
    parser.add_argument("--batch-size", type=int, default=4096, help="galaxies per model.predict batch")
    parser.add_argument("--chunk-rows", type=int, default=262_144,
                        help="rows read, predicted and written at a time (bounds the memory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--device", default="auto",
                        help="where the model predicts: auto (cuda when available), cpu, cuda")
    parser.add_argument("--bf16", action="store_true",
                        help="the transformer blocks' products in bfloat16 (autocast; embeddings, heads and "
                             "statistics stay float32): faster on GPUs and on CPUs with bf16 units (AVX512-BF16, "
                             "AMX), refused where bf16 products are not native")
    parser.add_argument("--compile", action="store_true",
                        help="compile the encoder first (torch.compile; faster on large tables, a C++ "
                             "compiler on a CPU)")
    return parser


def native_bf16(device: str) -> bool:
    """Whether `device` (cpu, cuda, cuda:N) multiplies bfloat16 matrices natively: a CUDA GPU that supports bf16,
    or a CPU whose oneDNN has bf16 kernels (AVX-512, AMX). Elsewhere (an AVX2 CPU) a bf16 product runs ~100x
    slower than float32's (docs/measurements.md)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


def precision(device: str, bf16: bool):
    """The context `predict` runs in: bfloat16 autocast on `device` with --bf16, else nothing."""
    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def terminating_as_exit():
    """A SIGTERM (a batch scheduler's time limit) unwinds like Ctrl-C inside, so the temporary output is removed;
    the previous handler is back after. Only the main thread may set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of one chunk: independent draws in every chunk, reproducible from --seed."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.chunk_rows < 1 or args.samples < 0:
        raise SystemExit("--batch-size and --chunk-rows must be positive and --samples non-negative")
    if not 0 <= args.seed < 2**63:
        raise SystemExit(f"--seed must be in [0, 2**63), got {args.seed}")
    if _format(args.output, "--output") == ".csv" and args.samples:
        raise SystemExit("--samples writes list columns, which CSV cannot hold: use a .parquet --output")
    schema = read_schema(args.input)
    check_outputs(args)
    from .evaluation.cli import load_model, resolve_device

    device = resolve_device(args.device)
    if args.bf16 and not native_bf16(device):
        raise SystemExit(f"--bf16: this {device} has no native bfloat16 matrix products, where they run many times "
                         "slower than float32: leave --bf16 out")
    keep_freed_memory()
    model = load_model(args.model, device)
    if args.compile:
        if not hasattr(model, "compile_encoder"):
            raise SystemExit(f"--compile: the code of checkpoint {args.model} predates compile_encoder")
        if "batch_size" in inspect.signature(model.compile_encoder).parameters:
            model.compile_encoder(batch_size=args.batch_size)  # the table's last batch is padded to it
        else:
            model.compile_encoder()
    unknown = [n for n in args.targets or [] if n not in model.config.modalities]
    if unknown:
        raise SystemExit(f"--targets: {', '.join(map(repr, unknown))} not in this model; it knows "
                         f"{', '.join(model.config.modalities)}")
    columns = input_columns(schema.names, model.config.modalities)
    try:  # a missing or partial column is named before any work
        given = read_inputs(schema.empty_table(), model.config.modalities, args.input)[0]
    except ValueError as error:
        raise SystemExit(str(error)) from None
    if args.targets is None:  # from the columns, not per chunk: every chunk writes the same output columns
        args.targets = [n for n in model.config.modalities if n not in given]
        if not args.targets:
            raise SystemExit(f"--input {args.input} has a column for every modality of this model: name the ones "
                             "to predict (or fill in) with --targets")
    if args.qp and "redshift" not in args.targets:
        raise SystemExit("--qp: redshift is not a target (it is a column of --input or left out of --targets)")
    writer, pdfs, targets, posteriors = TableWriter(args.output), [], [], None
    with terminating_as_exit():
        try:
            try:
                for chunk, table in enumerate(iter_tables(args.input, columns, args.chunk_rows)):
                    predictions, targets = predict_chunk(model, table, args, chunk)
                    if args.qp:
                        pdfs.append(predictions["redshift_pdf"])
                    ids = table.column("galaxy_id").combine_chunks() if "galaxy_id" in table.column_names else None
                    writer.write(output_table(predictions, targets, ids))
            except (pa.ArrowException, UnicodeDecodeError) as error:
                raise unreadable(args.input, error, schema.names) from None
            if writer.rows == 0:
                raise SystemExit(f"--input {args.input}: no rows")
            if args.qp:
                posteriors = temporary_beside(args.qp)
                to_qp_ensemble(DEFAULT_REDSHIFT_GRID, np.concatenate(pdfs)).write_to(str(posteriors))
            writer.close()
            if posteriors is not None:
                os.replace(posteriors, args.qp)
        except BaseException:
            writer.abort()
            if posteriors is not None:
                posteriors.unlink(missing_ok=True)
            raise
    print(f"predictions: {args.output} ({writer.rows} galaxies, targets {', '.join(targets)})")
    return 0


def predict_chunk(model, table: pa.Table, args, chunk: int) -> tuple[dict, list[str]]:
    """`model.predict` on one chunk of the input table, as the arguments ask: (predictions, targets in the
    model's order)."""
    try:
        inputs, errors = read_inputs(table, model.config.modalities, args.input)
    except ValueError as error:
        raise SystemExit(str(error)) from None  # it names the file
    try:
        with precision(str(model.device), args.bf16):
            predictions = model.predict(inputs, targets=args.targets, batch_size=args.batch_size,
                                        return_uncertainty=args.uncertainty, num_samples=args.samples,
                                        redshift_grid=DEFAULT_REDSHIFT_GRID if args.qp else None,
                                        errors=errors or None, seed=chunk_seed(args.seed, chunk),
                                        return_pdf=bool(args.qp))
    except ValueError as error:
        raise SystemExit(f"{args.input}: {error}") from None
    return predictions, [n for n in model.config.modalities if n in predictions]


if __name__ == "__main__":
    sys.exit(main())
