"""Hub round trips without internet: pull a checkpoint through olah (a real Hub mirror), push one with the real
huggingface_hub client to the local upload server, and push/load a Parquet dataset repo.

Every pull runs in a child process that cannot import `modeling_mosaic`, so the checkpoint must load from its
own remote code (`trust_remote_code=True`), as on a user's machine. See tests/hub_servers.py for what the
servers do and do not exercise.
"""

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hub_servers import BareRepo, OlahServer, UploadServer, free_port, hub_env, make_git_repo, run_isolated_python

from modeling_mosaic import MODALITIES, MosaicConfig, MosaicModel

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
TARGETS = ("log_stellar_mass", "sfh", "sed")
MODEL_ID = "org/tiny-mosaic"
DATASET_ID = "org/tiny-catalog"

PULL_AND_PREDICT = """
import sys
import numpy as np
from transformers import AutoModel
repo_id, inputs_path, targets, out_path = sys.argv[1:5]
model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
assert not any(name.split(".")[0] == "modeling_mosaic" for name in sys.modules), "the package was imported"
np.savez(out_path, **model.predict(dict(np.load(inputs_path)), targets=targets.split(",")))
"""

# The calls Trainer.push_to_hub makes: create_repo(exist_ok=True), then upload_folder.
PUSH_FOLDER = """
import json, sys
from huggingface_hub import HfApi
repo_id, repo_type, folder, *delete_patterns = sys.argv[1:]
api = HfApi()
url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
info = api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, commit_message="push",
                         ignore_patterns=["_*", "checkpoint-*"], delete_patterns=delete_patterns or None)
print(json.dumps({"repo_id": url.repo_id, "repo_type": url.repo_type, "oid": info.oid}))
"""

LOAD_DATASET = """
import json, sys
from datasets import load_dataset
dataset = load_dataset(sys.argv[1])
print(json.dumps({split: dataset[split].to_list() for split in dataset}))
"""


class Checkpoint(NamedTuple):
    directory: Path  # what save_pretrained wrote
    inputs_path: Path  # the fixed inputs, as .npz
    expected: dict  # the in-process model's predictions on them


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Checkpoint:
    """A saved tiny MosaicModel, fixed inputs (with a missing element) and the in-process predictions that
    every pulled copy must reproduce exactly."""
    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY)).eval()
    root = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(root / "tiny-mosaic")
    rng = np.random.default_rng(0)
    lsst = (24.0 + rng.normal(size=(5, MODALITIES["lsst"].length))).astype(np.float32)
    lsst[1, 2] = np.nan
    inputs = {"redshift": rng.uniform(0.1, 2.5, 5).astype(np.float32), "lsst": lsst}
    np.savez(root / "inputs.npz", **inputs)
    return Checkpoint(root / "tiny-mosaic", root / "inputs.npz", model.predict(inputs, targets=list(TARGETS)))


def pull_and_predict(env: dict, checkpoint: Checkpoint, work) -> dict:
    """Load MODEL_ID in an isolated child with `env` and return its predictions on the fixed inputs."""
    out = work / f"predictions-{len(list(work.glob('predictions-*')))}.npz"
    run_isolated_python(PULL_AND_PREDICT, MODEL_ID, checkpoint.inputs_path, ",".join(TARGETS), out, env=env, cwd=work)
    with np.load(out) as data:
        return {name: data[name] for name in data.files}


def assert_same_predictions(got: dict, checkpoint: Checkpoint):
    expected = checkpoint.expected
    assert all(np.isfinite(v).all() for v in expected.values())
    assert set(got) == set(expected) == set(TARGETS)
    for name in TARGETS:
        assert got[name].dtype == expected[name].dtype and np.array_equal(got[name], expected[name]), name


def push_folder(url: str, repo_type: str, folder, work, *delete_patterns: str) -> dict:
    """Push `folder` with the real huggingface_hub client, configured by environment only, as Trainer is."""
    env = hub_env(url, work / "push-home", HF_TOKEN="hf_dummy_token_for_the_local_upload_server")
    return json.loads(run_isolated_python(PUSH_FOLDER, MODEL_ID if repo_type == "model" else DATASET_ID,
                                          repo_type, folder, *delete_patterns, env=env, cwd=work))


