"""`mosaic-evaluate`: score a MOSAIC model on a catalog's test split and write a report.

    mosaic-evaluate --model DIR_OR_REPO --data DIR --out DIR [--max-test N] [--no-baselines] [--no-figures]
                    [--device cuda] [--baselines-from EARLIER/metrics.json] [--depth-scale MIN MAX]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..allocator import keep_freed_memory
from .baselines import MAX_TRAIN, THREADS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mosaic-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hub repo id (AutoModel, trust_remote_code)")
    parser.add_argument("--data", required=True,
                        help="catalog folder in Parquet layout (DIR/data/{train,test}-*.parquet)")
    parser.add_argument("--out", required=True, help="output folder for metrics.json, REPORT.md and figures")
    parser.add_argument("--max-test", type=int, default=None, help="evaluate a seeded random subset of N test galaxies")
    parser.add_argument("--max-train", type=int, default=MAX_TRAIN,
                        help="cap on the baselines' training rows (default: the whole train split, as MOSAIC)")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"threads of the baselines' estimators (default {THREADS})")
    parser.add_argument("--no-baselines", action="store_true", help="skip the single-task scikit-learn baselines")
    parser.add_argument("--no-ablation", action="store_true", help="skip the SFH-convention ablation")
    parser.add_argument("--ablation-data", nargs="*", default=[], metavar="DIR",
                        help="more catalogs for the ablation, e.g. the same one built with --sfh-convention full")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--batch-size", type=int, default=4096, help="galaxies per model.predict batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of every subsample and estimator")
    parser.add_argument("--device", default="auto", help="where the model predicts: auto (cuda when available), cpu, cuda")
    parser.add_argument("--baselines-from", default=None, metavar="METRICS_JSON",
                        help="reuse the baselines and SFH ablation of an earlier evaluation of the same test rows")
    parser.add_argument("--depth-scale", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                        help="score the test photometry drawn afresh from its noise-free fluxes with the catalog's "
                             "flux errors times a per-galaxy factor uniform in [MIN, MAX] (2 = 0.75 mag shallower)")
    return parser


def load_model(name_or_path: str, device: str = "cpu"):
    """The model through transformers.AutoModel (the repo's own remote code), in eval mode on `device`. A name
    that can only be a path (it starts with . / ~ or has more than one /) must be a folder; others may be Hub ids.
    Only a MOSAIC checkpoint loads, and only from safetensors: a pickle can run code as it is read."""
    from transformers import AutoModel

    from ..catalog.io import can_only_be_a_path

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {name_or_path}: not a MOSAIC checkpoint (no config.json)")
        if not any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
            raise SystemExit(f"--model {name_or_path}: not a MOSAIC checkpoint (no model.safetensors; checkpoints load "
                             "from safetensors only, never from a pickle such as pytorch_model.bin)")
    elif can_only_be_a_path(name_or_path):
        raise SystemExit(f"--model {name_or_path}: no such folder")
    try:
        model = AutoModel.from_pretrained(path if path.is_dir() else name_or_path, trust_remote_code=True,
                                          use_safetensors=True)
    except OSError as error:  # a Hub id that is unknown, private, out of reach offline or without safetensors
        raise SystemExit(f"--model {name_or_path}: {error}") from None
    except ValueError as error:  # a config.json without a model_type transformers knows
        raise SystemExit(f"--model {name_or_path}: not a MOSAIC checkpoint ({error})") from None
    if model.config.model_type != "mosaic":
        raise SystemExit(f"--model {name_or_path}: not a MOSAIC checkpoint (its model_type is "
                         f"{model.config.model_type!r})")
    return model.to(device).eval()


def check_out(out) -> None:
    """--out must be a folder or one that can be made: a file at it or above it is refused before any work."""
    path = Path(out).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SystemExit(f"--out {out}: a file, not a folder" if existing == path
                         else f"--out {out}: {existing} is a file, not a folder")


def check_catalogs(args, model) -> None:
    """Refuse, before any prediction, a catalog split this run would read and fail on: one without a shard,
    without a column the model or the baselines read, or without rows."""
    from .report import TRAIN_COLUMNS, evaluation_columns, split_rows

    reads = [("--data", args.data, "test", evaluation_columns(model, args.depth_scale))]
    if args.baselines_from is None and not (args.no_baselines and args.no_ablation):
        reads.append(("--data", args.data, "train", TRAIN_COLUMNS))
    if args.baselines_from is None and not args.no_ablation:
        reads += [("--ablation-data", catalog, split, TRAIN_COLUMNS)
                  for catalog in args.ablation_data for split in ("train", "test")]
    for flag, catalog, split, columns in reads:
        try:
            rows = split_rows(catalog, split, columns)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"{flag} {catalog}: {error}") from None
        if rows == 0:
            raise SystemExit(f"{flag} {catalog}: the {split} split has no rows")


def check_depth_scale(depth_scale) -> None:
    """--depth-scale MIN MAX: a range of factors on the flux errors, 0 <= MIN <= MAX."""
    if depth_scale is not None and not 0 <= depth_scale[0] <= depth_scale[1]:
        raise SystemExit(f"--depth-scale must satisfy 0 <= MIN <= MAX, got {depth_scale[0]:g} {depth_scale[1]:g}")


def check_metrics_file(path) -> None:
    """--baselines-from must be a metrics.json: a file holding a JSON object."""
    if not Path(path).is_file():
        raise SystemExit(f"--baselines-from {path}: no such file")
    try:
        earlier = json.loads(Path(path).read_text())
    except ValueError as error:  # invalid JSON or not UTF-8 text
        raise SystemExit(f"--baselines-from {path}: not a metrics.json ({error})") from None
    if not isinstance(earlier, dict):
        raise SystemExit(f"--baselines-from {path}: not a metrics.json (a JSON {type(earlier).__name__}, not an "
                         "object)")


def resolve_device(name: str) -> str:
    """--device: auto is cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device")
    if name != "cpu" and not name.startswith("cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return name


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    positive = {"--max-test": args.max_test, "--max-train": args.max_train, "--batch-size": args.batch_size,
                "--threads": args.threads}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise SystemExit(f"{flag} must be a positive integer, got {value}")
    if not (Path(args.data) / "data").is_dir():
        raise SystemExit(f"--data {args.data}: no data/ folder of Parquet shards there")
    if args.baselines_from is not None:
        check_metrics_file(args.baselines_from)
    check_out(args.out)
    check_depth_scale(args.depth_scale)
    device = resolve_device(args.device)
    from .report import run_evaluation

    keep_freed_memory()
    model = load_model(args.model, device)
    check_catalogs(args, model)
    run_evaluation(
        model, args.data, args.out, max_test=args.max_test, baselines=not args.no_baselines,
        figures=not args.no_figures, ablation=not args.no_ablation, ablation_catalogs=args.ablation_data,
        seed=args.seed, batch_size=args.batch_size,
        max_train=args.max_train, threads=args.threads, model_name=args.model, baselines_from=args.baselines_from,
        depth_scale=args.depth_scale,
    )
    print(f"report: {Path(args.out) / 'REPORT.md'}")
    print(f"metrics: {Path(args.out) / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
