"""Write a catalog as a Hugging Face dataset folder: Parquet shards, a dataset card, provenance and statistics.

Layout of OUT (loadable with `datasets.load_dataset(OUT)` or `modeling_mosaic.catalog.io.load_catalog`):

    data/train-00000-of-00019.parquet ...   rows [0, n_train), `rows_per_file` rows per file
    data/test-00000-of-00003.parquet ...    the last n_test rows
    README.md            dataset card; its YAML front matter declares the splits and the features
    catalog.json         options, provenance, per-split summary, code and software versions
    normalization.json   per-modality, per-element mean/std in learning space, from the train split

Every Parquet file is one *block* of contiguous rows, and its footer carries the block's moments and summary.
A build of K job-array shards gives shard k a contiguous range of blocks; each shard moves its finished files
into OUT/data and leaves a manifest in OUT/shards/, and `finalize_catalog` (`mosaic-catalog finalize OUT`)
merges the footers in block order, so the statistics equal those of a one-pass build bit for bit.
An unsharded build is the same thing in a staging folder beside OUT, renamed to OUT when finalized:
an interrupted build leaves no OUT at all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from tqdm.auto import tqdm

from ..modalities import MODALITIES
from .features import arrow_schema, catalog_features, chunk_to_table, table_to_chunk
from .presets import catalog_options, code_version, get_preset
from .schema import COLUMNS
from .stats import STD_FLOOR, NormalizationAccumulator, save_normalization

logger = logging.getLogger(__name__)

#: A source of rows: `source(start, stop)` yields chunks (column -> array) covering rows [start, stop).
ChunkSource = Callable[[int, int], Iterable[Mapping[str, np.ndarray]]]

FORMAT_VERSION = 1
DEFAULT_ROWS_PER_FILE = 8192  # two of the generator's 4096-row blocks; ~30 MB of Parquet
SPLITS = ("train", "test")
BLOCK_METADATA_KEY = "mosaic.block"
SHARDS_DIR = "shards"


# ---------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Block:
    """One Parquet file: rows [start, stop) of the catalog, file `index` of `count` in its split."""

    split: str
    index: int
    count: int
    start: int
    stop: int

    @property
    def path(self) -> str:
        return f"data/{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"


@dataclass(frozen=True)
class Layout:
    """How the catalog's rows fall into splits and files; the same for every shard of a build."""

    n_train: int
    n_test: int
    rows_per_file: int = DEFAULT_ROWS_PER_FILE

    def __post_init__(self):
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"both splits need rows: n_train={self.n_train}, n_test={self.n_test}")
        if self.rows_per_file < 1:
            raise ValueError(f"rows_per_file must be positive, got {self.rows_per_file}")

    @property
    def n(self) -> int:
        return self.n_train + self.n_test

    def blocks(self) -> list[Block]:
        blocks = []
        for split, start, stop in (("train", 0, self.n_train), ("test", self.n_train, self.n)):
            count = math.ceil((stop - start) / self.rows_per_file)
            for i in range(count):
                lo = start + i * self.rows_per_file
                blocks.append(Block(split, i, count, lo, min(lo + self.rows_per_file, stop)))
        return blocks

    def shard(self, index: int, num_shards: int) -> list[Block]:
        """The contiguous range of blocks that shard `index` of `num_shards` writes."""
        blocks = self.blocks()
        if num_shards < 1 or not 0 <= index < num_shards:
            raise ValueError(f"shard index must lie in [0, num_shards), got index={index}, num_shards={num_shards}")
        if num_shards > len(blocks):
            raise ValueError(
                f"the catalog has {len(blocks)} files of {self.rows_per_file} rows: use at most {len(blocks)} "
                "shards, or a smaller rows_per_file"
            )
        return blocks[index * len(blocks) // num_shards : (index + 1) * len(blocks) // num_shards]


# --------------------------------------------------------------------------------------------- summary
SUMMARY_RANGES = ("redshift", "log_halo_mass", "log_stellar_mass")


@dataclass
class SplitSummary:
    """Rows, ranges of the headline scalars and the quenched fraction of a set of rows (NaN ignored)."""

    rows: int = 0
    ranges: dict = field(default_factory=lambda: {name: [math.inf, -math.inf] for name in SUMMARY_RANGES})
    quenched: int = 0
    labelled: int = 0  # rows whose `quenched` is 0 or 1 (an imported catalog may not know: -1)

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        self.rows += len(chunk["galaxy_id"])
        for name in SUMMARY_RANGES:
            x = np.asarray(chunk[name], float)
            x = x[np.isfinite(x)]
            if x.size:
                lo, hi = self.ranges[name]
                self.ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        q = np.asarray(chunk["quenched"])
        self.quenched += int((q == 1).sum())
        self.labelled += int(((q == 0) | (q == 1)).sum())

    def merge(self, other: SplitSummary) -> None:
        self.rows += other.rows
        for name in SUMMARY_RANGES:
            (a, b), (c, d) = self.ranges[name], other.ranges[name]
            self.ranges[name] = [min(a, c), max(b, d)]
        self.quenched += other.quenched
        self.labelled += other.labelled

    @property
    def quenched_fraction(self) -> float | None:
        return self.quenched / self.labelled if self.labelled else None

    def to_dict(self) -> dict:
        """JSON-safe: a range never seen (all NaN) is null."""
        ranges = {k: (v if math.isfinite(v[0]) else None) for k, v in self.ranges.items()}
        return {"rows": self.rows, "ranges": ranges, "quenched": self.quenched, "labelled": self.labelled,
                "quenched_fraction": self.quenched_fraction}

    @classmethod
    def from_dict(cls, d: Mapping) -> SplitSummary:
        ranges = {k: (list(v) if v is not None else [math.inf, -math.inf]) for k, v in d["ranges"].items()}
        return cls(d["rows"], ranges, d["quenched"], d["labelled"])


# --------------------------------------------------------------------------------------- atomic writes
def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path, keys: Iterable[str]) -> dict:
    """A JSON file this package wrote (catalog.json, a shard manifest), holding `keys`; an error naming the file
    otherwise: other tools write files of these names too (a STAC catalog.json)."""
    try:
        content = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in keys if not isinstance(content, dict) or k not in content]
    if missing:
        raise ValueError(f"{path}: not a MOSAIC catalog file (no {', '.join(missing)})")
    return content


