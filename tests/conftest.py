"""Make the top-level script `train_mosaic.py` and the test helpers (`hub_servers`) importable; shared fixtures;
FlopCounterMode's count of oneDNN's linear."""

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import register_flop_formula

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: extra threads only fight the other processes on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@register_flop_formula(torch.ops.mkldnn._linear_pointwise)
def onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of oneDNN's linear, which CPU inference runs (`modeling_mosaic.linear`), counted as aten.addmm's."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]
