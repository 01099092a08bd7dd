"""Inference speed: galaxies/s of `MosaicModel.predict` for redshift from LSST and for stellar mass from LSST +
SPHEREx (batch throughput and single-row latency), beside the k-NN and gradient-boosting baselines of
evaluation/baselines.py fitted on the train split and predicting the same rows.

The model's weights are freshly initialised: its speed does not depend on their values. Test rows are tiled to
`rows` galaxies so that throughput is measured on full 4096-row chunks.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time

import numpy as np
from batches import model_config
from common import matmul_rate, onednn_over_aten, products_time, slow_dtype, timed, timed_pairs
from training_speed import flop_terms

#: (name, target, condition of evaluation/conditions.py) of each timed query.
QUERIES = (("redshift_lsst", "redshift", "lsst"), ("stellar_mass_lsst_spherex", "log_stellar_mass", "lsst+spherex"))


def _split_columns(catalog: str, split: str, names, cache_dir) -> dict:
    from modeling_mosaic.catalog.io import load_catalog

    dataset = load_catalog(catalog, split=split, cache_dir=cache_dir).with_format("numpy", columns=list(names))
    return dict(dataset[:])


def _tile(columns: dict, rows: int) -> dict:
    """Repeat the rows cyclically to exactly `rows` rows."""
    index = np.arange(rows) % len(next(iter(columns.values())))
    return {k: v[index] for k, v in columns.items()}


def model_query_speed(model, inputs: dict, target: str, repeats: int, single_repeats: int) -> dict:
    """Batch galaxies/s and single-row latency of one `predict` query, with the transformer blocks' share of the
    batch time (the rest: input flattening, normalisation, embeddings, heads, conversion to physical units) and
    the time in matrix products (`products_time`)."""
    from modeling_mosaic.modalities import MODALITIES

    rows = len(next(iter(inputs.values())))
    batch = timed(lambda: model.predict(inputs, targets=[target]), repeats=repeats, warmup=1)
    one = {k: v[:1] for k, v in inputs.items()}
    single = timed(lambda: model.predict(one, targets=[target]), repeats=single_repeats, warmup=3)
    blocks = statistics.median(block_time(model, lambda: model.predict(inputs, targets=[target]))
                               for _ in range(repeats))
    def count(names):
        return sum(-(-MODALITIES[n].length // model.config.patch_sizes[n]) for n in names)

    tokens = count({*inputs, target})
    flops_per_galaxy = flop_terms(model.config, tokens=tokens, asked=count({target}))["blocks"]
    flops = flops_per_galaxy * rows
    return {"rows": rows, "tokens": tokens, "blocks_flops_per_galaxy": flops_per_galaxy,
            "batch_s": batch["median_s"], "per_s": rows / batch["median_s"],
            "single_row_latency_ms": 1e3 * single["median_s"], "blocks_s": blocks,
            "blocks_fraction": blocks / batch["median_s"], "blocks_flops_per_s": flops / blocks,
            "products": products_time(lambda: model.predict(inputs, targets=[target]), repeats)}


def block_time(model, fn) -> float:
    """Seconds `fn` spends between entering the model's first transformer block and leaving its last."""
    spent, entered = [0.0], [0.0]

    def enter(module, args):
        entered[0] = time.perf_counter()

    def leave(module, args, output):
        spent[0] += time.perf_counter() - entered[0]

    handles = [model.blocks[0].register_forward_pre_hook(enter), model.blocks[-1].register_forward_hook(leave)]
    try:
        fn()
    finally:
        for handle in handles:
            handle.remove()
    return spent[0]


def fitted_baselines(train: dict, test: dict, target: str, condition: str, max_train: int,
                     names=("knn", "hgb")) -> tuple[dict, np.ndarray, int]:
    """The evaluation's baselines `names` fitted on (at most `max_train`) train rows as evaluation/baselines.py
    fits them (its thread limit), with the test rows' features and the number of rows fitted."""
    from threadpoolctl import threadpool_limits

    from modeling_mosaic.evaluation.baselines import (
        THREADS,
        condition_features,
        make_estimators,
        subsample_rows,
    )
    from modeling_mosaic.evaluation.conditions import get_condition

    cond = get_condition(condition)
    y = np.asarray(train[target], dtype=np.float64)
    rows = np.flatnonzero(np.isfinite(y))
    rows = rows[subsample_rows(len(rows), max_train)]
    X_train = condition_features(cond, {k: v[rows] for k, v in train.items()})
    estimators = {name: e for name, e in make_estimators().items() if name in names}
    for estimator in estimators.values():
        with threadpool_limits(THREADS):
            estimator.fit(X_train, y[rows])
    return estimators, condition_features(cond, test), len(rows)


