"""Speed of the catalog generator: galaxies/s of the full pipeline (all columns, written to Parquet) and
peak resident memory, plus per-stage timings of one block. Prints one JSON object.

    python benchmarks/catalog_speed.py [N] [--out catalog.parquet] [--no-write]

N defaults to 205,830 (the paper's 185,247 + 20,583 galaxies).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np


def _arrow_table(chunk):
    import pyarrow as pa

    arrays = {}
    for name, values in chunk.items():
        if values.ndim == 1:
            arrays[name] = pa.array(values)
        else:
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])
    return pa.table(arrays)


def stage_timings(options, repeats: int = 2) -> dict[str, float]:
    """Seconds per 1,000 galaxies of each stage (best of `repeats`): the population of block 0 (drawn for
    the whole block), and the synthesis stages on its first synthesis chunk."""
    from modeling_mosaic.catalog import generator, photometry, physics, ssp
    from modeling_mosaic.modalities import MODALITIES, asinh_magnitude

    tables = generator.synthesis()
    best: dict[str, float] = {}

    def clock(name, fn):
        t = time.perf_counter()
        result = fn()
        best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
        return result

    n = generator.SYNTHESIS_CHUNK

    def one_pass():
        full, _, _ = clock("population_and_noise_draws", lambda: generator.block_draws(options, 0))
        pop = full.take(slice(0, n))
        lnu = clock("sps_mixture_and_dust", lambda: tables.ssp.synthesize(
            pop.mass_in_age_bins, pop.log_metallicity, pop.dust_av, tables.attenuation))
        clock("sfh_table", lambda: pop.sfh_table(options.sfh_convention))
        clock("rest_sed_rebin", lambda: ssp.apply_columns(lnu, tables.sed_index, tables.sed_weight))
        clock("redshift_shift_and_igm", lambda: tables.bands.observed_spectra(lnu, pop.redshift))
        band = clock("shift_igm_and_band_integrals", lambda: tables.bands.band_lnu(lnu, pop.redshift))
        flux = photometry.flux_njy(band, pop.redshift, physics.cosmology().luminosity_distance(pop.redshift))
        n_lsst = MODALITIES["lsst"].length
        clock("asinh_magnitudes", lambda: (asinh_magnitude(flux[:, :n_lsst], MODALITIES["lsst"].softening_njy),
                                           asinh_magnitude(flux[:, n_lsst:], MODALITIES["spherex"].softening_njy)))

    for _ in range(repeats):
        one_pass()
    rows = {k: n for k in best} | {"population_and_noise_draws": generator.BLOCK_SIZE}
    return {k: round(v / rows[k] * 1000.0, 4) for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=205_830)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="Parquet file to keep (default: a temporary file, deleted)")
    parser.add_argument("--no-write", action="store_true", help="generate only, write nothing")
    args = parser.parse_args()

    from modeling_mosaic.catalog.generator import CatalogOptions, generate, synthesis

    options = CatalogOptions(n=args.n, seed=args.seed)
    t0 = time.perf_counter()
    synthesis()
    setup_s = time.perf_counter() - t0

    writer = None
    out = args.out
    tmp = None
    if not args.no_write:
        import pyarrow.parquet as pq

        folder = os.path.dirname(os.path.abspath(out)) if out else None
        fd, tmp = tempfile.mkstemp(suffix=".parquet.tmp", dir=folder)
        os.close(fd)
    t1 = time.perf_counter()
    generate_s = write_s = 0.0
    rows = 0
    chunks = generate(options)
    while True:
        t = time.perf_counter()
        chunk = next(chunks, None)
        generate_s += time.perf_counter() - t
        if chunk is None:
            break
        rows += chunk["galaxy_id"].size
        if tmp is not None:
            t = time.perf_counter()
            table = _arrow_table(chunk)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            write_s += time.perf_counter() - t
    if writer is not None:
        writer.close()
    total_s = time.perf_counter() - t1
    size_mb = None
    if tmp is not None:
        size_mb = round(os.path.getsize(tmp) / 1e6, 1)
        if out:
            os.replace(tmp, out)
        else:
            os.remove(tmp)

    result = {
        "n": rows,
        "setup_s": round(setup_s, 2),
        "generate_s": round(generate_s, 2),
        "parquet_write_s": round(write_s, 2),
        "total_s": round(total_s, 2),
        "galaxies_per_s": round(rows / total_s, 1),
        "parquet_mb": size_mb,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "stage_s_per_1000_galaxies": stage_timings(options),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
