"""Run the evaluation and write OUT/metrics.json, OUT/REPORT.md and the figures.

The model is scored on the test split under the five figure-2 conditions; the single-task baselines and
the SFH-convention ablation are trained on the train split. Every number in REPORT.md is read from the
same dictionary that metrics.json holds.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..card import replace_section
from ..files import ordinary_mode
from ..catalog.io import arrow_to_numpy
from ..modalities import MODALITY_NAMES, get_modality
from ..noise import NOISY_MODALITIES, depth_columns, error_columns, redraw_photometry
from .baselines import MAX_TRAIN, TASKS, THREADS, run_baselines, sfh_convention_ablation, subsample_rows
from .conditions import CONDITIONS, Condition
from .metrics.functions import (
    cdf_calibration,
    gain,
    gaussian_calibration,
    grid_calibration,
    photoz_metrics,
    pit_from_grid,
    regression_metrics,
)

#: The paper's headline gains (Xia et al. 2025, figure 2) and how each is computed here:
#: name -> (modality, condition with the extra input, condition without).
PAPER_GAINS = {"redshift_gain_spherex": 0.50, "stellar_mass_gain_late_vs_early_sfh": 0.63}
HEADLINES = {
    "redshift_gain_spherex": ("redshift", "lsst+spherex", "lsst"),
    "stellar_mass_gain_late_vs_early_sfh": ("log_stellar_mass", "lsst+sfh_late", "lsst+sfh_early"),
}
#: At most this many test galaxies are embedded for the figure-3 analogue.
MAX_EMBED = 5000
#: Targets whose predictive distributions a probabilistic model is scored on (coverage, PIT, CRPS, CDE loss).
CALIBRATED_TARGETS = ("redshift", "log_stellar_mass")
#: Redshift grid on which a probabilistic model is asked for its photo-z posteriors (passed to `predict`). Its
#: spacing, 0.001, is well below the width of the narrowest posteriors (~0.005 from LSST + SPHEREx at paper
#: scale): on a 0.01 grid the trapezoid CDF of such a posterior moves the PIT enough to read 0.71 for a 68%
#: coverage that is 0.68.
REDSHIFT_GRID = np.linspace(0.0, 3.5, 3501)
#: Spacing and reach beyond the test truths (in the target's units: dex for a mass) of the grid on which another
#: calibrated target's CDF is tabulated for its CRPS: 6-16 points per predicted sigma of the demo's stellar
#: masses, and 10 sigma or more beyond the extreme truths.
CDF_GRID_STEP, CDF_GRID_MARGIN = 0.005, 1.0
#: The LSST i band's index in ugrizy, and LSST's "gold" sample: observed i < 25.3 (Ivezic et al. 2019), the
#: sample LSST's photo-z goals are quoted for.
I_BAND = 3
GOLD_I_LIMIT = 25.3
#: Equal-width bins of the depth factor in which `depth_breakdown` scores a `--depth-scale` evaluation.
DEPTH_SCALE_BINS = 3
#: Columns the baselines and the ablation read from the train split.
TRAIN_COLUMNS = ("redshift", "log_stellar_mass", "lsst", "spherex", "sfh")
#: The PNG figures a report may hold, by their key in REPORT.md's list; a report without one removes an earlier run's.
FIGURES = {"conditions": "figure2_conditions.png", "photoz": "photoz.png", "pit": "photoz_pit.png",
           "embeddings": "figure3_embeddings.png"}

NMAE_DEFINITION = (
    "normalised MAE of a galaxy = mean over its scored elements of |prediction - truth| / sigma, where sigma "
    "is the standard deviation of the truth over the test set for that element (elements whose truth does "
    "not vary are left out); reported as the median and 16th/84th percentiles over galaxies"
)


# ------------------------------------------------------------------------------------------------ data
def split_files(data_dir, split: str, columns: Sequence[str]) -> list[str]:
    """The Parquet shards of one split of a catalog (DIR/data/{split}-*.parquet), after checking that there is one
    and that it holds `columns`."""
    files = sorted(glob.glob(os.path.join(os.fspath(data_dir), "data", f"{split}-*.parquet")))
    if not files:
        raise FileNotFoundError(f"no Parquet shard {data_dir}/data/{split}-*.parquet")
    schema = pq.read_schema(files[0])
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ValueError(f"{files[0]}: missing column(s) {missing}")
    return files


def split_rows(data_dir, split: str, columns: Sequence[str]) -> int:
    """The rows of one split, from its shards' footers (no column is read), after the checks of `split_files`:
    what lets a command refuse a catalog before its work, not after."""
    return sum(pq.read_metadata(f).num_rows for f in split_files(data_dir, split, columns))


def read_split(data_dir, split: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Columns of one split of a catalog in Hugging Face Parquet layout (DIR/data/{split}-*.parquet) as
    numpy arrays, vectors as (rows, length). Reads only the columns asked for (each once); nulls become NaN."""
    columns = list(dict.fromkeys(columns))
    files = split_files(data_dir, split, columns)
    table = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
    columns = {c: arrow_to_numpy(table.column(c), c, files[0]) for c in columns}
    return {c: v if v.ndim == 2 else np.asarray(v, dtype=np.float64) for c, v in columns.items()}


