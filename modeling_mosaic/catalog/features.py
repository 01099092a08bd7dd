"""The catalog schema as Hugging Face `datasets.Features` and as an Arrow schema, and chunk -> Arrow table.

Explicit features matter: left to inference, `datasets` reads float32 vectors back as variable-length
float64 lists. Everything here is derived from `schema.COLUMNS` (and through it from the modality registry).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
from datasets import Features, List, Value

from .schema import COLUMN_NAMES, COLUMNS, Column

_COLUMN_SET = frozenset(COLUMN_NAMES)


def column_feature(column: Column):
    """One column's feature: a scalar `Value`, or a fixed-length float32 `List` for a vector."""
    if column.length == 0:
        return Value(column.dtype)
    return List(Value(column.dtype), length=column.length)


def catalog_features() -> Features:
    """The features of every MOSAIC catalog, in schema order."""
    return Features({c.name: column_feature(c) for c in COLUMNS})


def arrow_schema() -> pa.Schema:
    """The Arrow schema of the Parquet shards (it carries the features in its `huggingface` metadata)."""
    return catalog_features().arrow_schema


def chunk_length(chunk: Mapping[str, np.ndarray]) -> int:
    """Number of rows of a chunk, checking that it has exactly the schema's columns, all of one length."""
    missing = [name for name in COLUMN_NAMES if name not in chunk]
    extra = [name for name in chunk if name not in _COLUMN_SET]
    if missing or extra:
        raise ValueError(f"catalog chunk: missing columns {missing}, unexpected columns {extra}")
    lengths = {name: len(chunk[name]) for name in COLUMN_NAMES}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"catalog chunk: columns have different numbers of rows: {lengths}")
    return lengths[COLUMN_NAMES[0]]


def _column_array(column: Column, values) -> pa.Array:
    values = np.asarray(values)
    if column.length == 0:
        if values.ndim != 1:
            raise ValueError(f"catalog chunk: column {column.name!r} is a scalar but has shape {values.shape}")
        return pa.array(values.astype(column.dtype, copy=False))
    if values.ndim != 2 or values.shape[1] != column.length:
        raise ValueError(
            f"catalog chunk: column {column.name!r} must have shape (rows, {column.length}), got {values.shape}"
        )
    flat = pa.array(np.ascontiguousarray(values, dtype=column.dtype).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, column.length)


def chunk_to_table(chunk: Mapping[str, np.ndarray]) -> pa.Table:
    """A chunk (column name -> numpy array, vectors 2-D) as an Arrow table with the catalog schema."""
    chunk_length(chunk)
    arrays = [_column_array(c, chunk[c.name]) for c in COLUMNS]
    return pa.Table.from_arrays(arrays, schema=arrow_schema())


def table_to_chunk(table: pa.Table) -> dict[str, np.ndarray]:
    """Inverse of `chunk_to_table`: numpy columns, vectors as (rows, length) arrays."""
    chunk = {}
    for c in COLUMNS:
        col = table.column(c.name).combine_chunks()
        if c.length == 0:
            chunk[c.name] = col.to_numpy(zero_copy_only=False).astype(c.dtype, copy=False)
        else:
            flat = col.flatten().to_numpy(zero_copy_only=False).astype(c.dtype, copy=False)
            chunk[c.name] = flat.reshape(len(col), c.length)
    return chunk
