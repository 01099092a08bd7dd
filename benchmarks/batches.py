"""The models and batches the benchmarks run on: a `MosaicConfig` sized like configs/NAME.yaml, and collated
training batches either read from a built catalog (ColumnarDataset + TrainingCollator, the training path) or
synthesised in the catalog's layout and put through the real `MosaicMaskingCollator` (no `datasets`, no
pyarrow: what the GPU script uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import ROOT

#: The architecture keys of a training config file that size the model.
ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
#: The keys that shape its compute otherwise, taken from the file when it sets them: the benchmarks time the
#: recipe's model (its gaussian head, its attention), not the defaults.
COMPUTE_KEYS = ("head_type", "attn_implementation")


def training_config(name: str) -> dict:
    """configs/NAME.yaml as a dict (a tiny YAML subset would do, but the file is YAML)."""
    import yaml

    path = ROOT / "configs" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no training config {path}; expected one of "
                         f"{', '.join(p.stem for p in sorted((ROOT / 'configs').glob('*.yaml')))}")
    return yaml.safe_load(path.read_text())


def model_config(name: str, hidden_size: int | None = None, catalog: str | None = None, **overrides):
    """The `MosaicConfig` of configs/NAME.yaml (its sizes, head and attention; `overrides` win); `hidden_size`
    rescales the width (heads of 32 dimensions and an MLP of 4x the width, as in the shipped configs);
    normalisation from `catalog` when given."""
    from modeling_mosaic.configuration_mosaic import MosaicConfig

    file = training_config(name)
    sizes = {k: file[k] for k in ARCHITECTURE_KEYS}
    if hidden_size is not None:
        sizes.update(hidden_size=hidden_size, num_attention_heads=max(1, hidden_size // 32),
                     intermediate_size=4 * hidden_size)
    config = MosaicConfig(**sizes, **{**{k: file[k] for k in COMPUTE_KEYS if k in file}, **overrides})
    if catalog is not None:
        from modeling_mosaic.catalog.io import read_normalization

        stats = read_normalization(catalog)
        config.set_normalization({n: stats[n] for n in config.modalities})
    return config


def synthetic_columns(config, n: int, seed: int = 0) -> dict:
    """n galaxies in physical units: each element drawn from the config's learning-space normal (mean, std) and
    mapped back through the registry; 10% of the rows lack SPHEREx, as a catalog's rows may."""
    from modeling_mosaic.modalities import MODALITIES

    rng = np.random.default_rng(seed)
    columns = {}
    for name in config.modalities:
        stats = config.normalization[name]
        learned = rng.normal(stats["mean"], stats["std"], size=(n, len(stats["mean"])))
        physical = MODALITIES[name].from_learning(learned).astype(np.float32)
        columns[name] = physical[:, 0] if MODALITIES[name].is_scalar else physical
    if "spherex" in columns:
        columns["spherex"][rng.random(n) < 0.1] = np.nan
    columns["galaxy_id"] = np.arange(n, dtype=np.int64)
    return columns


def synthetic_batches(config, batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """`count` collated training batches of synthetic galaxies (see `synthetic_columns`)."""
    from modeling_mosaic.masking import MosaicMaskingCollator

    collator = MosaicMaskingCollator(config, seed=seed)
    columns = synthetic_columns(config, batch_size * count, seed)
    return [collator({k: v[i * batch_size:(i + 1) * batch_size] for k, v in columns.items()}) for i in range(count)]


def catalog_split(catalog: str | Path, split: str, config, cache_dir: str | Path | None = None):
    """The `ColumnarDataset` of one split of a built catalog, with the model's columns (the training path)."""
    from modeling_mosaic.catalog.io import load_catalog
    from modeling_mosaic.training import ColumnarDataset

    dataset = load_catalog(catalog, split=split, cache_dir=cache_dir)
    return ColumnarDataset(dataset, [*config.modalities, "galaxy_id"])


def training_collator(config, seed: int = 0):
    from modeling_mosaic.masking import MosaicMaskingCollator
    from modeling_mosaic.training import TrainingCollator

    return TrainingCollator(MosaicMaskingCollator(config, seed=seed), config)


def catalog_batches(dataset, config, batch_size: int, count: int) -> list[dict]:
    """`count` collated batches of consecutive catalog rows (wrapping around a small catalog)."""
    collator = training_collator(config)
    batches = []
    for i in range(count):
        indices = [(i * batch_size + j) % len(dataset) for j in range(batch_size)]
        batches.append(collator(dataset.__getitems__(indices)))
    return batches
