"""`mosaic-calibrate`: refit a probabilistic model's calibration on held-out galaxies and save it.

    mosaic-calibrate --model DIR_OR_REPO --data DIR --out DIR [--split train] [--rows N] [--depth-scale MIN MAX]

Fits, for each figure-2 query, the shift and temperature of every target and the redshift PIT map
(`MosaicModel.calibrate`) on the last N rows of the split (default: all of them), replacing the model's
calibration, and saves the model to OUT. Use galaxies the model never trained on: a training run's
validation rows (the last `validation_size` rows of train) or a separate catalog drawn the same way. The more
rows, the flatter the PIT: KS resolves ~1.4 / sqrt(N). With --depth-scale the held-out photometry is observed
afresh at per-galaxy depths first (as `mosaic-evaluate --depth-scale` does to the test rows), so that the
posteriors are calibrated over a range of depths, not the catalog's one: a model trained with `noise_scale`
does this over its training range at the end of training.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from ..allocator import keep_freed_memory
from ..files import ordinary_mode, readable_weights

#: The weight files save_pretrained writes (one file, or shards and their index): an old one is never carried over.
WEIGHTS = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic-calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hub repo id (AutoModel, trust_remote_code)")
    parser.add_argument("--data", required=True, help="catalog folder in Parquet layout (DIR/data/{split}-*.parquet)")
    parser.add_argument("--out", required=True, help="folder to save the recalibrated model to (may be --model)")
    parser.add_argument("--split", default="train", help="split to read the held-out galaxies from (default train)")
    parser.add_argument("--rows", type=int, default=None, help="use the last N rows of the split (default all)")
    parser.add_argument("--depth-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="calibrate on the photometry drawn afresh from its noise-free fluxes with the catalog's "
                             "flux errors times a per-galaxy factor uniform in [MIN, MAX]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --depth-scale draws (default 0)")
    return parser


def save_in_place(model, out) -> None:
    """Save the model to a fresh folder beside OUT, then swap it in: a save that fails half-way (disk full, a kill)
    leaves OUT as it was, and OUT may be --model, the only copy. OUT's other files (model card, training state,
    checkpoints) are carried over as hard links; only the weights save_pretrained writes are not."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new."))
    old = None
    try:
        model.save_pretrained(staging)
        readable_weights(staging)
        os.chmod(staging, ordinary_mode(out, directory=True))
        if out.exists():
            for entry in out.iterdir():
                if not (staging / entry.name).exists() and not WEIGHTS.fullmatch(entry.name):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(entry, staging / entry.name, follow_symlinks=False)
            old = out.parent / f".{out.name}.old.{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old)


def _link_or_copy(source, target, *, follow_symlinks=True) -> None:
    """A hard link (no bytes copied), or a copy where the file system has none."""
    try:
        os.link(source, target, follow_symlinks=follow_symlinks)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=follow_symlinks)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.rows is not None and args.rows < 1:
        raise SystemExit(f"--rows must be a positive integer, got {args.rows}")
    if not (Path(args.data) / "data").is_dir():
        raise SystemExit(f"--data {args.data}: no data/ folder of Parquet shards there")
    from ..noise import CALIBRATION_NOISE_STREAM, depth_columns, error_columns, redraw_photometry
    from .cli import check_depth_scale, check_out, load_model
    from .conditions import calibrate_for_conditions
    from .report import model_modalities, read_split, split_rows, uses_errors

    check_out(args.out)
    check_depth_scale(args.depth_scale)
    keep_freed_memory()
    model = load_model(args.model)
    if not hasattr(model, "calibrate") or getattr(model.config, "head_type", "point") != "gaussian":
        raise SystemExit(f"--model {args.model}: not a probabilistic MOSAIC model (head_type='gaussian')")
    modalities = model_modalities(model)
    needed = [*modalities, *error_columns(modalities, uses_errors(model)),
              *(depth_columns(modalities) if args.depth_scale is not None else [])]
    try:
        rows = split_rows(args.data, args.split, needed)
    except FileNotFoundError as error:
        raise SystemExit(f"--split {args.split}: {args.data} has no such split ({error})") from None
    except ValueError as error:
        hint = (" (--depth-scale draws from the noise-free fluxes and their errors, which a generated catalog "
                "stores)" if args.depth_scale is not None else "")
        raise SystemExit(f"--data {args.data}: {error}{hint}") from error
    if rows == 0:
        raise SystemExit(f"--split {args.split}: the {args.split} split of {args.data} has no rows")
    if args.rows is not None and args.rows > rows:
        raise SystemExit(f"--rows {args.rows}: the {args.split} split of {args.data} has only {rows} rows")
    columns = read_split(args.data, args.split, needed)
    held_out = {k: v[rows - (args.rows or rows):] for k, v in columns.items()}
    if args.depth_scale is not None:
        held_out = redraw_photometry(held_out, modalities, args.depth_scale, args.seed, CALIBRATION_NOISE_STREAM)
    model.config.calibration = []
    fitted = calibrate_for_conditions(model, held_out)
    save_in_place(model, args.out)
    for condition, targets in fitted.items():
        for target in ("redshift", "log_stellar_mass"):
            if target in targets:
                f = targets[target]
                print(f"{condition:15s} {target:16s} temperature {f['temperature']:.3f}  shift {f['shift']:+.3f}"
                      + ("  PIT map" if "pit_knots" in f else ""))
    count = len(next(iter(held_out.values())))
    depths = ("" if args.depth_scale is None
              else f", observed at depth factors {args.depth_scale[0]:g}-{args.depth_scale[1]:g}")
    print(f"calibrated on {count} galaxies of {args.data} ({args.split}){depths}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
