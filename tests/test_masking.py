"""MosaicMaskingCollator: reproducible per galaxy, valid masks, and the promised distribution of tasks."""

import numpy as np
import pytest
import torch

from modeling_mosaic import (
    MODALITIES,
    MODALITY_NAMES,
    MosaicConfig,
    MosaicMaskingCollator,
)
from modeling_mosaic.masking import uniforms

CONFIG = MosaicConfig()
SLICES = CONFIG.modality_slices


def catalog(n, seed=0, missing=0.2, element_missing=0.02):
    """Columns for every modality with whole modalities and single elements randomly missing (NaN)."""
    rng = np.random.default_rng(seed)
    columns = {"galaxy_id": rng.permutation(10 * n)[:n].astype(np.int64)}
    for name, modality in MODALITIES.items():
        shape = (n,) if modality.is_scalar else (n, modality.length)
        values = rng.uniform(0.5, 20.0, shape)
        values[rng.random(n) < missing] = np.nan
        values[rng.random(shape) < element_missing] = np.nan
        columns[name] = values
    return columns


def modality_any(mask):
    """(B, D) -> (B, M): which modalities have at least one True element."""
    return np.stack([mask[:, s].any(axis=1) for s in SLICES.values()], axis=1)


def test_masks_depend_only_on_seed_epoch_and_galaxy():
    columns = catalog(64)
    collator = MosaicMaskingCollator(CONFIG, seed=3)
    whole = collator(columns)
    order = np.random.default_rng(1).permutation(64)
    for part in np.array_split(order, 5):  # other batch sizes, compositions and orders
        sub = collator({k: v[part] for k, v in columns.items()})
        for key in ("values", "input_mask", "target_mask"):
            np.testing.assert_array_equal(sub[key].numpy(), whole[key][part].numpy())  # NaN == NaN here
    rows = [{k: v[i] for k, v in columns.items()} for i in range(64)]
    for key, value in collator(rows).items():
        np.testing.assert_array_equal(value.numpy(), whole[key].numpy())
    assert torch.equal(MosaicMaskingCollator(CONFIG, seed=3)(columns)["input_mask"], whole["input_mask"])


def test_masks_change_with_epoch_and_seed():
    columns = catalog(200, missing=0.0)
    collator = MosaicMaskingCollator(CONFIG, seed=0)
    first = collator(columns)["input_mask"].numpy()
    collator.set_epoch(1)
    second = collator(columns)["input_mask"].numpy()
    other_seed = MosaicMaskingCollator(CONFIG, seed=1)(columns)["input_mask"].numpy()
    assert (first != second).any(axis=1).mean() > 0.8
    assert (first != other_seed).any(axis=1).mean() > 0.8


def test_every_sample_sees_and_predicts_something_and_nan_is_never_used():
    columns = catalog(500)
    batch = MosaicMaskingCollator(CONFIG, seed=0, prior_probability=0.0)(columns)
    values, visible, scored = (batch[k].numpy() for k in ("values", "input_mask", "target_mask"))
    assert batch["values"].dtype == torch.float32 and batch["input_mask"].dtype == torch.bool
    assert not (visible & np.isnan(values)).any() and not (scored & np.isnan(values)).any()
    assert not (visible & scored).any()
    np.testing.assert_array_equal(visible | scored, np.isfinite(values))  # targets: every hidden present element
    present = modality_any(np.isfinite(values))
    hidden = modality_any(scored)
    several = present.sum(axis=1) >= 2
    assert several.sum() > 400
    assert modality_any(visible)[several].any(axis=1).all()
    assert (~modality_any(visible) & present)[several].any(axis=1).all()  # a whole modality hidden
    assert hidden[several].any(axis=1).all()


@pytest.mark.parametrize("decay", [1.0, 0.6, 0.3])
def test_number_of_visible_modalities_follows_the_geometric_law_on_1_to_n_minus_1(decay):
    """P(k) ~ decay**(k - 1) on k = 1..6 (uniform at decay 1): counts within 5 sigma of the expectation."""
    n = 3000
    config = MosaicConfig(mask_visible_decay=decay)
    batch = MosaicMaskingCollator(config, seed=5, prior_probability=0.0)(catalog(n, missing=0.0))
    counts = np.bincount(modality_any(batch["input_mask"].numpy()).sum(axis=1), minlength=8)
    assert counts[0] == 0 and counts[7] == 0
    weights = decay ** np.arange(6)
    expected = n * weights / weights.sum()
    assert (np.abs(counts[1:7] - expected) < 5 * np.sqrt(expected) + 1).all(), (counts, expected.round())


def test_segments_are_one_contiguous_run_of_the_configured_fraction():
    low, high = 0.2, 0.4
    collator = MosaicMaskingCollator(CONFIG, seed=2, segment_probability=1.0, segment_fraction=(low, high),
                                     prior_probability=0.0)
    batch = collator(catalog(300, missing=0.0, element_missing=0.0))
    visible, scored = batch["input_mask"].numpy(), batch["target_mask"].numpy()
    checked = 0
    for name in ("sfh", "sed", "lsst", "spherex"):
        length = MODALITIES[name].length
        for row in np.flatnonzero(visible[:, SLICES[name]].any(axis=1)):
            hidden = np.flatnonzero(scored[row, SLICES[name]])
            assert hidden.size and np.all(np.diff(hidden) == 1), name  # one contiguous hidden segment
            assert max(1, round(low * length)) <= hidden.size <= round(high * length), (name, hidden.size)
            checked += 1
    assert checked > 300


