"""The evaluation end to end on a tiny fake catalog (Parquet, the schema's columns) and a fake model whose
errors are known, so every expected MAE, normalised MAE and gain is known in advance."""

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_mosaic.catalog.features import chunk_to_table
from modeling_mosaic.catalog.schema import COLUMNS
from modeling_mosaic.evaluation import cli
from modeling_mosaic.evaluation.baselines import (
    GAIN_TASKS,
    TASKS,
    DenseNetwork,
    condition_features,
    sfh_convention_ablation,
    sfh_conventions,
)
from modeling_mosaic.evaluation.conditions import CONDITIONS, SFH_LATE, Condition, get_condition
from modeling_mosaic.evaluation.report import read_split
from modeling_mosaic.modalities import MODALITIES, MODALITY_NAMES, SFH_TIME_GYR, asinh_magnitude

N_TRAIN, N_TEST = 240, 120
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_catalog(n: int, seed: int) -> dict:
    """Every schema column, with physically ordered values: stellar mass sets the SFH amplitude and the
    magnitudes, redshift the epoch (SFR = 0 after it) and a colour."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 2.0, n)
    mass = rng.normal(10.0, 0.6, n)
    epoch = 13.8 / (1.0 + z) ** 1.2
    t = np.asarray(SFH_TIME_GYR)
    sfh = 10 ** (mass[:, None] - 9.5) * np.exp(-((t - rng.uniform(2, 8, n)[:, None]) / 3.0) ** 2)
    sfh[t[None, :] > epoch[:, None]] = 0.0
    chunk = {}
    for c in COLUMNS:
        shape = (n,) if c.length == 0 else (n, c.length)
        chunk[c.name] = rng.normal(0.0, 1.0, shape).astype(c.dtype)
    chunk.update(
        galaxy_id=np.arange(n) + 10_000 * seed,
        redshift=z,
        log_stellar_mass=mass,
        log_halo_mass=mass + 1.8 + rng.normal(0, 0.2, n),
        sfh=sfh,
        sed=10 ** (28.0 + (mass - 10.0)[:, None] + rng.normal(0, 0.1, (n, MODALITIES["sed"].length))),
        lsst=24.0 - 2.5 * (mass - 10.0)[:, None] + np.linspace(0, 1, 6) * z[:, None] + rng.normal(0, 0.05, (n, 6)),
        spherex=20.0 - 2.5 * (mass - 10.0)[:, None] + rng.normal(0, 0.2, (n, 102)),
        cosmic_time_gyr=epoch,
        quenched=(rng.uniform(size=n) < 0.3).astype(np.int8),
    )
    return chunk


def write_fake_dataset(root) -> dict:
    (root / "data").mkdir(parents=True)
    splits = {"train": fake_catalog(N_TRAIN, 1), "test": fake_catalog(N_TEST, 2)}
    for split, chunk in splits.items():
        pq.write_table(chunk_to_table(chunk), root / "data" / f"{split}-00000-of-00001.parquet")
    return splits


# The fake model's errors. Scalars get +-error alternating by galaxy (so |error| is exact but the mean
# error is ~0); vectors get +error on every element the condition hides and +100 on the elements it shows
# (which must not be scored).
REDSHIFT_ERROR = {"with_spherex": 0.05, "without": 0.1}
MASS_ERROR = {"late_sfh": 0.037, "early_sfh": 0.1, "no_sfh": 0.2}
CONSTANT_ERROR = {"log_halo_mass": 0.3, "sfh": 0.5, "sed": 1e27, "lsst": 0.25, "spherex": 0.4}


class FakeModel:
    """predict/embed with the contract of MosaicModel: returns truth + the known errors above."""

    def __init__(self, truth):
        self.truth = truth
        self.config = SimpleNamespace(modalities=list(MODALITY_NAMES))
        self.predict_calls = []

    def _scalar_error(self, inputs, name):
        sfh = inputs.get("sfh")
        if name == "redshift":
            return REDSHIFT_ERROR["with_spherex" if "spherex" in inputs else "without"]
        if name == "log_stellar_mass" and sfh is not None:
            return MASS_ERROR["late_sfh" if np.isfinite(sfh[:, -1]).all() else "early_sfh"]
        if name == "log_stellar_mass":
            return MASS_ERROR["no_sfh"]
        return CONSTANT_ERROR[name]

    def predict(self, inputs, targets=None, batch_size=4096):
        self.predict_calls.append((sorted(inputs), list(targets)))
        n = len(next(iter(inputs.values())))
        out = {}
        for name in targets:
            truth = np.asarray(self.truth[name], dtype=np.float64)
            assert len(truth) == n
            if MODALITIES[name].is_scalar:
                out[name] = truth + self._scalar_error(inputs, name) * (-1.0) ** np.arange(n)
            else:
                given = np.isfinite(inputs[name]) if name in inputs else np.zeros(truth.shape, bool)
                out[name] = truth + np.where(given, 100.0, CONSTANT_ERROR[name])
        return out

    def embed(self, inputs, batch_size=4096):
        n = len(next(iter(inputs.values())))
        rng = np.random.default_rng(n)
        z, mass = (np.asarray(self.truth[k], float)[:n] for k in ("redshift", "log_stellar_mass"))
        return {"all": np.column_stack([z, mass, rng.normal(size=(n, 6))])}


class ZeroModel:
    """Predicts 0 for every target: its MAE is the mean |truth| of the rows it was given."""

    config = SimpleNamespace(modalities=list(MODALITY_NAMES))

    def predict(self, inputs, targets=None, batch_size=4096):
        n = len(next(iter(inputs.values())))
        return {t: np.zeros(n) if MODALITIES[t].is_scalar else np.zeros((n, MODALITIES[t].length)) for t in targets}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    return root, write_fake_dataset(root)


@pytest.fixture(scope="module")
def evaluation(dataset, tmp_path_factory):
    """One full run through the CLI (baselines, ablation and figures), the model loader faked."""
    root, splits = dataset
    out = tmp_path_factory.mktemp("out")
    model = FakeModel({k: np.asarray(v) for k, v in splits["test"].items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": model)
        assert cli.main(["--model", "fake", "--data", str(root), "--out", str(out), "--max-train", "200"]) == 0
    return out, json.loads((out / "metrics.json").read_text()), splits["test"], model


# ------------------------------------------------------------------------------------------ conditions
def test_sfh_windows_split_the_registry_grid_at_10_gyr():
    t = np.asarray(SFH_TIME_GYR)
    assert SFH_LATE.shape == (MODALITIES["sfh"].length,)
    assert t[SFH_LATE].min() >= 10.0 and t[~SFH_LATE].max() < 10.0


def test_conditions_inputs_targets_and_score_masks(dataset):
    _, splits = dataset
    test = splits["test"]
    late, early = get_condition("lsst+sfh_late"), get_condition("lsst+sfh_early")
    inputs = late.inputs(test)
    assert sorted(inputs) == ["lsst", "sfh"]
    assert np.isnan(inputs["sfh"][:, ~SFH_LATE]).all()
    np.testing.assert_array_equal(inputs["sfh"][:, SFH_LATE], test["sfh"][:, SFH_LATE].astype(np.float32))
    assert np.isnan(early.inputs(test)["sfh"][:, SFH_LATE]).all()
    np.testing.assert_array_equal(late.score_mask("sfh"), ~SFH_LATE)
    assert late.score_mask("redshift") is None
    for condition in CONDITIONS:
        shown = set(condition.given)
        assert set(condition.targets()) == set(MODALITY_NAMES) - shown
    assert "sfh" in late.targets() and "lsst" not in late.targets()
    assert get_condition("stellar_mass").targets() == [n for n in MODALITY_NAMES if n != "log_stellar_mass"]
    with pytest.raises(ValueError, match="lsst\\+spherex"):
        get_condition("spherex_only")


def test_condition_needs_its_columns_and_valid_masks():
    with pytest.raises(ValueError, match="'spherex'"):
        get_condition("lsst+spherex").inputs({"lsst": np.zeros((2, 6))})
    with pytest.raises(ValueError, match="shape \\(100,\\)"):
        Condition("bad", "an SFH mask of the wrong length", given=("lsst",), partial={"sfh": np.ones(10, bool)})
    with pytest.raises(ValueError, match="unknown modality"):
        Condition("bad", "an unknown modality", given=("gaia",))


def noisy_photometry_columns(n: int, seed: int) -> dict:
    """Fluxes, true fluxes and flux errors of both photometric modalities: the odd rows measured with noise, the
    even rows noise-free (measured = true), as a catalog built with or without noise stores them."""
    rng = np.random.default_rng(seed)
    columns = {}
    for name in ("lsst", "spherex"):
        length = MODALITIES[name].length
        true = rng.uniform(10.0, 2000.0, (n, length))
        error = rng.uniform(5.0, 50.0, (n, length))
        noisy = (np.arange(n) % 2 == 1)[:, None]
        columns.update({f"{name}_flux_true": true.astype(np.float32), f"{name}_flux_err": error.astype(np.float32),
                        f"{name}_flux": np.where(noisy, true + error * rng.normal(size=true.shape), true)
                        .astype(np.float32)})
        columns[name] = asinh_magnitude(columns[f"{name}_flux"], MODALITIES[name].softening_njy).astype(np.float32)
    return columns


def test_condition_errors_are_the_asinh_magnitude_errors_of_the_measured_photometry():
    """The errors a condition hands an error-aware model: the asinh-magnitude error of each shown band at its
    measured flux, zero where the catalog applied no noise (measured = true flux), none for what is not shown;
    a catalog without the flux columns is refused by name."""
    columns = noisy_photometry_columns(6, 0)
    errors = get_condition("lsst+spherex").errors(columns)
    assert sorted(errors) == ["lsst", "spherex"]
    for name, error in errors.items():
        softening = np.asarray(MODALITIES[name].softening_njy, dtype=np.float64)
        flux, flux_err = (columns[f"{name}_{k}"].astype(np.float64) for k in ("flux", "flux_err"))
        expected = 2.5 / np.log(10.0) * flux_err / np.sqrt(flux**2 + 4.0 * softening**2)
        np.testing.assert_allclose(error[1::2], expected[1::2], rtol=1e-6)
        assert np.all(error[0::2] == 0.0) and np.all(error[1::2] > 0.0)
    assert sorted(get_condition("lsst+sfh_late").errors(columns)) == ["lsst"]
    assert get_condition("stellar_mass").errors(columns) == {}
    with pytest.raises(ValueError, match="lsst_flux_err"):
        get_condition("lsst").errors({k: v for k, v in columns.items() if k != "lsst_flux_err"})


def test_an_error_aware_model_is_evaluated_and_calibrated_with_its_errors():
    """A model trained with error inputs is scored on predictions made with the test photometry's errors, and
    calibrated with those of the held-out photometry; a model without them is given none."""
    import torch

    from modeling_mosaic import MosaicConfig, MosaicModel
    from modeling_mosaic.evaluation.conditions import calibrate_for_conditions
    from modeling_mosaic.evaluation.report import evaluate_model

    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    model = MosaicModel(MosaicConfig(**tiny, head_type="gaussian", error_inputs=True)).eval()
    test = {**fake_catalog(64, 3), **noisy_photometry_columns(64, 3)}
    condition = get_condition("lsst+spherex")
    _, predictions, _, _ = evaluate_model(model, test, [condition], batch_size=32)
    inputs, errors = condition.inputs(test), condition.errors(test)
    with_errors = model.predict(inputs, targets=["redshift"], errors=errors, return_uncertainty=True, batch_size=32)
    without = model.predict(inputs, targets=["redshift"], return_uncertainty=True, batch_size=32)
    # (the evaluation asks for every hidden modality at once: the same posteriors, rounded differently)
    np.testing.assert_allclose(predictions["lsst+spherex"]["redshift"], with_errors["redshift_p50"], rtol=1e-6)
    assert np.abs(with_errors["redshift_p50"] - without["redshift_p50"]).max() > 1e-3  # the errors matter

    calls = []
    model.calibrate = lambda inputs, truth, errors=None: calls.append(errors) or {}
    calibrate_for_conditions(model, test, [condition, get_condition("stellar_mass")])
    assert sorted(calls[0]) == ["lsst", "spherex"] and calls[1] == {}
    np.testing.assert_array_equal(calls[0]["spherex"], errors["spherex"])
    model.config.error_inputs = False
    calibrate_for_conditions(model, test, [condition])
    assert calls[2] is None


def test_redrawn_photometry_follows_the_noise_model_at_each_galaxys_depth():
    """`redraw_photometry` (`mosaic-evaluate --depth-scale`): at depth factor 0 the noise-free magnitudes
    exactly; at a fixed factor s the errors are s times the catalog's and the standardised residuals are
    N(0, 1); a galaxy's draw depends on (seed, galaxy id) alone, and on a stream of its own, not training's."""
    from modeling_mosaic.noise import NOISE_STREAM, noisy_fluxes, redraw_photometry

    n = 4000
    test = {**noisy_photometry_columns(n, 5), "galaxy_id": np.arange(n) * 7 + 3}
    names = ("lsst", "spherex")
    exact = redraw_photometry(test, names, (0.0, 0.0), seed=0)
    for name in names:
        np.testing.assert_array_equal(exact[name], asinh_magnitude(
            test[f"{name}_flux_true"].astype(np.float64), MODALITIES[name].softening_njy).astype(np.float32))
        assert np.all(exact[f"{name}_flux_err"] == 0.0)
    fixed = redraw_photometry(test, names, (1.5, 1.5), seed=0)
    assert np.all(fixed["depth_scale"] == 1.5)
    for name in names:
        np.testing.assert_array_equal(fixed[f"{name}_flux_err"], 1.5 * test[f"{name}_flux_err"].astype(np.float64))
        residual = ((fixed[f"{name}_flux"] - test[f"{name}_flux_true"]) / fixed[f"{name}_flux_err"]).ravel()
        assert abs(residual.mean()) < 5 / np.sqrt(residual.size)
        assert abs(residual.std() - 1.0) < 5 / np.sqrt(2 * residual.size)
        assert not np.array_equal(fixed[name], test[name])  # the stored realisation is replaced
    varied = redraw_photometry(test, names, (0.5, 2.0), seed=0)
    assert 0.5 <= varied["depth_scale"].min() < 0.55 and 1.95 < varied["depth_scale"].max() <= 2.0
    reversed_rows = redraw_photometry({k: v[::-1] for k, v in test.items()}, names, (0.5, 2.0), seed=0)
    for key in ("depth_scale", "lsst", "spherex_flux"):
        np.testing.assert_array_equal(reversed_rows[key], varied[key][::-1])
    assert not np.array_equal(redraw_photometry(test, names, (0.5, 2.0), seed=1)["lsst"], varied["lsst"])
    _, training = noisy_fluxes(test, ["lsst"], (0.5, 2.0), 0, 0, test["galaxy_id"], NOISE_STREAM)
    assert not np.array_equal(training["lsst"][0], varied["lsst_flux"])


def test_depth_scale_scores_each_depth_bin_and_refuses_a_bad_range(dataset, tmp_path):
    """`--depth-scale`: the test rows observed afresh and, under every condition that shows photometry, the MAE
    in bins of the depth factor that partition the test rows (the fake model's errors are known exactly)."""
    root, splits = dataset
    model = FakeModel({k: np.asarray(v) for k, v in splits["test"].items()})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": model)
        cli.main(["--model", "fake", "--data", str(root), "--out", str(tmp_path), "--no-baselines", "--no-figures",
                  "--no-ablation", "--depth-scale", "0.5", "2"])
        with pytest.raises(SystemExit, match="--depth-scale"):
            cli.main(["--model", "fake", "--data", str(root), "--out", str(tmp_path / "bad"),
                      "--depth-scale", "2", "1"])
    depth = json.loads((tmp_path / "metrics.json").read_text())["depth_scale"]
    assert depth["range"] == [0.5, 2.0] and depth["seed"] == 0
    assert sorted(depth["by_condition"]) == ["lsst", "lsst+sfh_early", "lsst+sfh_late", "lsst+spherex"]
    expected = {"lsst": (REDSHIFT_ERROR["without"], MASS_ERROR["no_sfh"]),
                "lsst+spherex": (REDSHIFT_ERROR["with_spherex"], MASS_ERROR["no_sfh"]),
                "lsst+sfh_late": (REDSHIFT_ERROR["without"], MASS_ERROR["late_sfh"])}
    for condition, (redshift, mass) in expected.items():
        bins = depth["by_condition"][condition]
        assert [b["range"] for b in bins] == [[0.5, 1.0], [1.0, 1.5], [1.5, 2.0]]
        assert sum(b["n"] for b in bins) == N_TEST and all(b["n"] > 0 for b in bins)
        for b in bins:
            # (predictions are scored as float32)
            assert b["redshift_mae"] == pytest.approx(redshift, rel=1e-5)
            assert b["log_stellar_mass_mae"] == pytest.approx(mass, rel=1e-5)
    assert "## Scored at per-galaxy depths" in (tmp_path / "REPORT.md").read_text()
    assert not (tmp_path / "bad").exists()


def test_baseline_features_are_the_learned_space_of_the_given_elements(dataset):
    test = dataset[1]["test"]
    X = condition_features(get_condition("lsst+sfh_early"), test)
    n_early = int((~SFH_LATE).sum())
    assert X.shape == (N_TEST, n_early + 6)  # registry order: sfh before lsst
    early_sfr = test["sfh"][:, ~SFH_LATE].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(X[:, :n_early], np.log10(early_sfr + 1e-3), rtol=1e-12)
    np.testing.assert_allclose(X[:, n_early:], test["lsst"].astype(np.float32))


# ------------------------------------------------------------------------------------------- reading
def test_read_split_reads_vectors_and_turns_null_rows_into_nan(tmp_path):
    (tmp_path / "data").mkdir()
    table = pa.table({"redshift": [0.1, None], "lsst": pa.array([[1.0] * 6, None], pa.list_(pa.float32(), 6))})
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    cols = read_split(tmp_path, "test", ["redshift", "lsst"])
    assert cols["lsst"].shape == (2, 6)
    np.testing.assert_array_equal(cols["lsst"][0], np.ones(6))
    assert np.isnan(cols["lsst"][1]).all() and np.isnan(cols["redshift"][1])
    with pytest.raises(ValueError, match="sed"):
        read_split(tmp_path, "test", ["sed"])
    with pytest.raises(FileNotFoundError, match="train"):
        read_split(tmp_path, "train", ["redshift"])


# ---------------------------------------------------------------------------------------- end to end
def test_metrics_json_has_the_contract_shape(evaluation):
    _, metrics, _, _ = evaluation
    assert metrics["n_test"] == N_TEST
    assert list(metrics["conditions"]) == [c.name for c in CONDITIONS]
    for condition in CONDITIONS:
        for name in condition.targets():
            m = metrics["conditions"][condition.name][name]
            for key in ("mae", "nmae_median", "nmae_p16", "nmae_p84"):
                assert isinstance(m[key], float)
    for condition in ("lsst", "lsst+spherex", "stellar_mass"):
        assert {"bias", "sigma_iqr", "sigma_nmad", "outlier_rate"} <= set(metrics["conditions"][condition]["redshift"])
    assert set(metrics["headline"]) == {"redshift_gain_spherex", "stellar_mass_gain_late_vs_early_sfh"}
    assert isinstance(metrics["baselines"], dict)


def test_gold_sample_photoz_is_scored_on_the_galaxies_brighter_than_i_25_3(evaluation):
    """Conditions that show LSST also score redshift on observed i < 25.3 alone: the same metrics as on the whole
    split, recomputed here on those rows from the fake model's known predictions; none without LSST."""
    from modeling_mosaic.evaluation.metrics.functions import photoz_metrics

    _, metrics, test, _ = evaluation
    i_mag = np.asarray(test["lsst"], dtype=np.float64)[:, 3]
    gold = i_mag < 25.3
    assert 0 < gold.sum() < N_TEST  # the fake catalog straddles the limit
    truth = np.asarray(test["redshift"], dtype=np.float64)
    for condition, error in (("lsst", REDSHIFT_ERROR["without"]), ("lsst+spherex", REDSHIFT_ERROR["with_spherex"])):
        prediction = (truth + error * (-1.0) ** np.arange(N_TEST)).astype(np.float32)
        scored = metrics["conditions"][condition]["redshift"]["gold"]
        expected = photoz_metrics(prediction[gold], truth[gold])
        assert scored["n_galaxies"] == expected["n_galaxies"] == gold.sum()
        assert scored["fraction"] == pytest.approx(gold.mean())
        assert scored["mae"] == pytest.approx(error, rel=1e-5)
        for key in ("bias", "sigma_nmad", "outlier_rate"):
            assert scored[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6)  # the split is read as float32
    assert "gold" not in metrics["conditions"]["stellar_mass"]["redshift"]


def test_scalar_maes_and_nmaes_equal_the_known_errors(evaluation):
    _, metrics, test, _ = evaluation
    c = metrics["conditions"]
    assert c["lsst"]["redshift"]["mae"] == pytest.approx(0.1, rel=1e-5)
    assert c["lsst+spherex"]["redshift"]["mae"] == pytest.approx(0.05, rel=1e-5)
    assert c["lsst+sfh_late"]["log_stellar_mass"]["mae"] == pytest.approx(0.037, rel=1e-5)
    assert c["lsst+sfh_early"]["log_stellar_mass"]["mae"] == pytest.approx(0.1, rel=1e-5)
    assert c["lsst"]["log_stellar_mass"]["mae"] == pytest.approx(0.2, rel=1e-5)
    # The same |error| for every galaxy: every percentile of the normalised MAE is error / std(truth).
    expected = 0.3 / np.std(test["log_halo_mass"].astype(np.float64))
    for key in ("nmae_median", "nmae_p16", "nmae_p84"):
        assert c["lsst"]["log_halo_mass"][key] == pytest.approx(expected, rel=1e-4)


def test_only_the_hidden_part_of_the_sfh_is_scored(evaluation):
    _, metrics, test, _ = evaluation
    sfh = test["sfh"].astype(np.float64)
    for name, hidden in (("lsst+sfh_late", ~SFH_LATE), ("lsst+sfh_early", SFH_LATE), ("lsst", np.ones(100, bool))):
        m = metrics["conditions"][name]["sfh"]
        assert m["mae"] == pytest.approx(0.5, rel=1e-5)  # the +100 on the shown bins never counts
        spread = sfh[:, hidden].std(axis=0)
        expected = np.mean(0.5 / spread[spread > 0])
        assert m["nmae_median"] == pytest.approx(expected, rel=1e-4)
        assert m["n_elements"] == N_TEST * hidden.sum()


def test_headline_gains_follow_the_formula(evaluation):
    _, metrics, _, _ = evaluation
    c, h = metrics["conditions"], metrics["headline"]
    maes = c["lsst+spherex"]["redshift"]["mae"], c["lsst"]["redshift"]["mae"]
    assert h["redshift_gain_spherex"] == pytest.approx(1 - maes[0] / maes[1])
    assert h["redshift_gain_spherex"] == pytest.approx(0.5, abs=1e-4)
    assert h["stellar_mass_gain_late_vs_early_sfh"] == pytest.approx(0.63, abs=1e-4)


def test_headline_breakdown_bins_partition_the_test_set_and_carry_each_galaxys_gain(evaluation):
    _, metrics, test, _ = evaluation
    breakdown = metrics["headline_breakdown"]
    for key, without, with_ in (("redshift_gain_spherex", 0.1, 0.05), ("stellar_mass_gain_late_vs_early_sfh", 0.1, 0.037)):
        for axis, values in (("redshift", test["redshift"]), ("i_mag", test["lsst"][:, 3])):
            bins = breakdown[key][axis]
            assert sum(b["n"] for b in bins) == N_TEST
            for b in bins:
                assert b["n"] == int(((values >= b["range"][0]) & (values < b["range"][1])).sum())
                assert b["mae_without"] == pytest.approx(without, rel=1e-5)
                assert b["mae_with"] == pytest.approx(with_, rel=1e-5)
                assert b["gain"] == pytest.approx(1 - with_ / without, rel=1e-4)


def test_unknown_truths_are_left_out_of_the_breakdown_and_the_signature():
    """A test galaxy whose true redshift is NaN or inf (missing) is not binned, and metrics.json stays valid JSON
    (it is written with allow_nan=False)."""
    from modeling_mosaic.evaluation.report import HEADLINES, headline_breakdown, test_signature

    rng = np.random.default_rng(0)
    test = {"redshift": rng.uniform(0.1, 3.0, 40), "log_stellar_mass": rng.uniform(8.0, 11.0, 40),
            "lsst": rng.normal(24.0, 1.0, (40, 6))}
    test["redshift"][[2, 5]] = [np.nan, np.inf]
    conditions = {c for _, with_, without in HEADLINES.values() for c in (with_, without)}
    predictions = {c: {n: np.nan_to_num(test[n], posinf=1.0) + 0.1 for n in ("redshift", "log_stellar_mass")}
                   for c in conditions}
    breakdown = headline_breakdown(test, predictions)
    for axis, bins in breakdown["redshift_gain_spherex"].items():
        assert sum(b["n"] for b in bins) == 38, axis
        assert all(b["mae_with"] == pytest.approx(0.1) for b in bins)
    assert sum(b["n"] for b in breakdown["stellar_mass_gain_late_vs_early_sfh"]["i_mag"]) == 40
    signature = test_signature(test)
    assert signature["redshift_mean"] == pytest.approx(np.delete(test["redshift"], [2, 5]).mean())
    json.dumps({"breakdown": breakdown, "signature": signature}, allow_nan=False)


def test_the_model_was_asked_for_every_target_of_every_condition(evaluation):
    _, _, _, model = evaluation
    asked = {tuple(inputs): set(targets) for inputs, targets in model.predict_calls}
    assert asked[("lsst",)] == set(MODALITY_NAMES) - {"lsst"}
    assert asked[("log_stellar_mass",)] == set(MODALITY_NAMES) - {"log_stellar_mass"}


def test_baselines_are_scored_and_their_gains_follow_the_formula(evaluation):
    _, metrics, _, _ = evaluation
    base = metrics["baselines"]
    assert set(base["tasks"]) == {t.name for t in TASKS}
    for task in base["tasks"].values():
        assert task["n_train"] == 200 and task["n_train_available"] == N_TRAIN
        for est in ("knn", "hgb", "mlp"):
            r = task["estimators"][est]
            assert r["mae"] > 0 and r["fit_s"] >= 0 and r["predict_s"] >= 0
            assert r["nmae_p16"] <= r["nmae_median"] <= r["nmae_p84"]
        assert task["estimators"]["knn"]["params"]["k"] in (5, 10, 20, 40)
    for est, gains in base["gains"].items():
        for key, (with_, without) in GAIN_TASKS.items():
            maes = [base["tasks"][t]["estimators"][est]["mae"] for t in (with_, without)]
            assert gains[key] == pytest.approx(1 - maes[0] / maes[1])


def test_dense_network_learns_a_smooth_function_reproducibly_and_imputes_missing_features():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 6))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] ** 2 - X[:, 2] * X[:, 3]
    X_test = rng.normal(size=(500, 6))
    y_test = np.sin(X_test[:, 0]) + 0.5 * X_test[:, 1] ** 2 - X_test[:, 2] * X_test[:, 3]
    first, second = (DenseNetwork(width=64, epochs=15, seed=3).fit(X, y) for _ in range(2))
    prediction = first.predict(X_test)
    np.testing.assert_array_equal(prediction, second.predict(X_test))  # same seed, same network
    floor = np.abs(y_test - np.median(y)).mean()  # the best constant's MAE
    assert np.abs(prediction - y_test).mean() < 0.25 * floor
    X_test[:, 5] = np.nan  # an unused feature goes missing: its training median stands in
    assert np.isfinite(first.predict(X_test)).all()
    assert np.abs(first.predict(X_test) - y_test).mean() < 0.3 * floor