def _staging_dir(out: Path, label: str) -> Path:
    """A fresh folder beside OUT (same file system, so the final renames are atomic)."""
    staging = out.parent / f".{out.name}.{label}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(parents=True)
    return staging


# ----------------------------------------------------------------------------------------------- build
def _write_block(root: Path, block: Block, source: ChunkSource, bar) -> None:
    """Stream rows [start, stop) into one Parquet file; its footer gets the block's moments and summary."""
    path = root / block.path
    summary = SplitSummary()
    moments = NormalizationAccumulator() if block.split == "train" else None
    with pq.ParquetWriter(path, arrow_schema()) as writer:
        for chunk in source(block.start, block.stop):
            table = chunk_to_table(chunk)
            writer.write_table(table)
            stored = table_to_chunk(table)  # statistics of the float32 values actually stored
            summary.update(stored)
            if moments is not None:
                moments.update(stored)
            bar.update(table.num_rows)
        expected = block.stop - block.start
        if summary.rows != expected:
            raise ValueError(
                f"the chunk source gave {summary.rows} rows for rows [{block.start}, {block.stop}), expected {expected}"
            )
        meta = {"block": asdict(block), "summary": summary.to_dict(),
                "moments": moments.to_dict() if moments is not None else None}
        writer.add_key_value_metadata({BLOCK_METADATA_KEY: json.dumps(meta)})


