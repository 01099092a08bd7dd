"""Training speed: a full optimiser step (forward, backward, gradient clipping, AdamW) of the real `MosaicModel`
on the real collator's output, in samples/s and FLOP/s, against the matrix-multiply rate measured in the same
process; and the data path (dataset + collator alone) as a fraction of that step.

FLOPs are counted analytically (multiply-add = 2 FLOPs), per galaxy of T tokens, hidden size H, MLP width I,
L layers, patch P:

    forward = T * (L * [2 * (4 H^2 + 2 H I) + 4 T H] + 2 * (2P) * H + 2 * H * P)

(the qkv and output projections 4H^2, the two MLP linears 2HI, attention scores and their weighted sum 4TH; the
embedding of a patch and its visibility flags, 2P inputs; the head back to P values). A training step costs
3x forward (the backward pass is two matrix products per forward one), except the embedding (2x: the data
needs no gradient), plus the forward-only pooled output 2 M T H (M modalities). Layer norms, GELU, softmax,
the loss and the optimiser are element-wise and left out. `flop_counter_check` compares the formula with
torch.utils.flop_counter.FlopCounterMode (which sees attention only on the eager path: it has no formula for
the CPU SDPA kernel).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time

from batches import (
    catalog_batches,
    catalog_split,
    model_config,
    synthetic_batches,
    training_collator,
    training_config,
)
from common import (
    count_onednn_linear_flops,
    log_log_slope,
    matmul_runner,
    onednn_over_aten,
    products_time,
    slow_dtype,
    timed,
    timed_pairs,
)


# --------------------------------------------------------------------------------------------- FLOPs
def num_tokens(config) -> int:
    from modeling_mosaic.modeling_mosaic import MosaicLayout

    return MosaicLayout(config).num_tokens


def flop_terms(config, tokens: int | None = None, asked: int | None = None) -> dict:
    """Forward FLOPs of one galaxy over `tokens` tokens (default: every token of the layout, as in training),
    by part: the transformer blocks, the patch embeddings, the heads, and the per-modality pooling of the
    training forward. With `asked` (a query's requested tokens, default all) the last block projects and feeds
    forward only those, the others serving as its keys and values, and the heads decode only those."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    patch = max(config.patch_sizes.values())
    t = num_tokens(config) if tokens is None else tokens
    a = t if asked is None else asked
    # A gaussian head also predicts log-variances (2P outputs) and, for redshift, a K-component mixture (3K).
    gaussian = getattr(config, "head_type", "point") == "gaussian"
    mixture = 2 * h * 3 * config.redshift_mixture_components if gaussian and "redshift" in config.modalities else 0
    inputs = (2 + config.step_inputs + config.error_inputs) * patch  # values, visibility (steps, errors)
    return {
        "blocks": float(t * (layers - 1) * (2 * (4 * h * h + 2 * h * i) + 4 * t * h)
                        + t * 2 * 3 * h * h + a * (2 * (h * h + 2 * h * i) + 4 * t * h)),
        "embeddings": float(t * 2 * inputs * h),
        "heads": float(a * 2 * h * (2 if gaussian else 1) * patch + mixture),
        "pooling": float(2 * len(config.modalities) * t * h),
    }


def forward_flops_per_sample(config, tokens: int | None = None) -> float:
    """What the encoder does for one galaxy (`MosaicModel._encode`: embeddings, blocks, heads)."""
    terms = flop_terms(config, tokens)
    return terms["blocks"] + terms["embeddings"] + terms["heads"]


def training_flops_per_sample(config) -> float:
    """Forward + backward of one galaxy: 3x forward, except that the embedding has no gradient to pass back
    to its input data (2x) and the pooled output takes no part in the loss (forward only)."""
    terms = flop_terms(config)
    return 3 * (terms["blocks"] + terms["heads"]) + 2 * terms["embeddings"] + terms["pooling"]


def flop_counter_check(config, batch: dict) -> dict:
    """FlopCounterMode's count of one forward + backward against `training_flops_per_sample`."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_mosaic.modeling_mosaic import MosaicModel

    count_onednn_linear_flops()
    model = MosaicModel(config)
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    counted = float(counter.get_total_flops())
    analytic = training_flops_per_sample(config) * batch["values"].shape[0]
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return {"counted": counted, "analytic": analytic, "ratio_counted_to_analytic": counted / analytic,
            "counted_by_op": by_op}


# ---------------------------------------------------------------------------------------------- a step
def make_training(config, device: str = "cpu", compile_model: bool = False, fused: bool = True,
                  lr: float = 1e-3):
    """A fresh model in training mode and its AdamW optimiser: fused, as transformers.Trainer's default optim
    ("adamw_torch_fused" with torch >= 2.8) builds it; weight decay as in the shipped configs."""
    import torch

    from modeling_mosaic.modeling_mosaic import MosaicModel

    torch.manual_seed(0)
    model = MosaicModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=fused)
    return (torch.compile(model) if compile_model else model), optimizer


def train_step(model, optimizer, batch: dict, autocast_dtype=None, device_type: str = "cpu"):
    """One optimiser step as transformers.Trainer takes it: forward under autocast, backward, clip to norm 1,
    AdamW, zero the gradients. Returns the loss tensor."""
    import torch

    autocast = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def step_speed(config, batches: list, repeats: int, autocast_dtype=None, compile_model: bool = False,
               fused: bool = True, ceiling_dtype: str | None = None) -> dict:
    """Median time of one optimiser step cycling through `batches`, after a first step (optimiser state,
    compilation) and one warm-up step. With `ceiling_dtype` each step is followed by a run of the model's matmul
    ceiling (`ceiling_shape`) in that dtype: `ceiling` is its rate and `mfu` the median over those rounds of the
    step's FLOP/s over the ceiling's, each pair timed within a fraction of a second of each other."""
    import torch

    model, optimizer = make_training(config, compile_model=compile_model, fused=fused)
    cycle = itertools.count()
    dtype = getattr(torch, autocast_dtype) if autocast_dtype else None

    def step():
        train_step(model, optimizer, batches[next(cycle) % len(batches)], dtype)

    start = time.perf_counter()
    step()  # the first step allocates optimiser state (and compiles)
    first_s = time.perf_counter() - start
    batch_size = batches[0]["values"].shape[0]
    flops = training_flops_per_sample(config) * batch_size
    if ceiling_dtype is None:
        timing = timed(step, repeats=repeats, warmup=1)
    else:
        shape = ceiling_shape(config, batch_size)
        ceiling, ceiling_flops = matmul_runner(*shape, ceiling_dtype)
        timing = timed_pairs(step, ceiling, repeats=repeats, warmup=1)
    result = {"batch_size": batch_size, "step_s": timing["median_s"], "step_runs_s": timing["runs_s"],
              "first_step_s": round(first_s, 3), "samples_per_s": batch_size / timing["median_s"],
              "flops_per_step": flops, "achieved_flops_per_s": flops / timing["median_s"]}
    if ceiling_dtype is not None:
        median_s = timing["reference_median_s"]
        result["ceiling"] = {"shape": list(shape), "dtype": ceiling_dtype, "flops_per_s": ceiling_flops / median_s,
                             "runs_s": timing["reference_runs_s"]}
        result["mfu_by_round"] = [flops / ceiling_flops * r for r in timing["ratios"]]
        result["mfu"] = statistics.median(result["mfu_by_round"])
    return result


def ceiling_shape(config, batch_size: int) -> tuple:
    """The matmul ceiling of this model: (B*T, H) x (H, 4H), the shape of its first MLP linear."""
    return batch_size * num_tokens(config), config.hidden_size, 4 * config.hidden_size


# ----------------------------------------------------------------------------------------- workers
def _batches(config, batch_size: int, count: int, catalog: str | None, cache_dir: str | None):
    if catalog is None:
        return synthetic_batches(config, batch_size, count)
    return catalog_batches(catalog_split(catalog, "train", config, cache_dir), config, batch_size, count)


def training_benchmark(preset: str, catalog: str | None = None, cache_dir: str | None = None,
                       batch_size: int | None = None, repeats: int = 5, bf16: bool = False,
                       flop_check: bool = False) -> dict:
    """Worker: the optimiser step of configs/PRESET.yaml's model (batch from the config unless given) on catalog
    batches, with its fp32 (and bf16 autocast) model FLOP utilisation against the same process's matmuls."""
    import torch

    config = model_config(preset, catalog=catalog)
    batch_size = batch_size or training_config(preset)["per_device_train_batch_size"]
    batches = _batches(config, batch_size, 2, catalog, cache_dir)
    result = {"preset": preset, "threads": torch.get_num_threads(), "tokens": num_tokens(config),
              "training_flops_per_sample": training_flops_per_sample(config)}
    result["fp32"] = step_speed(config, batches, repeats, ceiling_dtype="float32")
    result["matmul"] = {"float32": result["fp32"].pop("ceiling")}
    onednn = onednn_over_aten(*ceiling_shape(config, batch_size), repeats=repeats)
    if onednn:  # the step's MFU against the faster of the two float32 matmuls of this CPU
        result["matmul"]["float32_onednn"] = onednn
        result["fp32"]["mfu_best_matmul"] = result["fp32"]["mfu"] / max(1.0, onednn["speedup"])
    skipped = slow_dtype("bfloat16") if bf16 else None
    if skipped:
        result["bf16_skipped"] = skipped
    elif bf16:
        result["bf16_autocast"] = step_speed(config, batches, repeats, autocast_dtype="bfloat16",
                                             ceiling_dtype="bfloat16")
        result["matmul"]["bfloat16"] = result["bf16_autocast"].pop("ceiling")
    if flop_check:
        # On the eager attention path, the one whose attention products FlopCounterMode can see.
        eager = model_config(preset, catalog=catalog, attn_implementation="eager")
        result["flop_counter"] = flop_counter_check(eager, {k: v[:16] for k, v in batches[0].items()})
    return result


def products_benchmark(preset: str, catalog: str | None = None, cache_dir: str | None = None,
                       batch_size: int | None = None, repeats: int = 5) -> dict:
    """Worker: the share of a profiled float32 optimiser step spent in matrix products (`products_time`); in a
    process of its own, so that the profiler's memory stays out of the training benchmark's peak."""
    config = model_config(preset, catalog=catalog)
    batch_size = batch_size or training_config(preset)["per_device_train_batch_size"]
    batches = _batches(config, batch_size, 2, catalog, cache_dir)
    model, optimizer = make_training(config)
    cycle = itertools.count()

    def step():
        train_step(model, optimizer, batches[next(cycle) % len(batches)])

    step()  # the optimiser's state
    return {"preset": preset, "batch_size": batch_size, **products_time(step, repeats)}


def data_path_benchmark(preset: str, catalog: str, cache_dir: str | None = None, batch_size: int | None = None,
                        batches: int = 20, repeats: int = 5) -> dict:
    """Worker: samples/s of the training input pipeline alone: Arrow slice -> numpy -> TrainingCollator."""
    config = model_config(preset, catalog=catalog)
    batch_size = batch_size or training_config(preset)["per_device_train_batch_size"]
    dataset = catalog_split(catalog, "train", config, cache_dir)
    collator = training_collator(config)
    starts = [(i * batch_size) % max(1, len(dataset) - batch_size + 1) for i in range(batches)]

    def epoch():
        for start in starts:
            collator(dataset.__getitems__(list(range(start, min(start + batch_size, len(dataset))))))

    timing = timed(epoch, repeats=repeats, warmup=1)
    samples = sum(min(batch_size, len(dataset) - s) for s in starts)
    return {"preset": preset, "batch_size": batch_size, "batches": batches, "rows": len(dataset),
            "batch_s": timing["median_s"] / batches, "samples_per_s": samples / timing["median_s"]}


def scaling_benchmark(preset: str, batch_sizes: list, widths: list, repeats: int = 3) -> dict:
    """Worker: step time against batch size (the config's width) and against width (the config's batch) on
    synthetic batches, with the fitted log-log exponents (1 = linear in the work)."""
    base = training_config(preset)["per_device_train_batch_size"]
    by_batch = []
    config = model_config(preset)
    for b in batch_sizes:
        speed = step_speed(config, synthetic_batches(config, b, 2), repeats)
        by_batch.append({"batch_size": b, "step_s": speed["step_s"],
                         "achieved_flops_per_s": speed["achieved_flops_per_s"]})
    by_width = []
    for w in widths:
        config = model_config(preset, hidden_size=w)
        speed = step_speed(config, synthetic_batches(config, base, 2), repeats)
        by_width.append({"hidden_size": w, "flops_per_step": speed["flops_per_step"], "step_s": speed["step_s"],
                         "achieved_flops_per_s": speed["achieved_flops_per_s"]})
    return {
        "preset": preset,
        "by_batch_size": by_batch,
        "batch_size_exponent": log_log_slope(batch_sizes, [r["step_s"] for r in by_batch]),
        "by_width": by_width,
        # time against the step's FLOPs (which grow ~ width^2): 1 means the time tracks the work.
        "width_flops_exponent": log_log_slope([r["flops_per_step"] for r in by_width], [r["step_s"] for r in by_width]),
        "width_exponent": log_log_slope(widths, [r["step_s"] for r in by_width]),
    }
