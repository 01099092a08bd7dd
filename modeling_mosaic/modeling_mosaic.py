"""MOSAIC: a multi-modal masked encoder for galaxies with an any-to-any query API.

A galaxy is one flat vector of every configured modality, in physical units, with NaN for what is missing.
The model applies the registry's learning transform and the config's normalisation itself, cuts each
modality into tokens (a scalar is one token, a vector one token per patch), and runs a pre-norm transformer
in which a token with nothing visible (a "query" token) is attended by no one but itself. A query token's
output therefore depends only on the visible tokens and its own position, so `predict` runs the encoder on
the tokens it is given plus the tokens it is asked for, and nothing else, with the same result as the full
sequence. Linear heads map every token back to its patch values; the loss is the error on hidden elements.

This file is remote code: it imports only numpy, torch, transformers and (relatively) its own package files.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_mosaic import MosaicConfig
from .modalities import MODALITIES, get_modality

#: Normalised values are clipped to +-INPUT_CLIP so an absurd input (1e30 in a magnitude column) cannot
#: overflow the float32 statistics of a LayerNorm; real data lies within a few tens of standard deviations.
INPUT_CLIP = 1.0e3
#: Floor of the argument of the learning transform's log10 (the registry's own floor).
LOG_FLOOR = 1.0e-30


@dataclass
class MosaicModelOutput(ModelOutput):
    """Output of `MosaicModel.forward`.

    loss: masked error in normalised space, the mean over modalities with scored elements (plus the
        weighted reconstruction error on visible elements when `visible_loss_weight` > 0).
    modality_losses: (M,) each modality's masked error, 0 where it had no scored element.
    predictions: (B, D) every element's prediction, in normalised learning space.
    last_hidden_state: (B, T, H) the final token states.
    pooled: (B, M, H) the mean final state of each modality's tokens.
    """

    loss: torch.FloatTensor | None = None
    modality_losses: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    pooled: torch.FloatTensor | None = None


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

    @staticmethod
    def tables(config: MosaicConfig) -> dict:
        """name -> tensor: per element its modality, slot (token * P + position in patch) and transform; per token
        its modality and elements (padding points one past the end); the per-modality token-averaging matrix."""
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
        stats = {k: np.concatenate([config.normalization[n][k] for n in config.modalities]) for k in ("mean", "std")}
        return {
            "element_modality": torch.as_tensor(element_modality, dtype=torch.long),
            "element_slot": torch.as_tensor(element_token * patch + element_slot, dtype=torch.long),
            "token_elements": torch.as_tensor(token_elements, dtype=torch.long),
            "token_modality": torch.as_tensor(token_modality, dtype=torch.long),
            "modality_pool": torch.as_tensor(modality_pool, dtype=torch.float32),
            "log": torch.as_tensor(np.concatenate(transform["log"]), dtype=torch.bool),
            "scale": torch.as_tensor(np.concatenate(transform["scale"]), dtype=torch.float32),
            "offset": torch.as_tensor(np.concatenate(transform["offset"]), dtype=torch.float32),
            "mean": torch.as_tensor(stats["mean"], dtype=torch.float32),
            "std": torch.as_tensor(stats["std"], dtype=torch.float32),
        }

    def normalize(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical (B, D) -> (normalised learning-space values with 0 where missing, present = finite)."""
        values = values.float()
        present = torch.isfinite(values)
        finite = torch.where(present, values, 0.0)
        logged = self.scale.float() * torch.log10(torch.clamp(finite + self.offset.float(), min=LOG_FLOOR))
        learned = torch.where(self.log, logged, finite)
        normalised = ((learned - self.mean.float()) / self.std.float()).clamp(-INPUT_CLIP, INPUT_CLIP)
        return torch.where(present, normalised, 0.0), present

    def to_learning_space(self, normalised: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation (not the log transform): (B, D) -> learning-space values."""
        return normalised.float() * self.std.float() + self.mean.float()

    def patches(self, flat: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Flat (B, D) -> the chosen tokens' zero-padded patches (B, T', P)."""
        padded = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)
        return padded[:, self.token_elements[token_ids]]

    def unpatch(self, patches: torch.Tensor) -> torch.Tensor:
        """Every token's patches (B, T, P) -> flat (B, D), dropping the padding."""
        return patches.reshape(patches.shape[0], -1)[:, self.element_slot]