def sfh_convention_of(data_dir) -> str:
    """The catalog's SFH convention ("observed": zero after the epoch, or "full") from its catalog.json,
    followed by the SFH model where it is not the default parametric one ("observed diffstar"); "unknown" for
    a catalog without one (e.g. a bare Parquet folder)."""
    path = Path(data_dir) / "catalog.json"
    if not path.exists():
        return "unknown"
    options = json.loads(path.read_text()).get("provenance", {}).get("options", {})
    convention, model = options.get("sfh_convention", "unknown"), options.get("sfh_model", "parametric")
    return convention if model == "parametric" else f"{convention} {model}"


def _take(columns: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in columns.items()}


def depth_breakdown(test: Mapping[str, np.ndarray], predictions, pits, conditions, depth_scale) -> dict:
    """MAE of redshift and stellar mass, and the redshift posteriors' 68% coverage (from their PIT values), in
    DEPTH_SCALE_BINS equal bins of the depth factor, under each condition that shows photometry: whether a
    model reads how deep each galaxy was observed."""
    edges = np.linspace(*depth_scale, DEPTH_SCALE_BINS + 1)
    scale = np.asarray(test["depth_scale"])
    bins = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, DEPTH_SCALE_BINS - 1)
    out = {}
    for condition in conditions:
        if not set(condition.inputs_needed) & set(NOISY_MODALITIES) or condition.name not in predictions:
            continue
        rows = []
        for b in range(DEPTH_SCALE_BINS):
            inside = bins == b
            row = {"range": [float(edges[b]), float(edges[b + 1])], "n": int(inside.sum())}
            for name, predicted in predictions[condition.name].items():
                if name in CALIBRATED_TARGETS and inside.any():
                    truth = np.asarray(test[name], dtype=np.float64)[inside]
                    row[f"{name}_mae"] = float(np.mean(np.abs(predicted[inside] - truth)))
            if condition.name in pits and inside.any():
                row["redshift_coverage_68"] = float(np.mean(np.abs(pits[condition.name][inside] - 0.5) <= 0.34))
            rows.append(row)
        out[condition.name] = rows
    return out


#: Columns summarised by `test_signature`, and the relative tolerance within which two signatures match: a
#: catalog regenerated from the same seed on another machine differs in the last bits of its photometry.
SIGNATURE_COLUMNS = ("redshift", "log_stellar_mass", "lsst")
SIGNATURE_RTOL = 1e-5


def test_signature(test: Mapping[str, np.ndarray]) -> dict:
    """Row count, means and standard deviations of the evaluated test rows: what says that an earlier
    evaluation's baselines were scored on the same galaxies."""
    out = {"n": int(len(test["redshift"]))}
    for name in SIGNATURE_COLUMNS:
        if name in test:
            values = np.asarray(test[name], dtype=np.float64)
            values = np.where(np.isfinite(values), values, np.nan)  # inf, like NaN, is a missing value
            out[f"{name}_mean"] = np.nanmean(values, axis=0).tolist()
            out[f"{name}_std"] = np.nanstd(values, axis=0).tolist()
    return out


def reuse_baselines(earlier: Mapping, earlier_path, signature: Mapping, max_train: int | None) -> dict:
    """The baselines and SFH ablation of an earlier metrics.json of the same catalog, after checking that it
    scored the same test rows (signature) with the same training cap. They do not depend on the model."""
    where = f"--baselines-from {earlier_path}"
    if not (earlier.get("baselines") or {}).get("tasks"):
        raise ValueError(f"{where}: that evaluation ran no baselines")
    theirs = earlier.get("test_signature")
    if theirs is None:
        raise ValueError(f"{where}: no test_signature (written by mosaic-evaluate since 2026-11-29); rerun it")
    if earlier["baselines"].get("max_train") != max_train:
        raise ValueError(f"{where}: its baselines were capped at {earlier['baselines'].get('max_train')} "
                         f"training rows, this evaluation at {max_train}")
    for key, ours in signature.items():
        if key not in theirs or not np.allclose(theirs[key], ours, rtol=SIGNATURE_RTOL, atol=0.0):
            raise ValueError(f"{where}: its test rows differ from these ({key}: {theirs.get(key)} vs {ours}); "
                             "baselines are only reused on the same catalog and --max-test/--seed")
    out = {"baselines": earlier["baselines"], "baselines_from": os.fspath(earlier_path)}
    if "sfh_convention_ablation" in earlier:
        out["sfh_convention_ablation"] = earlier["sfh_convention_ablation"]
    return out


# ------------------------------------------------------------------------------------------ the model
def model_modalities(model) -> tuple[str, ...]:
    """The modalities a model knows (config.modalities), in registry order."""
    names = getattr(getattr(model, "config", None), "modalities", None) or MODALITY_NAMES
    unknown = [n for n in names if n not in MODALITY_NAMES]
    if unknown:
        raise ValueError(f"model.config.modalities has names the registry does not know: {unknown}")
    return tuple(n for n in MODALITY_NAMES if n in names)


