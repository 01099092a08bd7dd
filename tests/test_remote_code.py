"""A saved MOSAIC checkpoint reloads in a fresh process by both routes, with identical outputs:
the installed package (no trust_remote_code) and the checkpoint's own copy of the code on a Python that cannot
import the package at all."""

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

import modeling_mosaic
from modeling_mosaic import MosaicConfig, MosaicModel

REMOTE_FILES = ("configuration_mosaic.py", "modeling_mosaic.py", "modalities.py")
ALLOWED_IMPORTS = {"numpy", "torch", "transformers", "math", "dataclasses", "typing", "__future__"}  # + stdlib

# Run in the child: load the checkpoint, then save its outputs on the inputs in inputs.npz.
CHILD = """
import importlib.util, sys
import numpy as np, torch
from transformers import AutoModel
checkpoint, route = sys.argv[1], sys.argv[2]
if route == "installed":
    import modeling_mosaic
    model = AutoModel.from_pretrained(checkpoint)
    assert type(model).__module__ == "modeling_mosaic.modeling_mosaic", type(model).__module__
else:
    assert importlib.util.find_spec("modeling_mosaic") is None, "the package must not be importable here"
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
data = np.load(checkpoint + "/inputs.npz")
out = model(torch.from_numpy(data["values"]), torch.from_numpy(data["input_mask"]))
predicted = model.predict({"lsst": data["lsst"]}, targets=["redshift", "sed"])
np.savez(checkpoint + f"/{route}.npz", predictions=out.predictions.detach().numpy(),
         hidden=out.last_hidden_state.detach().numpy(), redshift=predicted["redshift"], sed=predicted["sed"])
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny saved model, its inputs, and its own outputs on them."""
    directory = tmp_path_factory.mktemp("checkpoint")
    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)).eval()
    model.save_pretrained(directory)
    rng = np.random.default_rng(0)
    values = rng.normal(20.0, 3.0, (5, model.config.num_elements)).astype(np.float32)
    input_mask = rng.random(values.shape) < 0.5
    lsst = rng.normal(25.0, 1.0, (5, 6)).astype(np.float32)
    np.savez(directory / "inputs.npz", values=values, input_mask=input_mask, lsst=lsst)
    out = model(torch.from_numpy(values), torch.from_numpy(input_mask))
    predicted = model.predict({"lsst": lsst}, targets=["redshift", "sed"])
    expected = {"predictions": out.predictions.detach().numpy(), "hidden": out.last_hidden_state.detach().numpy(),
                "redshift": predicted["redshift"], "sed": predicted["sed"]}
    return directory, expected


def run_child(directory, route, python_flags, extra_path):
    """Run CHILD in a fresh interpreter whose working directory is outside the repository and outside the
    checkpoint (whose modeling_mosaic.py would otherwise shadow the package)."""
    workdir = directory.parent / f"cwd_{route}"
    workdir.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(directory / "modules"),
               HF_HOME=str(directory / "hf"))
    code = f"import sys; sys.path.extend({extra_path!r})\n" + CHILD
    result = subprocess.run([sys.executable, *python_flags, "-c", code, str(directory), route], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(directory / f"{route}.npz"))


def test_save_writes_safetensors_code_and_auto_map(checkpoint):
    directory, _ = checkpoint
    files = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", *REMOTE_FILES} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((directory / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_mosaic.MosaicConfig", "AutoModel": "modeling_mosaic.MosaicModel"}


@pytest.mark.parametrize("name", REMOTE_FILES)
def test_remote_code_imports_only_torch_transformers_numpy_and_relative(name):
    tree = ast.parse((Path(modeling_mosaic.__file__).parent / name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots = set() if node.level > 0 else {node.module.split(".")[0]}
        else:
            continue
        assert roots <= ALLOWED_IMPORTS, (name, roots)


def test_installed_route_reloads_identically(checkpoint):
    directory, expected = checkpoint
    got = run_child(directory, "installed", [], [])
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_remote_code_route_reloads_identically_without_the_package(checkpoint):
    """`python -S` skips site-packages and with it the editable install's path hook; the child then adds the
    dependencies' site-packages by hand, which does not process .pth files, so the package stays hidden."""
    directory, expected = checkpoint
    site_packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    got = run_child(directory, "remote", ["-S"], site_packages)
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
