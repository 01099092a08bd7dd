"""results.json -> RESULTS.md: the machine, the targets, and one table per benchmark."""

from __future__ import annotations


def _g(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_g(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _gflops(flops) -> float:
    return flops / 1e9


def environment_section(env: dict) -> str:
    rows = [[k, v] for k, v in env.items() if k != "env"]
    rows += [[f"env {k}", v if v is not None else "(unset)"] for k, v in env["env"].items()]
    return "## Machine\n\n" + _table(["", "value"], rows)


def targets_section(targets: dict) -> str:
    rows = [[f"`{key}`", t["description"], t["goal"], t["value"], "met" if t["met"] else "**missed**"]
            for key, t in targets.items()]
    return "## Targets (2-core CPU)\n\n" + _table(["key", "target", "goal", "measured", ""], rows)


def training_section(results: dict) -> str:
    rows = []
    for key in ("train_demo", "train_paper"):
        r = results[key]
        for precision, dtype in (("fp32", "float32"), ("bf16_autocast", "bfloat16")):
            if precision not in r:
                continue
            s, ceiling = r[precision], r["matmul"][dtype]
            rows.append([r["preset"], precision, s["batch_size"], s["step_s"], s["samples_per_s"],
                         _gflops(s["achieved_flops_per_s"]), _gflops(ceiling["flops_per_s"]), s["mfu"],
                         r["peak_rss_gb"]])
    text = ("## Training: one optimiser step (forward, backward, clip, AdamW)\n\n"
            + _table(["config", "precision", "batch", "step s", "samples/s", "achieved GFLOP/s",
                      "matmul GFLOP/s", "MFU", "peak RSS GB"], rows))
    skipped = [f"{r['preset']}: {r['bf16_skipped']}" for r in (results["train_demo"], results["train_paper"])
               if "bf16_skipped" in r]
    if skipped:
        text += "\n\nbf16 autocast, " + "; ".join(skipped) + "."
    onednn = results["train_demo"]["matmul"].get("float32_onednn")
    if onednn:
        text += (f"\n\nThe table's fp32 ceiling is torch.mm's (MKL's sgemm on a CPU). The step runs its linears' "
                 "forward and input gradient through oneDNN and their weight gradient through torch.mm; oneDNN's "
                 f"float32 linear ran the ceiling's product {_g(onednn['speedup'])}x as fast here (timed alternately: "
                 f"{_g(_gflops(onednn['onednn_flops_per_s']))} against {_g(_gflops(onednn['aten_flops_per_s']))} "
                 "GFLOP/s), so the headline `train_mfu_fp32` is against that faster matmul: the demo step's fp32 "
                 f"MFU is {_g(results['train_demo']['fp32']['mfu_best_matmul'])} of it.")
    products = results.get("train_demo_products")
    if products:
        ops = ", ".join(f"{op.split('::')[1]} {_g(1e3 * t)}" for op, t in sorted(products["by_op_s"].items()))
        text += (f"\n\nUnder torch.profiler the demo step spent {_g(products['fraction'])} of its time in matrix "
                 f"products ({_g(1e3 * products['products_s'])} of {_g(1e3 * products['total_s'])} ms; by op, ms: "
                 f"{ops}). "
                 "A step that spent time in nothing else, its products at the rates they ran here, would have an "
                 f"MFU against the faster matmul of {_g(results['summary']['train_mfu_fp32_products_bound'])} "
                 "(`train_mfu_fp32_products_bound`, the MFU over that share): the most that fusing the rest "
                 "(element-wise work, copies, Python) could give without faster products.")
    check = results["train_demo"].get("flop_counter")
    if check:
        text += (f"\n\nFLOP formula check (demo, forward + backward): FlopCounterMode counts "
                 f"{_g(check['ratio_counted_to_analytic'])} x the analytic 3 x forward.")
    text += ("\n\nMFU = analytic training FLOPs per second / the fp32 (bf16) rate of an (B*T, H) x (H, 4H) "
             "matmul, the median over rounds of a step followed by a run of that matmul, so that each ratio's "
             "two timings see the same stretch of a machine whose speed drifts (the matmul column: its median "
             "rate). The paper config runs at a CPU-sized batch; its per-sample FLOPs are those of batch 2048.")
    return text


def data_path_section(results: dict) -> str:
    d, step = results["data_path"], results["train_demo"]["fp32"]["step_s"]
    rows = [[d["batch_size"], d["batch_s"], d["samples_per_s"], step, d["batch_s"] / step, d["peak_rss_gb"]]]
    return ("## Data path: ColumnarDataset + TrainingCollator alone\n\n"
            + _table(["batch", "batch s", "samples/s", "demo step s", "fraction of step", "peak RSS GB"], rows))


def inference_section(results: dict) -> str:
    inf = results["inference"]
    rows = []
    for key in ("redshift_lsst", "stellar_mass_lsst_spherex"):
        q = inf[key]
        m = q["model"]
        rows.append([key, "MOSAIC predict", m["rows"], m["per_s"], m["single_row_latency_ms"], m["blocks_fraction"],
                     m.get("ceiling_per_s")])
        if "model_uncertainty" in q:
            rows.append([key, "MOSAIC predict, return_uncertainty", q["model_uncertainty"]["rows"],
                         q["model_uncertainty"]["per_s"], None, None, None])
        if "model_compiled" in q:
            rows.append([key, "MOSAIC predict, compile_encoder()", m["rows"], q["model_compiled"]["per_s"], None,
                         None, None])
        if "model_compiled_bf16" in q:
            rows.append([key, "MOSAIC predict, compile_encoder(), bf16 autocast", m["rows"],
                         q["model_compiled_bf16"]["per_s"], None, None, None])
        for name in ("knn", "hgb"):
            rows.append([key, name, q["baselines"]["rows"], q["baselines"][name]["per_s"], None, None, None])
        if "knn_large_reference" in q:
            large = q["knn_large_reference"]
            rows.append([key, f"knn fitted on {large['n_train']:,} rows (paper catalog)", large["rows"],
                         large["per_s"], None, None, None])
    return ("## Inference (demo model)\n\n"
            + _table(["query", "method", "rows", "galaxies/s", "single-row ms", "blocks' share",
                      "encoder at the matmul ceiling, galaxies/s"], rows)
            + "\n\nThe last column is the encoder's matmul FLOPs per galaxy (the tokens given and asked for only; "
            "the last block projects and feeds forward the asked-for token alone) at the faster of torch.mm's and "
            "oneDNN's fp32 matmul rates measured in the same process (float32 inference runs its linears through "
            "oneDNN" + (f", {_g(inf['matmul_onednn']['speedup'])}x torch.mm's rate here" if "matmul_onednn" in inf
                        else "") + "): no float32 implementation of this model on this machine predicts faster than "
            "that."
            + _products_note(inf)
            + _large_reference_note(inf)
            + _uncertainty_note(inf)
            + _compiled_note(inf)
            + f"\n\nPeak RSS of the inference process (model, baselines, data): {_g(inf['peak_rss_gb'])} GB.")


def _products_note(inf: dict) -> str:
    model = inf["redshift_lsst"]["model"]
    products = model.get("products")
    if not products:
        return ""
    return (f" Under torch.profiler the redshift query spent {_g(products['fraction'])} of its time in matrix products "
            f"({_g(1e3 * products['products_s'])} of {_g(1e3 * products['total_s'])} ms for {model['rows']:,} "
            "galaxies); a query that spent time in nothing else would run "
            f"{_g(products['knn_ratio_bound'])}x k-NN's speed (`infer_over_knn_products_bound`, the ratio over "
            "that share).")


def _large_reference_note(inf: dict) -> str:
    large = inf["redshift_lsst"].get("knn_large_reference")
    if not large:
        return ""
    return (f" The k-NN rows are fitted on {inf['redshift_lsst']['baselines']['n_train']:,} training rows of the "
            f"demo catalog; fitted on the paper catalog's {large['n_train']:,} (k = {large['k']}), as a survey-size "
            f"reference set would be, k-NN predicted {_g(large['per_s'])} galaxies/s, and the model ran "
            f"{_g(large['model_speed_ratio'])}x its speed (timed alternately): a k-NN query walks a tree over its "
            "reference set, the model's cost does not depend on its training set.")


def _uncertainty_note(inf: dict) -> str:
    if "calibration_rows" not in inf:
        return ""
    return (f" The model is calibrated for both queries first (on {inf['calibration_rows']:,} training rows), as a "
            "shipped model is: every `predict` matches its rows to their calibration entry and applies it. "
            "`return_uncertainty` adds the predictive mean and std, the percentiles and, for redshift, the pdf on "
            "the default 351-point grid; the summaries of a scalar target go through its entry's PIT map.")


def _compiled_note(inf: dict) -> str:
    compiled = {f"{k}{suffix}": q[key] for k, q in inf.items() if isinstance(q, dict)
                for key, suffix in (("model_compiled", ""), ("model_compiled_bf16", " (bf16)")) if key in q}
    if not compiled:
        return ""
    skipped = f" bf16 not timed: {inf['compiled_bf16_skipped']}." if "compiled_bf16_skipped" in inf else ""
    return (" With `compile_encoder()` (the encoder through torch.compile, `--compile` of the suite) the first "
            "call of each query compiles: " + "; ".join(
                f"{k} {_g(c['first_call_s'])} s, outputs within {_g(c['max_abs_diff'])} of the plain float32 "
                "encoder's" + (f", {_g(c['knn_speed_ratio'])}x k-NN's speed (timed alternately)"
                               if "knn_speed_ratio" in c else "") for k, c in compiled.items()) + "." + skipped)


def catalog_section(results: dict) -> str:
    rows = [[key, r["preset"], r["n"], r["total_s"], r["galaxies_per_s"], r["parquet_mb"], r["peak_rss_gb"]]
            for key in ("catalog_paper", "catalog_data") if (r := results.get(key))]
    text = ("## Catalog generation (build_catalog end to end, to Parquet)\n\n"
            + _table(["run", "preset", "rows", "seconds", "galaxies/s", "Parquet MB", "peak RSS GB"], rows))
    stages = results.get("catalog_stages")
    if stages:
        text += "\n\nPer-stage seconds per 1,000 galaxies:\n\n" + _table(
            ["stage", "s / 1000"], list(stages["stage_s_per_1000_galaxies"].items()))
    return text


def scaling_section(results: dict) -> str:
    gen = results["scaling_generation"]
    text = ("## Scaling\n\nGeneration (nothing written) against N: exponent "
            f"{_g(gen['exponent'])} (1 = linear).\n\n"
            + _table(["N", "seconds", "galaxies/s", "peak RSS GB"],
                     [[r["n"], r["generate_s"], r["galaxies_per_s"], r["peak_rss_gb"]] for r in gen["runs"]]))
    tr = results["scaling_training"]
    text += (f"\n\nTraining step (demo) against batch size: exponent {_g(tr['batch_size_exponent'])}.\n\n"
             + _table(["batch", "step s", "GFLOP/s"],
                      [[r["batch_size"], r["step_s"], _gflops(r["achieved_flops_per_s"])]
                       for r in tr["by_batch_size"]]))
    text += (f"\n\nTraining step against width (heads of 32, MLP 4x): exponent in width {_g(tr['width_exponent'])}, "
             f"in FLOPs {_g(tr['width_flops_exponent'])}.\n\n"
             + _table(["hidden", "GFLOP/step", "step s", "GFLOP/s"],
                      [[r["hidden_size"], _gflops(r["flops_per_step"]), r["step_s"], _gflops(r["achieved_flops_per_s"])]
                       for r in tr["by_width"]]))
    return text


def alternatives_section(results: dict) -> str:
    alt = results.get("alternatives")
    if not alt:
        return ""
    rows = [[name, v["step_s"], v["speedup"], v["samples_per_s"]] for name, v in alt["variants"].items()]
    text = (f"## Alternatives (demo, batch {alt['batch_size']}): what a model-code change would buy\n\n"
            + _table(["variant", "step s", "speed-up", "samples/s"], rows)
            + "\n\nLoss difference against the baseline on the same weights and batch: "
            + ", ".join(f"{k} {_g(v)}" for k, v in alt["loss_difference"].items())
            + f". Building the (B, 1, T, T) float mask alone: {_g(alt['mask_build_ms'])} ms."
            + _skipped(alt)
            + "\n\nWhere a step's time goes (self CPU time, torch.profiler):\n\n"
            + _table(["operator", "ms / step", "share"],
                     [[p["op"], p["self_ms_per_step"], p["share"]] for p in alt["profile"]]))
    return text


def inference_alternatives_section(results: dict) -> str:
    alt = results.get("inference_alternatives")
    if not alt:
        return ""
    rows = [[name, v["per_s"], v["speedup"], v["max_dz_over_1pz"]] for name, v in alt["variants"].items()]
    return (f"## Inference alternatives (redshift from LSST, {alt['rows']} synthetic galaxies, "
            "untrained demo model)\n\n"
            + _table(["variant", "galaxies/s", "speed-up", "max |dz|/(1+z) vs fp32"], rows) + _skipped(alt))


def _skipped(alt: dict) -> str:
    """The variants left out of an alternatives table and why (`alternatives._drop_slow_bf16`)."""
    if not alt.get("skipped"):
        return ""
    return "\n\nNot timed: " + "; ".join(f"{name} ({why})" for name, why in alt["skipped"].items()) + "."


def gpu_section(results: dict) -> str:
    gpu = results.get("gpu")
    if not gpu:
        return ("## GPU (paper config, bf16, torch.compile)\n\nPending: no GPU was lent to the session that ran this "
                "suite. Run `bash benchmarks/gpu.sh` on a CUDA machine; it writes benchmarks/gpu_results.json, "
                "which the next `run.py` includes here.")
    rows = [[k, v] for k, v in gpu.items() if not isinstance(v, (dict, list))]
    text = "## GPU (paper config, bf16, torch.compile)\n\n" + _table(["", "value"], rows)
    sweep = gpu.get("sweep") or []
    if len(sweep) > 1:
        header = ["batch", "step s", "samples/s", "MFU", "peak GPU memory GB"]
        text += "\n\nBatch sweep (the row above is the best MFU):\n\n" + _table(header, [
            [r["batch_size"], r["step_s"], r["samples_per_s"], r["mfu"], r["peak_device_memory_gb"]] for r in sweep])
    return text


def busy_warning(env: dict) -> str:
    """A caveat when the machine was already loaded when the suite started (other jobs share its cores)."""
    load, cores = env["load_average_1min_at_start"], env["cpu_count"]
    if load < 0.5 * cores:
        return ""
    return (f"**Caveat: the machine was busy** (1-minute load average {load:g} on {cores} cores at the start): "
            "other jobs competed for the cores, so absolute times are inflated and noisy, and multi-threaded "
            "runs suffer most (OpenMP threads wait for descheduled siblings). Rerun on an idle machine before "
            "drawing conclusions from single numbers.")


def render_markdown(results: dict) -> str:
    sections = [
        f"# MOSAIC benchmarks ({results['plan']['name']} run, {results['environment']['date_utc']})",
        "Produced by `python benchmarks/run.py" + (" --quick" if results["plan"]["name"] == "quick" else "")
        + f"` in {results['suite_s']} s. Timings are medians after warm-up; speeds are also given as ratios to "
        "ceilings measured in the same process. Raw numbers: results.json.",
        busy_warning(results["environment"]),
        targets_section(results["targets"]),
        environment_section(results["environment"]),
        training_section(results),
        data_path_section(results),
        inference_section(results),
        catalog_section(results),
        scaling_section(results),
        alternatives_section(results),
        inference_alternatives_section(results),
        gpu_section(results),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
