"""MOSAIC model configuration: which modalities, how they are cut into tokens and normalised, the encoder's
size, the loss, and the masking hyper-parameters the model was trained with.

This file is remote code: it imports only numpy, transformers and (relatively) the modality registry, so a
checkpoint's copy of it loads on a machine without the `modeling_mosaic` package.
"""

import math
from typing import ClassVar

import numpy as np
from transformers import PretrainedConfig

from .modalities import MODALITIES, MODALITY_NAMES, get_modality

#: Order-of-magnitude (mean, std) of each modality in learning space for a Last-Journey-like catalog
#: (0 < z < 3, halo masses above 1e11 Msun): log10(1 + z); log10 masses; log10(SFR + 1e-3 Msun/yr);
#: log10(L_nu + 1e15 erg/s/Hz); asinh magnitudes. They only keep a fresh model's inputs near unit scale;
#: a trained model carries its catalog's per-element statistics (`set_normalization_from_data`).
DEFAULT_NORMALIZATION = {
    "redshift": (0.3, 0.15),
    "log_halo_mass": (12.0, 0.7),
    "log_stellar_mass": (10.0, 0.8),
    "sfh": (-1.0, 1.5),
    "sed": (28.0, 1.5),
    "lsst": (25.0, 2.0),
    "spherex": (23.0, 1.5),
}

#: Smallest per-element standard deviation `set_normalization_from_data` keeps, in learning-space units:
#: an element that barely varies in the training catalog must not amplify a new galaxy's deviation 1e6-fold.
MIN_STD = 1e-2


def is_number(value) -> bool:
    """A real number, as a JSON or YAML value may not be (a string, a null; a bool is not one either)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def true_runs(mask) -> list:
    """A 1-d boolean mask -> [[start, stop], ...], its runs of True (the "given ranges" format)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]])))
    return edges.reshape(-1, 2).tolist()


