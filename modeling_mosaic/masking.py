"""The training data collator: catalog rows -> a flat masked batch for `MosaicModel.forward`.

Per galaxy it draws which modalities the model sees and which it must predict:

1. Of the n modalities the galaxy has, k on 1..n-1 stay visible, chosen uniformly; the others are hidden
   and scored. Every mix from "one in, the rest out" to "all but one in" is trained; P(k) is proportional to
   `mask_visible_decay`**(k - 1), so with the default 0.6 about two thirds of the samples show one or two
   modalities, as users' queries do (1.0 gives the uniform draw).
   4M (apple/ml-4m, fourm/data/masking.py) instead splits a token budget between modalities with a
   Dirichlet draw, for input and for target; that suits dozens of modalities with thousands of tokens,
   where whole-modality choices would be too coarse. With seven modalities whose token counts differ 100-fold
   (one redshift token, sixteen SED tokens) a token budget would almost never hide the scalars or show a
   single modality alone, while a per-modality draw asks exactly the questions users ask ("redshift from
   LSST", "everything from stellar mass").
2. Each visible vector modality, with probability `mask_segment_probability`, also hides one contiguous
   segment covering a fraction in `mask_segment_fraction` of its length (part of the SFH, a wavelength range).
3. With probability `mask_prior_probability` everything is hidden, which teaches the learned prior.
4. Otherwise, with probability `mask_query_probability`, the sample shows exactly one of `mask_queries`
   (the questions users ask, e.g. the paper's figure-2 conditions), drawn with `mask_query_weights`,
   instead of steps 1-2.

A galaxy with a single modality keeps it visible (only segments are scored). Targets are all hidden present
elements; a NaN element is never visible and never scored.

Randomness comes from a counter-based hash of (seed, epoch, galaxy_id) alone, so a galaxy's mask does not
depend on the batch it lands in, the batch size, the DDP rank or where a resumed run restarts. With
`noise_on_the_fly` the photometric noise is drawn the same way (`noise.py`), from a separate stream.
"""

from collections.abc import Mapping

import numpy as np
import torch