def baseline_speed(train: dict, test: dict, target: str, condition: str, repeats: int, max_train: int,
                   model_call=None) -> dict:
    """Fit the evaluation's k-NN and gradient-boosting baselines (`fitted_baselines`: the k-NN the target names,
    and the fastest predictor) and time their predictions on the test rows (no thread limit: the same threads
    the model gets). With `model_call` (the model's prediction of the same rows) k-NN's runs alternate with the
    model's: `model_speed_ratio` is the median over those rounds of the model's speed over k-NN's, both timed in
    the same stretch of a machine whose speed drifts."""
    estimators, X_test, n_train = fitted_baselines(train, test, target, condition, max_train)
    out = {"n_train": n_train, "rows": len(X_test)}
    for name, estimator in estimators.items():
        if name == "knn" and model_call is not None:
            paired = timed_pairs(model_call, lambda e=estimator: e.predict(X_test), repeats=repeats, warmup=1)
            out[name] = {"batch_s": paired["reference_median_s"], "per_s": len(X_test) / paired["reference_median_s"],
                         "model_speed_ratio": paired["median_ratio"], "model_speed_ratios": paired["ratios"]}
            continue
        timing = timed(lambda e=estimator: e.predict(X_test), repeats=repeats, warmup=1)
        out[name] = {"batch_s": timing["median_s"], "per_s": len(X_test) / timing["median_s"]}
    return out


def uncertainty_query_speed(model, inputs: dict, target: str, repeats: int) -> dict:
    """Batch galaxies/s of one `predict` query with `return_uncertainty` (the mean and std, the percentiles and,
    for redshift, the pdf on the default grid) of a model calibrated for the query: the PIT map of its entry is
    what the summaries of a scalar target go through."""
    batch = timed(lambda: model.predict(inputs, targets=[target], return_uncertainty=True), repeats=repeats,
                  warmup=1)
    rows = len(next(iter(inputs.values())))
    return {"rows": rows, "batch_s": batch["median_s"], "per_s": rows / batch["median_s"]}


def compiled_query_speed(model, inputs: dict, target: str, repeats: int, reference: np.ndarray, knn_call,
                         autocast=contextlib.nullcontext) -> dict:
    """Batch galaxies/s of one `predict` query with the encoder compiled (`compile_encoder`), in `autocast` (a
    context factory: none, or bf16 autocast), timed in alternation with `knn_call` (k-NN's predict of the same
    rows; `knn_speed_ratio` as `baseline_speed`'s `model_speed_ratio`): the first call (compilation) timed on its
    own, and the largest |difference| from the uncompiled float32 `reference` output."""
    with autocast():
        start = time.perf_counter()
        first = model.predict(inputs, targets=[target])[target]
        compile_s = time.perf_counter() - start
        paired = timed_pairs(lambda: model.predict(inputs, targets=[target]), knn_call, repeats=repeats, warmup=1)
    return {"per_s": len(first) / paired["median_s"], "batch_s": paired["median_s"], "first_call_s": compile_s,
            "max_abs_diff": float(np.max(np.abs(first - reference))), "knn_speed_ratio": paired["median_ratio"],
            "knn_speed_ratios": paired["ratios"]}


def large_reference_knn(model, catalog: str, test: dict, cache_dir, repeats: int) -> dict:
    """k-NN's redshift from LSST fitted on every training row of `catalog` (the paper preset's 185,247: a reference
    set of a real survey's size) against the model on the same test rows, timed alternately. A k-NN query walks a
    tree over its reference set, so its cost grows with it; the model's does not depend on its training set."""
    from modeling_mosaic.evaluation.conditions import get_condition

    train = _split_columns(catalog, "train", ["redshift", "lsst"], cache_dir)
    inputs = get_condition("lsst").inputs(test)
    start = time.perf_counter()
    estimators, X_test, n_train = fitted_baselines(train, test, "redshift", "lsst", len(train["redshift"]), ["knn"])
    fit_s = time.perf_counter() - start
    paired = timed_pairs(lambda: model.predict(inputs, targets=["redshift"]),
                         functools.partial(estimators["knn"].predict, X_test), repeats=repeats, warmup=1)
    return {"n_train": n_train, "k": estimators["knn"].k_, "fit_s": fit_s, "rows": len(X_test),
            "per_s": len(X_test) / paired["reference_median_s"], "model_speed_ratio": paired["median_ratio"],
            "model_speed_ratios": paired["ratios"]}