def test_ablation_reports_every_convention_on_both_samples(evaluation):
    _, metrics, _, _ = evaluation
    ablation = metrics["sfh_convention_ablation"]
    conventions = ("sfr", "sfr_shape", "mass_formed", "mass_formed_shape")
    # the fake catalog has no catalog.json, so its SFH convention is "unknown"
    assert set(ablation) == {f"unknown SFH, {c}" for c in (*conventions, *(f"{c}, z<0.5" for c in conventions))}
    assert all(isinstance(g, float) and g < 1 for g in ablation.values())


def test_ablation_is_reproducible_from_the_catalog(evaluation, dataset):
    _, metrics, _, _ = evaluation
    columns = ("lsst", "sfh", "log_stellar_mass", "redshift")
    train, test = (read_split(dataset[0], split, columns) for split in ("train", "test"))
    expected = {f"unknown SFH, {k}": g for k, g in sfh_convention_ablation(train, test, max_train=200).items()}
    assert expected == metrics["sfh_convention_ablation"]


def test_sfh_convention_is_read_from_the_catalog(tmp_path):
    from modeling_mosaic.evaluation.report import sfh_convention_of

    assert sfh_convention_of(tmp_path) == "unknown"
    (tmp_path / "catalog.json").write_text(json.dumps({"provenance": {"options": {"sfh_convention": "full"}}}))
    assert sfh_convention_of(tmp_path) == "full"
    options = {"sfh_convention": "observed", "sfh_model": "diffstar"}
    (tmp_path / "catalog.json").write_text(json.dumps({"provenance": {"options": options}}))
    assert sfh_convention_of(tmp_path) == "observed diffstar"