def evaluation_columns(model, depth_scale=None) -> list[str]:
    """The columns `run_evaluation` reads from the test split: the model's modalities, those the baselines
    score, the photometry's errors for a model that takes them, and with `depth_scale` the noise-free fluxes."""
    modalities = model_modalities(model)
    needed = set(modalities) | set(TRAIN_COLUMNS)
    columns = [n for n in MODALITY_NAMES if n in needed] + error_columns(modalities, uses_errors(model))
    if depth_scale is not None:
        columns += [c for c in depth_columns(modalities) if c not in columns]
    return columns


def score_target(condition: Condition, name: str, truth: np.ndarray, prediction: np.ndarray) -> dict:
    """Metrics of one predicted modality under one condition (photo-z metrics too for redshift). A target
    with nothing to score gets None values and the reason."""
    try:
        result = regression_metrics(prediction, truth, condition.score_mask(name))
        if name == "redshift":
            result.update(photoz_metrics(prediction, truth))
        m = get_modality(name)
        if m.log:
            result["mae_learning_space"] = regression_metrics(
                m.to_learning(prediction), m.to_learning(truth), condition.score_mask(name)
            )["mae"]
    except ValueError as error:
        return {"mae": None, "nmae_median": None, "nmae_p16": None, "nmae_p84": None, "error": str(error)}
    result["n_nonfinite_predictions"] = int((~np.isfinite(np.asarray(prediction, dtype=np.float64))).sum())
    return result


def gold_photoz(test: Mapping[str, np.ndarray], prediction: np.ndarray) -> dict:
    """Redshift MAE and RAIL photo-z metrics over LSST's gold sample, the galaxies with observed i < GOLD_I_LIMIT
    (one without an i measurement is left out): the sample LSST's photo-z goals are quoted for, where the whole
    test split reaches beyond the survey's depth."""
    gold = np.asarray(test["lsst"], dtype=np.float64)[:, I_BAND] < GOLD_I_LIMIT
    truth, prediction = np.asarray(test["redshift"], dtype=np.float64)[gold], np.asarray(prediction)[gold]
    try:
        return {"i_limit": GOLD_I_LIMIT, "fraction": float(gold.mean()),
                "mae": regression_metrics(prediction, truth)["mae"], **photoz_metrics(prediction, truth)}
    except ValueError as error:
        return {"i_limit": GOLD_I_LIMIT, "fraction": float(gold.mean()), "mae": None, "error": str(error)}


def is_probabilistic(model) -> bool:
    """Whether the model predicts distributions (MOSAIC's gaussian head)."""
    return getattr(getattr(model, "config", None), "head_type", "point") == "gaussian"


def uses_errors(model) -> bool:
    """Whether the model embeds its inputs' measurement errors (`error_inputs`): it is then given them."""
    return bool(getattr(getattr(model, "config", None), "error_inputs", False))


def calibration(name: str, truth: np.ndarray, output: Mapping[str, np.ndarray],
                cdf=None) -> tuple[dict, np.ndarray | None]:
    """Calibration scores of target `name` from a `predict(..., return_uncertainty=True)` output, and the
    redshift PIT values (None for other targets): the posterior on the grid for redshift; for the others the
    model's own calibrated CDF, `cdf(points)` at (N,) or (N, G) points (a PIT map makes it non-Gaussian), or
    without one (a checkpoint whose remote code predates `MosaicModel.cdf`) the Gaussian of the output's mean
    and std (stellar mass is learned linearly, so as trained its distribution is Gaussian)."""
    try:
        if name == "redshift":
            pdf = output["redshift_pdf"]
            return grid_calibration(REDSHIFT_GRID, pdf, truth), pit_from_grid(REDSHIFT_GRID, pdf, truth)
        if cdf is None:
            return gaussian_calibration(output[name], output[f"{name}_std"], truth), None
        grid = np.arange(truth.min() - CDF_GRID_MARGIN, truth.max() + CDF_GRID_MARGIN, CDF_GRID_STEP)
        tabulated = cdf(np.broadcast_to(grid, (len(truth), len(grid))))
        return cdf_calibration(cdf(truth), grid, tabulated, truth), None
    except ValueError as error:
        return {"calibration_error": str(error)}, None


def model_cdf(model, inputs: Mapping[str, np.ndarray], name: str, batch_size: int, **errors):
    """points -> the model's calibrated CDF of `name` at them given `inputs` (and their `errors`), or None for a
    model without `cdf` (remote code older than it)."""
    if not hasattr(model, "cdf"):
        return None

    def cdf(points):
        return model.cdf(inputs, {name: points}, batch_size=batch_size, **errors)[name]

    return cdf