from .configuration_mosaic import MosaicConfig
from .modalities import MODALITIES
from .noise import noise_columns, noisy_photometry

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 generator's output function (Steele, Lea & Flood 2014) on a uint64 array: consecutive
    counters map to statistically independent uniform 64-bit words."""
    x = x + _GOLDEN_GAMMA
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, galaxy_ids, num_draws: int, stream: int = 0) -> np.ndarray:
    """(len(galaxy_ids), num_draws) uniforms in [0, 1), a pure function of (seed, epoch, galaxy_id, draw);
    `stream` selects an independent sequence (0: the masks)."""
    ids = np.asarray(galaxy_ids, dtype=np.int64).view(np.uint64)
    sequence = splitmix64(np.full(1, seed, dtype=np.int64).view(np.uint64)) ^ np.uint64(epoch) ^ (
        np.uint64(stream) << np.uint64(32))
    key = splitmix64(splitmix64(sequence) ^ ids)
    words = splitmix64(key[:, None] + np.arange(num_draws, dtype=np.uint64)[None, :])
    return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53


class MosaicMaskingCollator:
    """Collate catalog rows into {"values", "input_mask", "target_mask"} for `MosaicModel.forward`, plus
    "errors" for a config with `error_inputs`.

    config_or_names: a `MosaicConfig` (its layout and masking hyper-parameters are used) or modality names
        (with `MosaicConfig`'s default hyper-parameters). The keyword arguments override the config's values.
    A batch is a list of rows (dicts with modality columns and `galaxy_id`) or a dict of column arrays;
    other columns are ignored and a missing or None modality counts as absent. With the config's
    `noise_on_the_fly`, `lsst` and `spherex` are drawn from the `*_flux_true` and `*_flux_err` columns instead
    (see `noise.py`), and their asinh-magnitude errors are the batch's "errors".
    """

    def __init__(self, config_or_names, seed: int = 0, segment_probability=None, segment_fraction=None,
                 prior_probability=None):
        if not isinstance(config_or_names, MosaicConfig):
            config_or_names = MosaicConfig(modalities=config_or_names)
        config = self.config = config_or_names
        self.seed = int(seed)
        self.epoch = 0
        self.segment_probability = (
            config.mask_segment_probability if segment_probability is None else segment_probability)
        self.segment_fraction = config.mask_segment_fraction if segment_fraction is None else list(segment_fraction)
        self.prior_probability = config.mask_prior_probability if prior_probability is None else prior_probability
        self.lengths = np.array([MODALITIES[n].length for n in config.modalities])
        self.starts = np.array([s.start for s in config.modality_slices.values()])
        self.element_modality = np.repeat(np.arange(len(self.lengths)), self.lengths)
        self.element_position = np.arange(config.num_elements) - self.starts[self.element_modality]
        self.is_vector = np.array([not MODALITIES[n].is_scalar for n in config.modalities])
        self.query_given = np.array([config.given_mask(q) for q in config.mask_queries], dtype=bool).reshape(
            len(config.mask_queries), config.num_elements)
        self.query_cumulative_weights = np.cumsum(config.mask_query_weights)

    def set_epoch(self, epoch: int) -> None:
        """Draw new masks for every galaxy (call at the start of each epoch)."""
        self.epoch = int(epoch)

    def __call__(self, batch) -> dict:
        columns = batch if isinstance(batch, Mapping) else self._columns(batch)
        if "galaxy_id" not in columns:
            raise ValueError("batch: the galaxy_id column is required (each galaxy's mask is drawn from it)")
        galaxy_ids = np.asarray(columns["galaxy_id"])
        errors = {}
        if self.config.noise_on_the_fly:
            photometry, errors = noisy_photometry(columns, self.config, self.seed, self.epoch, galaxy_ids)
            columns = {**columns, **photometry}
        values = self.config.flatten(columns, argument="batch")
        input_mask, target_mask = self.masks(values, galaxy_ids)
        batch = {
            "values": torch.from_numpy(values),
            "input_mask": torch.from_numpy(input_mask),
            "target_mask": torch.from_numpy(target_mask),
        }
        if self.config.error_inputs:
            flat_errors = np.full(values.shape, np.nan, np.float32)
            for name, error in errors.items():
                flat_errors[:, self.config.modality_slices[name]] = error
            batch["errors"] = torch.from_numpy(flat_errors)
        return batch

    def _columns(self, rows) -> dict:
        """List of row dicts -> dict of column arrays; a missing or None modality becomes NaN."""
        columns = {}
        for name in self.config.modalities:
            missing = np.full(MODALITIES[name].length, np.nan, np.float32) if not MODALITIES[name].is_scalar else np.nan
            cells = [row.get(name) for row in rows]
            columns[name] = np.asarray([missing if c is None else c for c in cells], dtype=np.float32)
        for name in noise_columns(self.config):
            if all(name in row for row in rows):
                columns[name] = np.asarray([row[name] for row in rows], dtype=np.float64)
        if all("galaxy_id" in row for row in rows):
            columns["galaxy_id"] = np.asarray([row["galaxy_id"] for row in rows], dtype=np.int64)
        return columns

    def _num_visible(self, u: np.ndarray, most: np.ndarray) -> np.ndarray:
        """Inverse CDF of P(k) ~ decay**(k - 1) on 1..most, at uniforms u (uniform on 1..most when decay is 1)."""
        decay = self.config.mask_visible_decay
        if decay == 1.0:
            return 1 + np.floor(u * most)
        k = np.ceil(np.log1p(-u * (1.0 - decay ** most)) / np.log(decay))
        return np.clip(k, 1, np.maximum(most, 1))

    def masks(self, values: np.ndarray, galaxy_ids) -> tuple[np.ndarray, np.ndarray]:
        """(B, D) physical values with NaN for missing, (B,) ids -> (input_mask, target_mask), bool (B, D)."""
        num_modalities = len(self.lengths)
        present = np.isfinite(values)
        modality_present = np.logical_or.reduceat(present, self.starts, axis=1)
        num_present = modality_present.sum(axis=1)
        u = uniforms(self.seed, self.epoch, galaxy_ids, 4 + 4 * num_modalities)
        u_prior, u_count = u[:, 0], u[:, 1]
        u_order, u_segment, u_length, u_start = np.split(u[:, 2:-2], 4, axis=1)
        u_query, u_which = u[:, -2], u[:, -1]

        num_visible = np.where(num_present >= 2, self._num_visible(u_count, num_present - 1), num_present)
        num_visible = np.where(u_prior < self.prior_probability, 0, num_visible)
        rank = np.argsort(np.argsort(np.where(modality_present, u_order, 2.0), axis=1), axis=1)
        modality_visible = rank < num_visible[:, None]

        low, high = self.segment_fraction
        length = np.clip(np.round((low + (high - low) * u_length) * self.lengths), 1, self.lengths)
        start = np.floor(u_start * (self.lengths - length + 1))
        has_segment = modality_visible & self.is_vector & (u_segment < self.segment_probability)
        m, position = self.element_modality, self.element_position
        in_segment = has_segment[:, m] & (position >= start[:, m]) & (position < start[:, m] + length[:, m])

        input_mask = present & modality_visible[:, m] & ~in_segment
        asks_query = (u_prior >= self.prior_probability) & (u_query < self.config.mask_query_probability)
        if asks_query.any():
            # With equal weights (cumulative 1, 2, ..., n) this is floor(u * n), the uniform draw, exactly.
            total = self.query_cumulative_weights[-1]
            which = np.searchsorted(self.query_cumulative_weights, u_which[asks_query] * total, side="right")
            which = np.minimum(which, len(self.query_given) - 1)
            input_mask[asks_query] = present[asks_query] & self.query_given[which]
        return input_mask, present & ~input_mask