def folder_files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_missing_olah_venv_is_an_error_that_says_how_to_fix_it(tmp_path):
    with pytest.raises(RuntimeError, match="run `make test`"), OlahServer(tmp_path / "mirrors", venv=tmp_path / "x"):
        pass


def test_pull_through_olah_then_offline_from_cache(checkpoint, tmp_path):
    mirrors, hf_home = tmp_path / "mirrors", tmp_path / "hf-home"
    commit = make_git_repo(checkpoint.directory, mirrors, "models", MODEL_ID)
    with OlahServer(mirrors) as url:
        assert_same_predictions(pull_and_predict(hub_env(url, hf_home), checkpoint, tmp_path), checkpoint)
    assert (hf_home / "hub" / "models--org--tiny-mosaic" / "snapshots" / commit / "model.safetensors").is_file()

    # The server is gone: the populated Hub cache alone must serve the same model.
    offline = hub_env(f"http://127.0.0.1:{free_port()}", hf_home, HF_HUB_OFFLINE="1")
    assert_same_predictions(pull_and_predict(offline, checkpoint, tmp_path), checkpoint)


def test_push_with_hub_client_then_pull_through_olah(checkpoint, tmp_path):
    mirrors, output_dir = tmp_path / "mirrors", tmp_path / "output"
    output_dir.mkdir()
    for name, content in folder_files(checkpoint.directory).items():
        (output_dir / name).write_bytes(content)
    (output_dir / "stale.txt").write_text("removed by the second push\n")
    (output_dir / "_private.txt").write_text("ignored, as Trainer ignores _* files\n")

    upload = UploadServer(mirrors)
    with upload as upload_url, OlahServer(mirrors) as olah_url:
        first = push_folder(upload_url, "model", output_dir, tmp_path)
        (output_dir / "stale.txt").unlink()
        (output_dir / "_private.txt").unlink()
        second = push_folder(upload_url, "model", output_dir, tmp_path, "*.txt")
        got = pull_and_predict(hub_env(olah_url, tmp_path / "hf-home"), checkpoint, tmp_path)

    assert first["repo_id"] == second["repo_id"] == MODEL_ID and first["repo_type"] == "model"
    repo = BareRepo(BareRepo.location(mirrors, "models", MODEL_ID))
    assert repo.head() == second["oid"]
    # The stored repo is exactly the checkpoint, byte for byte.
    assert {path: repo.read(path) for path in repo.files()} == folder_files(checkpoint.directory)
    # The second commit only deleted stale.txt: unchanged files were skipped by their blob ids.
    before, after = repo.files(first["oid"]), repo.files(second["oid"])
    assert set(before) - set(after) == {"stale.txt"} and all(before[p] == after[p] for p in after)
    # The repo already existed for the second push (409), and no request fell outside the implemented API.
    assert ("POST", "/api/repos/create", 409) in upload.requests
    assert all(status in (200, 409) for _, _, status in upload.requests), upload.requests
    assert_same_predictions(got, checkpoint)


def write_parquet_dataset(folder) -> dict:
    """A catalog-like Parquet export: README.md with a `configs` block and one shard per split; returns the
    rows of each split."""
    length = MODALITIES["lsst"].length
    rng = np.random.default_rng(1)
    rows = {}
    (folder / "data").mkdir(parents=True)
    for split, n in (("train", 6), ("test", 3)):
        table = pa.table({
            "object_id": pa.array(np.arange(n, dtype=np.int64) + (0 if split == "train" else 1000)),
            "redshift": pa.array(rng.uniform(0, 3, n).astype(np.float32)),
            "lsst": pa.array(list(rng.normal(24, 1, (n, length)).astype(np.float32)),
                             type=pa.list_(pa.float32(), length)),
        })
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
        rows[split] = table.to_pylist()
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: data/train-*\n  - split: test\n    path: data/test-*\n---\n"
        "# tiny-catalog\n\nA tiny test catalog.\n")
    return rows


def test_push_parquet_dataset_then_load_dataset_through_olah(tmp_path):
    mirrors, export = tmp_path / "mirrors", tmp_path / "export"
    rows = write_parquet_dataset(export)
    upload = UploadServer(mirrors)
    with upload as upload_url, OlahServer(mirrors) as olah_url:
        pushed = push_folder(upload_url, "dataset", export, tmp_path)
        loaded = json.loads(run_isolated_python(LOAD_DATASET, DATASET_ID, env=hub_env(olah_url, tmp_path / "hf-home"),
                                                cwd=tmp_path))
    assert pushed["repo_id"] == DATASET_ID and pushed["repo_type"] == "dataset"
    assert ("POST", "/api/validate-yaml", 200) in upload.requests  # the README's metadata went through the check
    repo = BareRepo(BareRepo.location(mirrors, "datasets", DATASET_ID))
    assert {path: repo.read(path) for path in repo.files()} == folder_files(export)
    assert loaded == rows


