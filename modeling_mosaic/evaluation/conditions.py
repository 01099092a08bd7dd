"""The five input conditions of the paper's figure 2, as data.

A condition says which modalities the model is shown (some only in part: an SFH given on one window of
cosmic time) and so which it must predict: every modality not given in full. For a partly given modality
only the hidden elements are scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..configuration_mosaic import true_runs
from ..modalities import MODALITIES, MODALITY_NAMES, get_modality
from ..noise import NOISY_MODALITIES, asinh_magnitude_error, error_columns

#: The cosmic time (Gyr) splitting the SFH into an "early" and a "late" window.
SFH_CUT_GYR = 10.0
#: Elements of the registry's SFH time grid at or after the cut (the late window, 10 - 13.8 Gyr).
SFH_LATE = np.asarray(MODALITIES["sfh"].axis) >= SFH_CUT_GYR
SFH_LATE.setflags(write=False)


@dataclass(frozen=True)
class Condition:
    """What the model is shown: modalities given in full, plus modalities given only on some elements
    (`partial`: name -> boolean mask over the modality's elements, True = given)."""

    name: str
    description: str
    given: tuple[str, ...] = ()
    partial: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        for name in (*self.given, *self.partial):
            get_modality(name)
        for name, mask in self.partial.items():
            length = get_modality(name).length
            if np.shape(mask) != (length,):
                raise ValueError(f"condition {self.name!r}: the mask of {name!r} must have shape ({length},)")

    @property
    def inputs_needed(self) -> tuple[str, ...]:
        """Every modality the condition shows, fully or in part, in registry order."""
        return tuple(n for n in MODALITY_NAMES if n in self.given or n in self.partial)

    def targets(self, modalities: Iterable[str] = MODALITY_NAMES) -> list[str]:
        """Every modality of `modalities` not given in full (a partly given one is a target too)."""
        return [n for n in modalities if n not in self.given]

    def score_mask(self, name: str) -> np.ndarray | None:
        """Elements of target `name` to score: the hidden ones of a partly given modality, else all (None)."""
        mask = self.partial.get(name)
        return None if mask is None else ~np.asarray(mask, dtype=bool)

    def given_ranges(self) -> dict:
        """{name: [[start, stop], ...]}: the element ranges shown (the format of `MosaicConfig.mask_queries`)."""
        ranges = {n: [[0, get_modality(n).length]] for n in self.given}
        return {**ranges, **{n: true_runs(mask) for n, mask in self.partial.items()}}

    def inputs(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's `inputs` dict from catalog columns: given modalities as they are, partly given ones
        with their hidden elements set to NaN ("not given")."""
        inputs = {}
        for name in self.inputs_needed:
            if name not in columns:
                raise ValueError(f"condition {self.name!r} needs the column {name!r}, which the catalog lacks")
            values = np.array(columns[name], dtype=np.float32, copy=True)
            if name in self.partial:
                values[:, ~np.asarray(self.partial[name], dtype=bool)] = np.nan
            inputs[name] = values
        return inputs

    def complete_rows(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Which rows of `inputs` (from `Condition.inputs`) show every element the condition shows: the rows its
        calibration entry is for (a row missing a shown value, a band not observed, is another query)."""
        complete = np.ones(len(next(iter(inputs.values()))), dtype=bool)
        for name, values in inputs.items():
            values = np.asarray(values).reshape(len(complete), -1)
            shown = np.asarray(self.partial.get(name, np.ones(values.shape[1], dtype=bool)), dtype=bool)
            complete &= np.isfinite(values[:, shown]).all(axis=1)
        return complete

    def errors(self, columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's `errors` dict from catalog columns (`error_columns`): the 1-sigma asinh-magnitude errors of
        the photometry shown, at the measured flux, as an observer knows them; zero where the measured flux is the
        true one (a catalog stores its depth model's flux errors even when it applied no noise)."""
        errors = {}
        for name in (n for n in self.inputs_needed if n in NOISY_MODALITIES):
            missing = [c for c in error_columns((name,)) if c not in columns]
            if missing:
                raise ValueError(f"condition {self.name!r}: the errors of {name!r} need the column(s) {missing}, "
                                 "which the catalog lacks")
            flux = np.asarray(columns[f"{name}_flux"], dtype=np.float64)
            error = np.where(flux == columns[f"{name}_flux_true"], 0.0, columns[f"{name}_flux_err"])
            errors[name] = asinh_magnitude_error(flux, error, MODALITIES[name].softening_njy).astype(np.float32)
        return errors


CONDITIONS: tuple[Condition, ...] = (
    Condition("lsst", "LSST ugrizy only", given=("lsst",)),
    Condition("lsst+spherex", "LSST and SPHEREx", given=("lsst", "spherex")),
    Condition(
        "lsst+sfh_late", f"LSST and the SFH at cosmic time {SFH_CUT_GYR:g} - 13.8 Gyr (earlier part hidden)",
        given=("lsst",), partial={"sfh": SFH_LATE},
    ),
    Condition(
        "lsst+sfh_early", f"LSST and the SFH at cosmic time 0 - {SFH_CUT_GYR:g} Gyr (later part hidden)",
        given=("lsst",), partial={"sfh": ~SFH_LATE},
    ),
    Condition("stellar_mass", "stellar mass only", given=("log_stellar_mass",)),
)

CONDITIONS_BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}


def get_condition(name: str) -> Condition:
    """Look a condition up by name, with an error that lists the valid names."""
    try:
        return CONDITIONS_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; valid names are {', '.join(CONDITIONS_BY_NAME)}") from None


def calibrate_for_conditions(model, columns: Mapping[str, np.ndarray], conditions=CONDITIONS) -> dict:
    """Fit a probabilistic model's shifts and temperatures (`MosaicModel.calibrate`) for each condition it can
    run, on the held-out `columns` (never the test split) that show all of it (`Condition.complete_rows`), for
    every target; returns {condition: {target: {"temperature": t, "shift": d}}}, leaving out a condition no row
    shows in full. A model with `error_inputs` is given the errors of its photometry (`Condition.errors`:
    `columns` must then hold the `error_columns`)."""
    modalities = tuple(model.config.modalities)
    fitted = {}
    for condition in conditions:
        if not set(condition.inputs_needed) <= set(modalities):
            continue
        inputs = condition.inputs(columns)
        rows = condition.complete_rows(inputs)
        if not rows.any():
            continue
        targets = condition.targets(modalities)
        errors = condition.errors(columns) if model.config.error_inputs else None
        fitted[condition.name] = model.calibrate(
            {n: v[rows] for n, v in inputs.items()}, {t: np.asarray(columns[t])[rows] for t in targets},
            errors=None if errors is None else {n: v[rows] for n, v in errors.items()})
    return fitted