class MosaicEmbeddings(nn.Module):
    """A token's patch values and visibility flags -> one hidden vector through its modality's linear map, plus
    learned position and modality embeddings, plus a mask embedding for a token with nothing visible.

    The per-modality maps live in one weight bank, gathered per token, so every modality embeds in one einsum.
    """

    def __init__(self, config: MosaicConfig, num_tokens: int, patch_size: int):
        super().__init__()
        num_modalities, hidden = len(config.modalities), config.hidden_size
        self.weight = nn.Parameter(torch.empty(num_modalities, 2 * patch_size, hidden))
        self.bias = nn.Parameter(torch.empty(num_modalities, hidden))
        self.position = nn.Parameter(torch.empty(num_tokens, hidden))
        self.modality = nn.Parameter(torch.empty(num_modalities, hidden))
        self.mask = nn.Parameter(torch.empty(hidden))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, patches, patch_visible, token_ids, token_modality):
        features = torch.cat([patches, patch_visible], dim=-1).to(self.weight.dtype)
        embedded = torch.einsum("btf,tfh->bth", features, self.weight[token_modality])
        embedded = embedded + self.bias[token_modality] + self.position[token_ids] + self.modality[token_modality]
        is_query = ~(patch_visible > 0).any(dim=-1, keepdim=True)
        return self.dropout(torch.where(is_query, embedded + self.mask, embedded))


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention with an additive mask; returns (B, T, heads, head_dim) like the SDPA path."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def visible_attention_mask(token_visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: a token attends to every token with something visible and to itself."""
    num_tokens = token_visible.shape[1]
    itself = torch.eye(num_tokens, dtype=torch.bool, device=token_visible.device)
    allowed = token_visible[:, None, :] | itself
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


