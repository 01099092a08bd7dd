"""Catalog packaging: features, Parquet layout, dataset card, statistics, sharded builds, the builder, the CLI.

A fast synthetic chunk source stands in for the physics generator: row i depends only on i (as the real
generator's rows do), and it has NaN, inf and zeros where the real catalog may have them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import List, Value, load_dataset

from modeling_mosaic.catalog import cli
from modeling_mosaic.catalog.builder import MosaicCatalog
from modeling_mosaic.catalog.features import arrow_schema, catalog_features, chunk_to_table, table_to_chunk
from modeling_mosaic.catalog.io import load_catalog, read_normalization
from modeling_mosaic.catalog.presets import PRESETS, catalog_fingerprint, split_sizes
from modeling_mosaic.catalog.schema import COLUMN_NAMES, COLUMNS
from modeling_mosaic.catalog.stats import STD_FLOOR
from modeling_mosaic.catalog.writer import Layout, finalize_catalog, write_catalog
from modeling_mosaic.modalities import MODALITIES, MODALITY_NAMES


# ------------------------------------------------------------------------------------- synthetic rows
def synthetic_row(i: int) -> dict:
    """Row i of the synthetic catalog: a function of i alone."""
    rng = np.random.default_rng(1000 + i)
    row = {}
    for c in COLUMNS:
        shape = () if c.length == 0 else (c.length,)
        row[c.name] = rng.uniform(0.0, 30.0, shape)
    row["galaxy_id"] = i
    row["quenched"] = i % 3 == 0
    row["redshift"] = np.nan if i % 11 == 5 else rng.uniform(0.01, 3.0)
    row["log_halo_mass"] = rng.uniform(11.0, 14.5)
    row["sfh"] = np.where(rng.uniform(size=100) < 0.2, 0.0, 10 ** rng.normal(0.0, 1.0, 100))
    row["sfh"][0] = 0.0  # constant in every row: its std must be floored, not 0
    row["sed"] = 10 ** rng.normal(28.0, 0.5, 256)
    if i % 7 == 3:
        row["sed"][rng.integers(256)] = np.nan
        row["sfh"][rng.integers(1, 100)] = np.inf
    return row


def synthetic_chunk(start: int, stop: int) -> dict[str, np.ndarray]:
    rows = [synthetic_row(i) for i in range(start, stop)]
    return {c.name: np.array([r[c.name] for r in rows]).astype(c.dtype) for c in COLUMNS}


def synthetic_source(start: int, stop: int, chunk_rows: int = 37):
    for lo in range(start, stop, chunk_rows):
        yield synthetic_chunk(lo, min(lo + chunk_rows, stop))


PROVENANCE = {"origin": "generated", "config": "synthetic", "options": {"n": 260, "seed": 0, "sfh_convention": "observed"}}
LAYOUT = Layout(n_train=200, n_test=60, rows_per_file=45)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One unsharded synthetic catalog, shared by the read-only tests."""
    out = tmp_path_factory.mktemp("cat") / "catalog"
    write_catalog(out, synthetic_source, LAYOUT, PROVENANCE)
    return out


def as_numpy(ds) -> dict[str, np.ndarray]:
    return {name: np.asarray(ds.with_format("numpy")[name]) for name in COLUMN_NAMES}


# ------------------------------------------------------------------------------------------ features
def test_features_match_schema_and_registry():
    features = catalog_features()
    assert list(features) == list(COLUMN_NAMES)
    for c in COLUMNS:
        f = features[c.name]
        if c.length == 0:
            assert f == Value(c.dtype)
        else:
            assert f == List(Value("float32"), length=c.length)
    for name in MODALITY_NAMES:
        length = MODALITIES[name].length
        assert (features[name].length if length > 1 else 1) == length
    assert arrow_schema().field("sed").type.list_size == MODALITIES["sed"].length


def test_chunk_table_round_trip_and_errors():
    chunk = synthetic_chunk(0, 5)
    back = table_to_chunk(chunk_to_table(chunk))
    for name in COLUMN_NAMES:
        np.testing.assert_array_equal(back[name], chunk[name])
        assert back[name].dtype == chunk[name].dtype
    short = dict(chunk, sed=chunk["sed"][:, :200])
    with pytest.raises(ValueError, match="'sed'.*256"):
        chunk_to_table(short)
    with pytest.raises(ValueError, match="missing columns \\['lsst'\\]"):
        chunk_to_table({k: v for k, v in chunk.items() if k != "lsst"})


def test_presets_are_the_papers_split():
    paper = PRESETS["paper"]
    assert (paper.n_train, paper.n_test) == (185_247, 20_583)
    assert paper.test_fraction == pytest.approx(0.1, abs=1e-6)
    assert PRESETS["tiny"].split(1000) == (800, 200)
    assert split_sizes(3, 0.01) == (2, 1)  # never an empty test split


