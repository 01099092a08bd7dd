"""Normalisation statistics: per modality, per element, in the learning space of the modality registry.

They are computed on the train split only, ignoring NaN and inf (missing values). Partial moments
(count, mean, sum of squared deviations) merge exactly in any grouping (Chan et al. 1979), so a catalog
built by K job-array tasks gets the same statistics as one built in a single pass: each Parquet file stores
its own moments, and `finalize` merges them in file order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..modalities import MODALITIES, MODALITY_NAMES

#: Smallest standard deviation saved, in learning units (dex or mag): an element that is constant in the
#: training data (e.g. the SFR floor at the earliest cosmic times) must not divide by zero.
STD_FLOOR = 1.0e-3


@dataclass
class Moments:
    """Element-wise count, mean and sum of squared deviations (M2) of the finite values seen so far."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, length: int) -> Moments:
        return cls(np.zeros(length, np.int64), np.zeros(length), np.zeros(length))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        """Moments of a (rows, length) array, NaN and inf excluded."""
        finite = np.isfinite(values)
        count = finite.sum(axis=0)
        x = np.where(finite, values, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, x.sum(axis=0) / np.maximum(count, 1), 0.0)
        m2 = np.where(finite, (x - mean) ** 2, 0.0).sum(axis=0)
        return cls(count.astype(np.int64), mean, m2)

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both samples (Chan, Golub & LeVeque's pairwise update)."""
        n = self.count + other.count
        safe_n = np.maximum(n, 1)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * (other.count / safe_n), 0.0)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / safe_n)
        return Moments(n, mean, m2)

    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0, as numpy's nanstd), floored at STD_FLOOR; 1 where unseen."""
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        return np.where(self.count > 0, np.maximum(std, STD_FLOOR), 1.0)

    def to_dict(self) -> dict:
        return {"count": self.count.tolist(), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> Moments:
        return cls(np.asarray(d["count"], np.int64), np.asarray(d["mean"], float), np.asarray(d["m2"], float))


def learning_values(name: str, column) -> np.ndarray:
    """A modality column (physical units) as a (rows, length) float64 array in learning space; a value
    that is not finite in physical units (missing) is NaN here, whatever the transform would make of it."""
    modality = MODALITIES[name]
    x = np.asarray(column, dtype=np.float64).reshape(-1, modality.length)
    return np.where(np.isfinite(x), modality.to_learning(x), np.nan)


class NormalizationAccumulator:
    """Running moments of every modality over the chunks it is fed."""

    def __init__(self, moments: Mapping[str, Moments] | None = None):
        self.moments = dict(moments) if moments is not None else {
            name: Moments.empty(MODALITIES[name].length) for name in MODALITY_NAMES
        }

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        for name in MODALITY_NAMES:
            self.moments[name] = self.moments[name].merge(Moments.of(learning_values(name, chunk[name])))

    def merge(self, other: NormalizationAccumulator) -> None:
        for name in MODALITY_NAMES:
            self.moments[name] = self.moments[name].merge(other.moments[name])

    def to_dict(self) -> dict:
        return {name: m.to_dict() for name, m in self.moments.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> NormalizationAccumulator:
        return cls({name: Moments.from_dict(d[name]) for name in MODALITY_NAMES})

    def normalization(self) -> dict[str, dict[str, list]]:
        """{modality: {"mean": [...], "std": [...], "count": [...]}}; an element never seen gets mean 0, std 1."""
        return {
            name: {"mean": m.mean.tolist(), "std": m.std().tolist(), "count": m.count.tolist()}
            for name, m in self.moments.items()
        }


def save_normalization(normalization: Mapping, path: str | os.PathLike) -> None:
    """Write the statistics as JSON (written beside, then renamed: never half-written)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(normalization, indent=1) + "\n")
    os.replace(tmp, path)


def load_normalization(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """Read normalization.json: {modality: {"mean": array, "std": array}} (float64, registry lengths)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read normalisation statistics ({err})") from err
    out = {}
    for name, entry in raw.items():
        modality = MODALITIES.get(name)
        if modality is None:
            raise ValueError(f"{path}: unknown modality {name!r}; valid names are {', '.join(MODALITY_NAMES)}")
        mean, std = np.asarray(entry["mean"], float), np.asarray(entry["std"], float)
        if mean.shape != (modality.length,) or std.shape != (modality.length,):
            raise ValueError(f"{path}: {name} statistics must have {modality.length} elements")
        if not (np.all(np.isfinite(mean)) and np.all(std > 0)):
            raise ValueError(f"{path}: {name} statistics must be finite with std > 0")
        out[name] = {"mean": mean, "std": std}
    return out