def write_catalog(
    out: str | os.PathLike,
    source: ChunkSource,
    layout: Layout,
    provenance: Mapping,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write the rows of `source` into the dataset folder OUT.

    `provenance` (JSON-safe) says where the rows come from: {"origin": "generated", "config": ...,
    "options": {...}} or {"origin": "imported", "inputs": [...], ...}; it goes into catalog.json and the card.
    Unsharded: builds beside OUT, finalizes and renames; returns catalog.json's content. Sharded
    (num_shards > 1): writes this shard's files and manifest into OUT; returns the manifest; run
    `finalize_catalog(OUT)` once every shard has finished.
    """
    out = Path(out).absolute()
    if out.is_symlink():  # a link to a catalog: build where it points, so the link goes on naming the catalog
        out = out.resolve()
    sharded = num_shards > 1
    blocks = layout.shard(shard_index, num_shards)
    if sharded and overwrite:
        raise ValueError("overwrite applies to unsharded builds only: the shards of a build share one OUT")
    if sharded and (out / "catalog.json").exists():
        raise FileExistsError(f"{out} already holds a finished catalog; remove it or choose another --out")
    if sharded and out.exists():  # finalize writes README.md, catalog.json and normalization.json into OUT
        if not out.is_dir():
            raise FileExistsError(f"{out} is a file; choose a new or empty folder as --out")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("data", SHARDS_DIR))
        if foreign:
            raise FileExistsError(f"{out} holds {', '.join(foreign)}, not only a sharded build's data/ and "
                                  f"{SHARDS_DIR}/; choose a new or empty --out")
    if not sharded and out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; remove it, choose another --out, or pass overwrite")
    if not sharded and out.exists() and not (out / "catalog.json").is_file():  # never rmtree a user's own folder
        raise FileExistsError(f"{out} exists and is not a finished catalog (no catalog.json): overwrite replaces "
                              "only a catalog; remove it yourself or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    others = sorted(p.name for p in out.parent.glob(f".{out.name}.build.*.tmp"))
    if not sharded and others:
        logger.warning("%s: staging folders of other builds of %s (running, or killed: remove a killed one's): %s",
                       out.parent, out.name, ", ".join(others))
    staging = _staging_dir(out, f"shard-{shard_index}-of-{num_shards}" if sharded else "build")
    try:
        (staging / "data").mkdir()
        started = time.perf_counter()
        rows = sum(b.stop - b.start for b in blocks)
        with tqdm(total=rows, unit="gal", disable=not progress, desc=f"catalog {out.name}") as bar:
            for block in blocks:
                _write_block(staging, block, source, bar)
        manifest = {
            "format_version": FORMAT_VERSION,
            "provenance": dict(provenance),
            "layout": asdict(layout),
            "code_version": code_version(),
            "num_shards": num_shards,
            "shard_index": shard_index,
            "files": [b.path for b in blocks],
            "rows": rows,
            "seconds": time.perf_counter() - started,
        }
        if sharded:
            _publish_shard(staging, out, manifest)
            return manifest
        (staging / SHARDS_DIR).mkdir()
        _write_text(staging / SHARDS_DIR / "shard-00000-of-00001.json", json.dumps(manifest, indent=1))
        catalog = finalize_catalog(staging)
        _move_into_place(staging, out, overwrite)
        return catalog
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_shard(staging: Path, out: Path, manifest: dict) -> None:
    """Move a finished shard's files into OUT/data (each rename atomic), then record its manifest."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / SHARDS_DIR).mkdir(exist_ok=True)
    for rel in manifest["files"]:
        os.replace(staging / rel, out / rel)
    name = f"shard-{manifest['shard_index']:05d}-of-{manifest['num_shards']:05d}.json"
    _write_text(out / SHARDS_DIR / name, json.dumps(manifest, indent=1))


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished catalog to OUT; with `overwrite` an existing OUT is swapped out, then removed. Without,
    an OUT that appeared while this build ran (another build into the same --out) is kept: the rename fails."""
    if not overwrite:
        try:
            os.rename(staging, out)  # onto a folder that holds anything, or a file, it fails
        except OSError as err:
            raise FileExistsError(f"{out} appeared while this build ran (another build into the same --out?); it was "
                                  f"kept and this build discarded ({err.strerror})") from None
        return
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old.{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old)


# -------------------------------------------------------------------------------------------- finalize
def _read_manifests(out: Path) -> list[dict]:
    paths = sorted((out / SHARDS_DIR).glob("shard-*.json"))
    if not paths:
        if (out / "catalog.json").exists():
            raise ValueError(f"{out} is already finalized (catalog.json exists, no shard manifests left)")
        raise ValueError(f"{out}: no shard manifests in {out / SHARDS_DIR}: not the output of a sharded build")
    manifests = [read_json(p, ("format_version", "num_shards", "shard_index", "files", "seconds")) for p in paths]
    identity = ("format_version", "provenance", "layout", "code_version", "num_shards")
    for p, m in zip(paths, manifests):
        for key in identity:
            if m.get(key) != manifests[0].get(key):
                raise ValueError(
                    f"{p}: its {key} differs from that of {paths[0].name}; shards of one catalog must be built "
                    "with identical options and code"
                )
    num_shards = manifests[0]["num_shards"]
    missing = sorted(set(range(num_shards)) - {m["shard_index"] for m in manifests})
    if missing:
        raise ValueError(f"{out}: shards {missing} of {num_shards} have not finished; run them, then finalize")
    return sorted(manifests, key=lambda m: m["shard_index"])


def _read_block_metadata(path: Path) -> dict:
    try:
        raw = pq.read_metadata(path).metadata[BLOCK_METADATA_KEY.encode()]
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a complete catalog file written by this package ({err})") from err
    return json.loads(raw)


def finalize_catalog(out: str | os.PathLike) -> dict:
    """Merge the per-file moments into normalization.json, write catalog.json and README.md, drop shards/."""
    out = Path(out)
    manifests = _read_manifests(out)
    first = manifests[0]
    layout = Layout(**first["layout"])
    blocks = layout.blocks()
    expected = {b.path for b in blocks}
    present = {f"data/{p.name}" for p in (out / "data").iterdir()} if (out / "data").is_dir() else set()
    if expected - present:
        raise ValueError(f"{out}: files missing: {sorted(expected - present)}")
    if present - expected:
        raise ValueError(f"{out}: files that belong to no block of this catalog: {sorted(present - expected)}")

    moments = NormalizationAccumulator()
    summaries = {split: SplitSummary() for split in SPLITS}
    for block in blocks:
        meta = _read_block_metadata(out / block.path)
        if meta["block"] != asdict(block):
            raise ValueError(f"{out / block.path}: holds rows of block {meta['block']}, expected {asdict(block)}")
        summaries[block.split].merge(SplitSummary.from_dict(meta["summary"]))
        if block.split == "train":
            moments.merge(NormalizationAccumulator.from_dict(meta["moments"]))

    seconds = sum(m["seconds"] for m in manifests)
    catalog = {
        "format_version": FORMAT_VERSION,
        "provenance": first["provenance"],
        "code_version": first["code_version"],
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows_per_file": layout.rows_per_file,
        "splits": {
            split: {"rows": summaries[split].rows, "files": [b.path for b in blocks if b.split == split],
                    "summary": summaries[split].to_dict()}
            for split in SPLITS
        },
        "build": {"num_shards": first["num_shards"], "seconds": seconds,
                  "galaxies_per_second": layout.n / seconds if seconds > 0 else None},
        "software": _software_versions(),
        "normalization": {"file": "normalization.json", "split": "train", "space": "learning",
                          "std_floor": STD_FLOOR},
        "columns": [asdict(c) for c in COLUMNS],
    }
    save_normalization(moments.normalization(), out / "normalization.json")
    _write_text(out / "catalog.json", json.dumps(catalog, indent=2) + "\n")
    _write_text(out / "README.md", dataset_card(catalog))
    shutil.rmtree(out / SHARDS_DIR)
    return catalog


def _software_versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("mosaic-galaxy", "numpy", "pyarrow", "datasets"):
        versions[dist] = metadata.version(dist)
    return versions


# ------------------------------------------------------------------------------------------ dataset card
CITATIONS = {
    "mosaic": """@article{xia2025mosaic,
  title   = {Multi-modal Foundation Model for Cosmological Simulation Data},
  author  = {Xia and Ramachandra and Wells and Habib and Wise},
  journal = {arXiv e-prints},
  eprint  = {2510.07684},
  year    = {2025}
}""",
    "bc03": """@article{bruzual2003,
  title   = {Stellar population synthesis at the resolution of 2003},
  author  = {Bruzual, G. and Charlot, S.},
  journal = {Monthly Notices of the Royal Astronomical Society},
  volume  = {344},
  number  = {4},
  pages   = {1000--1028},
  year    = {2003},
  doi     = {10.1046/j.1365-8711.2003.06897.x}
}""",
}

SFH_CONVENTIONS = {
    "observed": "the SFH runs on the cosmic-time table up to the galaxy's epoch (`cosmic_time_gyr`) and is 0 "
    "after it: only the past an observer at the galaxy's redshift could know",
    "full": "the SFH is continued past the galaxy's epoch to t0 = 13.8 Gyr on the whole cosmic-time table",
}


def _front_matter(catalog: Mapping) -> str:
    info = {
        # a generated catalog is ours to license; an imported one keeps its source's terms
        **({"license": "mit"} if catalog["provenance"].get("origin") == "generated" else {}),
        "pretty_name": "MOSAIC galaxy catalog",
        "tags": ["astronomy", "galaxies", "photometric-redshift", "spectral-energy-distribution", "mosaic"],
        "configs": [{"config_name": "default", "data_files": [
            {"split": split, "path": f"data/{split}-*"} for split in SPLITS]}],
        "dataset_info": {"features": catalog_features()._to_yaml_list()},
    }
    return "---\n" + yaml.safe_dump(info, sort_keys=False) + "---\n"


def _column_table() -> str:
    lines = ["| column | shape | dtype | unit | description |", "|---|---|---|---|---|"]
    for c in COLUMNS:
        shape = "scalar" if c.length == 0 else f"[{c.length}]"
        name = f"**{c.name}**" if c.modality else c.name
        lines.append(f"| {name} | {shape} | {c.dtype} | {c.unit or '-'} | {c.description} |")
    return "\n".join(lines)


def _learning_space_table() -> str:
    lines = ["| modality | learning space |", "|---|---|"]
    for m in MODALITIES.values():
        space = f"{m.scale:g} * log10(x + {m.offset:g})" if m.log else "x (as stored)"
        lines.append(f"| {m.name} | {space} |")
    return "\n".join(lines)


def _provenance_section(provenance: Mapping) -> tuple[str, list[str]]:
    """The card's 'where the rows come from' section, and the citations it needs."""
    if provenance.get("origin") != "generated":
        inputs = "\n".join(f"- `{i['file']}`: {i['rows']} rows" for i in provenance.get("inputs", []))
        extra = {k: v for k, v in provenance.items() if k not in ("origin", "inputs")}
        return (f"Imported from a user catalog with `mosaic-catalog import`:\n\n{inputs}\n\n"
                f"Import settings: `{json.dumps(extra)}`. Modalities the input lacked are NaN (missing). The test "
                "split is a seeded random draw of the rows (input order kept within each split)."), ["mosaic"]
    options = provenance.get("options", {})
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in options.items())
    convention = options.get("sfh_convention")
    text = (
        f"Generated with `mosaic-catalog build --config {provenance.get('config')}` (config "
        f"`{provenance.get('config')}`): a Last-Journey-like lightcone with published population relations and "
        "Bruzual & Charlot (2003) stellar populations; see the package's catalog generator.\n\n"
        f"| option | value |\n|---|---|\n{rows}\n\n"
        f"**SFH convention `{convention}`**: {SFH_CONVENTIONS.get(convention, 'see the generator documentation')}.\n\n"
        "The test split is the last rows of the catalog (rows are independent draws)."
    )
    return text, ["mosaic", "bc03"]


