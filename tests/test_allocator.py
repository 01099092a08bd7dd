"""`keep_freed_memory`: freed blocks stay in the process, so the next step's allocations do not fault in fresh
pages, and settings the user made in glibc's environment are left alone."""

import os
import subprocess
import sys

from modeling_mosaic import allocator

# Six 8 MB blocks allocated, written and freed per step, as a training step's activations are: 12,288 pages.
STEP_PAGES = 6 * (8 << 20) // 4096
# The module is loaded from its file: importing the package would import torch and transformers (4 s).
FAULTS_PER_STEP = """
import importlib.util, resource, sys
import numpy as np
spec = importlib.util.spec_from_file_location("allocator", sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
print(allocator.keep_freed_memory() if sys.argv[1] == "keep" else None)
def step():
    blocks = [np.ones(2 << 20, dtype=np.float32) for _ in range(6)]
    return sum(float(b[-1]) for b in blocks)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in allocator.GLIBC_ENVIRONMENT}
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode, allocator.__file__], capture_output=True,
                          text=True, env=env, check=True, timeout=120)
    applied, faults = done.stdout.split()
    return applied, float(faults)


def test_freed_blocks_are_reused_without_page_faults():
    applied, kept = faults_per_step("keep")
    default_applied, default = faults_per_step("default")
    assert applied == "True" and default_applied == "None"
    # Kept: the pages stay mapped, so a step faults in (almost) none of the 12,288 it writes; glibc's defaults
    # hand the freed top of the heap back and fault many of them in again, step after step.
    assert kept < 0.02 * STEP_PAGES
    assert default > 0.1 * STEP_PAGES and default > 10 * kept


def test_settings_from_the_environment_win(monkeypatch):
    for name in allocator.GLIBC_ENVIRONMENT:
        monkeypatch.setenv(name, "1048576")
        assert allocator.keep_freed_memory() is False
        monkeypatch.delenv(name)