def inference_benchmark(preset: str, catalog: str, cache_dir: str | None = None, rows: int = 20_000,
                        repeats: int = 5, single_repeats: int = 30, max_train: int = 20_000,
                        compile_model: bool = False, calibration_rows: int = 4000,
                        reference_catalog: str | None = None) -> dict:
    """Worker: every query of QUERIES for the model of configs/PRESET.yaml and for the baselines, and for the model
    with uncertainties; with `reference_catalog` also k-NN fitted on all of that catalog's training rows
    (`large_reference_knn`); with `compile_model` also for the model with its encoder compiled (torch.compile,
    inductor), in float32 and, where bf16 products are native, under bf16 autocast. The model is calibrated for
    each query first, on `calibration_rows` training rows, as a shipped model is: `predict` matches every row to
    its calibration entry and applies it, point predictions included."""
    import torch

    from modeling_mosaic.evaluation.conditions import get_condition
    from modeling_mosaic.modeling_mosaic import MosaicModel

    config = model_config(preset, catalog=catalog)
    torch.manual_seed(0)
    model = MosaicModel(config).eval()
    needed = sorted({n for _, target, cond in QUERIES for n in (target, *get_condition(cond).inputs_needed)})
    train = _split_columns(catalog, "train", needed, cache_dir)
    test = _tile(_split_columns(catalog, "test", needed, cache_dir), rows)
    result = {"preset": preset, "threads": torch.get_num_threads(),
              "matmul": matmul_rate(8192, config.hidden_size, 4 * config.hidden_size, repeats=repeats)}
    onednn = onednn_over_aten(8192, config.hidden_size, 4 * config.hidden_size, repeats=repeats)
    if onednn:  # the model's float32 inference runs its linears through oneDNN: its ceiling is the faster
        result["matmul_onednn"] = onednn
    ceiling = result["matmul"]["flops_per_s"] * max(1.0, onednn["speedup"] if onednn else 1.0)
    held_out = {k: v[:calibration_rows] for k, v in train.items()}
    for _, target, condition in QUERIES:
        model.calibrate(get_condition(condition).inputs(held_out), {target: held_out[target]}, targets=[target])
    result["calibration_rows"] = len(next(iter(held_out.values())))
    for name, target, condition in QUERIES:
        inputs = get_condition(condition).inputs(test)
        result[name] = {"model": model_query_speed(model, inputs, target, repeats, single_repeats),
                        "baselines": baseline_speed(train, test, target, condition, repeats, max_train,
                                                    lambda i=inputs, t=target: model.predict(i, targets=[t]))}
        # The most the encoder could do here: its matmul FLOPs per galaxy at the faster measured matmul rate.
        model_result = result[name]["model"]
        model_result["ceiling_per_s"] = ceiling / model_result["blocks_flops_per_galaxy"]
        # k-NN's speed ratio for a query that spent time in nothing but its products (at their own rates): the
        # ratio timed alternately over the products' share of a profiled query, both robust to the machine's drift.
        knn = result[name]["baselines"]["knn"]
        model_result["products"]["knn_ratio_bound"] = knn["model_speed_ratio"] / model_result["products"]["fraction"]
    if reference_catalog is not None:
        result["redshift_lsst"]["knn_large_reference"] = large_reference_knn(model, reference_catalog, test,
                                                                             cache_dir, repeats)
    for name, target, condition in QUERIES:
        result[name]["model_uncertainty"] = uncertainty_query_speed(model, get_condition(condition).inputs(test),
                                                                    target, repeats)
    if compile_model:
        references = {name: model.predict(get_condition(condition).inputs(test), targets=[target])[target]
                      for name, target, condition in QUERIES}
        model.compile_encoder()
        bf16_skipped = slow_dtype("bfloat16")
        if bf16_skipped:
            result["compiled_bf16_skipped"] = bf16_skipped
        for name, target, condition in QUERIES:
            inputs = get_condition(condition).inputs(test)
            estimators, X_test, _ = fitted_baselines(train, test, target, condition, max_train, ["knn"])
            knn_call = functools.partial(estimators["knn"].predict, X_test)
            result[name]["model_compiled"] = compiled_query_speed(model, inputs, target, repeats, references[name],
                                                                  knn_call)
            if not bf16_skipped:  # the fastest path where bf16 products are native (mosaic-predict --compile --bf16)
                result[name]["model_compiled_bf16"] = compiled_query_speed(
                    model, inputs, target, repeats, references[name], knn_call,
                    lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    return result