def evaluate_model(model, test: Mapping[str, np.ndarray], conditions: Sequence[Condition], batch_size: int):
    """Predict and score every target of every condition. Returns (results, predictions, predict seconds,
    redshift PIT values): results[condition][modality] = metrics; predictions[condition][modality] =
    (galaxies, ...) float32; pits[condition] = (galaxies,) for a probabilistic model, else empty. A model with
    error inputs is given the errors of the photometry shown (`test` then holds the `error_columns`)."""
    modalities = model_modalities(model)
    probabilistic = is_probabilistic(model)
    extra = {"return_uncertainty": True, "redshift_grid": REDSHIFT_GRID} if probabilistic else {}
    results, predictions, seconds, pits = {}, {}, {}, {}
    for condition in conditions:
        targets = condition.targets(modalities)
        errors = {"errors": condition.errors(test)} if uses_errors(model) else {}
        start = time.perf_counter()
        output = model.predict(condition.inputs(test), targets=targets, batch_size=batch_size, **errors, **extra)
        seconds[condition.name] = round(time.perf_counter() - start, 3)
        missing = [t for t in targets if t not in output]
        if missing:
            raise ValueError(f"model.predict returned no {missing} for condition {condition.name!r}")
        # A probabilistic model is scored on its medians, the points that minimise the absolute error (its
        # means in physical units follow the tails of a wide log-space Gaussian).
        predictions[condition.name] = {t: np.asarray(output.get(f"{t}_p50", output[t]), dtype=np.float32)
                                       for t in targets}
        results[condition.name] = {
            t: score_target(condition, t, test[t], predictions[condition.name][t]) for t in targets
        }
        if "redshift" in targets and "lsst" in condition.inputs_needed:
            results[condition.name]["redshift"]["gold"] = gold_photoz(test, predictions[condition.name]["redshift"])
        # (a checkpoint whose remote code predates shifts has no `calibration_for`: it reports none)
        calibrated = probabilistic and hasattr(model, "calibration_for")
        fitted = model.calibration_for(condition.inputs(_take(test, np.arange(1)))) if calibrated else {}
        for name in CALIBRATED_TARGETS if probabilistic else ():
            if name in targets:
                cdf = model_cdf(model, condition.inputs(test), name, batch_size, **errors)
                scores, pit = calibration(name, test[name], output, cdf)
                results[condition.name][name].update(
                    scores, temperature=fitted.get("temperature", {}).get(name, 1.0),
                    shift=fitted.get("shift", {}).get(name, 0.0))
                if pit is not None:
                    pits[condition.name] = pit
    return results, predictions, seconds, pits


def headline_gains(results: Mapping[str, Mapping[str, dict]]) -> dict[str, float | None]:
    """gain = 1 - MAE_with / MAE_without for each headline (None if a condition was not run)."""

    def mae(condition, name):
        return results.get(condition, {}).get(name, {}).get("mae")

    return {key: gain(mae(with_, name), mae(without, name)) for key, (name, with_, without) in HEADLINES.items()}


#: Bins of the headline breakdown: true redshift, and LSST i-band asinh magnitude.
BREAKDOWN_REDSHIFT_EDGES = (0.0, 0.3, 0.6, 1.0, 1.5, 2.0, 3.5)
BREAKDOWN_I_MAG_EDGES = (0.0, 22.0, 23.5, 24.5, 25.5, 26.5, 40.0)


def headline_breakdown(test: Mapping[str, np.ndarray], predictions) -> dict:
    """Where each headline gain comes from: MAE without and with the extra input, and the gain, in bins of
    true redshift and of i magnitude (the galaxies a survey sees differ from the catalog's mix), over the
    galaxies whose truth is known."""
    axes = {"redshift": (np.asarray(test["redshift"]), BREAKDOWN_REDSHIFT_EDGES)}
    if "lsst" in test:
        axes["i_mag"] = (np.asarray(test["lsst"])[:, I_BAND], BREAKDOWN_I_MAG_EDGES)
    out = {}
    for key, (name, with_, without) in HEADLINES.items():
        if with_ not in predictions or without not in predictions:
            continue
        truth = np.asarray(test[name], dtype=np.float64)
        error_with = np.abs(predictions[with_][name] - truth)
        error_without = np.abs(predictions[without][name] - truth)
        out[key] = {}
        for axis, (values, edges) in axes.items():
            rows = []
            for low, high in zip(edges[:-1], edges[1:]):
                inside = (values >= low) & (values < high) & np.isfinite(truth)
                if inside.sum() == 0:
                    continue
                mae_with, mae_without = float(error_with[inside].mean()), float(error_without[inside].mean())
                rows.append({"range": [low, high], "n": int(inside.sum()), "mae_without": mae_without,
                             "mae_with": mae_with, "gain": gain(mae_with, mae_without)})
            out[key][axis] = rows
    return out