# ----------------------------------------------------------------------------------- layout and card
def test_layout_files_and_card(built):
    names = sorted(p.name for p in (built / "data").iterdir())
    assert names == [f"test-{i:05d}-of-00002.parquet" for i in range(2)] + [
        f"train-{i:05d}-of-00005.parquet" for i in range(5)
    ]
    assert not (built / "shards").exists()
    assert not list(built.parent.glob(".*tmp"))  # the staging folder is gone
    card = (built / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "test", "path": "data/test-*"}]}]
    assert "2510.07684" in card and "Bruzual" in card and "nJy" in card and "observed" in card
    catalog = json.loads((built / "catalog.json").read_text())
    assert catalog["provenance"] == PROVENANCE
    assert catalog["splits"]["train"]["rows"] == 200 and catalog["splits"]["test"]["rows"] == 60
    test_rows = synthetic_chunk(200, 260)
    assert catalog["splits"]["test"]["summary"]["quenched"] == int(test_rows["quenched"].sum())


def test_parquet_round_trip_through_load_dataset(built, tmp_path):
    ds = load_dataset(str(built), cache_dir=str(tmp_path / "hf"))
    assert set(ds) == {"train", "test"}
    assert ds["train"].features == catalog_features()  # from the card, without passing features
    for split, (lo, hi) in {"train": (0, 200), "test": (200, 260)}.items():
        expected = synthetic_chunk(lo, hi)
        got = as_numpy(ds[split])
        for name in COLUMN_NAMES:
            assert got[name].dtype == expected[name].dtype, name
            assert got[name].shape == expected[name].shape, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_load_catalog_and_torch_format(built, tmp_path):
    train = load_catalog(built, split="train", cache_dir=str(tmp_path / "hf")).with_format("torch")
    batch = train[:4]
    assert batch["spherex"].shape == (4, 102) and str(batch["spherex"].dtype) == "torch.float32"
    with pytest.raises(ValueError, match="not a finished MOSAIC catalog"):
        load_catalog(tmp_path)
    # A missing folder whose name cannot be a Hub id ("name" or "owner/name") is named, not looked up on the Hub.
    for missing in (tmp_path / "gone", "./gone", "data/demo/gone"):
        for read in (load_catalog, read_normalization):
            with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(missing))}: no such catalog folder$"):
                read(missing)


# ----------------------------------------------------------------------------------------- statistics
def test_normalization_is_numpys_over_train_rows_only(built):
    stats = read_normalization(built)
    train = synthetic_chunk(0, 200)
    for name in MODALITY_NAMES:
        x = train[name].astype(np.float64).reshape(200, -1)
        y = MODALITIES[name].to_learning(x)
        y[~np.isfinite(x) | ~np.isfinite(y)] = np.nan  # NaN and inf are missing
        np.testing.assert_allclose(stats[name]["mean"], np.nanmean(y, axis=0), rtol=1e-12, atol=1e-12, err_msg=name)
        expected_std = np.maximum(np.nanstd(y, axis=0), STD_FLOOR)
        np.testing.assert_allclose(stats[name]["std"], expected_std, rtol=1e-9, atol=1e-12, err_msg=name)
        assert np.all(stats[name]["std"] > 0)
    assert stats["sfh"]["std"][0] == STD_FLOOR  # a constant element is floored
    everything = synthetic_chunk(0, 260)
    all_rows = MODALITIES["redshift"].to_learning(everything["redshift"])
    assert not np.isclose(stats["redshift"]["mean"][0], np.nanmean(all_rows))


# ------------------------------------------------------------------------------- sharded and failures
def test_sharded_build_plus_finalize_equals_unsharded(built, tmp_path):
    out = tmp_path / "sharded"
    manifests = [write_catalog(out, synthetic_source, LAYOUT, PROVENANCE, shard_index=k, num_shards=3)
                 for k in (2, 0)]  # out of order, one missing
    assert [m["files"] for m in manifests] == [
        ["data/train-00004-of-00005.parquet", "data/test-00000-of-00002.parquet", "data/test-00001-of-00002.parquet"],
        ["data/train-00000-of-00005.parquet", "data/train-00001-of-00005.parquet"],
    ]
    with pytest.raises(ValueError, match=r"shards \[1\] of 3 have not finished"):
        finalize_catalog(out)
    write_catalog(out, synthetic_source, LAYOUT, PROVENANCE, shard_index=1, num_shards=3)
    finalize_catalog(out)
    assert json.loads((out / "normalization.json").read_text()) == json.loads((built / "normalization.json").read_text())
    for split in ("train", "test"):
        for name in sorted(p.name for p in (built / "data").glob(f"{split}-*")):
            got, expected = (table_to_chunk(pq.read_table(d / "data" / name)) for d in (out, built))
            for column in COLUMN_NAMES:
                np.testing.assert_array_equal(got[column], expected[column], err_msg=f"{name}: {column}")
    assert (out / "README.md").read_text().split("## Columns")[1] == (built / "README.md").read_text().split("## Columns")[1]


