"""`mosaic-evaluate`: score a MOSAIC model on a catalog's test split and write a report.

    mosaic-evaluate --model DIR_OR_REPO --data DIR --out DIR [--max-test N] [--no-baselines] [--no-figures]
                    [--device cuda] [--baselines-from EARLIER/metrics.json] [--depth-scale MIN MAX]
"""

from __future__ import annotations

import argparse
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
    that can only be a path (it starts with . / ~ or has more than one /) must be a folder; others may be Hub ids."""
    from transformers import AutoModel

    from ..catalog.io import can_only_be_a_path

    path = Path(name_or_path).expanduser()
    if not path.is_dir() and can_only_be_a_path(name_or_path):
        raise SystemExit(f"--model {name_or_path}: no such folder")
    try:
        model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True)
    except OSError as error:  # not a folder here: a Hub id that is unknown, private or out of reach offline
        raise SystemExit(f"--model {name_or_path}: {error}") from None
    return model.to(device).eval()


def check_depth_scale(depth_scale) -> None:
    """--depth-scale MIN MAX: a range of factors on the flux errors, 0 <= MIN <= MAX."""
    if depth_scale is not None and not 0 <= depth_scale[0] <= depth_scale[1]:
        raise SystemExit(f"--depth-scale must satisfy 0 <= MIN <= MAX, got {depth_scale[0]:g} {depth_scale[1]:g}")


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
    if args.baselines_from is not None and not Path(args.baselines_from).is_file():
        raise SystemExit(f"--baselines-from {args.baselines_from}: no such file")
    check_depth_scale(args.depth_scale)
    device = resolve_device(args.device)
    from .report import run_evaluation

    keep_freed_memory()
    run_evaluation(
        load_model(args.model, device), args.data, args.out, max_test=args.max_test, baselines=not args.no_baselines,
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