def embedding_maps(model, test, conditions, batch_size: int, seed: int):
    """2-D maps of the pooled last hidden state ('all') of up to MAX_EMBED test galaxies per condition.
    Returns (maps, rows embedded, method)."""
    from .figures import project_2d

    rows = subsample_rows(len(test["redshift"]), MAX_EMBED, seed)
    subset = _take(test, rows)
    maps, method = {}, "PCA"
    for condition in conditions:
        errors = {"errors": condition.errors(subset)} if uses_errors(model) else {}
        embedding = np.asarray(model.embed(condition.inputs(subset), batch_size=batch_size, **errors)["all"],
                               dtype=np.float64)
        embedding = np.where(np.isfinite(embedding), embedding, 0.0)
        maps[condition.name], method = project_2d(embedding, seed)
    return maps, rows, method


# ------------------------------------------------------------------------------------- the evaluation
def run_evaluation(
    model,
    data_dir,
    out_dir,
    *,
    max_test: int | None = None,
    baselines: bool = True,
    figures: bool = True,
    ablation: bool = True,
    ablation_catalogs=(),
    seed: int = 0,
    batch_size: int = 4096,
    max_train: int | None = MAX_TRAIN,
    threads: int | None = THREADS,
    model_name: str = "",
    baselines_from=None,
    depth_scale=None,
) -> dict:
    """Evaluate `model` on DATA_DIR's test split, write OUT_DIR/metrics.json, REPORT.md and the PNG
    figures, and return the metrics. `max_test` subsamples the test rows (seeded); `max_train` caps the
    training rows of the baselines and the ablation, `threads` their thread count. `ablation_catalogs` are
    more catalog folders (e.g. the same catalog built with the other SFH convention) whose ablation gains are
    reported beside DATA_DIR's, each key prefixed with the catalog's SFH convention. `baselines_from` is the
    metrics.json of an earlier evaluation of the same test rows whose baselines and ablation are reused
    instead of refitted (they do not depend on the model; at paper scale they take most of the time).
    `depth_scale` = (min, max) scores the test rows observed afresh at per-galaxy depths (`redraw_photometry`;
    the baselines' training rows stay as the catalog holds them) and adds `depth_breakdown`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    modalities = model_modalities(model)
    conditions = [c for c in CONDITIONS if set(c.inputs_needed) <= set(modalities)]
    test_all = read_split(data_dir, "test", evaluation_columns(model, depth_scale))
    n_available = len(test_all["redshift"])
    test = _take(test_all, subsample_rows(n_available, max_test, seed))
    if depth_scale is not None:
        test = redraw_photometry(test, modalities, depth_scale, seed)
    signature = test_signature(test)
    reused = None
    if baselines_from is not None:  # checked before any prediction: a mismatch costs nothing
        reused = reuse_baselines(json.loads(Path(baselines_from).read_text()), baselines_from, signature, max_train)
    out_dir.mkdir(parents=True, exist_ok=True)

    results, predictions, predict_s, pits = evaluate_model(model, test, conditions, batch_size)
    metrics = {
        "n_test": int(len(test["redshift"])),
        "n_test_available": int(n_available),
        "model": model_name or getattr(getattr(model, "config", None), "_name_or_path", ""),
        "data": os.fspath(data_dir),
        "modalities": list(modalities),
        "point_prediction": ("median of the predictive distribution" if is_probabilistic(model)
                             else "the point head's output"),
        "conditions": results,
        "condition_descriptions": {c.name: c.description for c in conditions},
        "skipped_conditions": [c.name for c in CONDITIONS if c not in conditions],
        "headline": headline_gains(results),
        "headline_breakdown": headline_breakdown(test, predictions),
        "paper_headline": PAPER_GAINS,
        "nmae_definition": NMAE_DEFINITION,
        "baselines": {},
        "timing_s": {"mosaic_predict": predict_s},
        "test_signature": signature,
    }
    if depth_scale is not None:
        metrics["depth_scale"] = {"range": [float(x) for x in depth_scale], "seed": seed,
                                  "by_condition": depth_breakdown(test, predictions, pits, conditions, depth_scale)}
    if reused is not None:
        metrics.update(reused)
    elif baselines or ablation:
        train = read_split(data_dir, "train", TRAIN_COLUMNS)
        if baselines:
            tasks = [t for t in TASKS if t.condition in results]
            metrics["baselines"] = run_baselines(train, test, tasks, seed=seed, max_train=max_train, threads=threads)
        if ablation:
            gains = {}
            for catalog in (data_dir, *ablation_catalogs):
                if catalog == data_dir:
                    catalog_train, catalog_test = train, test
                else:
                    catalog_train = read_split(catalog, "train", TRAIN_COLUMNS)
                    catalog_test = read_split(catalog, "test", TRAIN_COLUMNS)
                convention = sfh_convention_of(catalog)
                gains.update({f"{convention} SFH, {name}": gain for name, gain in sfh_convention_ablation(
                    catalog_train, catalog_test, seed=seed, max_train=max_train, threads=threads).items()})
            metrics["sfh_convention_ablation"] = gains
    # The report's files are written into a hidden staging folder and moved into OUT together at the end: a run
    # that fails half-way leaves an earlier report in OUT whole, not new figures beside old metrics.
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".mosaic-evaluate-"))
    try:
        figure_files = {}
        if figures:
            figure_files = _write_figures(model, test, results, predictions, conditions, modalities, stage,
                                          batch_size, seed, metrics, pits)
        metrics["timing_s"]["total"] = round(time.perf_counter() - start, 3)
        (stage / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
        (stage / "REPORT.md").write_text(render_report(metrics, figure_files))
        for path in sorted(stage.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for name in set(FIGURES.values()) - set(figure_files.values()):  # an earlier run's, no longer this report's
        (out_dir / name).unlink(missing_ok=True)
    card = Path(model_name) / "README.md" if model_name else None
    if card is not None and card.is_file():
        write_text(replace_section(card.read_text(), "Evaluation", card_summary(metrics)), card)
    return metrics


def card_summary(metrics) -> str:
    """The model card's evaluation section: headline gains and redshift / stellar-mass MAE per condition."""
    lines = [f"`mosaic-evaluate` on {metrics['n_test']} test galaxies of `{metrics['data']}`.", "",
             *_headline_table(metrics), ""]
    rows = []
    for condition, targets in metrics["conditions"].items():
        cells = [_fmt(targets[n]["mae"]) if n in targets else "given" for n in ("redshift", "log_stellar_mass")]
        rows.append([condition, *cells])
    lines += ["MAE per input condition:", "", *_table(["condition", "redshift", "log_stellar_mass"], rows)]
    return "\n".join(lines)