def dataset_card(catalog: Mapping) -> str:
    """README.md of a catalog folder: YAML front matter for `datasets`, then a human description."""
    provenance_text, citations = _provenance_section(catalog["provenance"])
    split_lines = []
    for split in SPLITS:
        s = catalog["splits"][split]["summary"]
        ranges = ", ".join(f"{k} {v[0]:.3g}..{v[1]:.3g}" for k, v in s["ranges"].items() if v is not None)
        qf = s["quenched_fraction"]
        split_lines.append(f"- **{split}**: {s['rows']} rows; {ranges}; quenched fraction "
                           f"{'n/a' if qf is None else f'{qf:.3f}'}")
    bibtex = "\n\n".join(CITATIONS[c] for c in citations)
    return f"""{_front_matter(catalog)}
# MOSAIC galaxy catalog

Galaxies with seven modalities (in bold below) for training and evaluating MOSAIC (Xia et al. 2025,
arXiv:2510.07684): redshift, halo mass and stellar mass, the star-formation history (SFH), the rest-frame SED,
LSST ugrizy and SPHEREx 102-channel photometry. Vectors are fixed-length float32 lists; NaN means missing.

```python
from modeling_mosaic.catalog.io import load_catalog, read_normalization
ds = load_catalog("path/or/hub-id")          # DatasetDict with train and test
ds = ds.with_format("numpy")                  # or "torch": float32 arrays, vectors (batch, length)
stats = read_normalization("path/or/hub-id")  # {{modality: {{"mean", "std"}}}} in learning space
```
Plain `datasets.load_dataset("path/or/hub-id")` reads it too (features come from this card), but for a local
folder it keys its cache on this card alone: after rebuilding a catalog in place, pass
`download_mode="force_redownload"` (`load_catalog` keys its cache on `catalog.json` and needs nothing).

## Splits

{chr(10).join(split_lines)}

Files: `data/{{split}}-XXXXX-of-NNNNN.parquet`, up to {catalog['rows_per_file']} rows each.

## Where the rows come from

{provenance_text}

Code version `{catalog['code_version']}`; full provenance in `catalog.json`.

## Columns

{_column_table()}

## Normalisation statistics

`normalization.json` holds, per modality and per element, the mean and standard deviation over the **train
split** in the learning space of the modality registry, NaN/inf ignored, standard deviation floored at
{catalog['normalization']['std_floor']}:

{_learning_space_table()}

## Citation

```bibtex
{bibtex}
```
"""


# ------------------------------------------------------------------------------------- generated catalogs
def build_catalog(
    out: str | os.PathLike,
    config: str = "tiny",
    n: int | None = None,
    *,
    shard_index: int = 0,
    num_shards: int = 1,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    progress: bool = False,
    **option_overrides,
) -> dict:
    """Generate a preset catalog (`presets.PRESETS`) into OUT; options override the generator's defaults.

    With n given, the preset's test fraction is kept. Returns catalog.json's content (a shard: its manifest).
    """
    from .generator import generate

    preset = get_preset(config)
    n_train, n_test = preset.split(n)
    options = catalog_options(preset, n_train + n_test, **option_overrides)

    def source(start: int, stop: int):
        return generate(options, start=start, stop=stop)

    provenance = {"origin": "generated", "config": preset.name, "options": options.to_dict()}
    return write_catalog(out, source, Layout(n_train, n_test, rows_per_file), provenance, shard_index=shard_index,
                         num_shards=num_shards, overwrite=overwrite, progress=progress)
