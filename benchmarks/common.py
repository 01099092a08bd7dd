"""What every benchmark shares: medians after warm-up, the matrix-multiply ceiling, the machine's description,
one subprocess per measurement (so peak memory does not mix) and the log-log slope of a scaling series.

The helpers import torch lazily: the catalog workers never load it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The line prefix under which a worker prints its JSON result (anything else it prints is ignored).
RESULT_MARKER = "BENCHMARK-RESULT "


def timed(fn, repeats: int = 5, warmup: int = 1, synchronize=None) -> dict:
    """Run `fn` `warmup` times untimed, then `repeats` times: {"median_s", "min_s", "runs_s"}.

    `synchronize` (e.g. torch.cuda.synchronize) is called before each clock read, for asynchronous devices.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        runs.append(time.perf_counter() - start)
    return {"median_s": statistics.median(runs), "min_s": min(runs), "runs_s": [round(r, 6) for r in runs]}


def timed_pairs(fn, reference, repeats: int = 5, warmup: int = 1) -> dict:
    """`timed` for `fn` and `reference` run alternately, one run of each per round, so that both see the same
    stretch of a machine whose speed drifts by 20-30% within minutes: `ratios` are reference / fn time per round
    (the speed of `fn` relative to `reference`), `median_ratio` their median. CPU only (no synchronisation)."""
    for _ in range(warmup):
        fn()
        reference()
    runs, reference_runs = [], []
    for _ in range(repeats):
        for call, into in ((fn, runs), (reference, reference_runs)):
            start = time.perf_counter()
            call()
            into.append(time.perf_counter() - start)
    ratios = [r / f for f, r in zip(runs, reference_runs)]
    return {"median_s": statistics.median(runs), "runs_s": [round(r, 6) for r in runs],
            "reference_median_s": statistics.median(reference_runs),
            "reference_runs_s": [round(r, 6) for r in reference_runs], "ratios": ratios,
            "median_ratio": statistics.median(ratios)}


def count_onednn_linear_flops() -> None:
    """Teach FlopCounterMode oneDNN's linear, which the model's float32 CPU linears run (`modeling_mosaic.linear`:
    inference, and training's forward and input gradient), counted as aten.addmm's: 2 x rows x the weight's size.
    Registered once per process."""
    import math

    import torch
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    op = torch.ops.mkldnn._linear_pointwise
    if op not in flop_registry:
        register_flop_formula(op)(lambda x_shape, w_shape, *args, out_shape=None, **kwargs:
                                  2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1])


