"""The generated catalog as a `datasets` builder, for users of the `datasets` cache.

datasets 5 no longer runs loading scripts, so the builder is used straight from the package:

    from modeling_mosaic.catalog.builder import MosaicCatalog
    builder = MosaicCatalog(cache_dir="~/.cache/mosaic", config_name="tiny")   # or options={"seed": 3}
    builder.download_and_prepare()
    ds = builder.as_dataset()                                                  # DatasetDict train/test

The cache folder is keyed by a hash of the options, the split and the generator's source code
(`presets.catalog_fingerprint`): an edited generator never reuses a stale cache. The folder produced by
`mosaic-catalog build` (Parquet + card + statistics) is the other route and the one to publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import ClassVar

import datasets

from .features import catalog_features, chunk_length
from .presets import PRESETS, catalog_fingerprint
from .schema import COLUMN_NAMES
from .writer import CITATIONS

_VERSION = datasets.Version(metadata.version("mosaic-galaxy"))


@dataclass
class MosaicCatalogConfig(datasets.BuilderConfig):
    """A catalog config: split sizes plus overrides of the generator's `CatalogOptions` (seed, noise, ...)."""

    n_train: int = 0
    n_test: int = 0
    options: dict = field(default_factory=dict)


class MosaicCatalog(datasets.GeneratorBasedBuilder):
    """Simulated MOSAIC galaxy catalog; configs tiny / demo / paper (see `presets.PRESETS`)."""

    VERSION = _VERSION
    BUILDER_CONFIG_CLASS = MosaicCatalogConfig
    BUILDER_CONFIGS: ClassVar[list[MosaicCatalogConfig]] = [
        MosaicCatalogConfig(name=p.name, version=_VERSION, description=p.description, n_train=p.n_train, n_test=p.n_test)
        for p in PRESETS.values()
    ]
    DEFAULT_CONFIG_NAME = "tiny"

    def __init__(self, *args, dataset_name: str = "mosaic_catalog", **kwargs):
        super().__init__(*args, dataset_name=dataset_name, **kwargs)

    def _create_builder_config(self, *args, **kwargs):
        """Key the cache on the catalog's content: default `hash` = options + split + code fingerprint."""
        config, config_id = super()._create_builder_config(*args, **kwargs)
        if self.hash is None:
            self.config = config
            self.hash = catalog_fingerprint(self.catalog_options().to_dict(), config.n_train)
        return config, config_id

    def catalog_options(self):
        """The generator's options for this config."""
        from .generator import CatalogOptions

        return CatalogOptions(n=self.config.n_train + self.config.n_test, **self.config.options)

    def chunk_source(self, options, start: int, stop: int):
        """Chunks of rows [start, stop) (overridden in tests by a fast synthetic source)."""
        from .generator import generate

        return generate(options, start=start, stop=stop)

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Simulated galaxies with seven modalities for MOSAIC (Xia et al. 2025, arXiv:2510.07684).",
            features=catalog_features(),
            citation=CITATIONS["mosaic"] + "\n\n" + CITATIONS["bc03"],
            license="mit",
        )

    def _split_generators(self, dl_manager):
        n_train, n = self.config.n_train, self.config.n_train + self.config.n_test
        return [
            datasets.SplitGenerator(name=datasets.Split.TRAIN, gen_kwargs={"start": 0, "stop": n_train}),
            datasets.SplitGenerator(name=datasets.Split.TEST, gen_kwargs={"start": n_train, "stop": n}),
        ]

    def _generate_examples(self, start: int, stop: int):
        row = start
        for chunk in self.chunk_source(self.catalog_options(), start, stop):
            chunk_length(chunk)
            for values in zip(*(chunk[name] for name in COLUMN_NAMES)):
                yield row, dict(zip(COLUMN_NAMES, values))
                row += 1
        if row != stop:
            raise ValueError(f"the chunk source gave {row - start} rows for rows [{start}, {stop}), expected {stop - start}")
