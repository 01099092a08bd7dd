"""Catalog generation speed: galaxies/s of `build_catalog` end to end (SSP tables loaded, every column synthesised,
Parquet shards, statistics and card written) and of the generator alone, plus per-stage timings.

One run per measurement: a paper-size build is ~50 blocks of 4096 rows, so it is its own average; each runs in a
fresh process (run.py) so its peak memory is its own.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def build_benchmark(preset: str, out: str, n: int | None = None, keep: bool = False) -> dict:
    """Worker: `build_catalog(out, preset, n)` timed end to end; the folder is deleted unless `keep`."""
    from modeling_mosaic.catalog.writer import build_catalog

    start = time.perf_counter()
    info = build_catalog(out, preset, n=n)
    total = time.perf_counter() - start
    rows = sum(split["rows"] for split in info["splits"].values())
    size = sum(f.stat().st_size for f in Path(out, "data").glob("*.parquet"))
    if not keep:
        shutil.rmtree(out)
    return {"preset": preset, "n": rows, "total_s": total, "galaxies_per_s": rows / total,
            "parquet_mb": round(size / 1e6, 1)}


def generation_benchmark(n: int, seed: int = 0) -> dict:
    """Worker: the generator alone (every column, nothing written), after its tables are loaded."""
    from modeling_mosaic.catalog.generator import CatalogOptions, generate, synthesis

    start = time.perf_counter()
    synthesis()
    setup = time.perf_counter() - start
    start = time.perf_counter()
    rows = sum(chunk["galaxy_id"].size for chunk in generate(CatalogOptions(n=n, seed=seed)))
    total = time.perf_counter() - start
    return {"n": rows, "setup_s": setup, "generate_s": total, "galaxies_per_s": rows / total}


def stage_benchmark() -> dict:
    """Worker: seconds per 1,000 galaxies of each generator stage (catalog_speed.stage_timings)."""
    from catalog_speed import stage_timings

    from modeling_mosaic.catalog.generator import CatalogOptions

    return {"stage_s_per_1000_galaxies": stage_timings(CatalogOptions(n=4096))}