def _write_figures(model, test, results, predictions, conditions, modalities, out_dir, batch_size, seed, metrics,
                   pits):
    from .figures import (
        EMBEDDING_COLOURS,
        figure_conditions,
        figure_embeddings,
        figure_photoz,
        figure_pit,
    )

    files = {"conditions": figure_conditions(test, predictions, conditions, modalities, results,
                                             out_dir / FIGURES["conditions"]).name}
    photoz = {c: p["redshift"] for c, p in predictions.items()
              if results[c].get("redshift", {}).get("bias") is not None}
    if photoz:
        files["photoz"] = figure_photoz(test["redshift"], photoz, {c: results[c]["redshift"] for c in photoz},
                                        out_dir / FIGURES["photoz"]).name
    if pits:
        files["pit"] = figure_pit(pits, out_dir / FIGURES["pit"]).name
    if hasattr(model, "embed"):
        maps, rows, method = embedding_maps(model, test, conditions, batch_size, seed)
        colours = {n: test[n][rows] for n in EMBEDDING_COLOURS if n in test}
        files["embeddings"] = figure_embeddings(maps, colours, method, out_dir / FIGURES["embeddings"]).name
        metrics["embedding_map"] = {"method": method, "n_galaxies": int(len(rows))}
    return files


def write_text(text: str, path) -> None:
    """Write a file atomically: a new, uniquely named temporary file beside it (never a name a user's file may
    have, such as metrics.json.tmp), then rename. The file gets the mode of the one it replaces, or of a file
    open() creates, not mkstemp's 0600."""
    path = Path(path)
    mode = ordinary_mode(path)
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- REPORT
def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _headline_section(metrics) -> list[str]:
    lines = ["## Headline gains", "", *_headline_table(metrics), ""]
    labels = {"redshift": "true redshift", "i_mag": "LSST i (asinh mag)"}
    for key, axes in metrics.get("headline_breakdown", {}).items():
        name, with_, without = HEADLINES[key]
        for axis, bins in axes.items():
            table = [[f"{b['range'][0]:g} - {b['range'][1]:g}", str(b["n"]), _fmt(b["mae_without"], 3),
                      _fmt(b["mae_with"], 3), _fmt(b["gain"], 3)] for b in bins]
            lines += [f"{key} by {labels[axis]}:", "",
                      *_table([labels[axis], "galaxies", f"MAE {without}", f"MAE {with_}", "gain"], table), ""]
    return lines


def _headline_table(metrics) -> list[str]:
    base_gains = metrics.get("baselines", {}).get("gains", {})
    header = ["gain = 1 - MAE_with / MAE_without", "MOSAIC", "paper (Xia et al. 2025, fig. 2)",
              *(f"baseline {e}" for e in base_gains)]
    rows = []
    for key, (name, with_, without) in HEADLINES.items():
        rows.append([f"{key} ({name}: {with_} vs {without})", _fmt(metrics["headline"][key], 3),
                     _fmt(PAPER_GAINS[key], 2), *(_fmt(g.get(key), 3) for g in base_gains.values())])
    return _table(header, rows)


