"""The evaluation's figures (PNG, matplotlib's Agg canvas, no pyplot state).

figure 2 analogue: rows = conditions, columns = modalities; prediction vs truth for scalars, truth and
prediction curves of three galaxies for vectors. figure 3 analogue: a 2-D map of the pooled last hidden
state per condition, coloured by true redshift, halo mass and stellar mass. Photo-z diagnostic: z_pred vs
z_true with the RAIL outlier bounds. Axis labels and units come from the modality registry.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from ..modalities import get_modality
from .conditions import Condition

#: The quantities figure 3 colours the embedding by.
EMBEDDING_COLOURS = ("redshift", "log_halo_mass", "log_stellar_mass")
_GALAXY_COLOURS = ("tab:blue", "tab:orange", "tab:green")
DPI = 100


def label(text: str, name: str) -> str:
    """An axis label with the unit of modality `name` from the registry: 'text [unit]'."""
    unit = get_modality(name).unit
    return f"{text} [{unit}]" if unit else text


def _axis_label(name: str) -> str:
    m = get_modality(name)
    return f"{m.axis_name} [{m.axis_unit}]" if m.axis_unit else str(m.axis_name)


def example_galaxies(test: Mapping[str, np.ndarray], n: int = 3) -> np.ndarray:
    """Rows of `n` galaxies spread in stellar mass (quantiles 16%, 50%, 84% for n = 3) shown as curves."""
    mass = np.asarray(test["log_stellar_mass"], dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(mass))
    if finite.size == 0:
        return np.arange(min(n, len(mass)))
    order = finite[np.argsort(mass[finite], kind="stable")]
    quantiles = np.linspace(0.16, 0.84, n) if n > 1 else np.array([0.5])
    return order[np.round(quantiles * (len(order) - 1)).astype(int)]


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Render with Agg and write atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _scatter_panel(ax, truth, prediction, name, mae=None):
    finite = np.isfinite(truth) & np.isfinite(prediction)
    x, y = truth[finite], prediction[finite]
    ax.scatter(x, y, s=2, alpha=0.3, color="tab:blue", rasterized=True, linewidths=0)
    if x.size:
        lo, hi = np.percentile(np.concatenate([x, y]), [0.5, 99.5])
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=1, label="1:1")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(label("true", name))
    ax.set_ylabel(label("predicted", name))
    if mae is not None:
        ax.text(0.04, 0.94, f"MAE {mae:.3g}", transform=ax.transAxes, va="top", fontsize=8)


def _curves_panel(ax, truth, prediction, name, rows, hidden=None):
    """Truth (solid) and prediction (dashed) of a few galaxies. Log-learned modalities on a log axis,
    floored at the registry's offset (below it a value is indistinguishable from zero); wavelength axes
    log when they span more than a factor 5; magnitudes increase downwards."""
    m = get_modality(name)
    x = np.asarray(m.axis)
    floor = (lambda v: np.maximum(v, m.offset)) if m.log else (lambda v: v)
    for row, colour in zip(rows, _GALAXY_COLOURS, strict=False):
        ax.plot(x, floor(truth[row]), color=colour, lw=1.2)
        ax.plot(x, floor(prediction[row]), color=colour, lw=1.2, ls="--")
    if hidden is not None and hidden.any():
        ax.axvspan(x[hidden].min(), x[hidden].max(), color="0.85", zorder=0, label="hidden (scored)")
        ax.legend(loc="best", fontsize=7)
    if m.axis_unit == "Angstrom" and x.max() / x.min() > 5:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    if m.log:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    if "mag" in m.unit:
        ax.invert_yaxis()
    ax.set_xlabel(_axis_label(name))
    ax.set_ylabel(m.unit)


def figure_conditions(
    test: Mapping[str, np.ndarray],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    conditions: Sequence[Condition],
    modalities: Sequence[str],
    results: Mapping[str, Mapping[str, dict]],
    path,
) -> Path:
    """Figure-2 analogue. `predictions[condition][modality]` and `results[condition][modality]["mae"]`.
    Vector panels: solid = truth, dashed = prediction, three galaxies spread in stellar mass."""
    rows = example_galaxies(test)
    fig = Figure(figsize=(3.1 * len(modalities), 2.8 * len(conditions)))
    axes = fig.subplots(len(conditions), len(modalities), squeeze=False,
                        gridspec_kw={"left": 0.04, "right": 0.99, "bottom": 0.05, "top": 0.93,
                                     "wspace": 0.38, "hspace": 0.55})
    for i, condition in enumerate(conditions):
        for j, name in enumerate(modalities):
            ax = axes[i, j]
            ax.set_title(f"{condition.name}: {name}", fontsize=9)
            if name not in condition.targets(modalities) or name not in predictions.get(condition.name, {}):
                ax.text(0.5, 0.5, "input" if name in condition.given else "not predicted", ha="center",
                        va="center", fontsize=12, color="0.4", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            truth = np.asarray(test[name], dtype=np.float64)
            prediction = np.asarray(predictions[condition.name][name], dtype=np.float64)
            if get_modality(name).is_scalar:
                _scatter_panel(ax, truth, prediction, name, results.get(condition.name, {}).get(name, {}).get("mae"))
            else:
                _curves_panel(ax, truth, prediction, name, rows, condition.score_mask(name))
    fig.suptitle("Predictions by input condition. Scalars: prediction vs truth, 1:1 line. Vectors: solid = "
                 "truth, dashed = prediction, 3 galaxies at the 16/50/84th percentiles of stellar mass")
    return save_png(fig, path)


def project_2d(embedding: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """A 2-D map of an embedding: UMAP when umap-learn is installed, else PCA. Returns (points, method)."""
    X = np.asarray(embedding, dtype=np.float64)
    try:
        import umap
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(X), "PCA"
    return umap.UMAP(n_components=2, random_state=seed).fit_transform(X), "UMAP"


def figure_embeddings(
    maps: Mapping[str, np.ndarray],
    colours: Mapping[str, np.ndarray],
    method: str,
    path,
) -> Path:
    """Figure-3 analogue: one row per condition (`maps[condition]`: (galaxies, 2)), one column per
    quantity of `colours` (true values of the same galaxies)."""
    fig = Figure(figsize=(4.4 * len(colours), 3.4 * len(maps)))
    axes = fig.subplots(len(maps), len(colours), squeeze=False,
                        gridspec_kw={"left": 0.06, "right": 0.97, "bottom": 0.05, "top": 0.94,
                                     "wspace": 0.45, "hspace": 0.45})
    for i, (condition, points) in enumerate(maps.items()):
        for j, (name, values) in enumerate(colours.items()):
            ax = axes[i, j]
            values = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(values)
            lo, hi = np.percentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0)
            art = ax.scatter(points[finite, 0], points[finite, 1], c=values[finite], s=3, cmap="viridis",
                             vmin=lo, vmax=hi, rasterized=True, linewidths=0)
            fig.colorbar(art, ax=ax, label=label(f"true {name}", name))
            ax.set_title(f"{condition}: coloured by {name}", fontsize=9)
            ax.set_xlabel(f"{method} 1")
            ax.set_ylabel(f"{method} 2")
    fig.suptitle(f"Last hidden state ('all' pooled embedding), 2-D {method} per input condition")
    return save_png(fig, path)


def figure_photoz(
    z_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    metrics: Mapping[str, dict],
    path,
) -> Path:
    """Photo-z diagnostic: z_pred vs z_true per condition (`predictions[condition]`), with the 1:1 line and
    the outlier bounds z_pred = z_true +- max(0.06, 3 sigma_IQR) (1 + z_true) (`metrics[condition]`)."""
    z_true = np.asarray(z_true, dtype=np.float64)
    fig = Figure(figsize=(4.0 * len(predictions), 4.2))
    axes = fig.subplots(1, len(predictions), squeeze=False,
                        gridspec_kw={"left": 0.05, "right": 0.98, "bottom": 0.13, "top": 0.85, "wspace": 0.3})[0]
    top = np.nanpercentile(z_true, 99.9) * 1.05 if np.isfinite(z_true).any() else 1.0
    grid = np.linspace(0.0, top, 200)
    for ax, (condition, z_pred) in zip(axes, predictions.items(), strict=True):
        m = metrics[condition]
        ax.scatter(z_true, z_pred, s=2, alpha=0.3, rasterized=True, linewidths=0)
        ax.plot(grid, grid, color="k", lw=1)
        for sign in (-1, 1):
            ax.plot(grid, grid + sign * m["outlier_threshold"] * (1 + grid), color="tab:red", lw=1, ls="--")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("true redshift")
        ax.set_ylabel("predicted redshift")
        ax.set_title(condition, fontsize=10)
        ax.text(0.04, 0.96, f"bias {m['bias']:+.4f}\n$\\sigma_{{NMAD}}$ {m['sigma_nmad']:.4f}\n"
                f"$\\sigma_{{IQR}}$ {m['sigma_iqr']:.4f}\noutliers {100 * m['outlier_rate']:.1f}%",
                transform=ax.transAxes, va="top", fontsize=8)
    fig.suptitle("Photo-z: red dashes bound |ez| = max(0.06, 3 sigma_IQR), ez = (z_pred - z_true)/(1 + z_true)")
    return save_png(fig, path)


def figure_pit(pits: Mapping[str, np.ndarray], path, bins: int = 20) -> Path:
    """Histogram of the photo-z PIT values per condition, as a density: a calibrated posterior gives a flat
    line at 1; a U shape means overconfident posteriors, a hump underconfident ones."""
    fig = Figure(figsize=(3.6 * len(pits), 3.4))
    axes = fig.subplots(1, len(pits), squeeze=False,
                        gridspec_kw={"left": 0.07, "right": 0.98, "bottom": 0.15, "top": 0.82, "wspace": 0.3})[0]
    for ax, (condition, pit) in zip(axes, pits.items(), strict=True):
        ax.hist(np.asarray(pit, dtype=np.float64), bins=bins, range=(0.0, 1.0), density=True, color="tab:blue",
                alpha=0.7)
        ax.axhline(1.0, color="k", lw=1, ls="--")
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("PIT = CDF(z_true)")
        ax.set_ylabel("density")
        ax.set_title(condition, fontsize=10)
    fig.suptitle("Photo-z PIT histograms (dashed: a calibrated posterior)")
    return save_png(fig, path)
