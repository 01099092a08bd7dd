"""MOSAIC: a multi-modal masked encoder for galaxies with an any-to-any query API.

A galaxy is one flat vector of every configured modality, in physical units, with NaN for what is missing.
The model applies the registry's learning transform and the config's normalisation itself, cuts each
modality into tokens (a scalar is one token, a vector one token per patch; a patch is embedded from its
values, which are visible, and, with `step_inputs`, each value's standardised step from its neighbour: the
colours of a photometric patch), and runs a pre-norm transformer
in which a token with nothing visible (a "query" token) is attended by no one but itself. A query token's
output therefore depends only on the visible tokens and its own position, so `predict` runs the encoder on
the tokens it is given plus the tokens it is asked for, and nothing else, with the same result as the full
sequence (its last block only for the tokens asked for). Linear heads map every token back to its patch values;
the loss is the error on hidden elements.

With `head_type="gaussian"` the heads give every element a mean and a log-variance (trained by the
beta-weighted Gaussian negative log-likelihood) and the redshift token a mixture of Gaussians in normalised
log10(1 + z), so that `predict` can return uncertainties, samples and photo-z posteriors, calibrated per query
by `calibrate` (a shift and a width per target, a PIT map for redshift). With `error_inputs` each element's
measurement error enters its token's embedding beside its value, so a noisy band counts less.

This file is remote code: it imports only numpy, torch, transformers and (relatively) its own package files.
"""

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_mosaic import MosaicConfig, true_runs
from .modalities import MODALITIES, PHYSICAL_MAXIMUM, get_modality

logger = logging.get_logger(__name__)

#: Normalised values are clipped to +-INPUT_CLIP so an absurd input (1e30 in a magnitude column) cannot
#: overflow the float32 statistics of a LayerNorm; real data lies within a few tens of standard deviations.
INPUT_CLIP = 1.0e3
#: Floor of the argument of the learning transform's log10 (the registry's own floor).
LOG_FLOOR = 1.0e-30
#: Predicted log-variances (normalised units) are clamped to +-LOG_VARIANCE_LIMIT, mixture log-scales to half
#: of it: beyond e^(+-10) standard deviations a prediction is meaningless and exp() would overflow float16.
LOG_VARIANCE_LIMIT = 20.0
LOG_2PI = math.log(2.0 * math.pi)
#: The quantiles of the redshift mixture: at most QUANTILE_STEPS safeguarded Newton steps (bisection alone would
#: reach 2^-60 of the bracket), stopping once a step is below QUANTILE_TOLERANCE of the widest component's sigma.
QUANTILE_STEPS = 60
QUANTILE_TOLERANCE = 1e-10
#: Points per component (from -8 to 8 of its sigma) of the CDF table `tabulated_quantile` inverts.
QUANTILE_TABLE_NODES = 25
#: `calibrate` fits a shift and a temperature on at most this many scored values per target (evenly strided over
#: rows and elements); a scalar's PIT map on all of its rows.
CALIBRATION_POINTS = 20_000
#: Below this many scored rows `calibrate` warns: a fit's PIT is then flat only to its sampling noise (~0.04 at 1,000).
CALIBRATION_ROWS = 1_000
#: The grids `fit_shift_and_temperature` searches: temperatures 0.2-5 (log-spaced), shifts -1..1 sigma.
TEMPERATURE_GRID = np.exp(np.linspace(math.log(0.2), math.log(5.0), 161))
SHIFT_GRID = np.linspace(-1.0, 1.0, 81)
#: A scalar target's PIT map (`calibrate`) has this many equal-count bins of held-out PIT values; it is
#: blended with the identity by PIT_MAP_FLOOR, so that no bin's density ratio exceeds 1 / PIT_MAP_FLOOR.
PIT_MAP_BINS = 16
PIT_MAP_FLOOR = 0.01
#: Percentiles `predict` returns with `return_uncertainty` (the median and the central 68% interval).
PERCENTILES = (16, 50, 84)
#: Rows of a batch whose redshift pdf is tabulated at a time: 4,096 rows of the default grid's 351 points and five
#: components make 57 MB float64 temporaries, which the pdf pass streams through memory at half the speed.
PDF_ROWS = 512
#: Queries of at most this many tokens (redshift or stellar mass from LSST: two) attend through
#: `few_token_attention`: the batched products cost 1.2-2.4x as much there, 0.9x at five tokens (4,096 galaxies).
FEW_TOKENS = 4
#: The fewest rows (tokens over the batch) a CPU inference linear sends to oneDNN (`linear`); the demo model's
#: redshift query ran as fast either way at ~128 galaxies (256 rows).
ONEDNN_MIN_ROWS = 256
#: Redshifts at which `predict` tabulates the photo-z posterior by default.
DEFAULT_REDSHIFT_GRID = np.linspace(0.0, 3.5, 351)
DEFAULT_REDSHIFT_GRID.setflags(write=False)


def full_precision(tensor: torch.Tensor):
    """Autocast switched off on `tensor`'s device. The embeddings and the heads run in their weights' dtype even
    under bf16 mixed precision: bf16 keeps 8 bits of mantissa, so a normalised input or output near 1 moves in
    steps of ~0.004 standard deviations, the size of the colour differences a sharp photo-z needs (README:
    a dense photo-z network lost 21% to bf16, 4% with fp32 ends). They are a sliver of the FLOPs."""
    return torch.autocast(tensor.device.type, enabled=False)


def per_token(bank: torch.Tensor, token_modality: torch.Tensor) -> torch.Tensor:
    """Each token's row of a per-modality weight bank. `index_select`, not `bank[token_modality]`: the backward
    of plain indexing adds the tokens' gradients into a shared row with atomic adds on a multi-threaded CPU, in
    an order that varies from run to run, and training with two threads stopped being reproducible."""
    return bank.index_select(0, token_modality)


def narrow_slots(bank: torch.Tensor, dim: int, patch_size: int, width: int) -> torch.Tensor:
    """A weight bank whose dimension `dim` runs over k per-slot blocks of `patch_size` -> the first `width` slots of
    each block: what a query's patches narrowed to `width` (`MosaicLayout.width`) meet."""
    if width == patch_size:
        return bank
    blocks = bank.unflatten(dim, (-1, patch_size)).narrow(dim + 1, 0, width)
    return blocks.flatten(dim, dim + 1)


def onednn_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    """oneDNN's linear of 2-d `rows` (a 3-d input ran ~2x slower), with the erf GELU fused into it if asked."""
    activation, algorithm = ("gelu", "none") if gelu else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, activation, [], algorithm)


def _register_onednn_linear():
    """`onednn_linear` as the custom op mosaic::onednn_linear, which torch.compile keeps as a call between its
    fused kernels: inductor lowers oneDNN's own op only for frozen weights, and a compiled nn.Linear runs MKL's
    sgemm. Registered once per process, where both the package and a Hub copy of this file are imported."""
    if not hasattr(torch.ops.mosaic, "onednn_linear"):
        op = torch.library.custom_op("mosaic::onednn_linear", onednn_linear, mutates_args=())
        op.register_fake(lambda rows, weight, bias, gelu: rows.new_empty(rows.shape[0], weight.shape[0]))
    return torch.ops.mosaic.onednn_linear


COMPILED_ONEDNN_LINEAR = _register_onednn_linear()
#: Whether this PyTorch build has oneDNN, read once: torch.compile breaks its graph at a call of `is_available`.
ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()