def test_a_sharded_build_refuses_a_folder_with_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("a user's notes")
    with pytest.raises(FileExistsError, match="mine holds README.md, not only a sharded build's data/ and shards/"):
        write_catalog(out, synthetic_source, LAYOUT, PROVENANCE, shard_index=0, num_shards=2)
    assert [p.name for p in tmp_path.rglob("*")] == ["mine", "README.md"]
    assert (out / "README.md").read_text() == "a user's notes"


def test_finalize_refuses_mixed_options(tmp_path):
    out = tmp_path / "mixed"
    write_catalog(out, synthetic_source, LAYOUT, PROVENANCE, shard_index=0, num_shards=2)
    other = dict(PROVENANCE, options={"n": 260, "seed": 1})
    write_catalog(out, synthetic_source, LAYOUT, other, shard_index=1, num_shards=2)
    with pytest.raises(ValueError, match="provenance differs"):
        finalize_catalog(out)


def test_interrupted_build_leaves_nothing(tmp_path):
    def failing_source(start, stop):
        yield synthetic_chunk(start, start + 10)
        raise RuntimeError("killed mid-stream")

    out = tmp_path / "catalog"
    with pytest.raises(RuntimeError, match="killed mid-stream"):
        write_catalog(out, failing_source, LAYOUT, PROVENANCE)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        write_catalog(out, failing_source, LAYOUT, PROVENANCE, shard_index=0, num_shards=2)
    assert list(tmp_path.iterdir()) == []


def test_source_with_wrong_row_count_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"gave 44 rows for rows \[0, 45\)"):
        write_catalog(tmp_path / "c", lambda a, b: synthetic_source(a, b - 1), LAYOUT, PROVENANCE)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_and_is_never_read_from_a_stale_cache(tmp_path):
    out, cache = tmp_path / "c", tmp_path / "hf"
    write_catalog(out, synthetic_source, Layout(20, 5), PROVENANCE)
    assert load_catalog(out, split="train", cache_dir=cache)[0]["galaxy_id"] == 0
    with pytest.raises(FileExistsError):
        write_catalog(out, synthetic_source, Layout(20, 5), PROVENANCE)
    shifted = lambda start, stop: synthetic_source(start + 100, stop + 100)  # same sizes, other rows
    write_catalog(out, shifted, Layout(20, 5), PROVENANCE, overwrite=True)
    assert load_catalog(out, split="train", cache_dir=cache)[0]["galaxy_id"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "hf"]


# --------------------------------------------------------------------------------------------- builder
@dataclass(frozen=True)
class SyntheticOptions:
    n: int
    seed: int = 0

    def to_dict(self):
        return asdict(self)


class SyntheticCatalog(MosaicCatalog):
    def catalog_options(self):
        return SyntheticOptions(self.config.n_train + self.config.n_test, **self.config.options)

    def chunk_source(self, options, start, stop):
        return synthetic_source(start, stop)