def test_sfh_conventions_integrate_on_the_registry_grid():
    t = np.asarray(SFH_TIME_GYR)
    sfh = np.ones((2, 100))
    sfh[1] *= 3.0
    conv = sfh_conventions(sfh)
    # A constant 1 Msun/yr forms 1e9 Msun per Gyr: by the last grid time t[-1] = 13.8 Gyr, 13.8e9 Msun.
    np.testing.assert_allclose(conv["mass_formed"][0], t * 1e9)
    np.testing.assert_allclose(conv["mass_formed_shape"][0], conv["mass_formed_shape"][1])
    np.testing.assert_allclose(conv["mass_formed_shape"][:, -1], 1.0)
    np.testing.assert_allclose(conv["sfr_shape"][1], 3.0 / (3.0 * 13.8e9))


def test_figures_are_valid_pngs(evaluation):
    import matplotlib.image

    out = evaluation[0]
    for name in ("figure2_conditions.png", "figure3_embeddings.png", "photoz.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width = matplotlib.image.imread(path).shape[:2]
        assert width >= 800 and height >= 300
    assert not list(out.glob("*.tmp"))


def test_report_mentions_every_condition_the_gains_and_the_figures(evaluation):
    out, metrics, _, _ = evaluation
    report = (out / "REPORT.md").read_text()
    for condition in CONDITIONS:
        assert f"### {condition.name}:" in report
    assert "0.63" in report and "0.5" in report
    assert f"{metrics['headline']['redshift_gain_spherex']:.3g}" in report
    for name in ("figure2_conditions.png", "figure3_embeddings.png", "photoz.png"):
        assert f"]({name})" in report
    assert "subsample of 200 of the 240" in report
    for task in metrics["baselines"]["tasks"].values():
        mosaic = metrics["conditions"][task["condition"]][task["target"]]["mae"]
        best_name, best = min(((e, r["mae"]) for e, r in task["estimators"].items()), key=lambda p: p[1])
        if mosaic > best:
            assert f"MOSAIC loses to {best_name}: MAE +{mosaic - best:.3g}" in report
        else:
            assert f"MOSAIC wins over {best_name}: MAE {mosaic - best:.3g}" in report
    assert metrics["embedding_map"]["method"] in ("PCA", "UMAP")


def test_max_test_and_switches(dataset, tmp_path, capsys):
    root, splits = dataset
    test = splits["test"]
    model = ZeroModel()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": model)
        cli.main(["--model", "m", "--data", str(root), "--out", str(tmp_path), "--max-test", "50",
                  "--no-baselines", "--no-figures", "--no-ablation"])
    assert str(tmp_path / "REPORT.md") in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test"] == 50 and metrics["n_test_available"] == N_TEST
    assert metrics["baselines"] == {} and "sfh_convention_ablation" not in metrics
    assert not list(tmp_path.glob("*.png"))
    mass_mae = metrics["conditions"]["lsst"]["log_stellar_mass"]["mae"]
    # Mean of 50 of the test masses (~10): between the smallest and the largest of them.
    assert test["log_stellar_mass"].min() <= mass_mae <= test["log_stellar_mass"].max()


def test_baselines_from_an_earlier_evaluation_are_reused_only_on_the_same_rows(evaluation, dataset, tmp_path):
    earlier_out, earlier, _, model = evaluation
    root, _ = dataset
    earlier_file = earlier_out / "metrics.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": model)
        cli.main(["--model", "fake", "--data", str(root), "--out", str(tmp_path / "again"), "--max-train", "200",
                  "--no-figures", "--baselines-from", str(earlier_file)])
        metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
        assert metrics["baselines"] == earlier["baselines"]
        assert metrics["sfh_convention_ablation"] == earlier["sfh_convention_ablation"]
        assert metrics["baselines_from"] == str(earlier_file)
        assert metrics["test_signature"] == earlier["test_signature"]
        # Other test rows (--max-test) or another training cap: refused, naming the flag.
        with pytest.raises(ValueError, match="--baselines-from .*test rows differ"):
            cli.main(["--model", "fake", "--data", str(root), "--out", str(tmp_path / "sub"), "--max-train", "200",
                      "--max-test", "50", "--no-figures", "--baselines-from", str(earlier_file)])
        with pytest.raises(ValueError, match="--baselines-from .*capped at 200"):
            cli.main(["--model", "fake", "--data", str(root), "--out", str(tmp_path / "cap"), "--max-train", "100",
                      "--no-figures", "--baselines-from", str(earlier_file)])
    assert not (tmp_path / "sub").exists() and not (tmp_path / "cap").exists()  # refused before any output


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="data/"):
        cli.main(["--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--max-test"):
        cli.main(["--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--max-test", "0"])
    (tmp_path / "data").mkdir()
    with pytest.raises(SystemExit, match="--baselines-from .*no such file"):
        cli.main(["--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                  "--baselines-from", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit, match="--device"):
        cli.main(["--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--device", "tpu"])


def test_load_model_names_the_argument_of_a_missing_folder_or_an_unreachable_hub_id(tmp_path, monkeypatch):
    import transformers

    for name in (str(tmp_path / "missing"), "./missing", "a/b/c"):
        with pytest.raises(SystemExit, match=f"--model {name}: no such folder"):
            cli.load_model(name)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", offline)
    with pytest.raises(SystemExit, match="--model org/name: We couldn't connect"):
        cli.load_model("org/name")


def test_card_section_is_replaced_or_appended():
    from modeling_mosaic.card import replace_section

    card = "# M\n\n## Evaluation\n\nold numbers\n\n## Limitations\n\nsome\n"
    new = replace_section(card, "Evaluation", "new numbers")
    assert "old numbers" not in new and "new numbers" in new and new.index("new numbers") < new.index("## Limitations")
    assert replace_section("# M\n", "Evaluation", "x").endswith("## Evaluation\n\nx\n")


def test_report_files_are_written_atomically_without_touching_a_users_tmp_file(tmp_path):
    from modeling_mosaic.evaluation.report import write_text

    (tmp_path / "metrics.json.tmp").write_text("a user's file")
    write_text("{}", tmp_path / "metrics.json")
    assert (tmp_path / "metrics.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "metrics.json.tmp"]
    assert (tmp_path / "metrics.json.tmp").read_text() == "a user's file"


def test_a_run_that_fails_half_way_leaves_the_earlier_report_whole(evaluation, dataset, tmp_path):
    """The figures, metrics.json and REPORT.md of a run reach --out together at its end: a run that fails after
    writing its first figure leaves the earlier report's files byte for byte, and no staging folder."""
    import shutil

    from modeling_mosaic.evaluation import figures

    root, splits = dataset
    out = tmp_path / "out"
    shutil.copytree(evaluation[0], out)
    (out / "figure2_conditions.png").write_bytes(b"an earlier run's figure")  # what the failing run draws first
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    model = FakeModel({k: np.asarray(v) for k, v in splits["test"].items()})

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": model)
        mp.setattr(figures, "figure_photoz", broken)
        with pytest.raises(RuntimeError, match="plotting failed"):
            cli.main(["--model", "fake", "--data", str(root), "--out", str(out), "--no-baselines", "--no-ablation"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------- refusals, in-place saves, file modes
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny probabilistic MOSAIC model saved as the trainer saves one (safetensors and its remote code)."""
    import torch

    from modeling_mosaic import MosaicConfig, MosaicModel

    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("checkpoint") / "model"
    MosaicModel(MosaicConfig(**TINY_MODEL, head_type="gaussian")).save_pretrained(directory)
    return directory


def test_load_model_refuses_anything_but_a_mosaic_checkpoint_in_safetensors(checkpoint, tmp_path):
    """A folder that is not a MOSAIC checkpoint, or one whose weights are a pickle, is one line naming --model."""
    import shutil

    import torch
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    assert type(cli.load_model(str(checkpoint))).__name__ == "MosaicModel"
    pickled = tmp_path / "pickled"
    shutil.copytree(checkpoint, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    (tmp_path / "empty").mkdir()
    (tmp_path / "untyped").mkdir()
    (tmp_path / "untyped" / "config.json").write_text("{}")
    shutil.copy(checkpoint / "model.safetensors", tmp_path / "untyped")
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=16)).save_pretrained(tmp_path / "bert")
    for name, reason in (("pickled", r"safetensors only.*pytorch_model\.bin"), ("empty", "no config.json"),
                         ("untyped", "Unrecognized model"), ("bert", "model_type is 'bert'")):
        with pytest.raises(SystemExit, match=f"^--model {tmp_path / name}: not a MOSAIC checkpoint \\(.*{reason}"):
            cli.load_model(str(tmp_path / name))


class UnpredictableModel(ZeroModel):
    """A model that must not be asked for anything: the run was to be refused first."""

    def predict(self, inputs, targets=None, batch_size=4096):
        raise AssertionError("predicted before the arguments were checked")


def test_evaluate_refuses_a_catalog_or_argument_it_would_fail_on_before_any_work(dataset, tmp_path):
    """Each mistake is one line naming the argument and the file, before any prediction and before --out exists."""
    root, _ = dataset
    shards = {split: pq.read_table(root / "data" / f"{split}-00000-of-00001.parquet") for split in ("train", "test")}

    def catalog(name, **tables):
        (tmp_path / name / "data").mkdir(parents=True)
        for split, table in tables.items():
            pq.write_table(table, tmp_path / name / "data" / f"{split}-00000-of-00001.parquet")
        return str(tmp_path / name)

    no_test = catalog("no_test", train=shards["train"])
    no_spherex = catalog("no_spherex", train=shards["train"], test=shards["test"].drop_columns(["spherex"]))
    empty = catalog("empty", train=shards["train"], test=shards["test"].slice(0, 0))
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "broken.json").write_text('{"baselines": ')
    (tmp_path / "bare" / "data").mkdir(parents=True)
    out = tmp_path / "out"
    cases = [
        (no_test, out, [], f"--data {no_test}: no Parquet shard {no_test}/data/test-\\*\\.parquet"),
        (no_spherex, out, [], f"--data {no_spherex}: {no_spherex}/data/test-.*missing column.*'spherex'"),
        (empty, out, [], f"--data {empty}: the test split has no rows"),
        (root, tmp_path / "a_file", [], f"--out {tmp_path / 'a_file'}: a file, not a folder"),
        (root, tmp_path / "a_file" / "sub", [], f"--out {tmp_path / 'a_file' / 'sub'}: .*a_file is a file"),
        (root, out, ["--baselines-from", str(tmp_path / "broken.json")],
         f"--baselines-from {tmp_path / 'broken.json'}: not a metrics.json"),
        (root, out, ["--no-baselines", "--ablation-data", str(tmp_path / "bare")],
         f"--ablation-data {tmp_path / 'bare'}: no Parquet shard"),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": UnpredictableModel())
        for data, target, extra, message in cases:
            with pytest.raises(SystemExit, match=f"^{message}") as refused:
                cli.main(["--model", "fake", "--data", str(data), "--out", str(target), "--no-figures", *extra])
            assert "\n" not in str(refused.value) and not out.exists(), message


def test_a_rerun_without_figures_removes_only_the_earlier_runs_figures(dataset, tmp_path):
    """The report in --out is this run's: figures an earlier run drew are removed, a user's own PNG is kept."""
    root, _ = dataset
    out = tmp_path / "out"
    out.mkdir()
    for name in ("figure2_conditions.png", "photoz.png", "photoz_pit.png", "figure3_embeddings.png", "my_plot.png"):
        (out / name).write_bytes(PNG_SIGNATURE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "load_model", lambda name, device="cpu": ZeroModel())
        cli.main(["--model", "fake", "--data", str(root), "--out", str(out), "--no-baselines", "--no-figures",
                  "--no-ablation"])
    assert [p.name for p in out.glob("*.png")] == ["my_plot.png"]
    assert "figure2_conditions.png" not in (out / "REPORT.md").read_text()


def test_report_files_get_the_mode_open_gives_or_the_replaced_files(tmp_path):
    """Not mkstemp's 0600: a new file is 0666 less the umask, a replaced one (a model card) keeps its mode."""
    import os
    import stat

    from modeling_mosaic.evaluation.report import write_text

    previous = os.umask(0o027)
    try:
        write_text("{}", tmp_path / "metrics.json")
        (tmp_path / "README.md").write_text("# card")
        os.chmod(tmp_path / "README.md", 0o664)
        write_text("# new card", tmp_path / "README.md")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "README.md").stat().st_mode) == 0o664
    assert (tmp_path / "README.md").read_text() == "# new card"


def test_calibrate_names_a_split_the_catalog_lacks_or_that_has_no_rows(checkpoint, dataset, tmp_path):
    from modeling_mosaic.evaluation import calibrate_cli

    root, _ = dataset
    data = tmp_path / "catalog"
    (data / "data").mkdir(parents=True)
    table = pq.read_table(root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 0), data / "data" / "train-00000-of-00001.parquet")
    for split, message in (("validation", f"--split validation: {data} has no such split \\(no Parquet shard"),
                           ("train", f"--split train: the train split of {data} has no rows")):
        with pytest.raises(SystemExit, match=f"^{message}"):
            calibrate_cli.main(["--model", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "out"),
                                "--split", split])
    assert not (tmp_path / "out").exists()


def test_calibrating_in_place_keeps_the_model_whole_if_the_save_fails_and_keeps_its_other_files(
        checkpoint, dataset, tmp_path):
    """--out = --model: the model is saved beside the folder, then swapped in. A save that dies half-way leaves the
    folder byte for byte; one that succeeds leaves the new calibration, the folder's other files and its mode."""
    import os
    import shutil
    import stat
    from pathlib import Path

    import transformers

    from modeling_mosaic.evaluation import calibrate_cli

    root, _ = dataset
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    (model / "README.md").write_text("# the model card")
    (model / "checkpoint-4").mkdir()
    (model / "checkpoint-4" / "trainer_state.json").write_text("{}")
    os.chmod(model, 0o751)

    def snapshot():
        return {str(p.relative_to(tmp_path)): p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}

    before = snapshot()
    save = transformers.PreTrainedModel.save_pretrained

    def disk_full(self, directory, *args, **kwargs):
        (Path(directory) / "config.json").write_text('{"truncat')
        raise OSError(28, "No space left on device")

    argv = ["--model", str(model), "--data", str(root), "--out", str(model), "--rows", "60"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.PreTrainedModel, "save_pretrained", disk_full)
        with pytest.raises(OSError, match="No space left"):
            calibrate_cli.main(argv)
    assert snapshot() == before
    assert transformers.PreTrainedModel.save_pretrained is save
    assert calibrate_cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing staged or set aside is left
    assert json.loads((model / "config.json").read_text())["calibration"]
    assert (model / "README.md").read_text() == "# the model card"
    assert (model / "checkpoint-4" / "trainer_state.json").read_text() == "{}"
    assert (model / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    assert stat.S_IMODE(model.stat().st_mode) == 0o751
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((model / "model.safetensors").stat().st_mode) == 0o666 & ~umask  # not safetensors' 0600
