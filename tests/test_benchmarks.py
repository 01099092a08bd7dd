"""The benchmark suite runs and reports sane numbers; its FLOP formula is exact; the GPU script's CPU fallback works
without `datasets` or pyarrow. No test asserts a speed: speeds belong to the benchmark's own output."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from batches import model_config, synthetic_batches, synthetic_columns
from common import cpu_flags, log_log_slope, slow_dtype, timed, timed_pairs
from training_speed import (
    flop_counter_check,
    flop_terms,
    forward_flops_per_sample,
    training_flops_per_sample,
)

#: The headline numbers the issue asks every run to produce.
HEADLINE = ("train_mfu_fp32", "infer_redshift_lsst_per_s", "knn_predict_per_s", "catalog_galaxies_per_s",
            "data_path_fraction", "train_peak_rss_gb")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--quick", "--out", str(out),
                           "--gpu-results", str(out / "none.json")],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "RESULTS.md").read_text()


def test_quick_suite_headline_numbers_are_finite_and_positive(quick):
    results, _ = quick
    for key in HEADLINE:
        value = results["summary"][key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)


def test_quick_suite_ratios_are_consistent(quick):
    results, markdown = quick
    demo = results["train_demo"]
    fp32 = demo["fp32"]
    # MFU per round: the step's FLOP/s over the matmul's timed right after it; the median of those rounds
    ceiling = demo["matmul"]["float32"]
    per_call = ceiling["flops_per_s"] * statistics.median(ceiling["runs_s"])
    by_round = [fp32["flops_per_step"] / step / (per_call / matmul)
                for step, matmul in zip(fp32["step_runs_s"], ceiling["runs_s"], strict=True)]
    assert fp32["mfu_by_round"] == pytest.approx(by_round, rel=1e-3)
    assert fp32["mfu"] == statistics.median(fp32["mfu_by_round"])
    knn = results["inference"]["redshift_lsst"]["baselines"]["knn"]
    assert results["summary"]["infer_over_knn"] == statistics.median(knn["model_speed_ratios"])
    assert fp32["samples_per_s"] * fp32["step_s"] == pytest.approx(fp32["batch_size"])
    assert results["summary"]["data_path_fraction"] == pytest.approx(results["data_path"]["batch_s"] / fp32["step_s"])
    assert demo["flop_counter"]["ratio_counted_to_analytic"] == pytest.approx(1.0, rel=1e-9)
    # and against the faster of torch.mm and oneDNN's linear (timed alternately), where PyTorch has oneDNN
    onednn = demo["matmul"].get("float32_onednn")
    speedup = max(1.0, onednn["speedup"]) if onednn else 1.0
    assert fp32.get("mfu_best_matmul", fp32["mfu"]) == pytest.approx(fp32["mfu"] / speedup)
    assert results["summary"]["train_mfu_fp32"] == pytest.approx(fp32["mfu"] / speedup)
    assert results["summary"]["train_mfu_fp32_torch_mm"] == fp32["mfu"]
    # the inference bound: the encoder's FLOPs per galaxy at the same process's faster matmul rate
    inference = results["inference"]
    onednn = inference.get("matmul_onednn")
    speedup = max(1.0, onednn["speedup"]) if onednn else 1.0
    for query in ("redshift_lsst", "stellar_mass_lsst_spherex"):
        model = inference[query]["model"]
        assert model["ceiling_per_s"] == pytest.approx(
            inference["matmul"]["flops_per_s"] * speedup / model["blocks_flops_per_galaxy"])
    # the bounds: the MFU and the k-NN ratio over the share of a profiled step (query) spent in products
    products = results["train_demo_products"]
    assert products["products_s"] == pytest.approx(sum(products["by_op_s"].values()))
    assert 0 < products["products_s"] < products["total_s"]
    assert products["fraction"] == pytest.approx(products["products_s"] / products["total_s"])
    assert results["summary"]["train_mfu_fp32_products_bound"] == pytest.approx(
        results["summary"]["train_mfu_fp32"] / products["fraction"])
    query = inference["redshift_lsst"]
    assert 0 < query["model"]["products"]["fraction"] < 1
    assert results["summary"]["infer_over_knn_products_bound"] == pytest.approx(
        results["summary"]["infer_over_knn"] / query["model"]["products"]["fraction"])
    # every measurement ran in its own process and reported its own peak memory
    for key in ("train_demo", "train_paper", "data_path", "inference", "catalog_data"):
        assert results[key]["peak_rss_gb"] > 0
    for key in results["targets"]:
        assert key in markdown
    assert "GPU" in markdown and "Pending" in markdown


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_training_flops_formula_matches_the_flop_counter(preset):
    # On the eager path FlopCounterMode sees every matrix product of a forward + backward.
    config = model_config(preset, attn_implementation="eager")
    batch = synthetic_batches(config, 4, 1)[0]
    check = flop_counter_check(config, batch)
    assert check["counted"] == pytest.approx(check["analytic"], rel=1e-9)


def test_inference_flops_scale_with_the_tokens_asked_for():
    config = model_config("demo")
    two, four = forward_flops_per_sample(config, tokens=2), forward_flops_per_sample(config, tokens=4)
    assert 2 * two < four < 2.2 * two  # linear in tokens plus the (small) attention term, which is quadratic
    assert training_flops_per_sample(config) > 2 * forward_flops_per_sample(config)


@pytest.mark.parametrize(("inputs", "target", "tokens"), [(("lsst",), "redshift", 2),
                                                          (("lsst", "spherex"), "log_stellar_mass", 8)])
def test_inference_flops_formula_matches_the_flop_counter(inputs, target, tokens):
    """The blocks' FLOPs of a query (the tokens given and asked for; the last block projects and feeds forward
    the asked-for token only), on which the suite's inference ceiling rests, are what `predict` runs. The counter
    sees matrix products only, so not the attention of a query of FEW_TOKENS tokens or fewer (broadcast products)."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_mosaic import MosaicModel
    from modeling_mosaic.modeling_mosaic import FEW_TOKENS

    config = model_config("demo", attn_implementation="eager")
    columns = synthetic_columns(config, 8, seed=1)
    counter = FlopCounterMode(display=False)
    with counter:
        MosaicModel(config).eval().predict({n: columns[n] for n in inputs}, targets=target)
    counted = sum(counter.get_flop_counts()["MosaicBlock"].values())
    attention = 4 * tokens * config.hidden_size * (tokens * (config.num_hidden_layers - 1) + 1)
    unseen = attention if tokens <= FEW_TOKENS else 0
    assert counted == 8 * (flop_terms(config, tokens=tokens, asked=1)["blocks"] - unseen)
    assert counted < 8 * flop_terms(config, tokens=tokens)["blocks"]


