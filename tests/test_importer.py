"""Importing users' catalogs: canonical Parquet, Diffsky/OpenCosmo HDF5, missing modalities, clear errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_catalog_packaging import as_numpy, synthetic_chunk

from modeling_mosaic.catalog import cli
from modeling_mosaic.catalog.features import chunk_to_table
from modeling_mosaic.catalog.importer import import_catalog, read_catalog
from modeling_mosaic.catalog.io import load_catalog, read_normalization
from modeling_mosaic.catalog.schema import COLUMN_NAMES
from modeling_mosaic.modalities import AB_ZERO_POINT_NJY, LSST_BANDS, MODALITIES

N = 60


def write_diffsky_hdf5(path, n=N, with_header=True, **overrides):
    """An OpenCosmo-like Diffsky file: a `data/` group of 1-D columns and a `header/` group."""
    rng = np.random.default_rng(5)
    columns = {
        "redshift_true": rng.uniform(0.05, 2.5, n),
        "redshift_obs": rng.uniform(0.05, 2.5, n),
        "logmp_obs": rng.uniform(11.0, 14.0, n),
        "logsm_obs": rng.uniform(8.0, 11.5, n),
        "mc_sfh_type": rng.integers(0, 3, n).astype(float),
        "av": rng.uniform(0.0, 1.0, n),
        "lgmcrit": rng.uniform(11.0, 13.0, n),  # a Diffstar parameter with no counterpart: ignored
        **{f"lsst_{b}": rng.uniform(19.0, 27.0, n) for b in LSST_BANDS},
    }
    columns.update(overrides)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, values in columns.items():
            data.create_dataset(name, data=values)
        if with_header:
            header = f.create_group("header")
            header.attrs["z_range"] = [0.0, 3.0]
            header.create_group("cosmology").attrs["Om0"] = 0.30964
    return columns


def test_canonical_parquet_round_trip(tmp_path):
    chunk = synthetic_chunk(0, N)
    src = tmp_path / "mine.parquet"
    pq.write_table(chunk_to_table(chunk), src)
    catalog = import_catalog([src], tmp_path / "out", test_fraction=0.25, seed=3)
    assert (catalog["splits"]["train"]["rows"], catalog["splits"]["test"]["rows"]) == (45, 15)
    ds = load_catalog(tmp_path / "out", cache_dir=tmp_path / "hf")
    train, test = as_numpy(ds["train"]), as_numpy(ds["test"])
    got = {name: np.concatenate([train[name], test[name]]) for name in COLUMN_NAMES}
    order = np.argsort(got["galaxy_id"])
    for name in COLUMN_NAMES:  # +-inf is stored as the missing value NaN
        expected = chunk[name]
        if expected.dtype.kind == "f":
            expected = np.where(np.isinf(expected), np.nan, expected)
        np.testing.assert_array_equal(got[name][order], expected, err_msg=name)
        assert got[name].dtype == chunk[name].dtype
    assert np.all(np.diff(train["galaxy_id"]) > 0) and np.all(np.diff(test["galaxy_id"]) > 0)  # input order kept
    assert catalog["provenance"]["missing_modalities"] == []


def test_an_import_never_replaces_its_own_input_or_a_folder_that_is_not_a_catalog(tmp_path):
    src = tmp_path / "mine.parquet"
    pq.write_table(chunk_to_table(synthetic_chunk(0, N)), src)
    import_catalog([src], tmp_path / "out")
    inside = tmp_path / "out" / "mine.parquet"
    inside.write_bytes(src.read_bytes())
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("a user's file")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="mine.parquet: inside --out .*out, which the import writes"):
        import_catalog([inside], tmp_path / "out", overwrite=True)
    with pytest.raises(ValueError, match="mine.parquet: inside --out .*mine.parquet"):
        import_catalog([src], src, overwrite=True)
    for out in (tmp_path / "project", tmp_path / "project" / "notes.txt"):
        with pytest.raises(FileExistsError, match="is not a finished catalog .*overwrite replaces only a catalog"):
            import_catalog([src], out, overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    import_catalog([src], tmp_path / "out", overwrite=True)  # a catalog is replaced
    assert not inside.exists()


def test_diffsky_hdf5_maps_magnitudes_and_marks_missing(tmp_path):
    src = tmp_path / "lc_cores-487.0.diffsky_gals.hdf5"
    given = write_diffsky_hdf5(src)
    columns, files = read_catalog([src])
    np.testing.assert_array_equal(columns["redshift"], given["redshift_true"].astype(np.float32))
    np.testing.assert_array_equal(columns["log_halo_mass"], given["logmp_obs"].astype(np.float32))
    np.testing.assert_array_equal(columns["log_stellar_mass"], given["logsm_obs"].astype(np.float32))
    np.testing.assert_array_equal(columns["quenched"], (given["mc_sfh_type"] == 0).astype(np.int8))
    np.testing.assert_array_equal(columns["galaxy_id"], np.arange(N))
    mags = np.column_stack([given[f"lsst_{b}"] for b in LSST_BANDS])
    np.testing.assert_allclose(columns["lsst_flux"], 3631e9 * 10 ** (-0.4 * mags), rtol=1e-6)
    np.testing.assert_array_equal(columns["lsst_flux_err"], 0.0)
    bright = columns["lsst_flux"] > 100 * np.asarray(MODALITIES["lsst"].softening_njy)  # asinh error ~ 1e-4 mag
    assert bright.sum() > 100
    assert np.max(np.abs(columns["lsst"] - mags)[bright]) < 1e-3  # asinh = AB magnitude for bright sources
    assert np.all(np.isfinite(columns["lsst"]))
    for name in ("sfh", "sed", "spherex"):
        assert columns[name].shape == (N, MODALITIES[name].length) and np.all(np.isnan(columns[name]))
    assert files[0].header == {"z_range": [0.0, 3.0], "cosmology/Om0": 0.30964}

    catalog = import_catalog([src], tmp_path / "out")
    assert catalog["provenance"]["missing_modalities"] == ["sfh", "sed", "spherex"]
    assert catalog["provenance"]["inputs"][0]["columns"]["redshift"] == "redshift_true"
    stats = read_normalization(tmp_path / "out")
    assert np.all(np.isfinite(stats["sed"]["mean"])) and np.all(stats["sed"]["std"] == 1.0)  # never seen: neutral
    test = as_numpy(load_catalog(tmp_path / "out", split="test", cache_dir=tmp_path / "hf"))
    assert test["sed"].shape == (6, 256) and np.all(np.isnan(test["sed"]))


def test_redshift_obs_is_the_fallback_and_nan_redshift_is_missing(tmp_path):
    src = tmp_path / "obs.h5"
    z = np.linspace(0.1, 2.0, N)
    z[3] = np.nan
    write_diffsky_hdf5(src, redshift_obs=z)
    with h5py.File(src, "a") as f:
        del f["data/redshift_true"]
    columns, files = read_catalog([src])
    np.testing.assert_array_equal(columns["redshift"], z.astype(np.float32))
    assert files[0].sources["redshift"] == "redshift_obs"


def test_infinite_values_are_stored_as_missing(tmp_path):
    """+-inf means "missing" like NaN: the catalog holds NaN there (also in what derives from an infinite flux),
    and the finite values are kept exactly."""
    chunk = synthetic_chunk(0, N)
    chunk["redshift"][2], chunk["log_stellar_mass"][4] = np.inf, -np.inf
    chunk["sed"][5, 10] = np.inf
    table = chunk_to_table(chunk).drop_columns(["lsst"])  # the asinh magnitudes derive from the fluxes
    flux = np.stack(table.column("lsst_flux").to_numpy(zero_copy_only=False))
    flux[7, 1] = np.inf
    table = table.set_column(table.schema.get_field_index("lsst_flux"), "lsst_flux",
                             pa.array(list(flux), table.schema.field("lsst_flux").type))
    pq.write_table(table, tmp_path / "inf.parquet")
    columns, _ = read_catalog([tmp_path / "inf.parquet"])
    for name, where in (("redshift", 2), ("log_stellar_mass", 4), ("sed", (5, 10)), ("lsst_flux", (7, 1)),
                        ("lsst", (7, 1))):
        assert np.isnan(columns[name][where]), name
    assert not any(np.isinf(v).any() for v in columns.values() if v.dtype.kind == "f")
    finite = np.isfinite(chunk["sed"])
    np.testing.assert_array_equal(columns["sed"][finite], chunk["sed"][finite])
    assert np.isfinite(columns["lsst"][np.isfinite(flux)]).all()


def test_values_below_the_physical_minimum_name_file_column_and_row(tmp_path):
    """A negative SFR (or redshift, or luminosity) is refused at import, naming the file, the user's column (an
    alias: redshift_obs) and the first row, before anything is written; NaN stays missing."""
    src = tmp_path / "negative.parquet"
    sfh = np.ones((3, 100))
    sfh[1, 50] = -0.5
    pq.write_table(pa.table({"redshift": [0.1, np.nan, 0.3], "sfh": pa.array(list(sfh))}), src)
    with pytest.raises(ValueError, match=r"negative\.parquet: column 'sfh' has 1 value\(s\) below the physical "
                                         r"minimum 0 of sfh \(first in row 1: -0.5\)"):
        read_catalog([src])
    h5 = tmp_path / "blue.h5"
    with h5py.File(h5, "w") as f:
        f["redshift_obs"] = np.array([0.2, -0.001, -0.002, np.nan])
    with pytest.raises(ValueError, match=r"blue\.h5: column 'redshift_obs' has 2 value\(s\) .* of redshift"):
        read_catalog([h5])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="below the physical minimum"):
        import_catalog([src], out)
    assert not out.exists()


def test_error_wrong_vector_length_names_file_and_column(tmp_path):
    src = tmp_path / "short_sed.parquet"
    table = pa.table({"redshift": np.ones(3), "sed": pa.array([[1.0] * 200] * 3)})
    pq.write_table(table, src)
    with pytest.raises(ValueError, match=r"short_sed\.parquet: column 'sed' has vectors of length 200.*256"):
        read_catalog([src])
    h5 = tmp_path / "short_sfh.h5"
    with h5py.File(h5, "w") as f:
        f["redshift"] = np.ones(3)
        f["sfh"] = np.ones((3, 99))
    with pytest.raises(ValueError, match=r"short_sfh\.h5: column 'sfh' has vectors of length 99"):
        read_catalog([h5])


def test_error_nan_in_required_galaxy_id(tmp_path):
    src = tmp_path / "ids.h5"
    write_diffsky_hdf5(src, galaxy_id=np.where(np.arange(N) == 7, np.nan, np.arange(N)))
    with pytest.raises(ValueError, match=r"ids\.h5: required column 'galaxy_id' has nan in row 7"):
        read_catalog([src])
    dup = tmp_path / "dup.h5"
    write_diffsky_hdf5(dup, galaxy_id=np.zeros(N))
    with pytest.raises(ValueError, match="dup.h5: required column 'galaxy_id' repeats id 0"):
        read_catalog([dup])


@pytest.mark.parametrize("suffix", [".hdf5", ".parquet"])
def test_error_truncated_file_names_it(tmp_path, suffix):
    src = tmp_path / f"cut{suffix}"
    if suffix == ".hdf5":
        write_diffsky_hdf5(src, n=5000)
    else:
        pq.write_table(chunk_to_table(synthetic_chunk(0, 50)), src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cut\{suffix}.*truncated or corrupt"):
        read_catalog([src])


def test_error_non_numeric_or_single_value_columns_name_file_and_column(tmp_path):
    write_diffsky_hdf5(tmp_path / "text.hdf5", redshift_true=np.array([b"0.5"] * N))
    with pytest.raises(ValueError, match="text.hdf5: column 'redshift_true' must be numeric, got \\|S3"):
        read_catalog([tmp_path / "text.hdf5"])
    write_diffsky_hdf5(tmp_path / "single.hdf5", logsm_obs=np.float64(10.0))
    with pytest.raises(ValueError, match="single.hdf5: column 'logsm_obs' holds one value; expected one per galaxy"):
        read_catalog([tmp_path / "single.hdf5"])
    table = chunk_to_table(synthetic_chunk(0, N))
    words = pa.array([["a"] * 6] * N, pa.list_(pa.string()))
    pq.write_table(table.set_column(table.column_names.index("lsst"), "lsst", words), tmp_path / "words.parquet")
    with pytest.raises(ValueError, match="words.parquet: column 'lsst' must hold numbers, got lists of string"):
        read_catalog([tmp_path / "words.parquet"])


def test_galaxy_ids_beyond_float64_precision_are_kept_exactly(tmp_path):
    chunk = synthetic_chunk(0, N)
    chunk["galaxy_id"] = 2**62 + np.arange(N)  # 2**62 + 1 is not a float64
    pq.write_table(chunk_to_table(chunk), tmp_path / "big_ids.parquet")
    columns, _ = read_catalog([tmp_path / "big_ids.parquet"])
    np.testing.assert_array_equal(columns["galaxy_id"], chunk["galaxy_id"])


def test_error_no_modality_and_unknown_extension(tmp_path):
    src = tmp_path / "params_only.h5"
    with h5py.File(src, "w") as f:
        f["data/lgmcrit"] = np.ones(4)
        f["data/dust_av"] = np.ones(4)
    with pytest.raises(ValueError, match=r"params_only\.h5: no finite value in any modality column"):
        read_catalog([src])
    with pytest.raises(ValueError, match=r"cat\.csv: unknown catalog format '\.csv'"):
        read_catalog([tmp_path / "cat.csv"])


def test_cli_import_then_info(tmp_path, capsys):
    src = tmp_path / "lc.hdf5"
    write_diffsky_hdf5(src)
    out = tmp_path / "imported"
    assert cli.main(["import", str(src), "--out", str(out), "--test-fraction", "0.2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "missing modalities (all NaN): sfh, sed, spherex" in printed and "48 rows" in printed
    assert json.loads((out / "catalog.json").read_text())["splits"]["test"]["rows"] == 12
    assert cli.main(["import", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "nope.h5: no such file" in capsys.readouterr().err


def test_ambiguous_or_unrepresentable_inputs_name_file_and_column(tmp_path):
    """A repeated Parquet column, an id past int64, a finite value past float32 (the cast made it NaN, silently;
    a Diffsky magnitude of -99 gave a NaN flux beside a finite magnitude), a Diffsky column of the wrong shape, and
    one file given twice (its galaxies imported twice, into both splits): each a named error."""
    dup = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([1, 2]), pa.array([0.1, 0.2]), pa.array([0.3, 0.4])],
                                        names=["galaxy_id", "redshift", "redshift"]), dup)
    with pytest.raises(ValueError, match=r"dup\.parquet: column 'redshift' appears more than once"):
        read_catalog([dup])
    wide = tmp_path / "wide_ids.parquet"
    pq.write_table(pa.table({"galaxy_id": pa.array([2**63, 2**63 + 1], pa.uint64()), "redshift": [0.1, 0.2]}), wide)
    with pytest.raises(ValueError, match=r"wide_ids\.parquet: required column 'galaxy_id' has 9223372036854775808 in "
                                         r"row 0, beyond int64's range"):
        read_catalog([wide])
    pq.write_table(pa.table({"galaxy_id": [1.0, 1e300], "redshift": [0.1, 0.2]}), wide)
    with pytest.raises(ValueError, match=r"'galaxy_id' has 1e\+300 in row 1, beyond int64's range"):
        read_catalog([wide])
    huge = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"redshift": [0.1, 1e39], "logmp_obs": [12.0, 12.0]}), huge)
    with pytest.raises(ValueError, match=r"huge\.parquet: column 'redshift' gives redshift 1e\+39 in row 1, beyond "
                                         r"float32's range"):
        read_catalog([huge])
    sentinel = tmp_path / "sentinel.h5"
    lsst_z = np.full(N, 22.0)
    lsst_z[7] = -99.0
    write_diffsky_hdf5(sentinel, lsst_z=lsst_z)
    with pytest.raises(ValueError, match=r"sentinel\.h5: column 'lsst_u,.*,lsst_y' gives lsst_flux_true .* in row 7"):
        read_catalog([sentinel])
    for name, shape in (("lsst_u", (N, 2)), ("mc_sfh_type", (N, 2))):
        path = tmp_path / f"shape_{name}.h5"
        write_diffsky_hdf5(path, **{name: np.zeros(shape)})
        with pytest.raises(ValueError, match=rf"shape_{name}\.h5: column '{name}' has shape \({N}, 2\), expected"):
            read_catalog([path])
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"redshift": [0.1, 0.2]}), plain)
    with pytest.raises(ValueError, match=r"plain\.parquet: given more than once"):
        read_catalog([plain, tmp_path / "." / "plain.parquet"])


def test_a_file_s_own_observed_fluxes_do_not_get_the_zero_errors_of_noise_free_magnitudes(tmp_path):
    """lsst_flux_err = 0 says the observed fluxes are the noise-free ones: true where they come from Diffsky's
    magnitudes, not where the file brings its own noisy lsst_flux (those errors are unknown: NaN)."""
    src = tmp_path / "both.h5"
    mags = write_diffsky_hdf5(src)
    noisy = AB_ZERO_POINT_NJY * 10 ** (-0.4 * np.column_stack([mags[f"lsst_{b}"] for b in LSST_BANDS])) * 1.05
    with h5py.File(src, "a") as f:
        f["data/lsst_flux"] = noisy
    columns, _ = read_catalog([src])
    np.testing.assert_allclose(columns["lsst_flux"], noisy, rtol=1e-6)
    assert np.isnan(columns["lsst_flux_err"]).all()
    alone = tmp_path / "alone.h5"
    write_diffsky_hdf5(alone)
    columns, _ = read_catalog([alone])
    assert (columns["lsst_flux_err"] == 0).all()
    np.testing.assert_array_equal(columns["lsst_flux"], columns["lsst_flux_true"])
