"""Read a catalog folder (or a Hub dataset repo) written by `writer`: rows through `datasets`, statistics as arrays.

A local folder is read with datasets' Parquet builder keyed (`hash=`) on a digest of its catalog.json, which
is new at every build: `load_dataset(folder)` alone keys its Arrow cache on the card's YAML only, so a
catalog rebuilt in the same place with the same sizes would silently come back from the stale cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset
from datasets.packaged_modules.parquet.parquet import Parquet

from ..hub import hub_errors
from ..modalities import MODALITY_NAMES, get_modality
from .features import catalog_features
from .stats import load_normalization
from .writer import read_json

CATALOG_FILE = "catalog.json"
NORMALIZATION_FILE = "normalization.json"


def can_only_be_a_path(name: str | os.PathLike) -> bool:
    """Whether a name cannot be a Hub repo id ("name" or "owner/name"): it starts with . / ~ or has more than
    one /. Such a name that is missing here is a missing folder, not something to look up on the Hub."""
    text = os.fspath(name)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or (os.sep != "/" and os.sep in text)


def _local_catalog(path_or_hub_id: str | os.PathLike) -> Path | None:
    """The catalog folder if the argument names an existing local path (checked to be finished); None for a
    missing one that may be a Hub dataset id."""
    path = Path(path_or_hub_id).expanduser()
    if not path.exists():
        if can_only_be_a_path(path_or_hub_id):
            raise FileNotFoundError(f"{path_or_hub_id}: no such catalog folder")
        return None
    if not (path / CATALOG_FILE).exists():
        raise ValueError(
            f"{path}: not a finished MOSAIC catalog (no {CATALOG_FILE}). Build one with `mosaic-catalog build`; "
            f"a sharded build needs `mosaic-catalog finalize {path}` once all shards are done"
        )
    return path.resolve()


def load_catalog(
    path_or_hub_id: str | os.PathLike,
    split: str | None = None,
    *,
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset | DatasetDict | IterableDataset | IterableDatasetDict:
    """A catalog's train and test splits (a `DatasetDict`), or one split, with the catalog's exact features.

    `streaming=True` reads the Parquet files lazily (an `IterableDataset`); `cache_dir` is datasets' cache.
    """
    local = _local_catalog(path_or_hub_id)
    cache_dir = None if cache_dir is None else str(cache_dir)
    if local is None:
        with _named_hub_errors(path_or_hub_id):
            return load_dataset(str(path_or_hub_id), split=split, features=catalog_features(), streaming=streaming,
                                cache_dir=cache_dir)
    catalog_bytes = (local / CATALOG_FILE).read_bytes()
    catalog = read_json(local / CATALOG_FILE, ("splits",))
    data_files = {s: [str(local / f) for f in info["files"]] for s, info in catalog["splits"].items()}
    builder = Parquet(cache_dir=cache_dir, dataset_name=f"mosaic_catalog_{local.name}", data_files=data_files,
                      features=catalog_features(), hash=hashlib.sha256(catalog_bytes).hexdigest()[:16])
    if streaming:
        return builder.as_streaming_dataset(split=split)
    builder.download_and_prepare()
    return builder.as_dataset(split=split)


def read_normalization(path_or_hub_id: str | os.PathLike) -> dict:
    """{modality: {"mean": array, "std": array}} from a catalog folder, a normalization.json, or a Hub repo."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_file():
        return load_normalization(path)
    local = _local_catalog(path_or_hub_id)
    if local is not None:
        return load_normalization(local / NORMALIZATION_FILE)
    from huggingface_hub import hf_hub_download

    with _named_hub_errors(path_or_hub_id):
        path = hf_hub_download(str(path_or_hub_id), NORMALIZATION_FILE, repo_type="dataset")
    return load_normalization(path)


@contextlib.contextmanager
def _named_hub_errors(name):
    """A name that is no folder here and that the Hub cannot provide (unknown, private, or offline): one error
    that says both, since "data/mine" may be a mistyped folder as well as a dataset id."""
    try:
        yield
    except hub_errors() as error:
        raise FileNotFoundError(f"{name}: no such catalog folder here, and the Hub could not provide a dataset of "
                                f"that name: {error}") from error


def arrow_to_numpy(array: pa.Array | pa.ChunkedArray, name: str, source: str) -> np.ndarray:
    """One catalog column as numpy, in bulk (datasets' numpy formatting converts list columns row by row):
    a vector column as float32 (rows, length) with null rows NaN, any other column in its own dtype."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_list(array.type) and not pa.types.is_fixed_size_list(array.type):
        return array.to_numpy(zero_copy_only=False)
    valid = np.asarray(array.is_valid())
    values = np.asarray(array.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    if name in MODALITY_NAMES:
        length = get_modality(name).length
    elif pa.types.is_fixed_size_list(array.type):
        length = array.type.list_size
    else:
        length = values.size // max(int(valid.sum()), 1)
    if values.size != valid.sum() * length:
        raise ValueError(f"{source}: column {name!r} must hold vectors of length {length}")
    out = np.full((len(array), length), np.nan, dtype=np.float32)
    out[valid] = values.reshape(-1, length)
    return out
