"""Micro-benchmarks of alternative implementations of the training step, to size what a change to the model
code would buy before anyone makes it: attention backend, the (B, 1, T, T) float mask against a boolean one
(same semantics) or none (a lower bound on the mask's cost, different semantics), bf16 autocast, torch.compile,
one thread against all, the unfused AdamW, and a profile of where a step's time goes.

Each variant is a patch applied inside this process only (the model files are not edited); variants that keep
the semantics are checked to give the baseline's loss on the same weights and batch.
"""

from __future__ import annotations

import contextlib
import time

from batches import model_config, synthetic_batches, training_config
from common import slow_dtype, timed
from training_speed import make_training, step_speed, train_step


@contextlib.contextmanager
def patched_mask(kind: str):
    """Replace modeling_mosaic.visible_attention_mask: "bool" builds the same mask as booleans (SDPA reads True
    as "may attend"), "none" drops it (every token attends to every token)."""
    import torch

    from modeling_mosaic import modeling_mosaic as mm

    original = mm.visible_attention_mask

    def boolean(token_visible, dtype):
        itself = torch.eye(token_visible.shape[1], dtype=torch.bool, device=token_visible.device)
        return (token_visible[:, None, :] | itself)[:, None]

    mm.visible_attention_mask = {"bool": boolean, "none": lambda token_visible, dtype: None}[kind]
    try:
        yield
    finally:
        mm.visible_attention_mask = original


