"""Make the top-level script `train_mosaic.py`, the test helpers (`hub_servers`) and the benchmarks importable;
shared fixtures; FlopCounterMode's count of oneDNN's linear."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import count_onednn_linear_flops  # noqa: E402  (benchmarks/common.py, on the path from here)

count_onednn_linear_flops()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: extra threads only fight the other processes on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