def matmul_runner(m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", library: str = "aten"):
    """A call of (m, k) x (k, n) matrix products lasting ~0.1 s at 100 GFLOP/s (a GPU: as many products) and the
    FLOPs it does (2mkn each): the unit of the ceiling every speed of a process is compared with. `library`:
    "aten" is torch.mm (MKL's sgemm for float32 on a CPU, what nn.Linear runs); "onednn" the same product through
    oneDNN's linear, which the model's float32 CPU linears call (`modeling_mosaic.linear`: inference, and training's
    forward and input gradient)."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(m, k, device=device).to(dt)
    b = torch.randn(k, n, device=device).to(dt)
    out = torch.empty(m, n, device=device, dtype=dt)
    inner = max(1, int(1e10 / (2.0 * m * k * n)))
    if library == "onednn":
        weight = b.t().contiguous()

        def run():
            for _ in range(inner):
                torch.ops.mkldnn._linear_pointwise(a, weight, None, "none", [], "")
    elif library == "aten":
        def run():
            for _ in range(inner):
                torch.mm(a, b, out=out)
    else:
        raise ValueError(f"library must be 'aten' or 'onednn', got {library!r}")
    return run, 2.0 * m * k * n * inner


def matmul_rate(m: int, k: int, n: int, dtype: str = "float32", device: str = "cpu", repeats: int = 5,
                library: str = "aten") -> dict:
    """FLOP/s of an (m, k) x (k, n) matrix product (`matmul_runner`), median over `repeats` after one warm-up."""
    import torch

    run, flops = matmul_runner(m, k, n, dtype, device, library)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    timing = timed(run, repeats=repeats, warmup=1, synchronize=sync)
    return {"shape": [m, k, n], "dtype": dtype, "library": library, "flops_per_s": flops / timing["median_s"],
            "median_s": timing["median_s"] * 2.0 * m * k * n / flops}


def onednn_over_aten(m: int, k: int, n: int, repeats: int = 5) -> dict | None:
    """How much faster oneDNN's float32 linear runs an (m, k) x (k, n) product than torch.mm on this CPU, timed
    alternately (`timed_pairs`); None where PyTorch has no oneDNN. On an AVX-512 AMD EPYC MKL's sgemm, behind
    torch.mm, ran 168-190 GFLOP/s where oneDNN ran 403-424: a ceiling measured with torch.mm alone understates
    the machine."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    onednn, flops = matmul_runner(m, k, n, library="onednn")
    aten, _ = matmul_runner(m, k, n, library="aten")
    paired = timed_pairs(onednn, aten, repeats=repeats, warmup=1)
    return {"shape": [m, k, n], "speedup": paired["median_ratio"], "onednn_flops_per_s": flops / paired["median_s"],
            "aten_flops_per_s": flops / paired["reference_median_s"]}


#: The matrix products of a step or a query as torch.profiler names them: oneDNN's linear (the float32 CPU linears
#: and their input gradients), torch.mm and addmm (the weight gradients, nn.Linear elsewhere), and the batched
#: products of attention and of the embeddings' and heads' einsums.
PRODUCT_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def products_time(fn, repeats: int = 3) -> dict:
    """Seconds a call of `fn` spends in matrix products (PRODUCT_OPS' own time under torch.profiler) against its
    whole time under the profiler, over `repeats` calls after a warm-up, and each product's part. What a call would
    take if everything else (element-wise work, copies, Python) were free: a bound on any fusion's gain."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        total = (time.perf_counter() - start) / repeats
    by_op = {e.key: e.self_cpu_time_total / 1e6 / repeats for e in prof.key_averages() if e.key in PRODUCT_OPS}
    products = sum(by_op.values())
    return {"products_s": products, "total_s": total, "fraction": products / total, "by_op_s": by_op,
            "threads": torch.get_num_threads()}


def slow_dtype(dtype: str, device: str = "cpu", size: int = 256) -> str | None:
    """Why products in `dtype` are not worth timing on this device, or None when they are: a CPU without native
    bf16 kernels (AVX2, no AVX-512) runs a bf16 matmul ~100x slower than fp32 (0.56 against 60 GFLOP/s on one
    thread of an AVX2 EPYC), so that the paper config's bf16 step would take minutes. Judged by one (size^3)
    product of each dtype after a warm-up: more than 2x slower than float32 is slow."""
    import torch

    if dtype == "float32" or not device.startswith("cpu"):
        return None
    times = {}
    for name in ("float32", dtype):
        a = torch.randn(size, size).to(getattr(torch, name))
        torch.mm(a, a)
        start = time.perf_counter()
        torch.mm(a, a)
        times[name] = time.perf_counter() - start
    if times[dtype] <= 2 * times["float32"]:
        return None
    rate = {k: 2 * size**3 / t / 1e9 for k, t in times.items()}
    return (f"{dtype} matmul at {rate[dtype]:.2g} GFLOP/s against float32's {rate['float32']:.3g} on this CPU "
            f"(capability {torch.backends.cpu.get_cpu_capability()}): no native {dtype} kernels, not timed")


def peak_rss_gb() -> float:
    """This process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


#: The instruction-set extensions that decide this suite's numbers (fp32 FMA width; native bf16 and int8 units).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """Which of CPU_FLAGS the CPU reports, space-separated in that order: two machines of one model name differ
    by them (an "AMD EPYC" with AVX2 only multiplied bf16 matrices at 0.56-1.4 GFLOP/s, one with AVX512-BF16 at
    ~830), and so do their fp32 step times and bf16 results (docs/measurements.md)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return " ".join(f for f in CPU_FLAGS if f in present) or "none of " + " ".join(CPU_FLAGS)
    except OSError:
        pass
    return "unknown"


def environment() -> dict:
    """The machine and software a result was measured on, with the thread counts and the BLAS in use."""
    import numpy as np

    info = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
                                               "OPENBLAS_L2_SIZE")},
    }
    try:
        import torch

        config = torch.__config__.show()
        info.update(
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            torch_interop_threads=torch.get_num_interop_threads(),
            torch_blas=next((p.split("=", 1)[1] for p in config.replace(",", " ").split()
                             if p.startswith("BLAS_INFO=")), "unknown"),
            torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
            mkldnn=torch.backends.mkldnn.is_available(),
            cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        )
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["torch"] = None
    return info


def log_log_slope(x, y) -> float:
    """Least-squares slope of log(y) against log(x): 1 is linear scaling, 0 constant."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run_isolated(task: str, timeout: float = 1800.0, **params) -> dict:
    """Run `task` ("module.function" in benchmarks/) with keyword `params` in a fresh Python process and return
    its result, plus that process's own peak resident memory (`peak_rss_gb`) and wall time (`process_s`)."""
    command = [sys.executable, str(HERE / "run.py"), "--worker", task, "--params", json.dumps(params)]
    start = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    elapsed = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker {task} {params} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_MARKER):])
    result["process_s"] = round(elapsed, 2)
    return result


def run_worker(task: str, params: dict) -> None:
    """The child side of `run_isolated`: call the task and print its result with the peak memory."""
    import importlib

    from modeling_mosaic.allocator import keep_freed_memory

    kept = keep_freed_memory()  # as every MOSAIC entry point does
    module_name, function_name = task.rsplit(".", 1)
    function = getattr(importlib.import_module(module_name), function_name)
    result = function(**params)
    result["keep_freed_memory"] = kept
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(RESULT_MARKER + json.dumps(result), flush=True)
