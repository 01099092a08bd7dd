#!/usr/bin/env python
"""The paper config's training step on one CUDA GPU: bf16 autocast and torch.compile, a fixed number of steps,
samples/s, the epoch time extrapolated to the paper's 185,247 training galaxies, and the model FLOP utilisation
against a bf16 matrix multiply measured in the same run.

    bash benchmarks/gpu.sh                              # CUDA: paper config, batch 2048, bf16, compile
    bash benchmarks/gpu.sh --batch-size 2048 8192       # a sweep: the best MFU leads, every size in "sweep"
    python benchmarks/gpu.py --device cpu --steps 2     # the CPU fallback: fp32, no compile, a small batch

Batches are synthetic galaxies in the catalog's layout put through the real MosaicMaskingCollator (benchmarks/
batches.py), so the script needs neither `datasets` nor pyarrow nor a built catalog; the collator's time per
batch on this host's CPU is reported beside the step, since the training job's data loader does that work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from batches import model_config, synthetic_batches, training_config
from common import environment, matmul_rate
from training_speed import (
    make_training,
    num_tokens,
    train_step,
    training_flops_per_sample,
)

#: The paper's training split (configs/paper.yaml's catalog preset).
PAPER_TRAIN_ROWS = 185_247


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper", help="configs/NAME.yaml sizing the model (default paper)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None,
                        help="one or more (a sweep); default: the config's batch on CUDA, 8 on CPU")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    parser.add_argument("--out", default=None, help="write the result JSON here (atomically)")
    args = parser.parse_args(argv)
    for name in ("steps", "batch_size"):
        values = getattr(args, name)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and value < 1:
                parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def benchmark(args) -> dict:
    """Every batch size of the sweep; the one of the best MFU leads the result, all are under "sweep"."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    on_gpu = device.startswith("cuda")
    sizes = args.batch_size or [training_config(args.config)["per_device_train_batch_size"] if on_gpu else 8]
    runs = []
    for batch_size in sizes:
        runs.append(benchmark_batch(args, device, batch_size))
        print(json.dumps(runs[-1]), flush=True)
        if on_gpu:
            torch._dynamo.reset()  # each size compiles its own static graphs, as a training job would
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    best = max(runs, key=lambda r: r["mfu"])
    keys = ("batch_size", "samples_per_s", "step_s", "mfu", "first_step_s", "peak_device_memory_gb")
    return {**best, "sweep": [{k: r[k] for k in keys} for r in runs]}


def benchmark_batch(args, device: str, batch_size: int) -> dict:
    import torch

    on_gpu = device.startswith("cuda")
    steps = args.steps or (30 if on_gpu else 2)
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    bf16 = on_gpu and not args.fp32
    compile_model = on_gpu and not args.no_compile
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    config = model_config(args.config)
    start = time.perf_counter()
    host_batches = synthetic_batches(config, batch_size, 4)
    collate_s = (time.perf_counter() - start) / len(host_batches)
    batches = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in host_batches]
    model, optimizer = make_training(config, device=device, compile_model=compile_model)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    dtype = torch.bfloat16 if bf16 else None
    device_type = "cuda" if on_gpu else "cpu"
    losses = []

    def step(i):
        losses.append(train_step(model, optimizer, batches[i % len(batches)], dtype, device_type))

    start = time.perf_counter()
    step(0)
    sync()
    first_s = time.perf_counter() - start
    for i in range(warmup):
        step(i + 1)
    sync()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(i)
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    matmul_dtype = "bfloat16" if bf16 else "float32"
    ceiling = matmul_rate(batch_size * num_tokens(config), config.hidden_size, 4 * config.hidden_size,
                          matmul_dtype, device=device)
    flops = training_flops_per_sample(config) * batch_size
    samples_per_s = batch_size / step_s
    final_loss = float(losses[-1].item())
    if not math.isfinite(final_loss):
        raise SystemExit(f"the training loss is not finite ({final_loss}): the benchmark measured a broken step")
    env = environment()
    return {
        "config": args.config,
        "device": env["cuda"] if on_gpu else env["cpu"],
        "device_type": device_type,
        "torch": env["torch"],
        "precision": "bf16 autocast" if bf16 else "fp32",
        "compiled": compile_model,
        "batch_size": batch_size,
        "tokens_per_sample": num_tokens(config),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "first_step_s": first_s,
        "step_s": step_s,
        "step_min_s": min(times),
        "samples_per_s": samples_per_s,
        "epoch_s_paper_train_set": PAPER_TRAIN_ROWS / samples_per_s,
        "training_flops_per_step": flops,
        "achieved_flops_per_s": flops / step_s,
        "matmul_shape": ceiling["shape"],
        "matmul_dtype": matmul_dtype,
        "matmul_flops_per_s": ceiling["flops_per_s"],
        "mfu": flops / step_s / ceiling["flops_per_s"],
        "collate_s_per_batch_host_cpu": collate_s,
        "collate_fraction_of_step_one_worker": collate_s / step_s,
        "peak_device_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "final_loss": final_loss,
        "date_utc": env["date_utc"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    text = json.dumps(benchmark(args), indent=2)
    print(text)
    if args.out:
        tmp = f"{args.out}.tmp"
        Path(tmp).write_text(text + "\n")
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