def test_generator_based_builder_round_trip(tmp_path):
    builder = SyntheticCatalog(cache_dir=str(tmp_path), config_name="tiny")
    builder.download_and_prepare()
    ds = builder.as_dataset()
    assert (ds["train"].num_rows, ds["test"].num_rows) == (512, 128)
    assert ds["test"].features == catalog_features()
    for split, (lo, hi) in {"train": (0, 512), "test": (512, 640)}.items():
        got, expected = as_numpy(ds[split]), synthetic_chunk(lo, hi)
        for name in COLUMN_NAMES:
            assert got[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{split}: {name}")
    # the cache is keyed on the options: another seed is another folder, never a stale reuse
    other = SyntheticCatalog(cache_dir=str(tmp_path), config_name="tiny", options={"seed": 1})
    assert other.hash != builder.hash and other.cache_dir != builder.cache_dir


# ------------------------------------------------------------------------------------------------- CLI
def test_a_build_never_replaces_a_catalog_that_appeared_while_it_ran(tmp_path, caplog):
    """Two builds into one --out without overwrite: the first to finish keeps it, the second fails and leaves it
    whole (it used to swap the first's catalog out and delete it). A build names the staging folders of others."""
    out = tmp_path / "c"

    def racing_source(start, stop):  # another build finishes OUT while this one writes its rows
        if not out.exists():
            write_catalog(out, lambda a, b: synthetic_source(a + 100, b + 100), Layout(20, 5), PROVENANCE)
        yield from synthetic_source(start, stop)

    with caplog.at_level("WARNING", logger="modeling_mosaic.catalog.writer"):
        with pytest.raises(FileExistsError, match=r"appeared while this build ran .* it was kept"):
            write_catalog(out, racing_source, Layout(20, 5), PROVENANCE)
    assert re.search(r"staging folders of other builds of c .*\.c\.build\.\w+\.tmp", caplog.text)
    assert load_catalog(out, split="train")[0]["galaxy_id"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_overwrite_through_a_symbolic_link_replaces_the_catalog_it_points_to(tmp_path):
    target, link = tmp_path / "target", tmp_path / "link"
    write_catalog(target, synthetic_source, Layout(20, 5), PROVENANCE)
    link.symlink_to(target)
    write_catalog(link, lambda a, b: synthetic_source(a + 100, b + 100), Layout(20, 5), PROVENANCE, overwrite=True)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert load_catalog(link, split="train")[0]["galaxy_id"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_a_catalog_json_that_is_not_ours_is_named(built, tmp_path, capsys):
    """Other tools write catalog.json too (STAC): info, load_catalog and finalize name the file."""
    for text, message in (("{}", "not a MOSAIC catalog file (no provenance"), ("[1, 2]", "not a MOSAIC catalog"),
                          ("{oops", "not valid JSON")):
        folder = tmp_path / f"f{len(text)}"
        folder.mkdir()
        (folder / "catalog.json").write_text(text)
        assert cli.main(["info", str(folder)]) == 2
        assert f"{folder / 'catalog.json'}: {message}" in capsys.readouterr().err
        with pytest.raises(ValueError, match="catalog.json: not"):
            load_catalog(folder)
    out = tmp_path / "sharded"
    write_catalog(out, synthetic_source, LAYOUT, PROVENANCE, shard_index=0, num_shards=2)
    manifest = next((out / "shards").glob("shard-*.json"))
    manifest.write_text("{")
    assert cli.main(["finalize", str(out)]) == 2
    assert f"{manifest}: not valid JSON" in capsys.readouterr().err


def test_a_push_to_an_unreachable_hub_is_one_named_error(built):
    """A refused connection is no OSError to the Hub client's HTTP library: it was a traceback."""
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_test", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-m", "modeling_mosaic.catalog.cli", "push", str(built), "--repo", "a/b"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2, done.stderr
    assert f"{built} was not pushed to dataset repo a/b at http://127.0.0.1:9: " in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_info_and_errors(built, capsys):
    assert cli.main(["info", str(built)]) == 0
    out = capsys.readouterr().out
    assert "200 rows" in out and "60 rows" in out and "redshift" in out
    assert cli.main(["finalize", str(built)]) == 2
    assert "already finalized" in capsys.readouterr().err


def test_cli_builds_the_tiny_preset_and_it_loads_back(tmp_path, capsys):
    """Integration with the physics generator: `mosaic-catalog build --config tiny`, then read it back."""
    from modeling_mosaic.catalog.generator import CatalogOptions

    out = tmp_path / "tiny"
    assert cli.main(["build", "--config", "tiny", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "512 rows" in printed and "128 rows" in printed and "galaxies/s" in printed
    ds = load_catalog(out, cache_dir=tmp_path / "hf")
    train, test = as_numpy(ds["train"]), as_numpy(ds["test"])
    np.testing.assert_array_equal(train["galaxy_id"], np.arange(512))
    np.testing.assert_array_equal(test["galaxy_id"], np.arange(512, 640))
    for c in COLUMNS:
        assert train[c.name].dtype == np.dtype(c.dtype)
        assert train[c.name].shape == ((512,) if c.length == 0 else (512, c.length))
    assert np.all((train["redshift"] > 0) & (train["redshift"] <= 3.0))
    stats = read_normalization(out)
    for name in MODALITY_NAMES:
        y = MODALITIES[name].to_learning(train[name]).reshape(512, -1)
        np.testing.assert_allclose(stats[name]["mean"], np.nanmean(y, axis=0), rtol=1e-9, atol=1e-9, err_msg=name)
    catalog = json.loads((out / "catalog.json").read_text())
    assert catalog["provenance"]["options"] == CatalogOptions(n=640).to_dict()
    assert MosaicCatalog(cache_dir=str(tmp_path / "b"), config_name="tiny").hash == catalog_fingerprint(
        CatalogOptions(n=640).to_dict(), 512
    )