def profile_step(config, batches, top: int = 15) -> list:
    """The `top` operators by self CPU time over two optimiser steps: [{op, self_ms, share}]."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer = make_training(config)
    train_step(model, optimizer, batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[:2]:
            train_step(model, optimizer, batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 2e3, "share": e.self_cpu_time_total / total}
            for e in ranked]


def alternatives_benchmark(preset: str = "demo", batch_size: int | None = None, repeats: int = 5,
                           compile_model: bool = False) -> dict:
    """Worker: step time of each variant on the same synthetic batches, relative to the baseline."""
    import torch

    batch_size = batch_size or training_config(preset)["per_device_train_batch_size"]
    config = model_config(preset, attn_implementation="sdpa")
    batches = synthetic_batches(config, batch_size, 2)
    eager = model_config(preset, attn_implementation="eager")
    variants = {
        "baseline_sdpa_float_mask": lambda: step_speed(config, batches, repeats),
        "eager_attention": lambda: step_speed(eager, batches, repeats),
        "bool_mask": lambda: _with(patched_mask("bool"), lambda: step_speed(config, batches, repeats)),
        "no_mask_lower_bound": lambda: _with(patched_mask("none"), lambda: step_speed(config, batches, repeats)),
        "bf16_autocast": lambda: step_speed(config, batches, repeats, autocast_dtype="bfloat16"),
        "one_thread": lambda: _with(_threads(1), lambda: step_speed(config, batches, repeats)),
        "unfused_adamw": lambda: step_speed(config, batches, repeats, fused=False),
    }
    result = {"preset": preset, "batch_size": batch_size, "threads": torch.get_num_threads(), "variants": {}}
    _drop_slow_bf16(variants, result)
    # Two rounds, the second in reverse order, each variant's step time the mean of its two: measured once in
    # a fixed order, whichever ran first (the baseline) read ~25% slow and every other variant looked faster.
    names = list(variants)
    for name in [*names, *reversed(names)]:
        start = time.perf_counter()
        speed = variants[name]()
        speed["wall_s"] = round(time.perf_counter() - start, 1)
        if name in result["variants"]:
            earlier = result["variants"][name]
            speed["round_step_s"] = [earlier["step_s"], speed["step_s"]]
            speed["step_s"] = sum(speed["round_step_s"]) / 2
            speed["samples_per_s"] = speed["batch_size"] / speed["step_s"]
            speed["achieved_flops_per_s"] = speed["flops_per_step"] / speed["step_s"]
            speed["wall_s"] += earlier["wall_s"]
        result["variants"][name] = speed
    if compile_model:  # once: compilation is the slow part, and it runs after every variant has warmed up
        result["variants"]["torch_compile"] = step_speed(config, batches, repeats, compile_model=True)
        # Compiled, the plain attention fuses with its neighbours; the CPU SDPA kernel stays opaque.
        result["variants"]["torch_compile_eager_attention"] = step_speed(eager, batches, repeats, compile_model=True)
    base = result["variants"]["baseline_sdpa_float_mask"]["step_s"]
    for speed in result["variants"].values():
        speed["speedup"] = base / speed["step_s"]
    result["loss_difference"] = {
        "eager_attention": abs(_loss(eager, batches[0]) - _loss(config, batches[0])),
        "bool_mask": abs(_with(patched_mask("bool"), lambda: _loss(config, batches[0])) - _loss(config, batches[0])),
    }
    result["profile"] = profile_step(config, batches)
    result["mask_build_ms"] = 1e3 * timed(
        lambda: _mask(batches[0], config), repeats=repeats, warmup=1)["median_s"]
    return result


def _drop_slow_bf16(variants: dict, result: dict) -> None:
    """Leave out the bf16 variants where bf16 products have no native kernels (`slow_dtype`), saying why."""
    reason = slow_dtype("bfloat16")
    if reason:
        names = [name for name in variants if name.startswith("bf16")]
        for name in names:
            del variants[name]
        result["skipped"] = dict.fromkeys(names, reason)


def _with(context, fn):
    with context:
        return fn()


@contextlib.contextmanager
def _threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loss(config, batch) -> float:
    import torch

    from modeling_mosaic.modeling_mosaic import MosaicModel

    torch.manual_seed(0)
    with torch.no_grad():
        return MosaicModel(config).eval()(**batch).loss.item()


def _mask(batch, config):
    """Build the training step's additive mask alone (all tokens, the batch's visibility)."""
    import torch

    from modeling_mosaic.modeling_mosaic import MosaicLayout, visible_attention_mask

    layout = MosaicLayout(config)
    normalised, present = layout.normalize(batch["values"])
    visible = batch["input_mask"] & present
    _, token_visible = layout.features(normalised, visible, None, torch.arange(layout.num_tokens))
    return visible_attention_mask(token_visible, torch.float32)


def inference_alternatives_benchmark(preset: str = "demo", rows: int = 20_000, repeats: int = 5) -> dict:
    """Worker: galaxies/s of redshift from LSST under each inference variant (bf16 autocast, bf16 weights,
    dynamic int8 linears, one thread, other chunk sizes), with the largest |dz| / (1 + z) against fp32 on the
    same (untrained) weights and synthetic galaxies: an indication of the precision each costs."""
    import copy

    import numpy as np
    import torch
    from batches import synthetic_columns

    from modeling_mosaic.modeling_mosaic import MosaicModel

    config = model_config(preset)
    inputs = {"lsst": synthetic_columns(config, rows)["lsst"]}
    torch.manual_seed(0)
    model = MosaicModel(config).eval()

    def query(m, batch_size=4096):
        return lambda: m.predict(inputs, targets=["redshift"], batch_size=batch_size)["redshift"]

    variants = {
        "fp32": (query(model), contextlib.nullcontext),
        "bf16_autocast": (query(model), lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        "bf16_weights": (query(copy.deepcopy(model).to(torch.bfloat16)), contextlib.nullcontext),
        "int8_dynamic_linears": (query(torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)), contextlib.nullcontext),
        "one_thread": (query(model), lambda: _threads(1)),
        "chunk_1024": (query(model, 1024), contextlib.nullcontext),
        "chunk_16384": (query(model, 16384), contextlib.nullcontext),
    }
    reference = query(model)()
    result = {"preset": preset, "rows": rows, "threads": torch.get_num_threads(), "variants": {}}
    _drop_slow_bf16(variants, result)
    for name, (run, context) in variants.items():
        with context():
            timing = timed(run, repeats=repeats, warmup=1)
            z = run()
        result["variants"][name] = {"per_s": rows / timing["median_s"],
                                    "max_dz_over_1pz": float(np.max(np.abs(z - reference) / (1 + reference)))}
    base = result["variants"]["fp32"]["per_s"]
    for v in result["variants"].values():
        v["speedup"] = v["per_s"] / base
    return result