def test_prior_probability_one_hides_everything():
    batch = MosaicMaskingCollator(CONFIG, prior_probability=1.0)(catalog(50))
    assert not batch["input_mask"].any()
    assert torch.equal(batch["target_mask"], torch.isfinite(batch["values"]))


def test_subset_config_ignores_other_columns_and_requires_galaxy_id():
    collator = MosaicMaskingCollator(["redshift", "lsst"])
    columns = catalog(10)
    assert collator(columns)["values"].shape == (10, 7)
    del columns["galaxy_id"]
    with pytest.raises(ValueError, match="galaxy_id"):
        collator(columns)


def test_uniforms_are_uniform_and_distinct_per_draw():
    u = uniforms(0, 0, np.arange(20000), 4)
    assert ((u >= 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    assert MODALITY_NAMES == tuple(CONFIG.modalities)


def figure2_queries():
    from modeling_mosaic.evaluation.conditions import CONDITIONS

    return [condition.given_ranges() for condition in CONDITIONS]


def test_condition_given_ranges_mark_exactly_the_elements_its_inputs_show():
    from modeling_mosaic.evaluation.conditions import CONDITIONS

    columns = catalog(4, missing=0.0, element_missing=0.0)
    for condition in CONDITIONS:
        shown = np.isfinite(CONFIG.flatten(condition.inputs(columns)))
        np.testing.assert_array_equal(shown, np.broadcast_to(CONFIG.given_mask(condition.given_ranges()), shown.shape))


def test_query_probability_zero_leaves_the_random_masks_unchanged():
    columns = catalog(300)
    plain = MosaicMaskingCollator(CONFIG, seed=5)(columns)
    with_queries = MosaicMaskingCollator(MosaicConfig(mask_queries=figure2_queries()), seed=5)(columns)
    for key in ("input_mask", "target_mask"):
        assert torch.equal(plain[key], with_queries[key])


@pytest.mark.parametrize("probability", [0.3, 1.0])
def test_a_query_sample_shows_exactly_one_query_and_the_queries_are_drawn_uniformly(probability):
    queries = figure2_queries()
    n = 6000
    columns = catalog(n, missing=0.0, element_missing=0.0)
    random = MosaicMaskingCollator(MosaicConfig(mask_queries=queries, mask_prior_probability=0.0), seed=2)(columns)
    config = MosaicConfig(mask_queries=queries, mask_query_probability=probability, mask_prior_probability=0.0)
    batch = MosaicMaskingCollator(config, seed=2)(columns)
    given = np.stack([config.given_mask(q) for q in queries])
    visible, random_visible = batch["input_mask"].numpy(), random["input_mask"].numpy()
    np.testing.assert_array_equal(batch["target_mask"].numpy(), ~visible)  # every element is present here
    matches = (visible[:, None, :] == given[None]).all(axis=2)  # (B, Q)
    random_matches = (random_visible[:, None, :] == given[None]).all(axis=2).any(axis=1)
    # A sample either keeps its random mask (same draws) or shows exactly one query.
    assert (matches.any(axis=1) | (visible == random_visible).all(axis=1)).all()
    # Among samples whose random mask is no query, each query is shown Binomial(n0, p / Q) times (5 sigma).
    counts = matches[~random_matches].sum(axis=0)
    mean = (~random_matches).sum() * probability / len(queries)
    assert (np.abs(counts - mean) < 5 * np.sqrt(mean * (1 - probability / len(queries))) + 1).all(), (counts, mean)
    if probability == 1.0:
        assert matches.any(axis=1).all()


def test_query_weights_set_how_often_each_query_is_posed():
    queries = figure2_queries()
    n = 7000
    columns = catalog(n, missing=0.0, element_missing=0.0)
    plain = {"mask_queries": queries, "mask_query_probability": 0.7, "mask_prior_probability": 0.0}
    default = MosaicMaskingCollator(MosaicConfig(**plain), seed=4)(columns)
    for equal in ([1.0] * 5, [2.0] * 5):  # equal weights are the uniform draw, mask for mask
        same = MosaicMaskingCollator(MosaicConfig(**plain, mask_query_weights=equal), seed=4)(columns)
        assert torch.equal(same["input_mask"], default["input_mask"])

    weights = np.array([0.0, 3.0, 1.0, 0.0, 2.0])
    config = MosaicConfig(mask_queries=queries, mask_query_probability=1.0, mask_prior_probability=0.0,
                          mask_query_weights=weights)
    visible = MosaicMaskingCollator(config, seed=4)(columns)["input_mask"].numpy()
    given = np.stack([config.given_mask(q) for q in queries])
    counts = (visible[:, None, :] == given[None]).all(axis=2).sum(axis=0)
    assert counts.sum() == n and counts[weights == 0].sum() == 0
    p = weights / weights.sum()
    assert (np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p)) + 1).all(), (counts, n * p)


@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, -1.0, 1.0, 1.0, 1.0], [0.0] * 5, [1.0, np.nan, 1, 1, 1]])
def test_bad_query_weights_are_refused(weights):
    with pytest.raises(ValueError, match="mask_query_weights must hold 5"):
        MosaicConfig(mask_queries=figure2_queries(), mask_query_weights=weights)


def test_query_configuration_is_validated():
    with pytest.raises(ValueError, match="needs mask_queries"):
        MosaicConfig(mask_query_probability=0.5)
    with pytest.raises(ValueError, match="mask_queries: the given ranges of 'sfh'"):
        MosaicConfig(mask_queries=[{"sfh": [[0, 101]]}])
    with pytest.raises(ValueError, match="mask_queries: 'colour'"):
        MosaicConfig(mask_queries=[{"colour": [[0, 1]]}])