def test_a_catalog_name_neither_here_nor_on_the_hub_is_one_named_error(tmp_path):
    """"org/name" is a folder here or a dataset on the Hub: when it is neither, `load_catalog` and
    `read_normalization` say so, naming it, whatever the Hub client raised (here: offline, nothing cached)."""
    code = (
        "from modeling_mosaic.catalog.io import load_catalog, read_normalization\n"
        "for read in (load_catalog, read_normalization):\n"
        "    try:\n"
        "        read('org/no-such-catalog')\n"
        "    except FileNotFoundError as error:\n"
        "        print(str(error).splitlines()[0])\n"
    )
    env = hub_env(f"http://127.0.0.1:{free_port()}", tmp_path / "hf-home", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout + result.stderr
    for line in lines:
        assert line.startswith("org/no-such-catalog: no such catalog folder here, and the Hub could not provide"), line


def http(method: str, url: str, body: bytes = b"", token: str | None = "hf_dummy") -> tuple[int, dict, str | None]:
    """One raw request: (status, JSON body, X-Error-Code)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as response:
            return response.status, json.load(response), response.headers.get("X-Error-Code")
    except urllib.error.HTTPError as err:
        return err.code, json.load(err), err.headers.get("X-Error-Code")


def ndjson(*operations: tuple[str, dict]) -> bytes:
    lines = [{"key": "header", "value": {"summary": "test commit"}}]
    lines += [{"key": key, "value": value} for key, value in operations]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def add(path: str, content: bytes) -> tuple[str, dict]:
    return "file", {"path": path, "encoding": "base64", "content": base64.b64encode(content).decode()}


def test_upload_server_deletes_folders_and_refuses_what_it_does_not_implement(tmp_path):
    upload = UploadServer(tmp_path / "mirrors")
    with upload as url:
        commit = f"{url}/api/models/org/x/commit/main"
        create = json.dumps({"name": "x", "organization": "org"}).encode()
        assert http("POST", f"{url}/api/repos/create", create)[0] == 200
        assert http("POST", commit, ndjson(add("a/b.txt", b"1"), add("a/c/d.txt", b"2"), add("e.txt", b"3")))[0] == 200
        assert http("POST", commit, ndjson(("deletedFolder", {"path": "a/"})))[0] == 200
        repo = BareRepo(BareRepo.location(tmp_path / "mirrors", "models", "org/x"))
        assert repo.files() == {"e.txt": (repo.files()["e.txt"][0], 1)} and repo.read("e.txt") == b"3"
        head = repo.head()

        valid = ndjson(add("f.txt", b"x"))
        lfs = ndjson(("lfsFile", {"path": "w.bin", "algo": "sha256", "oid": "0" * 64}))
        refused = [  # (method, url, body, token) -> (status, X-Error-Code)
            (("GET", f"{url}/api/whoami-v2", b"", "t"), (404, None)),
            (("POST", commit, lfs, "t"), (400, None)),
            (("POST", commit, ndjson(("deletedFile", {"path": "missing.txt"})), "t"), (404, "EntryNotFound")),
            (("POST", commit, ndjson(add("../escape.txt", b"x")), "t"), (400, None)),
            (("POST", commit, valid, None), (401, None)),
            (("POST", f"{url}/api/models/org/x/commit/dev", valid, "t"), (404, "RevisionNotFound")),
            (("POST", f"{url}/api/models/org/nope/commit/main", valid, "t"), (404, "RepoNotFound")),
            (("POST", f"{commit}?create_pr=1", valid, "t"), (400, None)),
        ]
        for (method, target, body, token), expected in refused:
            status, payload, code = http(method, target, body, token)
            assert (status, code) == expected, (method, target, payload)
        assert "GET /api/whoami-v2" in http("GET", f"{url}/api/whoami-v2")[1]["error"]
        assert repo.head() == head  # nothing refused was half-written