def test_synthetic_columns_are_in_the_catalog_layout():
    config = model_config("tiny")
    columns = synthetic_columns(config, 50, seed=3)
    flat = config.flatten(columns)
    assert flat.shape == (50, config.num_elements)
    assert set(columns) == {*config.modalities, "galaxy_id"}
    assert synthetic_columns(config, 50, seed=3)["lsst"].tobytes() == columns["lsst"].tobytes()


def test_log_log_slope_recovers_a_power_law():
    x = [10.0, 50.0, 200.0]
    assert log_log_slope(x, [3.0 * v**1.5 for v in x]) == pytest.approx(1.5)


def test_cpu_flags_names_the_deciding_extensions_in_a_fixed_order(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512_bf16 avx2 avx512f fma vaes\n")
    assert cpu_flags(cpuinfo) == "avx2 fma avx512f avx512_bf16"
    cpuinfo.write_text("flags\t\t: fpu sse2\n")
    assert cpu_flags(cpuinfo) == "none of avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16"
    assert cpu_flags(tmp_path / "absent") == "unknown"


def test_timed_rejects_no_repeats():
    with pytest.raises(ValueError, match="repeats"):
        timed(lambda: None, repeats=0)


def test_timed_pairs_alternates_and_takes_the_ratio_per_round(monkeypatch):
    """On a fake clock where the machine slows down 2x between rounds, the per-round ratio stays exact (3.0)
    while a ratio of separately timed medians would not be."""
    import common

    clock, calls = [0.0], []
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])

    def call(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds * 2.0 ** ((len(calls) - 1) // 2)  # each round twice as slow as the one before
        return run

    result = timed_pairs(call("fn", 1.0), call("reference", 3.0), repeats=3, warmup=1)
    assert calls == ["fn", "reference"] * 4
    assert result["ratios"] == [3.0, 3.0, 3.0] and result["median_ratio"] == 3.0
    assert result["runs_s"] == [2.0, 4.0, 8.0] and result["reference_runs_s"] == [6.0, 12.0, 24.0]


@pytest.mark.parametrize(("bf16_over_fp32", "slow"), [(1.0, False), (2.0, False), (2.5, True), (100.0, True)])
def test_slow_dtype_leaves_out_a_dtype_over_twice_as_slow_as_float32(monkeypatch, bf16_over_fp32, slow):
    """bf16 is timed only where its product is at most 2x float32's time (on a fake clock; an AVX2 CPU measured
    ~100x), and float32 is never probed."""
    import common
    import torch

    clock, real_mm = [0.0], torch.mm
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])

    def mm(a, b):
        clock[0] += bf16_over_fp32 if a.dtype == torch.bfloat16 else 1.0
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    reason = slow_dtype("bfloat16", size=8)
    assert (reason is not None) == slow
    if slow:
        assert reason.startswith("bfloat16 matmul") and "not timed" in reason
    clock[0] = 0.0
    assert slow_dtype("float32") is None and clock[0] == 0.0