class MosaicAttention(nn.Module):
    """Multi-head self-attention through transformers' attention interface (SDPA by default)."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask):
        batch, tokens, hidden = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attend(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0, scaling=self.scaling,
        )
        return self.out(output.reshape(batch, tokens, hidden))


class MosaicMLP(nn.Module):
    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states):
        return self.fc2(F.gelu(self.fc1(hidden_states)))


class MosaicBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: MosaicConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MosaicAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MosaicMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, attention_mask):
        hidden_states = hidden_states + self.dropout(self.attention(self.attention_norm(hidden_states), attention_mask))
        return hidden_states + self.dropout(self.mlp(self.mlp_norm(hidden_states)))


class MosaicHeads(nn.Module):
    """A token's final state -> its patch values (normalised) through its modality's linear head; the heads
    live in one weight bank gathered per token, like the embeddings."""

    def __init__(self, config: MosaicConfig, patch_size: int):
        super().__init__()
        num_modalities = len(config.modalities)
        self.weight = nn.Parameter(torch.empty(num_modalities, config.hidden_size, patch_size))
        self.bias = nn.Parameter(torch.empty(num_modalities, patch_size))

    def forward(self, hidden_states, token_modality):
        return torch.einsum("bth,thp->btp", hidden_states, self.weight[token_modality]) + self.bias[token_modality]


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
        self.post_init()

    def _encode(self, normalised, visible, token_ids):
        """Run the encoder on the chosen tokens only -> (final states (B, T', H), patch predictions (B, T', P),
        which tokens have something visible (B, T'))."""
        token_modality = self.layout.token_modality[token_ids]
        patches = self.layout.patches(normalised, token_ids)
        patch_visible = self.layout.patches(visible.to(normalised.dtype), token_ids)
        token_visible = (patch_visible > 0).any(dim=-1)
        hidden_states = self.embeddings(patches, patch_visible, token_ids, token_modality)
        mask = visible_attention_mask(token_visible, hidden_states.dtype)
        for block in self.blocks:
            hidden_states = block(hidden_states, mask)
        hidden_states = self.norm(hidden_states)
        return hidden_states, self.heads(hidden_states, token_modality), token_visible

    def _modality_losses(self, predictions, targets, selected):
        """Each modality's mean error over its selected elements (0 where none), and which had any."""
        predictions = predictions.float()
        if self.config.loss_type == "mse":
            error = (predictions - targets) ** 2
        elif self.config.loss_type == "l1":
            error = (predictions - targets).abs()
        else:
            error = F.huber_loss(predictions, targets, reduction="none", delta=1.0)
        num_modalities = len(self.config.modalities)
        sums = error.new_zeros(num_modalities).index_add(
            0, self.layout.element_modality, torch.where(selected, error, 0.0).sum(dim=0))
        counts = error.new_zeros(num_modalities).index_add(
            0, self.layout.element_modality, selected.sum(dim=0).to(error.dtype))
        return sums / counts.clamp(min=1.0), counts > 0

    @staticmethod
    def _mean_over_present(losses, has):
        """Mean of the per-modality losses over modalities that had elements, so a 256-element SED does not
        drown a one-element redshift."""
        return (losses * has).sum() / has.sum().clamp(min=1)

    def forward(
        self,
        values: torch.Tensor,
        input_mask: torch.Tensor,
        target_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """values: (B, D) physical units in the config's flat layout, NaN/inf = missing; input_mask: (B, D)
        True = shown to the model; target_mask: (B, D) True = scored (None: every present element not shown).
        Missing elements are never shown nor scored, and hidden values never reach the encoder."""
        normalised, present = self.layout.normalize(values)
        visible = input_mask.bool() & present
        scored = (~visible if target_mask is None else target_mask.bool()) & present
        model_input = torch.where(visible, normalised, 0.0).to(self.dtype)
        all_tokens = torch.arange(self.layout.num_tokens, device=values.device)
        hidden_states, patches, _ = self._encode(model_input, visible, all_tokens)
        predictions = self.layout.unpatch(patches)

        modality_losses, has_scored = self._modality_losses(predictions, normalised, scored)
        loss = self._mean_over_present(modality_losses, has_scored)
        if self.config.visible_loss_weight > 0:
            loss = loss + self.config.visible_loss_weight * self._mean_over_present(
                *self._modality_losses(predictions, normalised, visible))
        pooled = torch.einsum("mt,bth->bmh", self.layout.modality_pool.to(hidden_states.dtype), hidden_states)
        output = MosaicModelOutput(
            loss=loss, modality_losses=modality_losses, predictions=predictions,
            last_hidden_state=hidden_states, pooled=pooled,
        )
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------ query API
    def to_physical(self, predictions: torch.Tensor) -> np.ndarray:
        """Normalised (B, D) predictions -> physical units (float64 numpy), each clipped at its modality's
        physical minimum (a rate or a luminosity is never negative)."""
        learned = self.layout.to_learning_space(predictions.detach()).cpu().numpy()
        return np.concatenate(
            [MODALITIES[n].from_learning(learned[:, s]) for n, s in self.config.modality_slices.items()], axis=1)

    def _token_ids(self, names) -> torch.Tensor:
        """Indices of the tokens of the named modalities, in layout order."""
        wanted = [self.config.modalities.index(n) for n in names]
        selected = torch.isin(self.layout.token_modality, torch.tensor(wanted, device=self.device))
        return torch.nonzero(selected).flatten()

    def _check_names(self, names, argument) -> list:
        """Validate modality names given by a user; returns them in layout order."""
        for name in names:
            get_modality(name)  # an unknown name lists the registry's names
            if name not in self.config.modalities:
                known = ", ".join(self.config.modalities)
                raise ValueError(f"{argument}: {name!r} is not in this model; it knows {known}")
        return [n for n in self.config.modalities if n in names]

    @torch.no_grad()
    def predict(self, inputs: dict, targets: list | None = None, batch_size: int = 4096) -> dict:
        """Predict modalities from any others, in physical units.

        inputs: name -> (N,) for a scalar or (N, length) for a vector; NaN/inf elements are "not given" (an
            SFH with NaN over 0-10 Gyr asks the model to fill that range in). Empty inputs return the learned
            prior for one galaxy (N = 1).
        targets: a name or names to return; default every modality not fully given. Elements that were given
            are returned as given, so a fully given target comes back unchanged.
        Returns name -> float32 (N,) for a scalar, (N, length) for a vector. The encoder runs on the tokens of
        the input and target modalities only.
        """
        names = self._check_names(inputs, "inputs")
        flat = self.config.flatten(inputs) if names else np.full((1, self.config.num_elements), np.nan, np.float32)
        given = np.isfinite(flat)
        slices = self.config.modality_slices
        if targets is None:
            targets = [n for n in self.config.modalities if n not in names or not given[:, slices[n]].all()]
        targets = self._check_names([targets] if isinstance(targets, str) else targets, "targets")
        token_ids = self._token_ids(set(names) | set(targets))
        result = np.empty_like(flat)
        for start in range(0, flat.shape[0], batch_size):
            chunk = torch.from_numpy(flat[start:start + batch_size]).to(self.device)
            normalised, present = self.layout.normalize(chunk)
            _, patches, _ = self._encode(normalised.to(self.dtype), present, token_ids)
            every_token = patches.new_zeros(chunk.shape[0], self.layout.num_tokens, self.layout.patch_size)
            every_token[:, token_ids] = patches
            result[start:start + batch_size] = self.to_physical(self.layout.unpatch(every_token))
        result = np.where(given, flat, result)
        return self.config.unflatten(result, targets)

    @torch.no_grad()
    def embed(self, inputs: dict, batch_size: int = 4096) -> dict:
        """Latent vectors for plots and probes: for each given modality the mean final state of its tokens, and
        "all", the mean over every visible token (zeros for a galaxy with nothing visible). The encoder sees
        only the given modalities' tokens. Returns name -> float32 (N, hidden_size)."""
        names = self._check_names(inputs, "inputs")
        flat = self.config.flatten(inputs)
        token_ids = self._token_ids(names)
        pool = self.layout.modality_pool[[self.config.modalities.index(n) for n in names]][:, token_ids]
        outputs = {n: np.zeros((flat.shape[0], self.config.hidden_size), np.float32) for n in names + ["all"]}
        for start in range(0, flat.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            normalised, present = self.layout.normalize(torch.from_numpy(flat[rows]).to(self.device))
            hidden_states, _, token_visible = self._encode(normalised.to(self.dtype), present, token_ids)
            hidden_states = hidden_states.float()
            per_modality = torch.einsum("mt,bth->bmh", pool, hidden_states).cpu().numpy()
            for m, name in enumerate(names):
                outputs[name][rows] = per_modality[:, m]
            weights = token_visible.float() / token_visible.sum(dim=1, keepdim=True).clamp(min=1)
            outputs["all"][rows] = torch.einsum("bt,bth->bh", weights, hidden_states).cpu().numpy()
        return outputs

MosaicConfig.register_for_auto_class()
MosaicModel.register_for_auto_class("AutoModel")

__all__ = ["MosaicModel", "MosaicModelOutput", "MosaicPreTrainedModel"]