def _conditions_section(metrics) -> list[str]:
    lines = ["## Metrics per condition", "", f"MAE in physical units (MAE-bar for vectors: mean absolute error "
             "over elements); `MAE (learned space)`: the same after the registry's log10(x + offset), for "
             f"modalities learned in log space; {metrics['nmae_definition']}. "
             "For the SFH conditions only the hidden part of the SFH is scored (every hidden bin, including bins "
             "after a galaxy's epoch, where the true SFR is 0).", ""]
    for condition, targets in metrics["conditions"].items():
        lines += [f"### {condition}: {metrics['condition_descriptions'][condition]}", ""]
        rows = [[name, get_modality(name).unit or "-", _fmt(m["mae"]),
                 _fmt(m.get("mae_learning_space")) if get_modality(name).log else "(same)",
                 f"{_fmt(m['nmae_median'], 3)} [{_fmt(m['nmae_p16'], 3)}, {_fmt(m['nmae_p84'], 3)}]"]
                for name, m in targets.items()]
        lines += [*_table(["target", "unit", "MAE", "MAE (learned space)", "nMAE median [p16, p84]"], rows), ""]
    photoz = {c: t["redshift"] for c, t in metrics["conditions"].items()
              if t.get("redshift", {}).get("bias") is not None}
    if photoz:
        rows = [[c, f"{m['bias']:+.4f}", f"{m['sigma_iqr']:.4f}", f"{m['sigma_nmad']:.4f}",
                 f"{100 * m['outlier_rate']:.2f}%", f"{m['outlier_threshold']:.3f}"] for c, m in photoz.items()]
        lines += ["### Photo-z (RAIL definitions on ez = (z_pred - z_true)/(1 + z_true))", "",
                  *_table(["condition", "bias", "sigma_IQR", "sigma_NMAD", "outlier rate", "outlier bound on abs(ez)"],
                          rows), ""]
    gold = {c: m["gold"] for c, m in photoz.items() if m.get("gold", {}).get("mae") is not None}
    if gold:
        rows = [[c, f"{100 * m['fraction']:.1f}%", _fmt(m["mae"]), f"{m['bias']:+.4f}", f"{m['sigma_nmad']:.4f}",
                 f"{100 * m['outlier_rate']:.2f}%"] for c, m in gold.items()]
        lines += [f"### Photo-z on LSST's gold sample (observed i < {GOLD_I_LIMIT})", "",
                  *_table(["condition", "share of the test split", "MAE", "bias", "sigma_NMAD", "outlier rate"],
                          rows), ""]
    return lines


def _calibration_section(metrics) -> list[str]:
    keys = ("coverage_68", "coverage_95", "pit_ks", "pit_ks_p", "crps", "cde_loss", "temperature", "shift")
    rows = [[c, name, *(_fmt(m.get(k), 3) for k in keys)]
            for c, targets in metrics["conditions"].items() for name, m in targets.items() if "pit_ks" in m]
    if not rows:
        return []
    return ["## Calibration of the predictive distributions", "",
            "coverage_68 / coverage_95: fraction of test galaxies whose truth lies in the central 68% / 95% "
            "interval (ideal 0.68 / 0.95); pit_ks: Kolmogorov-Smirnov distance of the PIT values from uniform "
            "(0 = calibrated); pit_ks_p: the probability that a calibrated model gives a distance this large on "
            "this many galaxies (PIT flat within noise at the 5% level: p >= 0.05); crps: continuous ranked "
            "probability score in the target's units (redshift: on "
            f"the {REDSHIFT_GRID[0]:g}-{REDSHIFT_GRID[-1]:g} grid; stellar mass: the model's CDF, `MosaicModel.cdf`, "
            f"on a {CDF_GRID_STEP:g}-dex grid); cde_loss: "
            "RAIL's CDE loss, integral of p^2 dz - 2 mean p(z_true) (lower is better); temperature and shift: "
            "the factor on the predicted spreads and the move in predicted standard deviations that "
            "`MosaicModel.calibrate` fitted for this query on held-out training rows (never the test split) and "
            "`predict` applied (1 and 0 = as trained), followed by a monotone map of each scalar target's PIT "
            "fitted on the same rows.", "",
            *_table(["condition", "target", *keys], rows), ""]