def test_gpu_script_cpu_fallback_needs_neither_datasets_nor_pyarrow(tmp_path):
    out = tmp_path / "gpu.json"
    script = (
        "import runpy, sys\n"
        "sys.modules['datasets'] = None\n"  # importing either now raises ImportError
        "sys.modules['pyarrow'] = None\n"
        f"sys.argv = ['gpu.py', '--device', 'cpu', '--config', 'tiny', '--steps', '2', '--batch-size', '4', '8',"
        f" '--out', {str(out)!r}]\n"
        f"runpy.run_path({str(BENCHMARKS / 'gpu.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["device_type"], result["precision"], result["compiled"]) == ("cpu", "fp32", False)
    assert result["samples_per_s"] * result["step_s"] == pytest.approx(result["batch_size"])
    assert result["epoch_s_paper_train_set"] == pytest.approx(185_247 / result["samples_per_s"])
    assert result["mfu"] == pytest.approx(result["achieved_flops_per_s"] / result["matmul_flops_per_s"])
    assert math.isfinite(result["final_loss"])
    # The sweep: one entry per batch size, in order; the result is the entry of the best MFU.
    assert [r["batch_size"] for r in result["sweep"]] == [4, 8]
    best = max(result["sweep"], key=lambda r: r["mfu"])
    assert (result["batch_size"], result["mfu"]) == (best["batch_size"], best["mfu"])


def test_gpu_section_shows_the_result_and_every_size_of_the_sweep():
    from report import gpu_section

    sweep = [{"batch_size": b, "step_s": 0.1, "samples_per_s": b / 0.1, "mfu": m, "peak_device_memory_gb": 1.0}
             for b, m in ((2048, 0.45), (8192, 0.44))]
    text = gpu_section({"gpu": {**sweep[0], "device": "NVIDIA H200", "sweep": sweep}})
    assert "Pending" not in text and "NVIDIA H200" in text
    assert "| 2048 |" in text and "| 8192 |" in text and "Batch sweep" in text


def test_gpu_script_rejects_bad_arguments():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--steps", "0"], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode != 0 and "--steps" in done.stderr
