"""The named catalog configurations, and what identifies a catalog (its options plus the code version).

A catalog of n rows is split by position: train is rows [0, n_train), test the last n_test rows. Generated
rows are independent draws, so the last rows are as random a test set as any.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Preset:
    name: str
    n_train: int
    n_test: int
    description: str

    @property
    def n(self) -> int:
        return self.n_train + self.n_test

    @property
    def test_fraction(self) -> float:
        return self.n_test / self.n

    def split(self, n: int | None = None) -> tuple[int, int]:
        """(n_train, n_test) for a catalog of n rows (default: the preset's), keeping the preset's fraction."""
        if n is None:
            return self.n_train, self.n_test
        return split_sizes(n, self.test_fraction)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", 512, 128, "smoke tests and CI: builds in seconds"),
        Preset("demo", 22_000, 2_000, "tutorials and quick training runs on a laptop; 4,000 of train are enough "
               "held-out rows to calibrate on"),
        Preset("paper", 185_247, 20_583, "the size of the paper's Last Journey sample (Xia et al. 2025), 90/10"),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown catalog config {name!r}; valid configs are {', '.join(PRESETS)}") from None


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(n_train, n_test) with n_test = round(n * test_fraction); both splits non-empty."""
    if n < 2:
        raise ValueError(f"a catalog needs at least 2 rows (one train, one test), got n={n}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    return n - n_test, n_test


def catalog_options(preset: Preset, n: int | None = None, **overrides):
    """The generator's `CatalogOptions` for a preset (n defaults to the preset's size)."""
    from .generator import CatalogOptions  # the physics stack is imported only when a catalog is generated

    return CatalogOptions(n=preset.n if n is None else n, **overrides)


#: Files whose content defines the generated rows (relative to this folder): a change in any of them changes
#: the catalog. data/ holds the generator's tables (survey depths).
_GENERATOR_FILES = ("generator.py", "physics.py", "photometry.py", "ssp.py", "schema.py", "../modalities.py", "data/*")


def code_version() -> str:
    """Package version plus a digest of the generator's code and tables: edited code never reuses a stale cache."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    for pattern in _GENERATOR_FILES:
        for path in sorted(here.glob(pattern)):
            digest.update(pattern.encode() + path.name.encode())
            digest.update(path.read_bytes())
    return f"{metadata.version('mosaic-galaxy')}+{digest.hexdigest()[:12]}"


def catalog_fingerprint(options: dict, n_train: int) -> str:
    """A short hash of everything that determines a catalog's content: options, split and code version."""
    payload = json.dumps({"options": options, "n_train": n_train, "code": code_version()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
