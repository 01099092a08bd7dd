"""MosaicModel and MosaicConfig: invariances the design promises, shapes, errors, persistence, and learning."""

import contextlib
import copy
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_mosaic import (
    MODALITIES,
    MODALITY_NAMES,
    MosaicConfig,
    MosaicMaskingCollator,
    MosaicModel,
)
from modeling_mosaic.evaluation.conditions import SFH_LATE

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def synthetic_columns(rng, n):
    """Physically plausible columns for every modality (not a physical model)."""
    z = rng.uniform(0.05, 3.0, n)
    halo = rng.uniform(11.0, 14.0, n)
    return {
        "redshift": z,
        "log_halo_mass": halo,
        "log_stellar_mass": 0.8 * halo + 0.5 + 0.1 * rng.normal(size=n),
        "sfh": rng.uniform(0.0, 20.0, (n, 100)),
        "sed": 10.0 ** rng.uniform(26.0, 29.0, (n, 256)),
        "lsst": rng.normal(25.0, 1.0, (n, 6)),
        "spherex": rng.normal(23.0, 1.0, (n, 102)),
    }


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MosaicModel(MosaicConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def batch(model):
    """A flat batch with random masks and some missing elements."""
    rng = np.random.default_rng(1)
    values = model.config.flatten(synthetic_columns(rng, 12))
    values[rng.random(values.shape) < 0.05] = np.nan
    input_mask = rng.random(values.shape) < 0.5
    target_mask = ~input_mask & (rng.random(values.shape) < 0.7)
    return torch.from_numpy(values), torch.from_numpy(input_mask), torch.from_numpy(target_mask)


def test_default_config_is_the_standard_model():
    config = MosaicConfig()
    assert config.modalities == list(MODALITY_NAMES)
    assert config.num_elements == sum(m.length for m in MODALITIES.values()) == 467
    assert MosaicModel(config).layout.num_tokens == 3 + 100 // 10 + 256 // 32 + 6 // 6 + 102 // 17


@pytest.mark.parametrize("pattern", ["random", "all_visible", "nothing_visible", "default_targets"])
def test_output_shapes_and_dtypes(model, batch, pattern):
    values, input_mask, target_mask = batch
    if pattern == "all_visible":
        input_mask = torch.ones_like(input_mask)
    elif pattern == "nothing_visible":
        input_mask = torch.zeros_like(input_mask)
    out = model(values, input_mask, None if pattern in ("default_targets", "all_visible") else target_mask)
    batch_size, num_modalities, hidden = values.shape[0], len(model.config.modalities), model.config.hidden_size
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.modality_losses.shape == (num_modalities,) and torch.isfinite(out.modality_losses).all()
    assert out.predictions.shape == values.shape and out.predictions.dtype == torch.float32
    assert out.last_hidden_state.shape == (batch_size, model.layout.num_tokens, hidden)
    assert out.pooled.shape == (batch_size, num_modalities, hidden)
    if pattern == "all_visible":  # nothing hidden, so nothing scored by default
        assert out.loss.item() == 0.0 and (out.modality_losses == 0).all()
    assert model(values, input_mask, target_mask, return_dict=False)[0].shape == ()


def test_loss_is_the_loss_weighted_mean_over_modalities_with_scored_elements(model, batch):
    values, input_mask, target_mask = batch
    target_mask = target_mask.clone()
    target_mask[:, model.config.modality_slices["sed"]] = False  # one modality with nothing scored
    out = model(values, input_mask, target_mask)
    scored = torch.tensor([target_mask[:, s].any() for s in model.config.modality_slices.values()])
    assert not scored[model.config.modalities.index("sed")] and out.modality_losses[~scored].eq(0).all()
    torch.testing.assert_close(out.loss, out.modality_losses[scored].mean())

    weights = {"redshift": 3.0, "sed": 5.0, "lsst": 0.5}
    weighted = MosaicModel(MosaicConfig(**TINY, loss_weights=weights)).eval()
    weighted.load_state_dict(model.state_dict())
    w = torch.tensor([weights.get(n, 1.0) for n in model.config.modalities]) * scored
    again = weighted(values, input_mask, target_mask)
    assert torch.equal(again.modality_losses, out.modality_losses)  # the weights touch only their mean
    torch.testing.assert_close(again.loss, (out.modality_losses * w).sum() / w.sum())
    with pytest.raises(ValueError, match="loss_weights: 'colour'"):
        MosaicConfig(loss_weights={"colour": 2.0})
    with pytest.raises(ValueError, match="loss_weights: 'redshift': -1"):
        MosaicConfig(loss_weights={"redshift": -1})


def test_hidden_values_do_not_change_outputs(model, batch):
    values, input_mask, target_mask = batch
    reference = model(values, input_mask, target_mask)
    hidden = ~input_mask
    for replacement in (float("nan"), float("inf"), 1e30, -7.0):
        changed = torch.where(hidden & ~target_mask, replacement, values)
        out = model(changed, input_mask, target_mask)
        for key in ("loss", "modality_losses", "predictions", "last_hidden_state", "pooled"):
            assert torch.equal(out[key], reference[key]), key
        scored_changed = model(torch.where(hidden, replacement, values), input_mask, target_mask)
        for key in ("predictions", "last_hidden_state", "pooled"):
            assert torch.equal(scored_changed[key], reference[key]), key


def test_subsequence_predict_matches_full_sequence(model):
    rng = np.random.default_rng(2)
    columns = synthetic_columns(rng, 9)
    sfh = columns["sfh"].copy()
    sfh[:, :70] = np.nan  # "LSST + SFH with 0-10 Gyr hidden"
    inputs = {"lsst": columns["lsst"], "sfh": sfh}
    predicted = model.predict(inputs, targets=["redshift", "sfh", "log_stellar_mass"])

    values = torch.from_numpy(model.config.flatten(inputs))
    full = model.to_physical(model(values, torch.isfinite(values)).predictions)
    expected = model.config.unflatten(full, ["redshift", "sfh", "log_stellar_mass"])
    np.testing.assert_allclose(predicted["redshift"], expected["redshift"], rtol=1e-5)
    np.testing.assert_allclose(predicted["log_stellar_mass"], expected["log_stellar_mass"], rtol=1e-5)
    np.testing.assert_allclose(predicted["sfh"][:, :70], expected["sfh"][:, :70], rtol=1e-5)
    np.testing.assert_array_equal(predicted["sfh"][:, 70:], sfh[:, 70:].astype(np.float32))  # given: as given


@pytest.mark.parametrize("targets", [["redshift"], ["redshift", "log_stellar_mass"]])
def test_few_token_predict_matches_full_sequence(model, targets):
    """Queries of FEW_TOKENS tokens or fewer (here 2 and 3) take `few_token_attention`, the full sequence the
    attention interface: the same predictions."""
    inputs = {"lsst": synthetic_columns(np.random.default_rng(6), 9)["lsst"]}
    predicted = model.predict(inputs, targets=targets)
    values = torch.from_numpy(model.config.flatten(inputs))
    expected = model.config.unflatten(model.to_physical(model(values, torch.isfinite(values)).predictions), targets)
    for name in targets:
        np.testing.assert_allclose(predicted[name], expected[name], rtol=1e-5)


@pytest.mark.parametrize("names", [["redshift", "lsst"], ["sfh", "lsst"]])
def test_embedding_features_hold_each_slots_value_visibility_and_step(model, names):
    """`MosaicLayout.features` against its definition, slot by slot: a chosen token's slot holds its element's
    value, visibility and step from the slot before (learning space over the step's spread; 0 at a patch's
    first slot and where either is hidden), a padding slot zeros; the patches are as wide as the query needs
    (redshift + LSST: 7 slots, not 32); and a query's features are the full sequence's for those tokens."""
    layout, rng = model.layout, np.random.default_rng(4)
    values = torch.from_numpy(model.config.flatten(synthetic_columns(rng, 3)))
    normalised, present = layout.normalize(values)
    visible = present & torch.from_numpy(rng.random(values.shape) < 0.7)
    token_ids = model._token_ids(names)
    elements = layout.elements_of(token_ids)
    features, token_visible = layout.features(normalised[:, elements], visible[:, elements], None, token_ids,
                                              elements)
    width = min(layout.patch_size, elements.numel())
    assert features.shape == (3, token_ids.numel(), width * 3)
    learned, shown = layout.to_learning_space(normalised), visible.float()
    expected = torch.zeros(3, token_ids.numel(), width, 3)
    for t, token in enumerate(token_ids.tolist()):
        for slot, e in enumerate(layout.token_elements[token, :width].tolist()):
            if e < layout.mean.numel():
                step = (learned[:, e] - learned[:, e - 1]) / layout.step_std[e] * shown[:, e] * shown[:, e - 1]
                expected[:, t, slot] = torch.stack([normalised[:, e], shown[:, e], step if slot else 0 * step], -1)
    torch.testing.assert_close(features, expected.flatten(2), rtol=1e-6, atol=1e-6)
    assert torch.equal(token_visible, expected[..., 1].amax(-1) > 0)
    everything, _ = layout.features(normalised, visible, None, torch.arange(layout.num_tokens))
    assert torch.equal(everything[:, token_ids, :width * 3], features)
    assert not everything[:, token_ids, width * 3:].any()


def test_predict_costs_the_tokens_given_and_asked_for(model):
    """The blocks run the query's tokens only (LSST's six bands are one token, each scalar one), and the last block
    projects and feeds forward only the asked-for tokens, the given ones serving there as keys and values. (Their
    final states equal the full encoder's: test_subsequence_predict_matches_full_sequence.)"""
    from torch.utils.flop_counter import FlopCounterMode

    linears = (torch.ops.aten.addmm, torch.ops.mkldnn._linear_pointwise)  # the latter: CPU inference (`linear`)
    n, hidden, mlp, layers = 5, TINY["hidden_size"], TINY["intermediate_size"], TINY["num_hidden_layers"]
    inputs = {"lsst": synthetic_columns(np.random.default_rng(5), n)["lsst"]}
    qkv, rest = 2 * hidden * 3 * hidden, 2 * hidden * hidden + 2 * 2 * hidden * mlp  # FLOPs per token
    for targets, tokens, asked in ((["redshift"], 2, 1), (["redshift", "log_halo_mass"], 3, 2)):
        counter = FlopCounterMode(display=False)
        with counter:
            model.predict(inputs, targets=targets)
        linear_flops = sum(counter.get_flop_counts()["MosaicBlock"].get(op, 0) for op in linears)
        assert linear_flops == n * (layers * tokens * qkv + ((layers - 1) * tokens + asked) * rest)


def test_predict_is_batch_size_invariant(model):
    inputs = {"lsst": synthetic_columns(np.random.default_rng(3), 23)["lsst"]}
    reference = model.predict(inputs, batch_size=4096)
    for batch_size in (1, 5):
        out = model.predict(inputs, batch_size=batch_size)
        for name in reference:
            np.testing.assert_allclose(out[name], reference[name], rtol=1e-5, atol=1e-6)


def test_predict_and_embed_shapes(model):
    columns = synthetic_columns(np.random.default_rng(4), 6)
    out = model.predict({"lsst": columns["lsst"], "redshift": columns["redshift"]})
    assert set(out) == set(MODALITY_NAMES) - {"lsst", "redshift"}
    for name, array in out.items():
        shape = (6,) if MODALITIES[name].is_scalar else (6, MODALITIES[name].length)
        assert array.shape == shape and array.dtype == np.float32 and np.isfinite(array).all()
        assert (array >= MODALITIES[name].minimum).all()
    fully_given = model.predict({"redshift": columns["redshift"]}, targets="redshift")
    np.testing.assert_array_equal(fully_given["redshift"], columns["redshift"].astype(np.float32))
    embedded = model.embed({"lsst": columns["lsst"], "sed": columns["sed"]}, batch_size=4)
    assert set(embedded) == {"lsst", "sed", "all"}
    assert all(e.shape == (6, model.config.hidden_size) and np.isfinite(e).all() for e in embedded.values())


def test_sdpa_matches_eager(model, batch):
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(*batch)
    model.set_attn_implementation("eager")
    try:
        eager = model(*batch)
    finally:
        model.set_attn_implementation("sdpa")
    for key in ("loss", "predictions", "last_hidden_state"):
        torch.testing.assert_close(eager[key], sdpa[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", range(1, 5))
def test_few_token_attention_matches_eager(tokens):
    """The broadcast attention of short queries, and for two tokens the logistic form, give the batched products'
    result: every query row, a kept subset of them, and keys the mask hides (given values 1e4 times the others,
    so a leak would show, through the mask or through rounding)."""
    from modeling_mosaic.modeling_mosaic import (
        FEW_TOKENS,
        eager_attention_forward,
        few_token_attention,
        pair_attention,
        visible_attention_mask,
    )

    assert tokens <= FEW_TOKENS
    generator = torch.Generator().manual_seed(tokens)
    batch, heads, head_dim = 64, 4, 8
    query, key, value = torch.randn(3, batch, tokens, heads, head_dim, generator=generator)
    visible = torch.rand(batch, tokens, generator=generator) < 0.5
    value = torch.where(visible[..., None, None], value, 1e4 * value)
    mask = visible_attention_mask(visible, torch.float32)
    module = torch.nn.Module().eval()
    for keep in (torch.arange(tokens), torch.tensor([tokens - 1])):
        expected, _ = eager_attention_forward(module, query[:, keep].transpose(1, 2), key.transpose(1, 2),
                                              value.transpose(1, 2), mask[:, :, keep], scaling=head_dim**-0.5)
        got = few_token_attention(query[:, keep], key, value, mask[:, :, keep], scaling=head_dim**-0.5)
        assert got.shape == (batch, len(keep), heads, head_dim)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if tokens == 2:
            pair = pair_attention(query[:, keep], key, value, mask[:, :, keep], scaling=head_dim**-0.5)
            torch.testing.assert_close(pair, expected, rtol=1e-5, atol=1e-5)
            # under bf16 autocast the projections are bf16 and the mask float32: the output is bf16, as the
            # broadcast path's, and as close to its result as bf16 rounding allows (values of one scale)
            low = [x.bfloat16() for x in (query[:, keep], key, torch.randn(value.shape, generator=generator))]
            pair = pair_attention(*low, mask[:, :, keep], scaling=head_dim**-0.5)
            broadcast = few_token_attention(*low, mask[:, :, keep], scaling=head_dim**-0.5)
            assert pair.dtype == broadcast.dtype == torch.bfloat16
            torch.testing.assert_close(pair.float(), broadcast.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("head_type", ["point", "gaussian"])
def test_the_training_forward_traces_as_one_graph(batch, head_type):
    """The loss of a training batch (every token: embeddings, encoder, heads, redshift mixture) has no shape
    that depends on data and no host sync, so torch.compile captures it whole: a graph break would split a GPU
    step and sync the device there. The fixed slot table gives what the general path gives."""
    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY, head_type=head_type))
    explanation = torch._dynamo.explain(model)(*batch)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    layout = model.layout
    patches = torch.randn(3, layout.num_tokens, layout.patch_size)
    general = patches.reshape(3, -1)[:, layout.token_elements.flatten() < layout.mean.numel()]
    torch.testing.assert_close(layout.unpatch(patches, torch.arange(layout.num_tokens)), general, rtol=0, atol=0)
    assert general.shape == (3, model.config.num_elements)


def test_compile_encoder_runs_every_query_compiled_and_changes_no_output_or_weight_name(tmp_path):
    """`compile_encoder` routes a query's whole encoder through torch.compile (here a backend that runs dynamo's
    graphs as traced, counting their calls: no C++ compiler), keeps the state dict's names (in place, no
    `_orig_mod.` prefix) and predicts and embeds what the plain model does. Every batch of every query runs as
    one compiled graph: no graph break, and no query falls back to eager at dynamo's recompile limit (as four
    separately compiled blocks of the demo model did after a few queries). A last, shorter batch is padded to the
    compiled batch size: no query compiles twice."""
    calls, graphs = [], []

    def counting(graph, example_inputs):
        graphs.append(example_inputs[0].shape)

        def run(*args):
            calls.append(1)
            return graph.forward(*args)
        return run

    torch.manual_seed(0)
    plain = MosaicModel(MosaicConfig(**TINY)).eval()
    compiled = MosaicModel(MosaicConfig(**TINY)).eval()
    compiled.load_state_dict(plain.state_dict())
    assert compiled.compile_encoder(batch_size=4, backend=counting) is compiled
    columns = synthetic_columns(np.random.default_rng(7), 10)
    sfh = np.where(SFH_LATE, columns["sfh"], np.nan)
    queries = ({"lsst": columns["lsst"]}, {"lsst": columns["lsst"], "spherex": columns["spherex"]},
               {"lsst": columns["lsst"], "sfh": sfh}, {"log_stellar_mass": columns["log_stellar_mass"]},
               {"redshift": columns["redshift"], "sed": columns["sed"]})
    for inputs in queries:
        expected, got = plain.predict(inputs, batch_size=4), compiled.predict(inputs, batch_size=4)
        for key in expected:  # the padded last batch's products differ in rounding
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert len(calls) == 3 * len(queries)  # 10 rows in batches of 4, 4 and 2 (padded to 4)
    assert len(graphs) <= len(queries) and all(shape[0] == 4 for shape in graphs), graphs  # equal shapes share one
    np.testing.assert_array_equal(compiled.embed({"lsst": columns["lsst"]})["all"],
                                  plain.embed({"lsst": columns["lsst"]})["all"])
    assert list(compiled.state_dict()) == list(plain.state_dict())
    copied = copy.deepcopy(compiled)
    with torch.no_grad():
        copied.norm.bias.add_(1.0)
    assert not np.array_equal(copied.predict(queries[0])["redshift"], compiled.predict(queries[0])["redshift"])
    compiled.save_pretrained(tmp_path)
    reloaded = MosaicModel.from_pretrained(tmp_path).eval()
    np.testing.assert_array_equal(reloaded.predict({"lsst": columns["lsst"]})["redshift"],
                                  plain.predict({"lsst": columns["lsst"]})["redshift"])


@pytest.mark.parametrize("gelu", [False, True])
def test_cpu_linears_run_through_onednn_and_match_nn_linear(gelu):
    """`linear`: a float32 CPU linear (and its GELU) of enough rows runs oneDNN's op, with no gradient to record (the
    GELU fused into it) and in training (`OneDNNLinear`: the input's gradient through oneDNN too, the weight's
    through torch.mm), with nn.Linear's values and gradients to float32 rounding; under bf16 autocast or for a few
    rows it is nn.Linear's own op."""
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_mosaic.modeling_mosaic import ONEDNN_MIN_ROWS, linear

    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 256), torch.randn(300, 2, 64)
    activation = torch.nn.functional.gelu if gelu else (lambda t: t)

    def run(context, fn):
        counter = FlopCounterMode(display=False)
        with context, counter:
            out = fn()
        return out, {str(op).split(".")[-1] for op in counter.get_flop_counts()["Global"]}

    reference = activation(layer(x))
    fast, ops = run(torch.no_grad(), lambda: linear(layer, x, gelu=gelu))
    assert ops == {"_linear_pointwise"}
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)

    upstream = torch.randn(reference.shape)
    gradients = {}
    for name, fn in (("nn.Linear", lambda t: activation(layer(t))), ("oneDNN", lambda t: linear(layer, t, gelu))):
        layer.zero_grad()
        inputs = x.clone().requires_grad_()
        out, ops = run(torch.enable_grad(), lambda: fn(inputs))
        assert ops == ({"addmm"} if name == "nn.Linear" else {"_linear_pointwise"})
        _, backward_ops = run(contextlib.nullcontext(), lambda: out.backward(upstream))
        assert backward_ops == ({"mm"} if name == "nn.Linear" else {"_linear_pointwise", "mm"})
        gradients[name] = out.detach(), inputs.grad, layer.weight.grad.clone(), layer.bias.grad.clone()
    for got, expected in zip(gradients["oneDNN"], gradients["nn.Linear"]):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    with torch.no_grad():
        _, ops = run(torch.autocast("cpu", dtype=torch.bfloat16), lambda: linear(layer, x, gelu=gelu))
        assert ops == {"addmm"}
        few, ops = run(contextlib.nullcontext(), lambda: linear(layer, x[:ONEDNN_MIN_ROWS // 2 - 1], gelu=gelu))
    assert ops == {"addmm"} and torch.equal(few, reference[:ONEDNN_MIN_ROWS // 2 - 1])


@pytest.mark.parametrize("gelu", [False, True])
def test_compiled_cpu_inference_linears_stay_onednn(gelu):
    """Under torch.compile a float32 CPU inference linear of enough rows is traced, in one graph, as the custom op
    mosaic::onednn_linear (inductor would run a compiled nn.Linear through MKL's sgemm) and gives nn.Linear's
    values; where a gradient is recorded the graph has nn.Linear's own op."""
    from modeling_mosaic.modeling_mosaic import linear

    torch.manual_seed(0)
    layer, x = torch.nn.Linear(64, 256), torch.randn(300, 2, 64)
    graphs = []

    def capture(graph, example_inputs):
        graphs.append({str(node.target) for node in graph.graph.nodes if node.op == "call_function"})
        return graph.forward

    compiled = torch.compile(lambda x: linear(layer, x, gelu=gelu), backend=capture, fullgraph=True)
    reference = layer(x)
    reference = torch.nn.functional.gelu(reference) if gelu else reference
    with torch.no_grad():
        got = compiled(x)
    assert "mosaic.onednn_linear" in graphs[-1]
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    recorded = compiled(x)
    assert not any("onednn" in target for target in graphs[-1]) and len(graphs) == 2
    torch.testing.assert_close(recorded, reference, rtol=0, atol=0)


def test_embeddings_and_heads_stay_fp32_under_bf16_autocast(batch):
    """Under bf16 mixed precision the embeddings and every head compute exactly what they compute in fp32
    from the same inputs (the blocks between them run in bf16)."""
    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY, head_type="gaussian")).eval()
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda module, args, output, name=name: seen.__setitem__(name, (args, output)))
        for name in ("embeddings", "heads", "redshift_head")]
    try:
        model(*batch)
        fp32_embeddings = seen["embeddings"][1]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(*batch)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(seen["embeddings"][1], fp32_embeddings)
    for name in ("heads", "redshift_head"):
        args, output = seen[name]
        assert args[0].dtype == torch.float32 and output.dtype == torch.float32
        torch.testing.assert_close(output, getattr(model, name)(*args), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.blocks[0].mlp.fc1(fp32_embeddings).dtype == torch.bfloat16  # autocast was on


def test_backward_has_no_order_dependent_scatter(batch):
    """Training is reproducible on a multi-threaded CPU only if no gradient is summed in an order that depends
    on thread timing: a backward scatter that adds into the same element twice (a gather with repeated
    indices, like a per-modality weight bank indexed per token) does that with atomic adds."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Scatters(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.repeated = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
            if func.__name__.startswith("index_put") and accumulate:
                for index in args[1]:
                    repeats = index is not None and index.dtype != torch.bool  # a mask picks each element once
                    if repeats and index.unique().numel() < index.numel():
                        self.repeated.append((str(func), tuple(args[0].shape)))
            return func(*args, **kwargs)

    torch.manual_seed(0)
    model = MosaicModel(MosaicConfig(**TINY, head_type="gaussian")).train()
    loss = model(*batch).loss
    with Scatters() as scatters:
        loss.backward()
    assert scatters.repeated == []
    assert all(p.grad is not None for p in (model.embeddings.weight, model.heads.weight))


def test_bad_inputs_raise_clear_errors(model):
    with pytest.raises(ValueError, match="valid names are redshift, log_halo_mass"):
        model.predict({"photo_z": np.zeros(3)})
    with pytest.raises(ValueError, match="targets: unknown modality 'mass'; valid names are"):
        model.predict({"lsst": np.zeros((3, 6))}, targets=["mass"])
    with pytest.raises(ValueError, match=r"expected \(N, 6\) with length 6"):
        model.predict({"lsst": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="same number of rows"):
        model.predict({"lsst": np.zeros((3, 6)), "redshift": np.zeros(4)})
    with pytest.raises(ValueError, match="redshift"):
        MosaicConfig(modalities=["redshift", "colour"])
    with pytest.raises(ValueError, match="expected 6"):
        MosaicConfig().set_normalization({"lsst": {"mean": [0.0] * 5, "std": [1.0] * 5}})
    with pytest.raises(ValueError, match="num_hidden_layers must be >= 1, got 0"):
        MosaicConfig(num_hidden_layers=0)


def test_values_below_a_modality_s_physical_minimum_are_refused_by_name(model):
    """A negative redshift, rate or luminosity is no galaxy's: refused with the argument, column, count and first
    row, where it used to be floored to log10(1e-30) and read as an absurd input. Magnitudes of any sign, zero and
    NaN (missing) stay accepted."""
    lsst = np.full((3, 6), 25.0)
    z = np.array([0.5, -0.2, 1.0])
    sfh = np.ones((3, 100))
    sfh[2, 5], sfh[2, 7] = -1.0, -2.0
    message = r"inputs\['redshift'\] has 1 value\(s\) below the physical minimum 0 \(first in row 1: -0.2\)"
    for query in (lambda x: model.predict(x, targets=["log_stellar_mass"]), model.embed):
        with pytest.raises(ValueError, match=message):
            query({"lsst": lsst, "redshift": z})
        with pytest.raises(ValueError, match=r"inputs\['sfh'\] has 2 value\(s\) .* \(first in row 2: -1\)"):
            query({"lsst": lsst, "sfh": sfh})
    with pytest.raises(ValueError, match=r"truth\['redshift'\] has 1 value"):
        MosaicModel(MosaicConfig(**TINY, head_type="gaussian")).calibrate({"lsst": lsst}, {"redshift": z})
    with pytest.raises(ValueError, match=r"batch\['redshift'\] has 1 value"):
        MosaicMaskingCollator(model.config)({"lsst": lsst, "redshift": z, "galaxy_id": np.arange(3)})
    given = {"lsst": -lsst, "redshift": np.array([0.0, np.nan, 1.0]), "sfh": np.zeros((3, 100))}
    assert np.isfinite(model.predict(given, targets=["log_stellar_mass"])["log_stellar_mass"]).all()


def test_bad_arguments_are_named_before_any_work(model):
    lsst = np.full((3, 6), 25.0)
    with pytest.raises(TypeError, match="inputs: expected modality names"):
        model.predict(lsst)
    with pytest.raises(TypeError, match="inputs: expected a dict of modality name -> array, got list"):
        model.config.column_arrays([lsst])
    with pytest.raises(ValueError, match=r"inputs\['lsst'\] is not numeric"):
        model.predict({"lsst": np.full((3, 6), "abc")})
    with pytest.raises(ValueError, match=r"inputs\['lsst'\] is complex"):
        model.predict({"lsst": lsst + 1j})
    for query in (model.predict, model.embed):
        for batch_size in (0, -1, 2.5):
            with pytest.raises(ValueError, match=f"batch_size must be an integer >= 1, got {batch_size}"):
                query({"lsst": lsst}, batch_size=batch_size)
    with pytest.raises(ValueError, match="targets: nothing to predict; name at least one modality"):
        model.predict({"lsst": lsst}, targets=[])
    with pytest.raises(ValueError, match="nothing to predict; the inputs give every modality in full"):
        model.predict(synthetic_columns(np.random.default_rng(0), 3))
    # None in a list is a missing value, as NaN is
    with_none = model.predict({"redshift": [0.5, None]}, targets="log_stellar_mass")
    with_nan = model.predict({"redshift": [0.5, np.nan]}, targets="log_stellar_mass")
    np.testing.assert_array_equal(with_none["log_stellar_mass"], with_nan["log_stellar_mass"])


def test_zero_rows_give_empty_outputs_of_one_rows_names_and_shapes(model):
    one = model.predict({"lsst": np.full((1, 6), 25.0)})
    none = model.predict({"lsst": np.zeros((0, 6))})
    assert set(none) == set(one)
    for key, array in one.items():
        assert none[key].shape == (0, *array.shape[1:]) and none[key].dtype == array.dtype
    embedded = model.embed({"lsst": np.zeros((0, 6))})
    assert {k: v.shape for k, v in embedded.items()} == {k: (0, model.config.hidden_size) for k in ("lsst", "all")}


def test_inf_is_missing_and_empty_inputs_give_the_prior(model):
    lsst = np.full((2, 6), 25.0)
    lsst[:, 2] = np.inf
    with_inf = model.predict({"lsst": lsst}, targets=["redshift"])
    lsst[:, 2] = np.nan
    np.testing.assert_array_equal(with_inf["redshift"], model.predict({"lsst": lsst}, targets=["redshift"])["redshift"])

    prior = model.predict({})
    assert set(prior) == set(MODALITY_NAMES)
    assert all(np.isfinite(v).all() and v.shape[0] == 1 for v in prior.values())
    nothing_given = model.predict({"lsst": np.full((1, 6), np.nan)}, targets=["redshift"])
    np.testing.assert_allclose(nothing_given["redshift"], prior["redshift"], rtol=1e-6)


def test_config_round_trip_and_save_load(model, batch, tmp_path):
    config = MosaicConfig(**TINY, modalities=["lsst", "redshift"], patch_sizes={"lsst": 2}, loss_type="huber")
    assert config.modalities == ["redshift", "lsst"]  # registry order
    again = MosaicConfig.from_dict(json.loads(config.to_json_string()))
    assert again.to_dict() == config.to_dict()

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = MosaicModel.from_pretrained(tmp_path).eval()
    assert reloaded.config.to_dict() == {**model.config.to_dict(), "_name_or_path": str(tmp_path)}
    for key, value in model(*batch).items():
        assert torch.equal(reloaded(*batch)[key], value), key


def test_normalization_from_data():
    columns = synthetic_columns(np.random.default_rng(5), 200)
    config = MosaicConfig(modalities=["redshift", "sed"])
    config.set_normalization_from_data(columns)
    mean = np.mean(np.log10(1.0 + columns["redshift"]))
    assert config.normalization["redshift"]["mean"][0] == pytest.approx(mean, rel=1e-5)
    assert len(config.normalization["sed"]["std"]) == 256 and min(config.normalization["sed"]["std"]) > 0.5


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    special=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -5.0, 3.4e38]),
    fraction=st.floats(0.0, 1.0),
)
def test_outputs_are_never_nan(model, seed, special, fraction):
    rng = np.random.default_rng(seed)
    values = model.config.flatten(synthetic_columns(rng, 4))
    values[rng.random(values.shape) < fraction] = special
    input_mask = rng.random(values.shape) < rng.random()
    out = model(torch.from_numpy(values), torch.from_numpy(input_mask))
    for key in ("loss", "modality_losses", "predictions", "last_hidden_state", "pooled"):
        assert not torch.isnan(out[key]).any(), key
    given = model.config.unflatten(np.where(input_mask, values, np.nan), ["lsst", "sed", "redshift"])
    if any(MODALITIES[n].below_minimum(v).any() for n, v in given.items()):  # a negative SED or redshift
        with pytest.raises(ValueError, match="below the physical minimum"):
            model.predict(given)
        given = {n: np.where(MODALITIES[n].below_minimum(v), np.nan, v) for n, v in given.items()}
    predicted = model.predict(given)
    assert not any(np.isnan(v).any() for v in predicted.values())


def test_learns_a_cross_modal_relation():
    """Redshift from LSST colours and stellar mass from halo mass: far better than predicting the mean."""
    rng = np.random.default_rng(6)

    def sample(n):
        z = rng.uniform(0.0, 3.0, n)
        halo = rng.uniform(11.0, 14.0, n)
        slopes = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5])
        return {
            "redshift": z,
            "log_halo_mass": halo,
            "log_stellar_mass": 0.8 * halo + 0.5 + 0.05 * rng.normal(size=n),
            "lsst": 24.0 + rng.normal(size=(n, 1)) + slopes * z[:, None],
            "galaxy_id": np.arange(n),
        }

    train, test = sample(4096), sample(512)
    config = MosaicConfig(modalities=["redshift", "log_halo_mass", "log_stellar_mass", "lsst"], **TINY,
                          mask_prior_probability=0.0)
    config.set_normalization_from_data(train)
    torch.manual_seed(0)
    model = MosaicModel(config)
    collator = MosaicMaskingCollator(config, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        collator.set_epoch(step // 32)
        rows = slice((step % 32) * 128, (step % 32 + 1) * 128)
        loss = model(**collator({k: v[rows] for k, v in train.items()})).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    def normalised_mse(name, inputs):
        predicted = model.predict({k: test[k] for k in inputs}, targets=[name])[name]
        learned = MODALITIES[name].to_learning
        return np.mean((learned(predicted) - learned(test[name])) ** 2) / np.var(learned(test[name]))

    assert normalised_mse("redshift", ["lsst"]) < 0.3
    assert normalised_mse("log_stellar_mass", ["log_halo_mass"]) < 0.3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_model_cast_to_another_dtype_keeps_its_normalisation_tables(model, dtype, tmp_path):
    """`.to(dtype)` (and `from_pretrained(dtype=...)`) casts the weights, not the layout's tables: in float16 the
    SED's offset (1e15) overflowed and every SED normalised alike; bf16 rounded the LSST means to 1/32 mag."""
    from modeling_mosaic.modeling_mosaic import MosaicLayout

    tables = MosaicLayout.tables(model.config)
    model.save_pretrained(tmp_path)
    for cast in (copy.deepcopy(model).to(dtype), MosaicModel.from_pretrained(tmp_path, dtype=dtype).eval()):
        assert cast.embeddings.weight.dtype == dtype
        for name, table in tables.items():
            assert getattr(cast.layout, name).dtype == table.dtype and torch.equal(getattr(cast.layout, name), table)
        sed, values = torch.tensor([model.config.modality_slices["sed"].start]), torch.tensor([[1e27], [1e29]])
        normalised, expected = cast.layout.normalize(values, sed)[0], model.layout.normalize(values, sed)[0]
        assert torch.equal(normalised, expected) and normalised[0] != normalised[1]


def test_a_finite_input_past_float32s_range_is_a_huge_value_not_a_missing_one(model):
    """An SED in erg/s (~1e40) does not fit float32: it is read as float32's largest value, not as NaN."""
    largest = np.finfo(np.float32).max

    def mass(sed):
        return model.predict({"sed": sed}, targets=["log_stellar_mass"])["log_stellar_mass"]

    huge, clipped, missing = mass(np.full((1, 256), 1e40)), mass(np.full((1, 256), largest)), mass(
        np.full((1, 256), np.nan))
    assert huge == clipped and huge != missing
    with pytest.raises(ValueError, match=r"inputs\['sed'\] has 256 value\(s\) below the physical minimum 0"):
        mass(np.full((1, 256), -1e40))

    def mass_from_lsst(lsst):
        return model.predict({"lsst": lsst}, targets=["log_stellar_mass"])["log_stellar_mass"]

    assert mass_from_lsst(np.full((1, 6), -1e40)) == mass_from_lsst(np.full((1, 6), -largest))


def test_an_infinite_error_is_the_largest_error_and_a_negative_one_is_refused():
    """NaN = unknown (read as 0); +inf = no information, read as the largest error the encoder takes (as 1e30 is),
    not as an unknown one; a negative error is a named error."""
    torch.manual_seed(0)
    noisy = MosaicModel(MosaicConfig(**TINY, error_inputs=True)).eval()
    lsst = np.random.default_rng(0).normal(24.0, 1.0, (3, 6))

    def redshift(error):
        return noisy.predict({"lsst": lsst}, targets="redshift", errors={"lsst": np.full((3, 6), error)})["redshift"]

    np.testing.assert_array_equal(redshift(np.inf), redshift(1e30))
    np.testing.assert_array_equal(redshift(np.nan), redshift(0.0))
    assert not np.array_equal(redshift(np.inf), redshift(np.nan))
    with pytest.raises(ValueError, match=r"errors\['lsst'\] is negative in row 0"):
        redshift(-0.1)


def test_a_column_of_per_row_vectors_reads_like_a_2d_array(model):
    """pandas reads a Parquet list column as an object column of arrays: `predict` takes it (and the DataFrame
    itself) as it takes the (N, 6) array."""
    import pandas as pd

    lsst = np.random.default_rng(3).normal(25.0, 1.0, (5, 6))
    rows = np.empty(5, dtype=object)
    rows[:] = list(lsst)
    frame = pd.DataFrame({"lsst": list(lsst)})
    expected = model.predict({"lsst": lsst}, targets="redshift")["redshift"]
    for inputs in ({"lsst": rows}, frame):
        np.testing.assert_array_equal(model.predict(inputs, targets="redshift")["redshift"], expected)
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.ones(6), np.ones(5)]
    with pytest.raises(ValueError, match=r"inputs\['lsst'\] is not numeric"):
        model.predict({"lsst": ragged}, targets="redshift")