class OneDNNLinear(torch.autograd.Function):
    """A linear of 2-d float32 CPU rows that trains through oneDNN: the forward and the input's gradient (a linear
    by the transposed weight) run oneDNN's op; the weight's gradient, a product over the rows, stays torch.mm's
    (through oneDNN it needs transposed copies of both operands, and the demo's step ran 0.87x)."""

    @staticmethod
    def forward(ctx, rows, weight, bias):
        ctx.save_for_backward(rows, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(rows, weight, bias, False)

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_rows = onednn_linear(grad, weight.t().contiguous(), None, False)
        if ctx.needs_input_grad[1]:
            grad_weight = grad.t().mm(rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_rows, grad_weight, grad_bias


def linear(layer: nn.Linear, hidden_states: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`layer(hidden_states)`, then the (erf) GELU if asked. On a CPU in float32 through oneDNN: MKL's sgemm, which
    nn.Linear calls there, ran this model's products (one side the hidden size) at 168-190 GFLOP/s on an AVX-512
    AMD EPYC where oneDNN ran them at 403-424. With no gradient to record (inference) the GELU is fused into the op
    (compiled: COMPILED_ONEDNN_LINEAR); in training `OneDNNLinear` carries the gradient, and a compiled training
    step keeps nn.Linear for inductor. A layer that is not a plain nn.Linear (a quantized one) keeps its own op, and
    so does bf16 autocast. Below ONEDNN_MIN_ROWS rows oneDNN's per-call cost outweighs its speed: a single galaxy's
    prediction took 3.1 ms against 2.5."""
    recorded = torch.is_grad_enabled() and (hidden_states.requires_grad or layer.weight.requires_grad)
    if not (type(layer) is nn.Linear and hidden_states.device.type == "cpu"
            and hidden_states.numel() >= ONEDNN_MIN_ROWS * hidden_states.shape[-1]
            and hidden_states.dtype == layer.weight.dtype == torch.float32 and ONEDNN_AVAILABLE
            and not torch.is_autocast_enabled("cpu") and not (recorded and torch.compiler.is_compiling())):
        hidden_states = layer(hidden_states)
        return F.gelu(hidden_states) if gelu else hidden_states
    rows = hidden_states.reshape(-1, hidden_states.shape[-1])
    if recorded:
        out = OneDNNLinear.apply(rows, layer.weight, layer.bias)
        out = F.gelu(out) if gelu else out
    else:
        fused = COMPILED_ONEDNN_LINEAR if torch.compiler.is_compiling() else onednn_linear
        out = fused(rows, layer.weight, layer.bias, gelu)
    return out.view(*hidden_states.shape[:-1], out.shape[-1])


@dataclass
class MosaicModelOutput(ModelOutput):
    """Output of `MosaicModel.forward`.

    loss: masked error in normalised space, the mean over modalities with scored elements weighted by the
        config's `loss_weights` (plus the weighted reconstruction error on visible elements when
        `visible_loss_weight` > 0).
    modality_losses: (M,) each modality's masked error, 0 where it had no scored element.
    predictions: (B, D) every element's prediction, in normalised learning space (with the gaussian head the
        mean; for redshift the mixture's mean).
    last_hidden_state: (B, T, H) the final token states.
    pooled: (B, M, H) the mean final state of each modality's tokens.
    log_variances: (B, D) gaussian head only: every element's predicted log-variance, normalised units (for
        redshift the mixture's variance).
    redshift_mixture: (B, 3, K) gaussian head with redshift only: the mixture's logits, means and log-scales
        (rows 0, 1, 2) in normalised log10(1 + z).
    """

    loss: torch.FloatTensor | None = None
    modality_losses: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooled: torch.FloatTensor | None = None
    log_variances: torch.FloatTensor | None = None
    redshift_mixture: torch.FloatTensor | None = None


class MosaicLayout(nn.Module):
    """Where every element of the flat vector lives (modality, token, slot in the token's patch) and how it is
    transformed into normalised learning space.

    All tables follow from the config, so the buffers are not saved with the weights; `_init_weights` fills
    them again after transformers builds the model on the meta device.
    """

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.patch_size = max(config.patch_sizes.values())
        for name, table in self.tables(config).items():
            self.register_buffer(name, table, persistent=False)
        self.num_tokens = self.token_modality.numel()
        self.redshift_element = self.redshift_token = None
        if "redshift" in config.modalities:
            before = config.modalities[:config.modalities.index("redshift")]
            self.redshift_element = config.modality_slices["redshift"].start
            self.redshift_token = sum(-(-MODALITIES[n].length // config.patch_sizes[n]) for n in before)

    def _apply(self, fn, recurse=True):
        """`model.half()` or `.to(torch.bfloat16)` moves these tables but keeps their dtype: the SED's offset (1e15)
        overflows float16, bf16 rounds the LSST means to 1/32 magnitude, and `normalize` works in float32 anyway."""
        def same_dtype(table):
            moved = fn(table)
            return moved if moved.dtype == table.dtype else table.to(moved.device)

        return super()._apply(same_dtype, recurse)

    @staticmethod
    def tables(config: MosaicConfig) -> dict:
        """name -> tensor: per element its modality, whether it is the redshift, and its transform; per token its
        modality and elements (padding points one past the end), and which flat patch slots hold an element; per
        modality its loss weight and token-averaging matrix."""
        patch, num_elements = max(config.patch_sizes.values()), config.num_elements
        element_modality, element_token, element_slot = [], [], []
        transform = {"log": [], "scale": [], "offset": []}
        num_tokens = 0
        for m, name in enumerate(config.modalities):
            modality, size = MODALITIES[name], config.patch_sizes[name]
            position = np.arange(modality.length)
            element_modality.append(np.full(modality.length, m))
            element_token.append(num_tokens + position // size)
            element_slot.append(position % size)
            num_tokens += -(-modality.length // size)
            for key, columns in transform.items():
                columns.append(np.full(modality.length, getattr(modality, key)))
        element_modality, element_token, element_slot = (
            np.concatenate(a) for a in (element_modality, element_token, element_slot))
        token_elements = np.full((num_tokens, patch), num_elements)  # index num_elements = padding
        token_elements[element_token, element_slot] = np.arange(num_elements)
        token_modality = np.zeros(num_tokens, dtype=np.int64)
        token_modality[element_token] = element_modality
        counts = np.bincount(token_modality, minlength=len(config.modalities))
        modality_pool = (token_modality[None, :] == np.arange(len(config.modalities))[:, None]) / counts[:, None]
        stats = {k: np.concatenate([config.normalization[n][k] for n in config.modalities])
                 for k in ("mean", "std", "step_std")}
        return {
            "element_modality": torch.as_tensor(element_modality, dtype=torch.long),
            "is_redshift": torch.as_tensor(np.asarray(config.modalities)[element_modality] == "redshift"),
            "token_elements": torch.as_tensor(token_elements, dtype=torch.long),
            "token_modality": torch.as_tensor(token_modality, dtype=torch.long),
            "slot_is_element": torch.as_tensor(np.flatnonzero(token_elements < num_elements), dtype=torch.long),
            "continues_patch": torch.as_tensor(element_slot > 0, dtype=torch.float32),
            "modality_pool": torch.as_tensor(modality_pool, dtype=torch.float32),
            "loss_weight": torch.as_tensor([config.loss_weights[n] for n in config.modalities], dtype=torch.float32),
            "log": torch.as_tensor(np.concatenate(transform["log"]), dtype=torch.bool),
            "scale": torch.as_tensor(np.concatenate(transform["scale"]), dtype=torch.float32),
            "offset": torch.as_tensor(np.concatenate(transform["offset"]), dtype=torch.float32),
            "mean": torch.as_tensor(stats["mean"], dtype=torch.float32),
            "std": torch.as_tensor(stats["std"], dtype=torch.float32),
            "step_std": torch.as_tensor(stats["step_std"], dtype=torch.float32),
        }

    def elements_of(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The flat indices of the chosen tokens' elements, increasing: the only columns a query needs."""
        index = self.token_elements[token_ids].flatten()
        return index[index < self.mean.numel()].sort().values

    def _table(self, name: str, elements: torch.Tensor | None) -> torch.Tensor:
        table = getattr(self, name)
        return table if elements is None else table[elements]

    def normalize(self, values: torch.Tensor, elements: torch.Tensor | None = None):
        """Physical (B, E) values of `elements` (default all D) -> (normalised learning-space values with 0 where
        missing, present = finite)."""
        scale, offset, log, mean, std = (self._table(n, elements) for n in ("scale", "offset", "log", "mean", "std"))
        values = values.float()
        present = torch.isfinite(values)
        finite = torch.where(present, values, 0.0)
        logged = scale.float() * torch.log10(torch.clamp(finite + offset.float(), min=LOG_FLOOR))
        learned = torch.where(log, logged, finite)
        normalised = ((learned - mean.float()) / std.float()).clamp(-INPUT_CLIP, INPUT_CLIP)
        return torch.where(present, normalised, 0.0), present

    def errors_to_learning(self, values: torch.Tensor, errors: torch.Tensor,
                           elements: torch.Tensor | None = None) -> torch.Tensor:
        """Physical 1-sigma errors at physical values (B, E) -> learning-space errors, to first order in the
        error (the log transform's slope at the value); NaN where either is unknown."""
        scale, offset, log = (self._table(n, elements) for n in ("scale", "offset", "log"))
        values, errors = values.float(), errors.float().abs()
        slope = scale.float() / (torch.clamp(values + offset.float(), min=LOG_FLOOR) * math.log(10.0))
        learned = torch.where(log, errors * slope, errors)
        return torch.where(torch.isfinite(values), learned, float("nan"))

    def normalize_errors(self, errors: torch.Tensor, visible: torch.Tensor,
                         elements: torch.Tensor | None = None) -> torch.Tensor:
        """Learning-space errors (B, E) -> in units of each element's std, 0 where unknown (NaN) or not visible (a
        hidden element's error must not reach the encoder any more than its value); an infinite error is the
        largest the encoder reads (INPUT_CLIP), not an unknown one."""
        errors = errors.float().abs()
        known = visible & ~torch.isnan(errors)
        return torch.where(known, errors / self._table("std", elements).float(), 0.0).clamp(max=INPUT_CLIP)

    def to_learning_space(self, normalised: torch.Tensor, elements: torch.Tensor | None = None) -> torch.Tensor:
        """Undo the normalisation (not the log transform): (B, E) values of `elements` (default all D) ->
        learning-space values."""
        return normalised.float() * self._table("std", elements).float() + self._table("mean", elements).float()

    def width(self, elements: torch.Tensor | None = None) -> int:
        """The patch width a query over `elements` (default all D) needs: no token of it holds more elements than
        the query has, so a query of few elements (redshift from LSST: 7) drops the padding slots of the widest
        patch (32) from its patches, embeddings and heads. A static shape, so a compiled graph has no sync."""
        return self.patch_size if elements is None else min(self.patch_size, elements.numel())

    def slots(self, token_ids: torch.Tensor, width: int) -> torch.Tensor:
        """(T', width) flat index of each slot of the chosen tokens' patches; padding points one past the end."""
        return self.token_elements[token_ids, :width]

    def features(self, normalised, visible, errors, token_ids, elements=None, steps: bool = True):
        """(B, E) normalised values, visibility and normalised errors (None: no error inputs) over `elements`
        (default all D; `elements_of(token_ids)` or more whole tokens) -> the chosen tokens' embedding inputs
        (B, T', W k), slot by slot: W = `width(elements)` slots of k features [value, visible, step (`steps`),
        error], zero in padding slots; and which tokens have something visible (B, T'). The features are stacked
        per element and gathered into patches in one pass."""
        shown = visible.to(normalised.dtype)
        rows = [normalised, shown] + ([self.steps(normalised, shown, elements)] if steps else [])
        rows += [] if errors is None else [errors.to(normalised.dtype)]
        index = self.slots(token_ids, self.width(elements))
        if elements is not None:
            position = torch.full((self.mean.numel() + 1,), elements.numel(), dtype=torch.long, device=index.device)
            position[elements] = torch.arange(elements.numel(), device=index.device)
            index = position[index]
        stacked = F.pad(torch.stack(rows, dim=-1), (0, 0, 0, 1))  # (B, E + 1, k): padding reads the zero row
        patches = stacked.index_select(1, index.flatten()).view(*normalised.shape[:1], *index.shape, len(rows))
        return patches.flatten(2), patches[..., 1].amax(dim=-1) > 0

    def steps(self, normalised: torch.Tensor, shown: torch.Tensor, elements: torch.Tensor | None = None):
        """(B, E) normalised values and visibility (1 or 0) over `elements` (whole tokens) -> each element's step
        from the previous element of its patch, in learning space over the step's spread; 0 at a patch's first
        slot and where either is not visible. A token's elements are adjacent columns, so the previous element of
        a patch is the previous column."""
        learned = self.to_learning_space(normalised, elements)
        steps = (learned[:, 1:] - learned[:, :-1]) / self._table("step_std", elements).float()[1:]
        both = shown[:, 1:] * shown[:, :-1] * self._table("continues_patch", elements)[1:]
        return F.pad((steps * both).clamp(-INPUT_CLIP, INPUT_CLIP), (1, 0)).to(normalised.dtype)

    def unpatch(self, patches: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """The chosen tokens' patches (B, T', W) -> their elements (B, E), in the order of `elements_of(token_ids)`
        (tokens and slots run in element order), dropping the padding. With every token (training) the kept slots
        are a fixed table: no shape that depends on data, so a compiled training step is one graph."""
        if token_ids.numel() == self.num_tokens and patches.shape[-1] == self.patch_size:
            keep = self.slot_is_element
        else:
            keep = torch.nonzero(self.slots(token_ids, patches.shape[-1]).flatten() < self.mean.numel()).flatten()
        return patches.reshape(patches.shape[0], -1).index_select(1, keep)  # backward: a plain add, not index_put


class MosaicEmbeddings(nn.Module):
    """A token's patch values and visibility flags (with `step_inputs` its elements' standardised steps, with
    `error_inputs` their errors) -> one hidden vector through its modality's linear map, plus learned position
    and modality embeddings, plus a mask embedding for a token with nothing visible.

    The per-modality maps live in one weight bank, gathered per token, so every modality embeds in one einsum.
    """

    def __init__(self, config: MosaicConfig, num_tokens: int, patch_size: int):
        super().__init__()
        num_modalities, hidden = len(config.modalities), config.hidden_size
        self.patch_size = patch_size
        features = (2 + config.step_inputs + config.error_inputs) * patch_size
        self.weight = nn.Parameter(torch.empty(num_modalities, features, hidden))
        self.bias = nn.Parameter(torch.empty(num_modalities, hidden))
        self.position = nn.Parameter(torch.empty(num_tokens, hidden))
        self.modality = nn.Parameter(torch.empty(num_modalities, hidden))
        self.mask = nn.Parameter(torch.empty(hidden))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, features, token_visible, token_ids, token_modality):
        """features (B, T', W k) and token_visible (B, T') from `MosaicLayout.features` -> (B, T', H). The weight
        bank holds k blocks of P slots; each token's map is cut to the features' W slots and put slot by slot."""
        blocks = self.weight.shape[1] // self.patch_size
        weight = per_token(self.weight, token_modality).unflatten(1, (blocks, self.patch_size))
        weight = weight[:, :, :features.shape[-1] // blocks].transpose(1, 2).flatten(1, 2)
        features = features.to(self.weight.dtype)
        with full_precision(features):
            embedded = torch.einsum("btf,tfh->bth", features, weight)
        embedded = embedded + per_token(self.bias + self.modality, token_modality) + self.position[token_ids]
        return self.dropout(torch.where(token_visible[..., None], embedded, embedded + self.mask))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention with an additive mask, as products batched over (batch x heads), the scale and the
    mask applied inside the first (baddbmm); returns (B, T, heads, head_dim) like the SDPA path."""
    batch, heads, tokens, head_dim = query.shape
    query, key, value = (x.reshape(batch * heads, -1, head_dim) for x in (query, key, value))
    if attention_mask is None:
        weights = torch.bmm(query, key.transpose(1, 2)) * scaling
    else:
        mask = attention_mask.expand(batch, heads, tokens, -1).reshape(batch * heads, tokens, -1)
        weights = torch.baddbmm(mask.to(query.dtype), query, key.transpose(1, 2), alpha=scaling)
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.bmm(weights, value).view(batch, heads, tokens, head_dim).transpose(1, 2)
    return output, weights.view(batch, heads, tokens, -1)


def few_token_attention(query, key, value, attention_mask, scaling, dropout=0.0):
    """Softmax attention as broadcast products over (B, K, T, heads, head_dim), for a handful of tokens T: the
    batched products of `eager_attention_forward` would be batch x heads matrices of T x head_dim each, whose
    per-matrix cost and (B, heads)-major copies outweigh their arithmetic. query (B, K, heads, head_dim), key and
    value (B, T, heads, head_dim), attention_mask additive (B, 1, K, T) -> (B, K, heads, head_dim)."""
    scores = (query[:, :, None] * key[:, None]).sum(dim=-1) * scaling + attention_mask[:, 0, :, :, None]
    weights = F.dropout(scores.softmax(dim=2, dtype=torch.float32).to(query.dtype), p=dropout)
    return (weights[..., None] * value[:, None]).sum(dim=2)


def pair_attention(query, key, value, attention_mask, scaling):
    """`few_token_attention` over exactly two keys: a softmax over two scores is the logistic function of their
    difference, q.k0 - q.k1 = q.(k0 - k1), so one product of the query's size is formed instead of two and their
    weighted sum; the output moves from the second value to the first by that weight (`torch.lerp`, exact at
    weights 0 and 1: a hidden key's value does not leak through rounding). Same arguments and result."""
    mask = attention_mask[:, 0]
    logit = torch.add(mask[..., :1] - mask[..., 1:], (query * (key[:, :1] - key[:, 1:])).sum(dim=-1), alpha=scaling)
    weight = torch.sigmoid(logit).to(value.dtype)  # float32 with the mask, as the softmax of few_token_attention
    return torch.lerp(value[:, None, 1], value[:, None, 0], weight[..., None])


def visible_attention_mask(token_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: a token attends to every token with something visible and to itself."""
    num_tokens = token_visible.shape[1]
    itself = torch.eye(num_tokens, dtype=torch.bool, device=token_visible.device)
    allowed = token_visible[:, None, :] | itself
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class MosaicAttention(nn.Module):
    """Multi-head self-attention through transformers' attention interface (SDPA by default), or for a query of at
    most FEW_TOKENS tokens `few_token_attention` (of two, without dropout, `pair_attention`), whatever the
    interface."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask, keep=None):
        """`keep`: positions of the tokens whose outputs are wanted (default all); every token is still a key and
        a value. `attention_mask`: (B, 1, K, T), a row per kept token."""
        batch, tokens, hidden = hidden_states.shape
        qkv = linear(self.qkv, hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim)
        dropout = self.config.attention_dropout if self.training else 0.0
        if tokens <= FEW_TOKENS:
            query, key, value = qkv.unbind(dim=2)
            query = query if keep is None else query[:, keep]
            if tokens == 2 and not dropout:
                output = pair_attention(query, key, value, attention_mask, self.scaling)
            else:
                output = few_token_attention(query, key, value, attention_mask, self.scaling, dropout)
            return linear(self.out, output.reshape(batch, query.shape[1], hidden))
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        if keep is not None:
            query = query[:, :, keep]
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attend(self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling)
        return linear(self.out, output.reshape(batch, query.shape[2], hidden))


class MosaicMLP(nn.Module):
    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return linear(self.fc2, linear(self.fc1, hidden_states, gelu=True))


class MosaicBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MosaicAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MosaicMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attention_mask, keep=None):
        """`keep`: positions of the tokens to return (default all). The last block of a query needs only the
        requested tokens' states: the others are read as keys and values but skip the projection and the MLP."""
        normed = self.attention_norm(hidden_states)
        if keep is not None:
            hidden_states, attention_mask = hidden_states[:, keep], attention_mask[:, :, keep]
        hidden_states = hidden_states + self.dropout(self.attention(normed, attention_mask, keep))
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class MosaicHeads(nn.Module):
    """A token's final state -> its patch values (normalised) through its modality's linear head, followed
    by their log-variances for the gaussian head (2P outputs); the heads live in one weight bank gathered
    per token, like the embeddings."""

    def __init__(self, config: MosaicConfig, patch_size: int):
        super().__init__()
        num_modalities = len(config.modalities)
        self.patch_size = patch_size
        outputs = (2 if config.head_type == "gaussian" else 1) * patch_size
        self.weight = nn.Parameter(torch.empty(num_modalities, config.hidden_size, outputs))
        self.bias = nn.Parameter(torch.empty(num_modalities, outputs))

    def forward(self, hidden_states, token_modality, width: int):
        """-> (B, T', k * width): the first `width` slots of each of the k outputs (`MosaicLayout.width`)."""
        weight = narrow_slots(per_token(self.weight, token_modality), 2, self.patch_size, width)
        bias = narrow_slots(per_token(self.bias, token_modality), 1, self.patch_size, width)
        with full_precision(hidden_states):
            return torch.einsum("bth,thp->btp", hidden_states.to(self.weight.dtype), weight) + bias


class RedshiftMixtureHead(nn.Module):
    """The redshift token's final state -> a K-component Gaussian mixture in normalised log10(1 + z): (B, 3, K)
    logits, means, log-scales. A mixture, because a photo-z posterior is bimodal where colours are
    degenerate (the Lyman and Balmer breaks confused), and one Gaussian would sit between the modes."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.num_components = config.redshift_mixture_components
        self.weight = nn.Parameter(torch.empty(config.hidden_size, 3 * self.num_components))
        self.bias = nn.Parameter(torch.empty(3 * self.num_components))

    def initial_bias(self) -> torch.Tensor:
        """Equal weights, unit scales and means spread over +-1.5 std, so the components start apart."""
        k = self.num_components
        return torch.cat([torch.zeros(k), torch.linspace(-1.5, 1.5, k) if k > 1 else torch.zeros(1), torch.zeros(k)])

    def forward(self, hidden_states):
        with full_precision(hidden_states):
            mixture = (hidden_states.to(self.weight.dtype) @ self.weight + self.bias).view(-1, 3, self.num_components)
        limit = LOG_VARIANCE_LIMIT / 2
        return torch.cat([mixture[:, :2], mixture[:, 2:].clamp(-limit, limit)], dim=1)


def gaussian_nll(mean, log_variance, target):
    """Elementwise negative log-likelihood of `target` under N(mean, exp(log_variance))."""
    return 0.5 * (LOG_2PI + log_variance + (target - mean) ** 2 * torch.exp(-log_variance))


def mixture_log_density(mixture, y):
    """log density of the mixtures (B, 3, K) at points y (B, G) -> (B, G)."""
    logits, means, log_scales = (part[:, None] for part in mixture.float().unbind(dim=1))
    standardised = (y[..., None] - means) * torch.exp(-log_scales)
    component = -0.5 * standardised**2 - log_scales - 0.5 * LOG_2PI
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + component, dim=-1)


def mixture_moments(mixture):
    """Mean and log-variance (B,) of the mixtures (B, 3, K)."""
    logits, means, log_scales = mixture.float().unbind(dim=1)
    weights = torch.softmax(logits, dim=-1)
    mean = (weights * means).sum(dim=-1)
    variance = (weights * (torch.exp(2 * log_scales) + (means - mean[:, None]) ** 2)).sum(dim=-1)
    return mean, torch.log(variance.clamp(min=math.exp(-LOG_VARIANCE_LIMIT)))


class MosaicPreTrainedModel(PreTrainedModel):
    config_class = MosaicConfig
    base_model_prefix = "mosaic"
    main_input_name = "values"
    _supports_sdpa = True
    _no_split_modules: ClassVar[list] = ["MosaicBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, MosaicLayout):
            for name, table in module.tables(self.config).items():
                init.copy_(getattr(module, name), table)
        elif isinstance(module, MosaicEmbeddings):
            for parameter in (module.weight, module.position, module.modality, module.mask):
                init.normal_(parameter, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, MosaicHeads):
            init.normal_(module.weight, mean=0.0, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, RedshiftMixtureHead):
            init.normal_(module.weight, mean=0.0, std=std)
            init.copy_(module.bias, module.initial_bias())


class MosaicModel(MosaicPreTrainedModel):
    """The MOSAIC encoder: `forward` for training on flat masked batches, `predict` and `embed` for any-to-any
    queries by modality name in physical units."""

    accepts_loss_kwargs = False

    def __init__(self, config: MosaicConfig):
        super().__init__(config)
        self.layout = MosaicLayout(config)
        self.embeddings = MosaicEmbeddings(config, self.layout.num_tokens, self.layout.patch_size)
        self.blocks = nn.ModuleList([MosaicBlock(config) for _ in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.heads = MosaicHeads(config, self.layout.patch_size)
        self.redshift_head = (RedshiftMixtureHead(config)
                              if self.is_probabilistic and self.layout.redshift_token is not None else None)
        self.post_init()

    @property
    def is_probabilistic(self) -> bool:
        return self.config.head_type == "gaussian"

    def compile_encoder(self, batch_size: int = 4096, **compile_kwargs) -> "MosaicModel":
        """Compile the encoder in place with `torch.compile(**compile_kwargs)`, for `predict` and `embed` over large
        catalogs: a query's patches, embeddings, attention mask, blocks and final norm as one graph. A short
        query's time goes mostly to element-wise work (layer norms, GELU, residual adds, attention over a few tokens,
        the embeddings' gathers), which inductor fuses; the weights, their names and the outputs (to float32
        rounding) are unchanged. One compiled function, not one per block: a block's code is shared by every block,
        so their query shapes together would soon reach dynamo's recompile limit and run eager. Each new query
        compiles first (seconds); on a CPU, inductor needs a C++ compiler.

        `batch_size`: the batch size you predict with. A smaller batch (a catalog's last, a short query) is padded
        to it with empty galaxies, so a query runs one static-shape graph (`dynamic=False` unless given). Under
        dynamo's default a second batch size recompiles the query as one graph for any batch size, and the
        queries compiled after it are compiled so from the start; on a CPU such a graph took ~24 ms for 3,616
        galaxies where the static one took 13.8 ms for 4,096."""
        batch_size = check_batch_size(batch_size)
        compile_kwargs.setdefault("dynamic", False)
        encode = torch.compile(type(self)._encode, **compile_kwargs)  # unbound, so a deep copy binds to the copy
        self._compiled_encode, self._compiled_batch_size = encode.__get__(self), batch_size
        self._encode = self._padded_encode
        return self

    def _padded_encode(self, normalised, visible, errors, token_ids, elements=None, keep=None):
        """The compiled `_encode` on a batch padded with empty galaxies (nothing visible) to `compile_encoder`'s
        batch size; the padding's states are dropped."""
        rows = normalised.shape[0]
        if rows < self._compiled_batch_size:
            normalised, visible, errors = (x if x is None else torch.cat([x, x.new_zeros(
                self._compiled_batch_size - rows, *x.shape[1:])]) for x in (normalised, visible, errors))
        hidden_states, token_visible = self._compiled_encode(normalised, visible, errors, token_ids, elements, keep)
        return hidden_states[:rows], token_visible[:rows]

    def _encode(self, normalised, visible, errors, token_ids, elements=None, keep=None):
        """Run the encoder on the chosen tokens only -> (final states (B, T', H), which tokens have something
        visible (B, T')). Inputs are (B, E) over `elements` (default all D); `errors`: normalised errors for a
        model with `error_inputs`, else unused. `keep`: positions in `token_ids` of the tokens whose final states
        are wanted (default all): the last block computes only those (B, K, H)."""
        errors = errors if self.config.error_inputs else None
        features, token_visible = self.layout.features(normalised, visible, errors, token_ids, elements,
                                                       self.config.step_inputs)
        hidden_states = self.embeddings(features, token_visible, token_ids, self.layout.token_modality[token_ids])
        mask = visible_attention_mask(token_visible, hidden_states.dtype)
        for block in self.blocks[:-1]:
            hidden_states = block(hidden_states, mask)
        return self.norm(self.blocks[-1](hidden_states, mask, keep)), token_visible

    def _decode(self, hidden_states, token_ids, elements=None):
        """Final states of the chosen tokens -> (means (B, E), log-variances (B, E) or None, redshift mixture
        (B, 3, K) or None), normalised, over their elements `elements = layout.elements_of(token_ids)` (None:
        every token's, E = D). For redshift the mean and the log-variance are the mixture's: a query of redshift
        alone (a photo-z) skips the per-token heads."""
        if self.redshift_head is not None and token_ids.numel() == 1 < self.layout.num_tokens and (
                int(token_ids[0]) == self.layout.redshift_token):
            mixture = self.redshift_head(hidden_states[:, 0])
            mean, log_variance = (x[:, None].to(self.heads.weight.dtype) for x in mixture_moments(mixture))
            return mean, log_variance, mixture
        patch = self.layout.width(elements)
        outputs = self.heads(hidden_states, self.layout.token_modality[token_ids], patch)
        means = self.layout.unpatch(outputs[..., :patch], token_ids)
        if not self.is_probabilistic:
            return means, None, None
        log_variances = self.layout.unpatch(outputs[..., patch:], token_ids).clamp(-LOG_VARIANCE_LIMIT,
                                                                                   LOG_VARIANCE_LIMIT)
        if self.redshift_head is None:
            return means, log_variances, None
        if token_ids.numel() == self.layout.num_tokens:  # every token, in layout order: no device sync
            position = self.layout.redshift_token
        elif self.layout.redshift_token in token_ids:
            position = int(torch.nonzero(token_ids == self.layout.redshift_token)[0])
        else:
            return means, log_variances, None
        mixture = self.redshift_head(hidden_states[:, position])
        mean, log_variance = mixture_moments(mixture)
        is_redshift = self.layout.is_redshift if elements is None else self.layout.is_redshift[elements]
        means = torch.where(is_redshift, mean[:, None].to(means.dtype), means)
        log_variances = torch.where(is_redshift, log_variance[:, None].to(means.dtype), log_variances)
        return means, log_variances, mixture

    def _element_errors(self, means, log_variances, mixture, targets):
        """(B, D) per-element loss: `loss_type` for the point head; for the gaussian head the beta-NLL, the
        Gaussian's (the mixture's for redshift) negative log-likelihood times the predicted variance**beta."""
        means = means.float()
        if self.is_probabilistic:
            log_variances = log_variances.float()
            error = gaussian_nll(means, log_variances, targets)
            if mixture is not None:
                redshift_nll = -mixture_log_density(mixture, targets[:, self.layout.redshift_element, None])
                error = torch.where(self.layout.is_redshift, redshift_nll, error)
            return error * torch.exp(self.config.nll_beta * log_variances.detach())
        if self.config.loss_type == "mse":
            return (means - targets) ** 2
        if self.config.loss_type == "l1":
            return (means - targets).abs()
        return F.huber_loss(means, targets, reduction="none", delta=1.0)

    def _modality_losses(self, error, selected):
        """Each modality's mean error over its selected elements (0 where none), and which had any."""
        num_modalities = len(self.config.modalities)
        sums = error.new_zeros(num_modalities).index_add(
            0, self.layout.element_modality, torch.where(selected, error, 0.0).sum(dim=0))
        counts = error.new_zeros(num_modalities).index_add(
            0, self.layout.element_modality, selected.sum(dim=0).to(error.dtype))
        return sums / counts.clamp(min=1.0), counts > 0

    def _mean_over_present(self, losses, has):
        """Mean of the per-modality losses over modalities that had elements, so a 256-element SED does not
        drown a one-element redshift, weighted by the config's `loss_weights`."""
        weights = self.layout.loss_weight * has
        return (losses * weights).sum() / weights.sum().clamp(min=1e-12)

    def forward(
        self,
        values: torch.Tensor,
        input_mask: torch.Tensor,
        target_mask: torch.Tensor | None = None,
        errors: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """values: (B, D) physical units in the config's flat layout, NaN/inf = missing; input_mask: (B, D)
        True = shown to the model; target_mask: (B, D) True = scored (None: every present element not shown);
        errors: (B, D) 1-sigma error of each value in learning-space units (asinh magnitudes for LSST and
        SPHEREx), NaN or None = unknown, used by a model with `error_inputs` only.
        Missing elements are never shown nor scored, and hidden values never reach the encoder."""
        normalised, present = self.layout.normalize(values)
        visible = input_mask.bool() & present
        scored = (~visible if target_mask is None else target_mask.bool()) & present
        model_input = torch.where(visible, normalised, 0.0).to(self.dtype)
        model_errors = self.layout.normalize_errors(
            torch.full_like(normalised, float("nan")) if errors is None else errors.to(normalised.device), visible)
        all_tokens = torch.arange(self.layout.num_tokens, device=values.device)
        hidden_states, _ = self._encode(model_input, visible, model_errors, all_tokens)
        predictions, log_variances, mixture = self._decode(hidden_states, all_tokens)

        error = self._element_errors(predictions, log_variances, mixture, normalised)
        modality_losses, has_scored = self._modality_losses(error, scored)
        loss = self._mean_over_present(modality_losses, has_scored)
        if self.config.visible_loss_weight > 0:
            loss = loss + self.config.visible_loss_weight * self._mean_over_present(
                *self._modality_losses(error, visible))
        pooled = torch.einsum("mt,bth->bmh", self.layout.modality_pool.to(hidden_states.dtype), hidden_states)
        output = MosaicModelOutput(
            loss=loss, modality_losses=modality_losses, predictions=predictions,
            last_hidden_state=hidden_states, pooled=pooled, log_variances=log_variances, redshift_mixture=mixture,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------ query API
    def to_physical(self, predictions: torch.Tensor, names=None, elements=None) -> np.ndarray:
        """Normalised predictions (B, D), or (B, E) over a query's `elements`, -> physical units (float64 numpy),
        each clipped to its modality's physical range (a rate or a luminosity is never negative): every
        modality's columns, or only those of `names` (in layout order), side by side."""
        names = self.config.modalities if names is None else names
        columns = torch.cat([torch.arange(c.start, c.stop) for c in (self._columns(n, elements) for n in names)])
        columns = columns.to(predictions.device)
        element_ids = columns if elements is None else elements[columns]
        learned = self.layout.to_learning_space(predictions.detach()[:, columns], element_ids).cpu().numpy()
        parts = np.split(learned, np.cumsum([MODALITIES[n].length for n in names])[:-1], axis=1)
        return np.concatenate([MODALITIES[n].from_learning(part) for n, part in zip(names, parts)], axis=1)

    def _columns(self, name, elements=None) -> slice:
        """Where modality `name`'s elements sit in a (B, D) tensor, or in a (B, E) one over `elements` (sorted,
        holding all of the modality's elements, so they are contiguous there too)."""
        s = self.config.modality_slices[name]
        start = s.start if elements is None else int(torch.searchsorted(elements, s.start))
        return slice(start, start + s.stop - s.start)

    def _token_ids(self, names) -> torch.Tensor:
        """Indices of the tokens of the named modalities, in layout order."""
        wanted = [self.config.modalities.index(n) for n in names]
        selected = torch.isin(self.layout.token_modality, torch.tensor(wanted, device=self.device))
        return torch.nonzero(selected).flatten()

    def _check_names(self, names, argument) -> list:
        """Validate modality names given by a user (a dict's keys, or a list); returns them in layout order."""
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{argument}: expected modality names (a dict of name -> array, or a list of names), "
                                f"got an item of type {type(name).__name__}")
            try:
                get_modality(name)  # an unknown name lists the registry's names
            except ValueError as error:
                raise ValueError(f"{argument}: {error}") from None
            if name not in self.config.modalities:
                known = ", ".join(self.config.modalities)
                raise ValueError(f"{argument}: {name!r} is not in this model; it knows {known}")
        return [n for n in self.config.modalities if n in names]

    def _error_arrays(self, errors, names, num_rows) -> dict | None:
        """The user's `errors` dict, checked against the inputs' modalities `names` and `num_rows` -> float32
        arrays per modality; None without errors."""
        if not errors:
            return None
        if not self.config.error_inputs:
            raise ValueError("errors: this checkpoint was trained without error inputs (config.error_inputs is "
                             "False), so it cannot use measurement errors")
        unknown = [n for n in errors if n not in names]
        if unknown:
            raise ValueError(f"errors: {unknown} are not among the given inputs {names}")
        arrays = self.config.column_arrays(errors, argument="errors", values=False)
        rows = len(next(iter(arrays.values())))
        if rows != num_rows:
            raise ValueError(f"errors: {rows} rows, but the inputs have {num_rows}")
        for name, array in arrays.items():
            if (array < 0).any():
                row = int(np.argwhere(array < 0)[0][0])
                raise ValueError(f"errors[{name!r}] is negative in row {row}; a 1-sigma error is >= 0 (NaN where "
                                 "unknown, inf where the value carries no information)")
        return arrays

    def _flat_errors(self, errors, names, num_rows) -> np.ndarray | None:
        """The user's `errors` dict -> (N, D) physical errors, NaN where none is given; None without errors."""
        arrays = self._error_arrays(errors, names, num_rows)
        return None if arrays is None else self.config.flatten(arrays, argument="errors", values=False)

    def _prepare(self, flat: np.ndarray, flat_errors: np.ndarray | None, elements: torch.Tensor):
        """Physical (B, E) values and errors over a query's `elements` (NaN or None = unknown) -> the encoder's
        inputs: normalised values, which are present, and normalised errors (None without `error_inputs`)."""
        values = torch.from_numpy(np.ascontiguousarray(flat)).to(self.device)
        normalised, present = self.layout.normalize(values, elements)
        if not self.config.error_inputs:
            return normalised.to(self.dtype), present, None
        if flat_errors is None:
            errors = torch.full_like(values, float("nan"))
        else:
            errors = torch.from_numpy(np.ascontiguousarray(flat_errors)).to(self.device)
        learned = self.layout.errors_to_learning(values, errors, elements)
        return normalised.to(self.dtype), present, self.layout.normalize_errors(learned, present, elements)

    @torch.inference_mode()
    def predict(
        self,
        inputs: dict,
        targets: list | None = None,
        batch_size: int = 4096,
        return_uncertainty: bool = False,
        num_samples: int = 0,
        redshift_grid=None,
        errors: dict | None = None,
        seed: int = 0,
        return_pdf: bool = True,
    ) -> dict:
        """Predict modalities from any others, in physical units.

        inputs: name -> (N,) for a scalar or (N, length) for a vector; NaN/inf elements are "not given" (an
            SFH with NaN over 0-10 Gyr asks the model to fill that range in). Empty inputs return the learned
            prior for one galaxy (N = 1); inputs of zero rows return outputs of zero rows. A value below its
            modality's physical minimum (a negative redshift, SFR or luminosity) is refused.
        targets: a name or names to return; default every modality not fully given. Elements that were given
            are returned as given (with zero spread), so a fully given target comes back unchanged.
        return_uncertainty (gaussian head only): `name` becomes the mean of the predictive distribution in
            physical units and `name_std` its standard deviation, both in closed form (`predictive_moments`:
            the moments of the learning-space Gaussian, mixture for redshift, pushed through the inverse learning
            transform, and through a calibration PIT map where one applies); `name_p16`, `name_p50`,
            `name_p84` are its percentiles, exact because the transforms are monotonic (p50 is the point
            prediction returned without uncertainty, except for redshift and a PIT-mapped target). For a redshift
            target also `redshift_pdf` (N, G): the posterior density on `redshift_grid`, normalised to
            integrate to 1 over the grid (trapezoid rule); a given redshift's is a spike at the nearest grid
            point, or zeros where it lies beyond the grid. A posterior several dex wide in a log-learned modality
            has physical moments and tails beyond float32's range: they saturate at its largest finite value.
        num_samples (gaussian head only): adds `name_samples`, (N, S) for a scalar or (N, length, S) for a
            vector, draws from the predictive distribution (a pure function of `seed` and the batch split).
        redshift_grid: increasing redshifts for `redshift_pdf`; default np.linspace(0, 3.5, 351). Use a spacing
            well below the posteriors' widths (0.001 for LSST + SPHEREx): a PIT or CDF read off a tabulated
            pdf is only as good as its grid.
        errors (models with `error_inputs` only): name -> 1-sigma errors of given inputs, in the inputs'
            physical units and shapes (asinh-magnitude errors for lsst and spherex); NaN = unknown (read as 0),
            inf = no information (read as the largest error the encoder takes); negative errors are refused.
        return_pdf: False leaves `redshift_pdf` out of `return_uncertainty`'s outputs (tabulating it is about
            30% of the cost of a redshift's uncertainties); the other outputs are the same.
        Returns name -> float32 arrays. The encoder runs on the tokens of the input and target modalities only,
        and its last block on the target tokens only.
        """
        names = self._check_names(inputs, "inputs")
        arrays = self.config.column_arrays(inputs) if names else {}
        num_rows = len(next(iter(arrays.values()))) if names else 1
        error_arrays = self._error_arrays(errors, names, num_rows)
        batch_size = check_batch_size(batch_size)
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        asked = targets
        if targets is None:
            targets = [n for n in self.config.modalities if n not in arrays or not np.isfinite(arrays[n]).all()]
        targets = self._check_names([targets] if isinstance(targets, str) else targets, "targets")
        if not targets:
            reason = "the inputs give every modality in full" if asked is None else "name at least one modality"
            raise ValueError(f"targets: nothing to predict; {reason}")
        if num_rows == 0:  # the outputs' names and shapes, from one galaxy given nothing
            nothing = {n: np.full((1, *a.shape[1:]), np.nan, np.float32) for n, a in arrays.items()}
            one = self.predict(nothing, targets, batch_size, return_uncertainty, num_samples, redshift_grid, None,
                               seed, return_pdf)
            return {key: value[:0] for key, value in one.items()}
        probabilistic = return_uncertainty or num_samples > 0 or redshift_grid is not None
        if probabilistic and not self.is_probabilistic:
            raise ValueError("return_uncertainty, num_samples and redshift_grid need a probabilistic head, but this "
                             "checkpoint has none (head_type='point'); train with head_type='gaussian'")
        if redshift_grid is not None and not return_pdf:
            raise ValueError("redshift_grid tabulates redshift_pdf, which return_pdf=False leaves out: pass one")
        grid = None
        if "redshift" in targets and return_pdf and (return_uncertainty or redshift_grid is not None):
            grid = check_redshift_grid(DEFAULT_REDSHIFT_GRID if redshift_grid is None else redshift_grid)
        token_ids = self._token_ids(set(names) | set(targets))
        elements = self.layout.elements_of(token_ids)
        keep, outputs = self._asked(token_ids, targets)
        columns = np.concatenate([np.arange(c.start, c.stop) for c in (self._columns(n, elements) for n in targets)])
        generator = torch.Generator().manual_seed(int(seed))
        predicted, summaries = [], []
        for start in range(0, num_rows, batch_size):
            rows = slice(start, start + batch_size)
            flat = self._flat_rows(arrays, rows, elements)
            flat_errors = None if error_arrays is None else self._flat_rows(error_arrays, rows, elements)
            given = np.isfinite(flat)
            means, log_variances, mixture = self._calibrated_batch(flat, flat_errors, given, slice(None), token_ids,
                                                                   elements, keep, outputs)
            points = self.to_physical(means, targets, outputs)
            predicted.append(np.where(given[:, columns], flat[:, columns], points).astype(np.float32))
            if probabilistic:
                # A given element's spread was never trained (and is replaced by the given value below); keep
                # it from overflowing the physical moments of a log-transformed modality.
                is_given = torch.from_numpy(given[:, columns]).to(log_variances.device)
                log_variances = log_variances.masked_fill(is_given, -LOG_VARIANCE_LIMIT)
                summary = self._summaries(means, log_variances, mixture, outputs,
                                          self._pit_knots(given, elements), targets, return_uncertainty,
                                          num_samples, grid, generator)
                summaries.append(self._given_as_given(summary, flat, given, elements, grid))
        parts = np.split(np.concatenate(predicted), np.cumsum([MODALITIES[n].length for n in targets])[:-1], axis=1)
        output = {n: part[:, 0] if MODALITIES[n].is_scalar else part for n, part in zip(targets, parts)}
        if summaries:
            output.update({key: np.concatenate([s[key] for s in summaries]) for key in summaries[0]})
        return output

    def _flat_rows(self, arrays: dict, rows: slice, elements: torch.Tensor) -> np.ndarray:
        """`rows` of checked modality arrays (`column_arrays`) -> their flat (B, E) layout over a query's `elements`
        (which hold every modality of `arrays`), NaN where a modality is absent; one all-NaN row without arrays (a
        query of the prior). Not the model's whole (B, D) layout: that would be mostly NaN for a query of a few
        modalities (467 floats a galaxy where LSST has 6), and filling it took 4% of a photo-z."""
        num_rows = len(next(iter(arrays.values()))[rows]) if arrays else 1
        flat = np.full((num_rows, len(elements)), np.nan, np.float32)
        for name, array in arrays.items():
            flat[:, self._columns(name, elements)] = array[rows].reshape(num_rows, -1)
        return flat

    def _asked(self, token_ids: torch.Tensor, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the tokens of the `targets` sit in a query's `token_ids` (the only final states it needs), and
        the elements they hold."""
        keep = torch.nonzero(torch.isin(token_ids, self._token_ids(targets))).flatten()
        return keep, self.layout.elements_of(token_ids[keep])

    def _calibrated_batch(self, flat, flat_errors, given, rows, token_ids, elements, keep, outputs):
        """`rows` of a query's (N, E) values, errors and given mask over its `elements` -> the normalised predictive
        distributions of the tokens at `keep` over their elements `outputs` (`_decode`), moved and widened by the
        `config.calibration` entry each row matches (`_recalibrate`)."""
        inputs_of_batch = self._prepare(flat[rows], None if flat_errors is None else flat_errors[rows], elements)
        hidden_states, _ = self._encode(*inputs_of_batch, token_ids, elements, keep)
        means, log_variances, mixture = self._decode(hidden_states, token_ids[keep], outputs)
        if self.config.calibration and self.is_probabilistic:
            means, log_variances, mixture = self._recalibrate(means, log_variances, mixture, given[rows], elements,
                                                              outputs)
        return means, log_variances, mixture

    @torch.inference_mode()
    def cdf(self, inputs: dict, values: dict, batch_size: int = 4096, errors: dict | None = None) -> dict:
        """The predictive CDF of scalar targets at `values` given `inputs`, calibrated as `predict` calibrates
        (the shift, temperature and PIT map of the `config.calibration` entry matching each row).

        inputs, errors: as in `predict`. values: target name -> (N,) points (at the truth: PIT values) or
            (N, G) points per galaxy (on a grid: a tabulated CDF, for the CRPS). Returns name -> float64 arrays
            shaped like the values."""
        if not self.is_probabilistic:
            raise ValueError("cdf needs a probabilistic head (head_type='gaussian')")
        names = self._check_names(inputs, "inputs")
        targets = self._check_names(values, "values")
        if not targets:
            raise ValueError("values: give the points of at least one scalar target")
        arrays = self.config.column_arrays(inputs) if names else {}
        # A target's input column that gives no row (a catalog's empty spec-z column) is no input: NaN = not given.
        arrays = {n: a for n, a in arrays.items() if n not in targets or np.isfinite(a).any()}
        names = [n for n in names if n in arrays]
        batch_size = check_batch_size(batch_size)
        points = {n: np.asarray(values[n], dtype=np.float64) for n in targets}
        num_rows = len(points[targets[0]]) if points[targets[0]].ndim else None
        for name, array in points.items():
            if not MODALITIES[name].is_scalar or name in names:
                raise ValueError(f"values: {name!r} must be a scalar target that no row gives among the inputs")
            if array.ndim not in (1, 2) or len(array) != num_rows or not np.isfinite(array).all():
                raise ValueError(f"values: {name!r} must be finite, (N,) or (N, G) with the same N for every "
                                 f"target; got shape {array.shape}")
        input_rows = len(next(iter(arrays.values()))) if arrays else num_rows
        if input_rows != num_rows:
            raise ValueError(f"values: {num_rows} rows, but the inputs have {input_rows}")
        error_arrays = self._error_arrays(errors, names, num_rows)
        if num_rows == 0:
            return {n: np.zeros(points[n].shape) for n in targets}
        token_ids = self._token_ids(set(names) | set(targets))
        elements = self.layout.elements_of(token_ids)
        keep, outputs = self._asked(token_ids, targets)
        flat = self._flat_rows(arrays, slice(None), elements) if arrays else np.full(
            (num_rows, len(elements)), np.nan, np.float32)
        flat_errors = None if error_arrays is None else self._flat_rows(error_arrays, slice(None), elements)
        given = np.isfinite(flat)
        out = {n: [] for n in targets}
        for start in range(0, len(flat), batch_size):
            rows = slice(start, start + batch_size)
            means, log_variances, mixture = self._calibrated_batch(flat, flat_errors, given, rows, token_ids, elements,
                                                                   keep, outputs)
            knots = self._pit_knots(given[rows], elements)
            for name in targets:
                modality, weights, centres, sigmas = self._learning_distribution(name, means, log_variances, mixture,
                                                                                 outputs)
                y = modality.to_learning(points[name][rows]).reshape(len(centres), -1)
                pit = gaussian_mixture_cdf(weights, centres, sigmas, y)
                if name in knots:
                    pit = pit_map(knots[name], pit)
                below = points[name][rows] < modality.minimum  # `predict` clips there: no mass below (z < 0)
                out[name].append(np.where(below, 0.0, pit.reshape(below.shape)))
        return {n: np.concatenate(parts) for n, parts in out.items()}

    # ------------------------------------------------------------------------------------ calibration
    def _given_ranges(self, given: np.ndarray) -> dict:
        """A (D,) given-element mask -> {name: [[start, stop], ...]}, element ranges within each modality."""
        return {name: true_runs(given[s]) for name, s in self.config.modality_slices.items() if given[s].any()}

    def _calibration_matches(self, given: np.ndarray, elements: torch.Tensor):
        """Each `config.calibration` entry with the rows of `given` (B, E), over a query's `elements`, that give
        exactly its elements (B,): an entry that gives any element outside the query matches no row."""
        columns = elements.cpu().numpy()
        for entry in self.config.calibration:
            mask = self.config.given_mask(entry["given"])
            inside = mask[columns]
            yield entry, (given == inside).all(axis=1) & (inside.sum() == mask.sum())

    def _recalibrate(self, means, log_variances, mixture, given: np.ndarray, elements: torch.Tensor,
                     outputs: torch.Tensor):
        """Apply the `config.calibration` entry whose given elements match each row of `given` (B, E) over the
        query's `elements`: move every target's distribution (B, E') over its elements `outputs` by its shift d
        times the predicted standard deviation (the redshift mixture's components all by d times the mixture's),
        then scale its spreads by the temperature t (log-variances by 2 log t, the mixture's log-scales by
        log t)."""
        log_t, shift = (np.zeros((len(given), len(outputs)), dtype=np.float32) for _ in range(2))
        queried = set(self.config.modalities[m] for m in self.layout.element_modality[outputs].unique().tolist())
        for entry, match in self._calibration_matches(given, elements):
            for name, temperature in entry["temperature"].items():
                if name in queried:
                    log_t[match, self._columns(name, outputs)] = math.log(temperature)
            for name, d in entry.get("shift", {}).items():
                if name in queried:
                    shift[match, self._columns(name, outputs)] = d
        log_t, shift = (torch.from_numpy(a).to(log_variances.device, log_variances.dtype) for a in (log_t, shift))
        moved = shift * torch.exp(0.5 * log_variances)
        if mixture is not None:
            element = self._columns("redshift", outputs).start
            centres = mixture[:, 1] + moved[:, element, None].to(mixture.dtype)
            log_scales = mixture[:, 2] + log_t[:, element, None].to(mixture.dtype)
            mixture = torch.stack([mixture[:, 0], centres, log_scales], dim=1)
        return means + moved.to(means.dtype), log_variances + 2.0 * log_t, mixture

    def _pit_knots(self, given: np.ndarray, elements: torch.Tensor) -> dict:
        """Each row's PIT map as its knots (B, J) (the identity for rows no entry maps), for every target some
        `config.calibration` entry maps: name -> knots. `given` (B, E) over the query's `elements`."""
        knots = {}
        for entry, match in self._calibration_matches(given, elements):
            for name, entry_knots in entry.get("pit_knots", {}).items():
                if name not in knots:
                    knots[name] = np.tile(np.linspace(0.0, 1.0, len(entry_knots)), (given.shape[0], 1))
                knots[name][match] = entry_knots
        return knots

    def calibration_for(self, inputs: dict) -> dict:
        """The calibration `predict` applies to the first row of `inputs`: {"temperature": {target: t},
        "shift": {target: d}, "pit_knots": {target: knots}}, empty if no entry of `config.calibration` matches
        the elements it gives."""
        ranges = self._given_ranges(np.isfinite(self.config.flatten(inputs)[0]))
        entry = next((e for e in self.config.calibration if e["given"] == ranges), {})
        return {k: dict(entry.get(k, {})) for k in ("temperature", "shift", "pit_knots")}

    @torch.inference_mode()
    def calibrate(self, inputs: dict, truth: dict, targets: list | None = None, batch_size: int = 4096,
                  errors: dict | None = None) -> dict:
        """Fit, on held-out galaxies of known truth, a shift and a temperature per target for the query
        `inputs` (every row given the same elements): the move d, in predicted standard deviations, and the
        factor t on the predicted spreads that bring the PIT values of the target's scored elements closest
        to uniform (Cramer-von Mises distance; `fit_shift_and_temperature`). They are stored in
        `config.calibration`, in the entry for these given elements (a target fitted again replaces its earlier
        fit, the entry's other targets stay; save the model to keep them), and applied by `predict` to every row
        given exactly these elements; a target no row scores (its truth NaN, or given) is left as it was. A
        scalar target (the redshift mixture, a mass's Gaussian) also gets a monotone map of its PIT (Kuleshov
        et al. 2018; `fit_pit_knots`), which straightens what a shift and a width cannot (a skew, tails too heavy):
        `predict` applies it to the posterior's pdf, percentiles, samples, mean and std alike, and `cdf` to
        the CDF (not to the point prediction returned without uncertainty, the unmapped mean). Returns
        {target: {"temperature": t, "shift": d} (and "pit_knots" for a scalar)}.

        A network trained by likelihood is calibrated only where it has fit the training distribution; how
        far it is from that differs between queries (the demo model's redshift temperatures run from 0.66
        for LSST alone to 1.17 for stellar mass alone), hence one entry per query. A temperature alone fixes
        the width of a posterior but not a bias, which shows as a sloped PIT histogram (for LSST+SPHEREx the
        demo model's redshifts sit 0.05-0.08 sigma low). Use a few thousand rows: the PIT of 1,000 is itself only
        flat to about 0.04 (the KS statistic's 95% point)."""
        if not self.is_probabilistic:
            raise ValueError("calibrate needs a probabilistic head (head_type='gaussian')")
        names = self._check_names(inputs, "inputs")
        batch_size = check_batch_size(batch_size)
        flat = self.config.flatten(inputs)
        if flat.shape[0] == 0:
            raise ValueError("inputs: no rows to calibrate on; use a few thousand held-out galaxies")
        given = np.isfinite(flat)
        if not (given == given[:1]).all():
            raise ValueError("inputs: calibrate needs every row to give the same elements (one query type); "
                             "split the rows by their missing values")
        targets = self._check_names(self._check_names(truth, "truth") if targets is None else targets, "targets")
        if any(n not in truth for n in targets):
            raise ValueError(f"targets: {[n for n in targets if n not in truth]} have no column in truth "
                             f"({list(truth)})")
        flat_truth = self.config.flatten({n: truth[n] for n in targets}, argument="truth")
        if flat_truth.shape[0] != flat.shape[0]:
            raise ValueError(f"truth: {flat_truth.shape[0]} rows, but the inputs have {flat.shape[0]}")
        flat_errors = self._flat_errors(errors, names, flat.shape[0])
        token_ids = self._token_ids(set(names) | set(targets))
        elements = self.layout.elements_of(token_ids)
        keep, outputs = self._asked(token_ids, targets)
        slices = self.config.modality_slices
        scored = {n: ~given[:, slices[n]] & np.isfinite(flat_truth[:, slices[n]]) for n in targets}
        stride = {n: max(1, -(-int(scored[n].sum()) // CALIBRATION_POINTS)) for n in targets}
        pooled = {n: [] for n in targets}
        columns = elements.cpu().numpy()
        for start in range(0, flat.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            inputs_of_batch = self._prepare(flat[rows, columns],
                                            None if flat_errors is None else flat_errors[rows, columns], elements)
            hidden_states, _ = self._encode(*inputs_of_batch, token_ids, elements, keep)
            means, log_variances, mixture = self._decode(hidden_states, token_ids[keep], outputs)
            for name in targets:
                modality, weights, centres, sigmas = self._learning_distribution(name, means, log_variances, mixture,
                                                                                 outputs)
                spread = np.exp(0.5 * log_variances[:, self._columns(name, outputs)].double().cpu().numpy())
                spread = spread * self.layout.std[slices[name]].double().cpu().numpy()
                is_scored = scored[name][rows]
                y = modality.to_learning(np.where(is_scored, flat_truth[rows, slices[name]], 1.0))
                pooled[name].append(tuple(a[is_scored] for a in (weights, centres, sigmas, spread, y)))
        fitted = {}
        for name in targets:
            rows_scored = int(scored[name].any(axis=1).sum())
            if rows_scored < CALIBRATION_ROWS:
                logger.warning(f"calibrate: {rows_scored} rows score {name}; below {CALIBRATION_ROWS} the fit is "
                               "mostly their sampling noise")
            if not rows_scored:
                continue
            parts = [np.concatenate(p) for p in zip(*pooled[name])]
            t, d = fit_shift_and_temperature(*(p[::stride[name]] for p in parts))
            fitted[name] = {"temperature": t, "shift": d}
            if MODALITIES[name].is_scalar:  # on every row: the knots' sampling noise stays in every later PIT
                fitted[name]["pit_knots"] = fit_pit_knots(*parts, t, d).tolist()
        if not fitted:
            return fitted
        given_ranges = self._given_ranges(given[0])
        earlier = next((e for e in self.config.calibration if e["given"] == given_ranges), {})
        entry = {"given": given_ranges}
        for key in ("temperature", "shift", "pit_knots"):  # the earlier fits of targets not fitted now stay
            kept = {n: v for n, v in earlier.get(key, {}).items() if n not in fitted}
            entry[key] = {**kept, **{n: f[key] for n, f in fitted.items() if key in f}}
        entry = self.config._checked_calibration(entry)
        self.config.calibration = [e for e in self.config.calibration if e["given"] != entry["given"]] + [entry]
        return fitted

    def _summaries(self, means, log_variances, mixture, elements, pit_knots, targets, uncertainty, num_samples,
                   grid, generator):
        """One batch's predictive distributions (B, E) over the query's `elements` -> {(name, statistic): array}
        in physical units: "" the mean (B, L), "std" and "p16"... (B, L) when `uncertainty`, "samples"
        (B, L, S); ("redshift", "pdf") (B, G) when `grid`. `pit_knots`: name -> (B, J), the PIT map of each
        row's posterior for the targets that have one."""
        out = {}
        for name in targets:
            modality, weights, centres, sigmas = self._learning_distribution(name, means, log_variances, mixture,
                                                                             elements)
            knots = pit_knots.get(name)
            pdf = name == "redshift" and grid is not None
            mapped = knots is not None and (uncertainty or pdf)
            inner = knot_quantiles(weights, centres, sigmas, knots) if mapped else None  # where R' changes
            if uncertainty:
                out[name, ""], out[name, "std"] = predictive_moments(modality, weights, centres, sigmas, knots, inner)
                for q in PERCENTILES:
                    level = q / 100 if knots is None else inverse_pit_map(knots, np.full((len(knots), 1), q / 100))
                    out[name, f"p{q}"] = modality.from_learning(learning_quantile(weights, centres, sigmas, level))
            if num_samples > 0 and knots is None:
                out[name, "samples"] = modality.from_learning(
                    sample_mixture(weights, centres, sigmas, num_samples, generator))
            elif num_samples > 0:  # inverse-CDF sampling of the mapped posterior
                uniform = torch.rand((len(knots), num_samples), generator=generator, dtype=torch.float64).numpy()
                levels = inverse_pit_map(knots, uniform)[:, None, :]
                out[name, "samples"] = modality.from_learning(learning_quantile(
                    weights[..., None, :], centres[..., None, :], sigmas[..., None, :], levels))
            if pdf:
                out[name, "pdf"] = self._redshift_pdf(mixture, grid, knots, inner)
        return out

    def _learning_distribution(self, name, means, log_variances, mixture, elements):
        """Target `name`'s predictive distribution in learning space as a mixture per element: (modality,
        weights, means, sigmas), each (B, L, K) float64 numpy; K = 1 except for redshift. `means` and
        `log_variances` are (B, E) over the query's `elements`."""
        s = self.config.modality_slices[name]
        mean, std = self.layout.mean[s].double().cpu().numpy(), self.layout.std[s].double().cpu().numpy()
        if name == "redshift" and mixture is not None:
            logits, centres, log_scales = mixture.double().cpu().unbind(dim=1)
            weights = torch.softmax(logits, dim=-1).numpy()[:, None]
            return (MODALITIES[name], weights, centres.numpy()[:, None] * std + mean,
                    np.exp(log_scales.numpy())[:, None] * std)
        columns = self._columns(name, elements)
        centres = means[:, columns].double().cpu().numpy() * std + mean
        sigmas = np.exp(0.5 * log_variances[:, columns].double().cpu().numpy()) * std
        return MODALITIES[name], np.ones(centres.shape + (1,)), centres[..., None], sigmas[..., None]

    def _redshift_pdf(self, mixture, grid, pit_knots=None, inner=None) -> np.ndarray:
        """The redshift mixtures (B, 3, K) -> their density in z on `grid` (B, G), integrating to 1 there; with
        `pit_knots` (B, J) times the PIT map's slope, which is constant between `inner` (B, 1, J - 2), the
        mixtures' learning-space quantiles at the inner knots (`knot_quantiles`). PDF_ROWS rows at a time."""
        modality, element = MODALITIES["redshift"], self.layout.redshift_element
        mean, std = float(self.layout.mean[element]), float(self.layout.std[element])
        learning = modality.to_learning(grid)
        normalised = torch.from_numpy((learning - mean) / std).to(mixture.device)
        log_jacobian = np.log(modality.scale / ((grid + modality.offset) * math.log(10.0) * std))
        if pit_knots is not None:
            log_slopes = -np.log((pit_knots.shape[1] - 1) * np.diff(pit_knots, axis=1))
            # The bin of the map holding each grid point: how many of the row's knot quantiles lie at or below it.
            bins = torch.searchsorted(torch.from_numpy(np.ascontiguousarray(inner[:, 0])),
                                      torch.from_numpy(np.broadcast_to(learning, (len(inner), len(grid))).copy()),
                                      right=True).numpy()
        densities = []
        for start in range(0, mixture.shape[0], PDF_ROWS):
            rows = slice(start, start + PDF_ROWS)
            part = mixture[rows].double()
            log_density = mixture_log_density(part, normalised.expand(part.shape[0], -1)).cpu().numpy() + log_jacobian
            if pit_knots is not None:
                log_density = log_density + np.take_along_axis(log_slopes[rows], bins[rows], axis=1)
            density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
            densities.append(density / trapezoid(density, grid)[:, None])
        return np.concatenate(densities)

    def _given_as_given(self, result, flat, given, elements, grid) -> dict:
        """Override the distributions of given elements by the given values (`flat`, `given`: (B, E) over the
        query's `elements`; zero spread, a one-point pdf), name the arrays `name` / `name_statistic` and shape them
        like their target (scalars (N,), (N, S))."""
        output = {}
        for (name, statistic), array in result.items():
            key = f"{name}_{statistic}" if statistic else name
            s = self._columns(name, elements)
            values, is_given = flat[:, s], given[:, s]
            if not is_given.any():  # a pure prediction: nothing to override
                pass
            elif statistic == "pdf":  # a given value beyond the grid has no mass on it: a row of zeros
                spike = np.zeros_like(array)
                on_grid = (values[:, 0] >= grid[0]) & (values[:, 0] <= grid[-1])
                spike[np.arange(len(array)), np.abs(grid[None, :] - values).argmin(axis=1)] = on_grid
                mass = trapezoid(spike, grid)[:, None]
                spike = np.divide(spike, mass, out=np.zeros_like(spike), where=mass > 0)
                array = np.where(is_given, spike, array)
            elif statistic == "samples":
                array = np.where(is_given[..., None], values[..., None], array)
            else:
                array = np.where(is_given, 0.0 if statistic == "std" else values, array)
            if MODALITIES[name].is_scalar and statistic != "pdf":
                array = array[:, 0]
            output[key] = array.astype(np.float32)
        return output

    @torch.inference_mode()
    def embed(self, inputs: dict, batch_size: int = 4096, errors: dict | None = None) -> dict:
        """Latent vectors for plots and probes: for each given modality the mean final state of its tokens (those
        a row leaves NaN too: a row that gives none of it gets the states of a query for it), and "all", the mean
        over every visible token (zeros for a galaxy with nothing visible). The encoder sees
        only the given modalities' tokens; `errors` as in `predict`. Returns name -> float32 (N, hidden_size)."""
        names = self._check_names(inputs, "inputs")
        batch_size = check_batch_size(batch_size)
        arrays = self.config.column_arrays(inputs)
        num_rows = len(next(iter(arrays.values())))
        error_arrays = self._error_arrays(errors, names, num_rows)
        token_ids = self._token_ids(names)
        elements = self.layout.elements_of(token_ids)
        pool = self.layout.modality_pool[[self.config.modalities.index(n) for n in names]][:, token_ids]
        outputs = {n: np.zeros((num_rows, self.config.hidden_size), np.float32) for n in names + ["all"]}
        for start in range(0, num_rows, batch_size):
            rows = slice(start, start + batch_size)
            flat_errors = None if error_arrays is None else self._flat_rows(error_arrays, rows, elements)
            batch = self._prepare(self._flat_rows(arrays, rows, elements), flat_errors, elements)
            hidden_states, token_visible = self._encode(*batch, token_ids, elements)
            hidden_states = hidden_states.float()
            per_modality = torch.einsum("mt,bth->bmh", pool, hidden_states).cpu().numpy()
            for m, name in enumerate(names):
                outputs[name][rows] = per_modality[:, m]
            weights = token_visible.float() / token_visible.sum(dim=1, keepdim=True).clamp(min=1)
            outputs["all"][rows] = torch.einsum("bt,bth->bh", weights, hidden_states).cpu().numpy()
        return outputs


def check_batch_size(batch_size) -> int:
    """A valid `batch_size`: an integer >= 1."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    return int(batch_size)


# ------------------------------------------------------------------------- predictive distributions
def check_redshift_grid(grid) -> np.ndarray:
    """A valid `redshift_grid` as float64: 1-D, at least two finite points, strictly increasing, above -1."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size < 2 or not np.isfinite(grid).all() or (np.diff(grid) <= 0).any():
        raise ValueError(f"redshift_grid must be a 1-D strictly increasing array of >= 2 finite redshifts, got "
                         f"shape {grid.shape}")
    if grid[0] <= -MODALITIES["redshift"].offset:
        raise ValueError(f"redshift_grid must lie above z = -1, got a first point {grid[0]}")
    return grid


def trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid-rule integral of y (..., G) over x (G,) (numpy's own is named differently across 1.x/2.x)."""
    return (0.5 * (y[..., 1:] + y[..., :-1]) * np.diff(x)).sum(axis=-1)


def normal_cdf(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def cramer_von_mises(pit: np.ndarray) -> float:
    """Mean squared distance of the sorted PIT values from the uniform quantiles (i + 1/2) / n."""
    sorted_pit = np.sort(pit)
    return float(np.mean((sorted_pit - (np.arange(sorted_pit.size) + 0.5) / sorted_pit.size) ** 2))


def shifted_pit(weights, centres, sigmas, spreads, truth, temperature: float, shift: float) -> np.ndarray:
    """PIT values sum_k w_k Phi((truth - centre_k - shift spread) / (temperature sigma_k)) of mixtures (N, K)
    with spreads and truths (N,), in learning space."""
    standardised = (truth[:, None] - centres - shift * spreads[:, None]) / (temperature * sigmas)
    return (weights * normal_cdf(standardised)).sum(axis=-1)


def fit_shift_and_temperature(weights, centres, sigmas, spreads, truth, rounds: int = 3) -> tuple[float, float]:
    """The shift d (in units of `spreads`, the predictive standard deviations) and temperature t that make the
    PIT values sum_k w_k Phi((truth - centre_k - d spread) / (t sigma_k)) closest to uniform (Cramer-von
    Mises), by alternating grid searches over TEMPERATURE_GRID and SHIFT_GRID. Inputs as in `shifted_pit`."""

    def distance(t, d):
        return cramer_von_mises(shifted_pit(weights, centres, sigmas, spreads, truth, t, d))

    temperature, shift = 1.0, 0.0
    for _ in range(rounds):
        temperature = float(TEMPERATURE_GRID[np.argmin([distance(t, shift) for t in TEMPERATURE_GRID])])
        shift = float(SHIFT_GRID[np.argmin([distance(temperature, d) for d in SHIFT_GRID])])
    return temperature, shift


def fit_pit_knots(weights, centres, sigmas, spreads, truth, temperature: float, shift: float) -> np.ndarray:
    """A monotone map of the PIT values after `shift` and `temperature` (inputs as in
    `fit_shift_and_temperature`) onto uniform: the knots u_j (J = PIT_MAP_BINS + 1), the held-out PIT
    quantiles at levels j / (J - 1), through which the map R is piecewise linear, R(u_j) = j / (J - 1).
    Blended with the identity by PIT_MAP_FLOOR so every bin keeps a width."""
    levels = np.linspace(0.0, 1.0, PIT_MAP_BINS + 1)
    knots = np.quantile(shifted_pit(weights, centres, sigmas, spreads, truth, temperature, shift), levels)
    knots[0], knots[-1] = 0.0, 1.0
    return (1.0 - PIT_MAP_FLOOR) * knots + PIT_MAP_FLOOR * levels


def pit_bins(knots: np.ndarray, pit: np.ndarray) -> np.ndarray:
    """The bin j of each row's PIT map (knots (B, J)) holding each PIT value (B, G): u_j <= pit < u_j+1."""
    j = np.zeros(pit.shape, dtype=np.int64)
    for inner in range(1, knots.shape[1] - 1):  # without a (B, G, J) temporary
        j += pit >= knots[:, inner:inner + 1]
    return j


def pit_map(knots: np.ndarray, pit: np.ndarray) -> np.ndarray:
    """R(pit): each row's PIT map (knots (B, J)) at PIT values (B, G), piecewise linear through (u_j, j / (J - 1))."""
    j = pit_bins(knots, pit)
    low, high = np.take_along_axis(knots, j, axis=1), np.take_along_axis(knots, j + 1, axis=1)
    return np.clip((j + (pit - low) / (high - low)) / (knots.shape[1] - 1), 0.0, 1.0)


def inverse_pit_map(knots: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """R^-1 of each row's PIT map (knots (B, J)) at `levels` (B, S): the PIT a mapped quantile level has."""
    bins = knots.shape[1] - 1
    scaled = np.clip(levels, 0.0, 1.0) * bins
    j = np.clip(np.floor(scaled).astype(np.int64), 0, bins - 1)
    low, high = np.take_along_axis(knots, j, axis=1), np.take_along_axis(knots, j + 1, axis=1)
    return low + (scaled - j) * (high - low)


def knot_quantiles(weights, means, sigmas, knots) -> np.ndarray:
    """The quantiles of mixtures (B, L, K) at the inner knots of each row's PIT map (B, J) -> (B, L, J - 2): where
    the mapped density, the mixture's times the map's slope, changes its factor."""
    inner = knots[:, None, 1:-1]
    if means.shape[-1] == 1:  # one Gaussian: closed form
        return learning_quantile(weights[..., None, :], means[..., None, :], sigmas[..., None, :], inner)
    return tabulated_quantile(weights, means, sigmas, inner)


def predictive_moments(modality, weights, means, sigmas, knots=None, inner=None):
    """Mean and std in physical units of Gaussian mixtures (B, L, K) in learning space pushed through the modality's
    inverse transform; with `knots` (B, J), of the PIT-mapped mixtures, whose density is the mixture's times the
    map's slope, constant between the mixture's quantiles at the knots (`inner`, from `knot_quantiles` unless
    given). Each moment is then a slope-weighted sum of the mixture's partial moments between those quantiles, in
    closed form (`interval_moments`): no quadrature to miss a calibrated photo-z posterior's heavy tails or the
    kink where a transform clips at its minimum."""
    if knots is None:
        edges, slopes = np.array([-np.inf, np.inf]), np.ones(1)
    else:
        inner = knot_quantiles(weights, means, sigmas, knots) if inner is None else inner
        infinite = np.full(inner.shape[:-1] + (1,), np.inf)
        edges = np.concatenate([-infinite, inner, infinite], axis=-1)
        slopes = 1.0 / ((knots.shape[1] - 1) * np.diff(knots, axis=1)[:, None, :])
    mass, first, second = (interval_moments(modality, weights, means, sigmas, edges) * slopes).sum(axis=-1)
    mean = first / mass
    return mean, np.sqrt(np.maximum(second / mass - mean**2, 0.0))


def interval_moments(modality, weights, means, sigmas, edges) -> np.ndarray:
    """The integrals of g^n f, n = 0, 1, 2, over each interval between consecutive `edges` (..., E) -> (3, ..., E - 1):
    f a Gaussian mixture (..., K) in learning space, g the modality's inverse transform clipped to [lo, hi] (its
    minimum and PHYSICAL_MAXIMUM): lo^n below the point x_lo where g reaches lo, hi^n above x_hi, and between them
    the closed forms of a Gaussian's partial moments of x and x^2 (identity) or of exp(b x) and exp(2 b x),
    b = ln 10 / scale (g = 10^(x / scale) - offset)."""
    lo, hi = modality.minimum, PHYSICAL_MAXIMUM
    if modality.log:
        x_lo = modality.scale * math.log10(lo + modality.offset) if lo + modality.offset > 0 else -math.inf
        x_hi = modality.scale * math.log10(hi + modality.offset)
    else:
        x_lo, x_hi = lo, hi
    weights, means, sigmas = (a[..., None, :] for a in (weights, means, sigmas))
    edges = np.broadcast_to(edges, means.shape[:-2] + np.shape(edges)[-1:])[..., None]
    start, stop = edges[..., :-1, :], edges[..., 1:, :]

    def standardised(x):
        return (x - means) / sigmas

    z0, z1 = standardised(np.clip(start, x_lo, x_hi)), standardised(np.clip(stop, x_lo, x_hi))
    zeroth = normal_mass(z0, z1)
    if modality.log:
        offset, b = modality.offset, math.log(10.0) / modality.scale

        def exponential(c):  # the integral of exp(c x) f(x) over the clipped interval
            return normal_mass(z0 - c * sigmas, z1 - c * sigmas, shift=c * means + 0.5 * (c * sigmas) ** 2)

        e1, e2 = exponential(b), exponential(2.0 * b)
        first, second = e1 - offset * zeroth, e2 - 2.0 * offset * e1 + offset**2 * zeroth
    else:
        def density(t, power):  # (mu + x)^power sigma phi(t) at x = mu + sigma t, 0 at +-inf
            with np.errstate(invalid="ignore"):
                value = (2.0 * means + sigmas * t) ** power * sigmas * np.exp(-0.5 * t**2)
            return np.where(np.isfinite(t), value / math.sqrt(2.0 * math.pi), 0.0)

        first = means * zeroth + density(z0, 0) - density(z1, 0)
        second = (means**2 + sigmas**2) * zeroth + density(z0, 1) - density(z1, 1)
    above = normal_mass(standardised(np.maximum(start, x_hi)), standardised(np.maximum(stop, x_hi)))
    first, second = first + hi * above, second + hi**2 * above
    if x_lo > -math.inf:
        below = normal_mass(standardised(np.minimum(start, x_lo)), standardised(np.minimum(stop, x_lo)))
        first, second = first + lo * below, second + lo**2 * below
    return (weights * np.stack([normal_mass(standardised(start), standardised(stop)), first, second])).sum(axis=-1)


def normal_mass(u, v, shift=None) -> np.ndarray:
    """Phi(v) - Phi(u) for u <= v, from the nearer tail and through erfc (torch's ndtr, 1 + erf, has only an absolute
    precision: 1e-16 at -8 sigma, 0 beyond), times exp(shift) when given (then through log Phi: no overflow where
    exp(shift) alone would)."""
    upper = u > 0
    near, far = np.where(upper, -u, v), np.where(upper, -v, u)
    if shift is None:
        def erfc(x):
            return torch.special.erfc(torch.from_numpy(-x / math.sqrt(2.0))).numpy()

        return 0.5 * (erfc(near) - erfc(far))

    def log_cdf(x):
        return torch.special.log_ndtr(torch.from_numpy(x)).numpy()

    return np.exp(shift + log_cdf(near)) - np.exp(shift + log_cdf(far))


def gaussian_mixture_cdf(weights, means, sigmas, x) -> np.ndarray:
    """CDF of Gaussian mixtures (..., K) at points x (...) (numpy, float64)."""
    return (weights * normal_cdf((x[..., None] - means) / sigmas)).sum(axis=-1)


def mixture_cdf_and_density(weights, means, sigmas, x) -> tuple[np.ndarray, np.ndarray]:
    """CDF and density of Gaussian mixtures (..., K) at points x (...) (numpy, float64)."""
    standardised = (x[..., None] - means) / sigmas
    cdf = (weights * normal_cdf(standardised)).sum(axis=-1)
    density = (weights * np.exp(-0.5 * standardised**2) / sigmas).sum(axis=-1) / math.sqrt(2.0 * math.pi)
    return cdf, density


def tabulated_quantile(weights, means, sigmas, q) -> np.ndarray:
    """Quantiles of mixtures (..., K) at many increasing levels q (..., Q) at once: read off each mixture's CDF
    tabulated on every component's own scale (QUANTILE_TABLE_NODES points mu_k + sigma_k t per component, sorted)
    by linear interpolation, then three Newton steps kept inside the table's cell (to ~1e-5 of its widest sigma): for
    the inner knots of a PIT map (`knot_quantiles`) a fraction of `learning_quantile`'s cost."""
    nodes = np.linspace(-8.0, 8.0, QUANTILE_TABLE_NODES)
    grid = np.sort((means[..., None] + sigmas[..., None] * nodes).reshape(means.shape[:-1] + (-1,)), axis=-1)

    mixtures = (weights[..., None, :], means[..., None, :], sigmas[..., None, :])
    table = np.ascontiguousarray(gaussian_mixture_cdf(*mixtures, grid))
    q = np.broadcast_to(q, table.shape[:-1] + np.shape(q)[-1:]).copy()  # contiguous and writable, as torch wants
    upper = torch.searchsorted(torch.from_numpy(table), torch.from_numpy(q)).clamp(1, table.shape[-1] - 1).numpy()
    (c0, c1), (g0, g1) = ((np.take_along_axis(a, upper - 1, -1), np.take_along_axis(a, upper, -1))
                          for a in (table, grid))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = g0 + np.clip(np.where(c1 > c0, (q - c0) / (c1 - c0), 0.5), 0.0, 1.0) * (g1 - g0)
    for _ in range(3):
        cdf, density = mixture_cdf_and_density(*mixtures, x)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            newton = x - (cdf - q) / density
        x = np.where((newton >= g0) & (newton <= g1), newton, x)
    return x


def learning_quantile(weights, means, sigmas, q) -> np.ndarray:
    """The q-quantile of a Gaussian mixture (..., K), q a level or levels broadcasting against (...): closed form
    for one component, else Newton's method on the mixture's CDF from the moment-matched Gaussian's quantile,
    safeguarded as in Numerical Recipes' rtsafe: a bracket always holds the root, and where a Newton step would
    leave it or shrink less than half as fast as the step before last (the trough between two modes, a cycle)
    the bracket is halved instead. Each quantile stops once its step is below QUANTILE_TOLERANCE of its widest
    component's sigma: typically after ~7 steps, where bisection alone took 60."""
    z_q = torch.special.ndtri(torch.as_tensor(q, dtype=torch.float64)).numpy()
    if means.shape[-1] == 1:
        return means[..., 0] + z_q * sigmas[..., 0]
    shape, k = np.broadcast_shapes(means.shape[:-1], np.shape(q)), means.shape[-1]
    weights, means, sigmas = (np.broadcast_to(a, shape + (k,)).reshape(-1, k) for a in (weights, means, sigmas))
    q, z_q = (np.broadcast_to(a, shape).reshape(-1) for a in (q, z_q))
    low, high = (means - 10.0 * sigmas).min(axis=-1), (means + 10.0 * sigmas).max(axis=-1)
    mean = (weights * means).sum(axis=-1)
    x = np.clip(mean + z_q * np.sqrt((weights * (sigmas**2 + (means - mean[:, None]) ** 2)).sum(axis=-1)), low, high)
    last, before_last = high - low, high - low
    tolerance = QUANTILE_TOLERANCE * sigmas.max(axis=-1)
    active = np.arange(x.size)
    for _ in range(QUANTILE_STEPS):
        at = x[active]
        cdf, density = mixture_cdf_and_density(weights[active], means[active], sigmas[active], at)
        excess = cdf - q[active]
        below = excess < 0
        low[active] = np.where(below, at, low[active])
        high[active] = np.where(below, high[active], at)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # a flat CDF: no Newton step
            newton = -excess / density
        fast = ((at + newton > low[active]) & (at + newton < high[active])
                & (np.abs(newton) <= 0.5 * before_last[active]))
        step = np.where(fast, newton, 0.5 * (low[active] + high[active]) - at)
        x[active] = at + step
        before_last[active], last[active] = last[active], np.abs(step)
        active = active[np.abs(step) > tolerance[active]]
        if active.size == 0:
            break
    return x.reshape(shape)


def sample_mixture(weights, means, sigmas, num_samples: int, generator) -> np.ndarray:
    """num_samples draws per element of a Gaussian mixture (..., K) -> (..., num_samples)."""
    weights = torch.from_numpy(weights).reshape(-1, weights.shape[-1])
    component = torch.multinomial(weights, num_samples, replacement=True, generator=generator).numpy()
    component = component.reshape(means.shape[:-1] + (num_samples,))
    normal = torch.randn(component.shape, generator=generator, dtype=torch.float64).numpy()
    return (np.take_along_axis(means, component, axis=-1)
            + np.take_along_axis(sigmas, component, axis=-1) * normal)


MosaicConfig.register_for_auto_class()
MosaicModel.register_for_auto_class("AutoModel")

__all__ = [
    "DEFAULT_REDSHIFT_GRID", "MosaicModel", "MosaicModelOutput", "MosaicPreTrainedModel", "check_redshift_grid",
]
