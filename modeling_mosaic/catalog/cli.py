"""`mosaic-catalog`: build, import, finalize and inspect catalog folders.

    mosaic-catalog build --config {tiny,demo,paper} --out DIR [--n N] [--seed S] [--sfh-model M] ...
    mosaic-catalog build --config paper --out DIR --shard-index $I --num-shards 8   # one job-array task
    mosaic-catalog finalize DIR                                                    # once all shards are done
    mosaic-catalog import INPUT [INPUT ...] --out DIR [--test-fraction 0.1]
    mosaic-catalog info DIR
    mosaic-catalog push DIR --repo ORG/NAME [--private]                            # a Hub dataset repo

Also runnable as `python -m modeling_mosaic.catalog.cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..allocator import keep_freed_memory
from ..hub import hub_errors
from .presets import PRESETS
from .writer import DEFAULT_ROWS_PER_FILE, SPLITS

#: Generator options settable from the command line (flag -> CatalogOptions field); unset ones keep defaults.
OPTION_FLAGS = {
    "--seed": ("seed", int),
    "--z-max": ("z_max", float),
    "--log-halo-mass-min": ("log_halo_mass_min", float),
    "--sfh-model": ("sfh_model", str),
    "--sfh-convention": ("sfh_convention", str),
    "--noise": ("noise", str),
    "--spherex-depth": ("spherex_depth", str),
}


def format_summary(catalog: dict) -> str:
    """A few lines: rows, headline ranges and quenched fraction per split, build time and rate."""
    lines = []
    for split in SPLITS:
        s = catalog["splits"][split]["summary"]
        ranges = "  ".join(f"{k} [{v[0]:.3f}, {v[1]:.3f}]" for k, v in s["ranges"].items() if v is not None)
        qf = s["quenched_fraction"]
        lines.append(f"{split:>5}: {s['rows']:>8} rows  {ranges}  quenched {'n/a' if qf is None else f'{qf:.3f}'}")
    build = catalog["build"]
    rate = build["galaxies_per_second"]
    shards = f" (summed over {build['num_shards']} shards)" if build["num_shards"] > 1 else ""
    lines.append(f"built in {build['seconds']:.1f} s{shards}" + (f", {rate:.0f} galaxies/s" if rate else ""))
    return "\n".join(lines)


def _build(args) -> None:
    from .writer import build_catalog

    overrides = {field: getattr(args, field) for field, _ in OPTION_FLAGS.values() if getattr(args, field) is not None}
    result = build_catalog(
        args.out, args.config, args.n, shard_index=args.shard_index, num_shards=args.num_shards,
        rows_per_file=args.rows_per_file, overwrite=args.overwrite, progress=not args.quiet, **overrides,
    )
    if args.num_shards > 1:
        rate = result["rows"] / result["seconds"] if result["seconds"] > 0 else float("nan")
        print(f"shard {args.shard_index} of {args.num_shards}: {result['rows']} rows in {len(result['files'])} files, "
              f"{result['seconds']:.1f} s, {rate:.0f} galaxies/s")
        print(f"when all {args.num_shards} shards are done: mosaic-catalog finalize {args.out}")
        return
    print(f"catalog {args.out} ({args.config})")
    print(format_summary(result))


def _import(args) -> None:
    from .importer import import_catalog

    catalog = import_catalog(args.inputs, args.out, test_fraction=args.test_fraction, seed=args.seed,
                             rows_per_file=args.rows_per_file, overwrite=args.overwrite, progress=not args.quiet)
    print(f"catalog {args.out} imported from {len(args.inputs)} file(s)")
    missing = catalog["provenance"]["missing_modalities"]
    print(f"missing modalities (all NaN): {', '.join(missing) if missing else 'none'}")
    print(format_summary(catalog))


def _finalize(args) -> None:
    from .writer import finalize_catalog

    print(format_summary(finalize_catalog(args.dir)))


def _info(args) -> None:
    from .writer import read_json

    path = Path(args.dir) / "catalog.json"
    if not path.exists():
        raise ValueError(f"{args.dir}: no catalog.json (not a finished catalog; a sharded build needs finalize)")
    catalog = read_json(path, ("provenance", "code_version", "created_utc", "splits", "build"))
    provenance = catalog["provenance"]
    print(f"catalog {args.dir}: {provenance['origin']}, code {catalog['code_version']}, created {catalog['created_utc']}")
    if provenance["origin"] == "generated":
        print(f"config {provenance['config']}, options {json.dumps(provenance['options'])}")
    else:
        print("inputs: " + ", ".join(f"{i['file']} ({i['rows']} rows)" for i in provenance["inputs"]))
    print(format_summary(catalog))


def _push(args) -> None:
    """Upload a finished catalog folder as a Hub dataset repo; `load_dataset("ORG/NAME")` then reads it."""
    from huggingface_hub import HfApi

    if not (Path(args.dir) / "catalog.json").exists():
        raise ValueError(f"{args.dir}: no catalog.json (not a finished catalog); nothing was pushed")
    api = HfApi()
    try:
        api.create_repo(args.repo, repo_type="dataset", private=args.private, exist_ok=True)
        info = api.upload_folder(repo_id=args.repo, repo_type="dataset", folder_path=args.dir,
                                 commit_message="Upload MOSAIC catalog", ignore_patterns=["_*", ".*"])
    except hub_errors() as err:
        raise OSError(f"{args.dir} was not pushed to dataset repo {args.repo} at {api.endpoint}: {err}") from err
    print(f"pushed {args.dir} to dataset repo {args.repo} (commit {info.oid})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mosaic-catalog", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="generate a simulated catalog")
    b.add_argument("--config", choices=list(PRESETS), default="tiny")
    b.add_argument("--out", required=True, help="catalog folder to create")
    b.add_argument("--n", type=int, help="total rows (default: the config's); the test fraction is kept")
    for flag, (field, kind) in OPTION_FLAGS.items():
        b.add_argument(flag, dest=field, type=kind, help=f"generator option {field} (default: the generator's)")
    b.add_argument("--shard-index", type=int, default=0)
    b.add_argument("--num-shards", type=int, default=1, help="> 1: write one shard into OUT, then run finalize")
    b.set_defaults(func=_build)

    i = sub.add_parser("import", help="convert a real catalog (HDF5 or Parquet) to the MOSAIC schema")
    i.add_argument("inputs", nargs="+", metavar="INPUT")
    i.add_argument("--out", required=True)
    i.add_argument("--test-fraction", type=float, default=0.1)
    i.add_argument("--seed", type=int, default=0, help="seed of the random train/test split")
    i.set_defaults(func=_import)

    for command in (b, i):
        command.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE)
        command.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
        command.add_argument("--quiet", action="store_true", help="no progress bar")

    f = sub.add_parser("finalize", help="merge the shards of a sharded build into a finished catalog")
    f.add_argument("dir")
    f.set_defaults(func=_finalize)

    n = sub.add_parser("info", help="describe a catalog folder")
    n.add_argument("dir")
    n.set_defaults(func=_info)

    u = sub.add_parser("push", help="upload a catalog folder as a Hugging Face Hub dataset repo")
    u.add_argument("dir")
    u.add_argument("--repo", required=True, help="ORG/NAME of the dataset repo (created if absent)")
    u.add_argument("--private", action="store_true")
    u.set_defaults(func=_push)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    keep_freed_memory()
    try:
        args.func(args)
    except (ValueError, ImportError, NotImplementedError, *hub_errors()) as err:
        print(f"mosaic-catalog {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