def _baselines_section(metrics) -> list[str]:
    baselines = metrics.get("baselines") or {}
    if not baselines.get("tasks"):
        return []
    lines = ["## MOSAIC beside single-task baselines", "",
             "kNN: k-nearest neighbours on standardised features, k chosen on a 20% validation split; "
             "HGB: scikit-learn HistGradientBoostingRegressor; MLP: a dense network (3 x 256 GELU, L1 loss, "
             "40 epochs, the best on a 10% validation split) trained for the task alone. Features: the "
             "condition's inputs (asinh magnitudes, log10(SFR + 1e-3) on the given SFH bins). Same test rows, "
             "same metric functions.", ""]
    rows = []
    for task, r in baselines["tasks"].items():
        mosaic = metrics["conditions"][r["condition"]][r["target"]]["mae"]
        est = r["estimators"]
        best_name = min(est, key=lambda e: est[e]["mae"])
        best = est[best_name]["mae"]
        if mosaic is None:
            verdict = "n/a"
        elif mosaic > best:
            verdict = (f"MOSAIC loses to {best_name}: MAE +{mosaic - best:.3g} "
                       f"(+{100 * (mosaic / best - 1):.0f}%, {mosaic / best:.2g}x)")
        else:
            verdict = f"MOSAIC wins over {best_name}: MAE {mosaic - best:.3g} ({100 * (mosaic / best - 1):.0f}%)"
        knn = est.get("knn", {})
        rows.append([task, _fmt(mosaic), f"{_fmt(knn.get('mae'))} (k={knn.get('params', {}).get('k')})",
                     _fmt(est.get("hgb", {}).get("mae")), _fmt(est.get("mlp", {}).get("mae")), verdict,
                     ", ".join(f"{e} {v['fit_s']:.1f}/{v['predict_s']:.2f}" for e, v in est.items())])
    lines += _table(["task", "MOSAIC MAE", "kNN MAE", "HGB MAE", "MLP MAE", "verdict", "fit/predict s"], rows)
    first = next(iter(baselines["tasks"].values()))
    if first["n_train"] < first["n_train_available"]:
        lines += ["", f"The baselines were trained on a random subsample of {first['n_train']} of the "
                  f"{first['n_train_available']} training galaxies (cap {baselines['max_train']}, `--max-train`); "
                  "MOSAIC saw the whole train split, so these baselines are handicapped."]
    mosaic_s = sum(metrics["timing_s"]["mosaic_predict"].values())
    lines += ["", f"MOSAIC predicted every target of all conditions in {mosaic_s:.1f} s in total.", ""]
    return lines


def _ablation_section(metrics) -> list[str]:
    ablation = metrics.get("sfh_convention_ablation")
    if not ablation:
        return []
    rows = [[name, _fmt(g, 3)] for name, g in ablation.items()]
    return ["## SFH-convention ablation (HGB baseline, stellar mass: late vs early SFH)", "",
            "gain = 1 - MAE(LSST + SFH at 10-13.8 Gyr) / MAE(LSST + SFH at 0-10 Gyr). sfr: star-formation "
            "rate; mass_formed: cumulative mass formed (cumsum of SFR dt); _shape: divided by the total mass "
            "formed; z<0.5: train and test cut to low redshift. "
            f"Paper (MOSAIC, SFR): {PAPER_GAINS['stellar_mass_gain_late_vs_early_sfh']}.",
            "", *_table(["convention", "gain"], rows), ""]


def _depth_section(metrics) -> list[str]:
    depth = metrics.get("depth_scale")
    if not depth:
        return []
    low, high = depth["range"]
    lines = ["## Scored at per-galaxy depths", "",
             f"The test photometry observed afresh (`--depth-scale {low:g} {high:g}`, seed {depth['seed']}): each "
             f"galaxy's fluxes drawn from its noise-free ones with the catalog's flux errors times a factor s, "
             f"uniform in [{low:g}, {high:g}] per galaxy (s = 2: 0.75 mag shallower); every number above is "
             "scored on these rows. A model with error inputs was given each galaxy's errors. Below, by s: "
             "MAE of redshift and stellar mass, and the 68% coverage of the redshift posteriors (ideal 0.68).", ""]
    for condition, bins in depth["by_condition"].items():
        rows = [[f"{b['range'][0]:.3g} - {b['range'][1]:.3g}", str(b["n"]), _fmt(b.get("redshift_mae")),
                 _fmt(b.get("log_stellar_mass_mae")), _fmt(b.get("redshift_coverage_68"), 3)] for b in bins]
        lines += [f"{condition}:", "", *_table(["s", "galaxies", "redshift MAE", "stellar mass MAE",
                                                  "redshift coverage 68%"], rows), ""]
    return lines


def render_report(metrics: Mapping, figures: Mapping[str, str]) -> str:
    """REPORT.md from the metrics dictionary and the figure file names (relative to the report)."""
    lines = ["# MOSAIC evaluation", "",
             f"Model `{metrics['model']}`, data `{metrics['data']}`, {metrics['n_test']} test galaxies "
             f"(of {metrics['n_test_available']}). Conditions: {', '.join(metrics['conditions'])}. "
             f"Point predictions scored: {metrics.get('point_prediction', 'the point head output')}."]
    if metrics["skipped_conditions"]:
        lines.append(f"Skipped (the model lacks an input modality): {', '.join(metrics['skipped_conditions'])}.")
    lines.append("")
    lines += _headline_section(metrics)
    lines += _conditions_section(metrics)
    lines += _calibration_section(metrics)
    lines += _depth_section(metrics)
    lines += _baselines_section(metrics)
    lines += _ablation_section(metrics)
    captions = {"conditions": "Figure 2 analogue: predictions by input condition",
                "photoz": "Photo-z diagnostic", "embeddings": "Figure 3 analogue: embeddings",
                "pit": "Photo-z PIT histogram (flat = calibrated)"}
    if figures:
        lines += ["## Figures", ""]
        for key, name in figures.items():
            lines += [f"### {captions[key]}", "", f"![{captions[key]}]({name})", ""]
    lines.append(f"Evaluation took {metrics['timing_s']['total']:.1f} s.")
    return "\n".join(lines) + "\n"