class MosaicConfig(PretrainedConfig):
    """Configuration of `MosaicModel`; `MosaicConfig()` is the standard seven-modality model.

    The model's flat layout concatenates the configured modalities, in registry order, into one vector of
    `num_elements` values per galaxy; `modality_slices` says where each one lives.

    Args:
        modalities: modality names (registry order is imposed); default all seven.
        patch_sizes: elements per token for each vector modality; default the registry's `patch_size`.
        normalization: name -> {"mean": [...], "std": [...]}, one entry per element, in learning space
            (after the registry's log transform); default `DEFAULT_NORMALIZATION` broadcast per element.
        hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_dropout_prob,
        attention_dropout, layer_norm_eps, initializer_range: the pre-norm transformer encoder.
        loss_type: "mse", "l1" or "huber" (delta 1), on normalised values.
        loss_weights: {name: weight} on that modality's masked error in the loss's mean over modalities (default
            1 each): unweighted, redshift and stellar mass, the scalars users ask for most, get 2/7 of a loss
            whose seven modalities all have hidden elements, each one element against the SED's 256.
        visible_loss_weight: weight of the reconstruction error on visible elements (0: masked loss only).
        mask_segment_probability: chance that a visible vector modality also hides one contiguous segment.
        mask_segment_fraction: [min, max] fraction of a vector's length that such a segment covers.
        mask_visible_decay: the number k of visible modalities (1..n-1 of the n present) is drawn with
            P(k) proportional to decay**(k - 1): 1.0 is uniform; below 1 favours few inputs, the questions users
            ask ("redshift from LSST"), which a uniform draw trains rarely.
        mask_prior_probability: chance that a training sample shows nothing at all, which teaches the
            model its unconditional prior (what `predict` returns for empty inputs).
        mask_queries: input sets users ask with, each {name: [[start, stop], ...]} (the element ranges given;
            e.g. the paper's figure-2 conditions). With probability `mask_query_probability` a training sample
            shows one of them, drawn uniformly, and hides everything else; the random draw above rarely
            poses exactly these (LSST + SPHEREx alone is ~1% of its samples; an SFH shown only on its last 28%
            never, as a hidden segment covers at most half).
        mask_query_probability: see `mask_queries` (0: the random draw only).
        mask_query_weights: relative chance of each of `mask_queries` (default equal), so the questions a model
            is judged on most can be posed more often than the rest.
        head_type: "point" (one value per element, trained by `loss_type`) or "gaussian" (a mean and a
            log-variance per element, trained by the beta-NLL below, `loss_type` unused; redshift
            gets a mixture).
        nll_beta: the gaussian head's loss is the beta-NLL of Seitzer et al. (2022): each element's negative
            log-likelihood weighted by its predicted variance**beta (no gradient through the weight). Plain NLL
            (0) lets a large predicted variance mute an element's gradient, so hard galaxies stop being
            fitted and the means lag a point head's; 1 gives the means MSE's gradients. The optimum variance
            is the same for every beta.
        redshift_mixture_components: K, the Gaussians of the redshift posterior (in normalised log10(1 + z))
            when head_type is "gaussian": photo-z posteriors are bimodal where colours are degenerate.
        step_inputs: embed, beside each visible element of a vector, its step from the previous element of the
            same token (a colour for photometry, a slope for an SED or SFH) in units of that step's spread in
            the training data. The spread of a band's magnitude is mostly the galaxy's brightness, common to
            all bands, so a colour is a small difference of large inputs; standardised steps hand the encoder
            the colours at unit scale, and photo-z from LSST learns about twice as fast. Only pairs of visible
            elements give a step, so nothing hidden leaks.
        error_inputs: embed each element's 1-sigma measurement error beside its value, so that a noisy band
            counts less (the `errors` input of `forward` and `predict`).
        noise_on_the_fly: the training collator draws LSST/SPHEREx fluxes as true + error * N(0, 1) from the
            catalog's `*_flux_true` and `*_flux_err` columns, so one catalog serves many noise realisations.
        noise_scale: [min, max] range of a per-galaxy factor on those errors (drawn uniformly), so one catalog
            also serves many depths.
        calibration: gaussian head: a list of {"given": {name: [[start, stop], ...]}, "temperature": {target:
            t}, "shift": {target: d}}, fitted by `MosaicModel.calibrate` on held-out galaxies. For rows whose
            given elements are exactly those ranges (element indices within each modality) `predict` moves
            the predictive distribution of `target` by d of its predicted standard deviations and multiplies
            its spreads by t; other rows are left as trained. A missing shift is 0. "pit_knots": {"redshift":
            [0, ..., 1]} (optional) maps the redshift posterior's PIT piecewise linearly onto uniform levels.
    """

    model_type = "mosaic"
    keys_to_ignore_at_inference: ClassVar[list] = ["last_hidden_state", "pooled", "log_variances", "redshift_mixture"]

    def __init__(
        self,
        modalities=None,
        patch_sizes=None,
        normalization=None,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=1024,
        hidden_dropout_prob=0.0,
        attention_dropout=0.0,
        layer_norm_eps=1e-6,
        initializer_range=0.02,
        loss_type="mse",
        visible_loss_weight=0.0,
        mask_segment_probability=0.5,
        mask_segment_fraction=(0.1, 0.5),
        mask_visible_decay=0.6,
        mask_prior_probability=0.02,
        mask_queries=None,
        mask_query_probability=0.0,
        mask_query_weights=None,
        loss_weights=None,
        head_type="point",
        redshift_mixture_components=5,
        nll_beta=0.5,
        step_inputs=True,
        error_inputs=False,
        noise_on_the_fly=False,
        noise_scale=(1.0, 1.0),
        calibration=None,
        **kwargs,
    ):
        names = MODALITY_NAMES if modalities is None else [get_modality(n).name for n in modalities]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"modalities must be distinct and non-empty, got {list(names)}")
        self.modalities = [n for n in MODALITY_NAMES if n in names]

        patch_sizes = dict(patch_sizes or {})
        for name in patch_sizes:
            if name not in self.modalities:
                raise ValueError(f"patch_sizes names {name!r}, which is not one of the modalities {self.modalities}")
        self.patch_sizes = {
            n: int(patch_sizes.get(n, MODALITIES[n].patch_size)) if not MODALITIES[n].is_scalar else 1
            for n in self.modalities
        }
        for name, size in self.patch_sizes.items():
            if not 1 <= size <= MODALITIES[name].length:
                raise ValueError(f"patch_sizes[{name!r}] = {size} must lie in 1..{MODALITIES[name].length}")

        for name, size in (("hidden_size", hidden_size), ("num_attention_heads", num_attention_heads),
                           ("intermediate_size", intermediate_size)):
            if int(size) < 1:
                raise ValueError(f"{name} must be >= 1, got {size}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads "
                             f"{num_attention_heads}")
        if int(num_hidden_layers) < 1:
            raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
        if loss_type not in ("mse", "l1", "huber"):
            raise ValueError(f"loss_type must be 'mse', 'l1' or 'huber', got {loss_type!r}")
        if head_type not in ("point", "gaussian"):
            raise ValueError(f"head_type must be 'point' or 'gaussian', got {head_type!r}")
        if int(redshift_mixture_components) < 1:
            raise ValueError(f"redshift_mixture_components must be >= 1, got {redshift_mixture_components}")
        if not 0.0 <= float(nll_beta) <= 1.0:
            raise ValueError(f"nll_beta must lie in [0, 1], got {nll_beta}")
        if len(noise_scale) != 2:
            raise ValueError(f"noise_scale must be two numbers, min and max, got {noise_scale}")
        noise_low, noise_high = (float(f) for f in noise_scale)
        if not 0.0 <= noise_low <= noise_high:
            raise ValueError(f"noise_scale must satisfy 0 <= min <= max, got {noise_scale}")
        low, high = (float(f) for f in mask_segment_fraction)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"mask_segment_fraction must satisfy 0 < min <= max <= 1, got {mask_segment_fraction}")

        for name, probability in (("hidden_dropout_prob", hidden_dropout_prob), ("attention_dropout", attention_dropout)):
            if not 0.0 <= float(probability) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {probability}")
        if not (math.isfinite(float(visible_loss_weight)) and float(visible_loss_weight) >= 0.0):
            raise ValueError(f"visible_loss_weight must be finite and >= 0, got {visible_loss_weight}")

        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout = attention_dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.loss_type = loss_type
        self.visible_loss_weight = float(visible_loss_weight)
        self.mask_segment_probability = float(mask_segment_probability)
        self.mask_segment_fraction = [low, high]
        if not 0.0 < float(mask_visible_decay) <= 1.0:
            raise ValueError(f"mask_visible_decay must lie in (0, 1], got {mask_visible_decay}")
        self.mask_visible_decay = float(mask_visible_decay)
        self.mask_prior_probability = float(mask_prior_probability)
        self.mask_queries = [self._checked_ranges(query, "mask_queries") for query in mask_queries or ()]
        if not 0.0 <= float(mask_query_probability) <= 1.0 or (mask_query_probability and not self.mask_queries):
            raise ValueError(f"mask_query_probability must lie in [0, 1] and needs mask_queries, got "
                             f"{mask_query_probability} with {len(self.mask_queries)} queries")
        self.mask_query_probability = float(mask_query_probability)
        weights = [1.0] * len(self.mask_queries) if mask_query_weights is None else list(mask_query_weights)
        if len(weights) != len(self.mask_queries) or not all(
                is_number(w) and math.isfinite(w) and w >= 0 for w in weights) or (
                self.mask_queries and sum(weights) <= 0):
            raise ValueError(f"mask_query_weights must hold {len(self.mask_queries)} finite weights >= 0, not all 0, "
                             f"one per mask_queries entry; got {mask_query_weights}")
        self.mask_query_weights = [float(w) for w in weights]
        loss_weights = dict(loss_weights or {})
        for name, weight in loss_weights.items():
            if name not in self.modalities or not (is_number(weight) and math.isfinite(weight) and weight > 0):
                raise ValueError(f"loss_weights: {name!r}: {weight} must name one of the modalities {self.modalities} "
                                 f"with a finite positive weight")
        self.loss_weights = {n: float(loss_weights.get(n, 1.0)) for n in self.modalities}
        self.head_type = head_type
        self.redshift_mixture_components = int(redshift_mixture_components)
        self.nll_beta = float(nll_beta)
        self.step_inputs = bool(step_inputs)
        self.error_inputs = bool(error_inputs)
        self.noise_on_the_fly = bool(noise_on_the_fly)
        self.noise_scale = [noise_low, noise_high]
        self.calibration = [self._checked_calibration(entry) for entry in calibration or ()]
        super().__init__(**kwargs)

        self.normalization = {}
        default = {
            n: {"mean": [DEFAULT_NORMALIZATION[n][0]] * MODALITIES[n].length,
                "std": [DEFAULT_NORMALIZATION[n][1]] * MODALITIES[n].length}
            for n in self.modalities
        }
        self.set_normalization({**default, **(normalization or {})})

    def _checked_ranges(self, given, argument) -> dict:
        """{name: [[start, stop], ...]} of given elements, names and ranges validated, as plain ints."""
        for name, ranges in dict(given).items():
            if name not in self.modalities:
                raise ValueError(f"{argument}: {name!r} is not one of the modalities {self.modalities}")
            if not all(0 <= int(a) < int(b) <= MODALITIES[name].length for a, b in ranges):
                raise ValueError(f"{argument}: the given ranges of {name!r} must lie in 0..{MODALITIES[name].length}")
        return {n: [[int(a), int(b)] for a, b in r] for n, r in dict(given).items()}

    def _checked_calibration(self, entry) -> dict:
        """One `calibration` entry with its names, ranges, temperatures and shifts validated."""
        given, temperature, shift = dict(entry["given"]), dict(entry["temperature"]), dict(entry.get("shift", {}))
        knots = {n: [float(u) for u in k] for n, k in dict(entry.get("pit_knots", {})).items()}
        given = self._checked_ranges(given, "calibration")
        for name in (*temperature, *shift, *knots):
            if name not in self.modalities:
                raise ValueError(f"calibration: {name!r} is not one of the modalities {self.modalities}")
        if not all(math.isfinite(float(t)) and float(t) > 0 for t in temperature.values()):
            raise ValueError(f"calibration: temperatures must be finite and positive, got {temperature}")
        if not all(math.isfinite(float(d)) for d in shift.values()):
            raise ValueError(f"calibration: shifts must be finite, got {shift}")
        for name, k in knots.items():
            if len(k) < 2 or k[0] != 0.0 or k[-1] != 1.0 or any(b <= a for a, b in zip(k, k[1:])):
                raise ValueError(f"calibration: the pit_knots of {name!r} must rise strictly from 0 to 1, got {k}")
        entry = {"given": given,
                 "temperature": {n: float(t) for n, t in temperature.items()},
                 "shift": {n: float(d) for n, d in shift.items()}}
        return {**entry, "pit_knots": knots} if knots else entry

    # ------------------------------------------------------------------------------------------ layout
    @property
    def modality_slices(self) -> dict:
        """name -> slice of the flat (num_elements,) vector holding that modality."""
        slices, start = {}, 0
        for name in self.modalities:
            slices[name] = slice(start, start + MODALITIES[name].length)
            start += MODALITIES[name].length
        return slices

    @property
    def num_elements(self) -> int:
        return sum(MODALITIES[n].length for n in self.modalities)

    def column_arrays(self, columns, argument="inputs", values=True) -> dict:
        """This model's modality columns as float32 arrays, checked: at least one, each (N,) or (N, 1) for a scalar
        and (N, length) for a vector, the same N for all, and with `values` (not errors) none below its modality's
        physical minimum. Other columns (ids, modalities this model does not use) are left out. `argument` names
        the caller's argument in error messages. A finite value beyond float32's range becomes float32's largest
        (an SED in erg/s, ~1e40, is a huge value, not a missing one)."""
        if not hasattr(columns, "items"):  # a dict, or a table with named columns (a pandas DataFrame)
            raise TypeError(f"{argument}: expected a dict of modality name -> array, got {type(columns).__name__}")
        given = {n: v for n, v in columns.items() if n in self.modalities}
        if not given:
            raise ValueError(f"{argument}: no modality columns; expected some of {', '.join(self.modalities)}")
        arrays = {}
        for name, value in given.items():
            if np.iscomplexobj(value):
                raise ValueError(f"{argument}[{name!r}] is complex; expected real numbers (NaN where missing)")
            try:
                with np.errstate(over="ignore"):
                    arrays[name] = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as error:
                try:  # a column of per-row vectors (pandas' list column read from Parquet)
                    with np.errstate(over="ignore"):
                        arrays[name] = np.stack([np.asarray(row, dtype=np.float32) for row in value])
                except (TypeError, ValueError):
                    raise ValueError(f"{argument}[{name!r}] is not numeric ({error}); expected real numbers (NaN "
                                     "where missing)") from None
            if np.isinf(arrays[name]).any():  # a finite value past float32's range is a huge value, not a missing one
                wide = np.asarray(value, dtype=np.float64)
                largest = np.finfo(np.float32).max
                arrays[name] = np.where(np.isfinite(wide), np.clip(wide, -largest, largest), wide).astype(np.float32)
        sizes = {n: a.shape[0] if a.ndim else None for n, a in arrays.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"{argument}: every modality needs the same number of rows, got {sizes}")
        n_rows = next(iter(sizes.values()))
        for name, array in arrays.items():
            length = MODALITIES[name].length
            if array.shape != (n_rows, length) and not (length == 1 and array.shape == (n_rows,)):
                shape = "(N,)" if length == 1 else f"(N, {length})"
                raise ValueError(f"{argument}[{name!r}] has shape {array.shape}; expected {shape} with length {length}")
            below = MODALITIES[name].below_minimum(array) if values else np.zeros(0, dtype=bool)
            if below.any():
                row = int(np.argwhere(below)[0][0])
                raise ValueError(f"{argument}[{name!r}] has {int(below.sum())} value(s) below the physical minimum "
                                 f"{MODALITIES[name].minimum:g} (first in row {row}: {array[below][0]:g}); NaN marks "
                                 "a missing value")
        return arrays

    def flatten(self, columns, argument="inputs", values=True):
        """Modality columns in physical units -> (N, num_elements) float32, NaN where a modality is absent
        (`column_arrays` says which columns count and checks them)."""
        arrays = self.column_arrays(columns, argument, values)
        n_rows = len(next(iter(arrays.values())))
        flat = np.full((n_rows, self.num_elements), np.nan, dtype=np.float32)
        for name, array in arrays.items():
            flat[:, self.modality_slices[name]] = array.reshape(n_rows, MODALITIES[name].length)
        return flat

    def unflatten(self, flat, names):
        """(N, num_elements) -> {name: (N,) for a scalar, (N, length) for a vector}."""
        return {n: flat[:, self.modality_slices[n]].reshape(-1) if MODALITIES[n].is_scalar
                else flat[:, self.modality_slices[n]] for n in names}

    def given_mask(self, ranges: dict) -> np.ndarray:
        """{name: [[start, stop], ...]} -> the (num_elements,) boolean mask of those elements."""
        mask = np.zeros(self.num_elements, dtype=bool)
        for name, pairs in ranges.items():
            start = self.modality_slices[name].start
            for a, b in pairs:
                mask[start + a : start + b] = True
        return mask

    # ----------------------------------------------------------------------------------- normalization
    def set_normalization(self, stats):
        """Set per-element learning-space statistics: name -> {"mean": seq, "std": seq} (length = modality's),
        optionally "step_std": the spread of each element minus the previous one (the first entry unused).
        Without it, steps are scaled as if neighbouring elements were independent (sqrt of the summed
        variances), an upper bound; `set_step_std_from_data` measures them.

        Modalities not named keep their statistics. Every std must be finite and positive.
        """
        for name, entry in stats.items():
            if name not in self.modalities:
                raise ValueError(f"normalization: {name!r} is not one of the modalities {self.modalities}")
            length = MODALITIES[name].length
            mean = [float(v) for v in np.ravel(entry["mean"])]
            std = [float(v) for v in np.ravel(entry["std"])]
            independent = np.sqrt(np.square(std) + np.square(np.roll(std, 1)))
            step_std = [float(v) for v in np.ravel(entry.get("step_std", independent))]
            step_std[0] = 1.0
            if len(mean) != length or len(std) != length or len(step_std) != length:
                raise ValueError(f"normalization[{name!r}]: mean has {len(mean)}, std {len(std)} and step_std "
                                 f"{len(step_std)} entries, expected {length}")
            if not all(math.isfinite(m) for m in mean) or not all(
                    math.isfinite(s) and s > 0 for s in std + step_std):
                raise ValueError(f"normalization[{name!r}]: means must be finite and stds finite and positive")
            self.normalization[name] = {"mean": mean, "std": std, "step_std": step_std}

    def set_step_std_from_data(self, columns):
        """Measure each vector element's step spread (std of it minus the previous element, learning space,
        both finite; floored at `MIN_STD`) from physical-unit columns, e.g. the training split."""
        for name in self.modalities:
            if name not in columns or MODALITIES[name].is_scalar:
                continue
            physical = np.asarray(columns[name], dtype=np.float64).reshape(-1, MODALITIES[name].length)
            learned = np.where(np.isfinite(physical), MODALITIES[name].to_learning(physical), np.nan)
            steps = np.diff(learned, axis=1)
            seen = np.isfinite(steps).any(axis=0)
            spread = np.ones(steps.shape[1])
            spread[seen] = np.maximum(np.nanstd(steps[:, seen], axis=0), MIN_STD)
            self.normalization[name]["step_std"] = [1.0, *(float(v) for v in spread)]

    def set_normalization_from_data(self, columns):
        """Set the statistics from physical-unit columns (e.g. the training split): per element, the mean and
        std of the learning-space values over finite entries (std floored at `MIN_STD`), and the step spreads."""
        flat = self.flatten(columns, argument="columns")
        stats = {}
        for name in self.modalities:
            if name not in columns:
                continue
            learned = MODALITIES[name].to_learning(flat[:, self.modality_slices[name]])
            learned[~np.isfinite(flat[:, self.modality_slices[name]])] = np.nan
            if np.isnan(learned).all(axis=0).any():
                raise ValueError(f"columns[{name!r}]: some elements have no finite value; cannot compute statistics")
            stats[name] = {"mean": np.nanmean(learned, axis=0), "std": np.maximum(np.nanstd(learned, axis=0), MIN_STD)}
        self.set_normalization(stats)
        self.set_step_std_from_data(columns)


__all__ = ["DEFAULT_NORMALIZATION", "MosaicConfig", "true_runs"]
