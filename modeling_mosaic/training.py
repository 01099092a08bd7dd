"""The pieces `train_mosaic.py` assembles: data preparation, the Trainer subclass, task metrics, the card.

The masking itself is the collator of `masking.py`; this module only adds what training needs around it:
a columnar view of the catalog (one Arrow slice per batch instead of one dict per row), fixed "task" masks
for the evaluation sets (redshift and stellar mass from LSST), and an epoch callback so that masks depend on
(seed, epoch, galaxy) alone and a resumed run draws exactly the masks an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import MISSING, fields, replace
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, set_seed
from transformers.trainer import TRAINING_ARGS_NAME

from .allocator import keep_freed_memory
from .catalog.io import arrow_to_numpy
from .files import readable_weights
from .modalities import get_modality

logger = logging.getLogger(__name__)

#: Evaluation tasks run at every evaluation: name -> the modalities shown (everything else is predicted). The
#: two photo-z questions of the headline gain: with them in the log, a run's SPHEREx gain is visible as it trains.
EVAL_TASKS = {"lsst": ("lsst",), "lsst_spherex": ("lsst", "spherex")}
#: Training splits up to this size (the model's columns, as stored) are held in memory as numpy arrays: the
#: paper catalog's 185,247 galaxies take 0.35 GB.
IN_MEMORY_BYTES = 2 * 1024**3
#: The modalities the task metrics score, and the photo-z scores logged for redshift.
TASK_TARGETS = ("redshift", "log_stellar_mass")
PHOTOZ_KEYS = ("bias", "sigma_nmad", "sigma_iqr", "outlier_rate")
#: Where a model folder keeps the arguments it was trained with (the Trainer's own file is a pickle).
TRAINING_ARGS_JSON = "training_args.json"


# ------------------------------------------------------------------------------------------ arguments
def config_file_to_argv(path: str) -> list[str]:
    """A YAML/JSON file of `name: value` pairs as command-line words, so the command line can override it."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"config file {path} does not exist")
    try:  # YAML, or JSON (which YAML reads too), whatever the suffix
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SystemExit(f"config file {path}: not valid YAML or JSON: {error}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path}: expected a mapping of argument names to values")
    argv = []
    for key, value in data.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


# ------------------------------------------------------------------------------------------------ data
class ColumnarDataset(torch.utils.data.Dataset):
    """A catalog split seen as columns. A split whose columns take at most `max_in_memory_bytes` is converted
    to numpy once, so a batch is one fancy index per column (0.03 ms for 256 demo rows); a larger one is
    gathered from the memory-mapped Arrow table and converted batch by batch (2-3 ms: each call pays
    datasets' gather and a fixed cost per column). Both are ~10x faster than datasets' numpy formatting,
    which converts list columns row by row.

    `task` (a name of EVAL_TASKS) marks an evaluation set whose batches get that task's fixed mask.
    """

    def __init__(self, dataset, columns: list[str], task: str | None = None,
                 max_in_memory_bytes: int = IN_MEMORY_BYTES):
        self.dataset = dataset.with_format("arrow", columns=columns)
        self.task = task
        self.arrays = None
        if dataset.select_columns(columns).data.nbytes <= max_in_memory_bytes:
            self.arrays = numpy_columns(dataset, columns, "catalog")

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        if self.arrays is not None:
            rows = np.asarray(indices, dtype=np.int64)
            batch = {name: array[rows] for name, array in self.arrays.items()}
        else:
            table = self.dataset[indices]
            batch = {name: arrow_to_numpy(table.column(name), name, "catalog") for name in table.column_names}
        if self.task is not None:
            batch["task"] = self.task
        return batch

    def __getitem__(self, index):
        return self.__getitems__([index])


class TrainingCollator:
    """Random hierarchical masking for training batches; a task's fixed mask for evaluation batches."""

    def __init__(self, masking, config):
        self.masking = masking
        self.slices = config.modality_slices

    def set_epoch(self, epoch: int):
        self.masking.set_epoch(epoch)

    def __call__(self, batch):
        task = batch.pop("task", None) if isinstance(batch, dict) else None
        out = self.masking(batch)
        if task is not None:
            shown = torch.zeros_like(out["input_mask"])
            for name in EVAL_TASKS[task]:
                shown[:, self.slices[name]] = True
            out["input_mask"] = shown
            out["target_mask"] = ~shown
        return out


class EpochCallback(TrainerCallback):
    """Tells the collator which epoch starts, so its masks are a function of (seed, epoch, galaxy)."""

    def __init__(self, collator: TrainingCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.set_epoch(math.floor(state.epoch + 1e-9))


# ---------------------------------------------------------------------------------------------- metrics
def make_compute_metrics(config):
    """Task metrics in physical units, on the elements each batch scored: MAE of every target modality,
    and for redshift the photo-z scores (RAIL definitions)."""
    from .evaluation.metrics import photoz_metrics

    modalities = list(config.modalities)
    slices, width = config.modality_slices, config.num_elements
    mean = np.concatenate([np.asarray(config.normalization[n]["mean"], float) for n in modalities])
    std = np.concatenate([np.asarray(config.normalization[n]["std"], float) for n in modalities])

    def compute_metrics(eval_pred):
        preds = eval_pred.predictions
        preds = next(p for p in (preds if isinstance(preds, tuple) else (preds,)) if p.ndim == 2 and p.shape[1] == width)
        scored = np.asarray(eval_pred.label_ids, dtype=bool)
        values = np.asarray(eval_pred.inputs, dtype=np.float64)
        learned = preds * std + mean
        metrics = {}
        for name in TASK_TARGETS:
            if name not in slices:
                continue
            s = slices[name]
            m = get_modality(name)
            ok = scored[:, s] & np.isfinite(values[:, s])
            if not ok.any():
                continue
            pred = m.from_learning(learned[:, s])[ok]
            true = values[:, s][ok]
            metrics[f"{name}_mae"] = float(np.mean(np.abs(pred - true)))
            if name == "redshift":
                scores = photoz_metrics(pred, true)
                metrics.update({f"redshift_{k}": scores[k] for k in PHOTOZ_KEYS})
        return metrics

    return compute_metrics


# ---------------------------------------------------------------------------------------------- trainer
_TIMING_KEYS = ("_runtime", "_per_second")


class MosaicTrainer(Trainer):
    """Trainer whose model card is MOSAIC's own (the template `model_card.md`), not the generic draft, and whose
    model folders hold no pickle."""

    def __init__(self, *args, card_template: str | None = None, card_fields: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_template = card_template
        self.card_fields = dict(card_fields or {})

    def _save(self, output_dir: str | None = None, state_dict=None):
        """Save as the Trainer does, but write the training arguments as JSON (`training_args.json`, tokens
        redacted) in place of the Trainer's pickle of them (`training_args.bin`), which would carry a
        `--hub_token` in clear text to every Hub repo pushed from the folder and cannot be read without
        unpickling. Checkpoint folders save through here too."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir)
            (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            (folder / TRAINING_ARGS_JSON).write_text(self.args.to_json_string())
            readable_weights(folder)

    def create_model_card(self, **kwargs):
        if not self.is_world_process_zero() or self.card_template is None:
            return
        from . import card

        metrics = {}
        for entry in self.state.log_history:
            metrics.update({k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(_TIMING_KEYS)})
        fields = {
            "model_name": self.args.hub_model_id or Path(self.args.output_dir).name,
            "repo_or_path": self.args.hub_model_id or str(Path(self.args.output_dir).resolve()),
            "modality_table": card.modality_table(self.model.config.modalities),
            "metrics": card.metrics_table(metrics),
            **self.card_fields,
        }
        text = card.render(Path(self.card_template).read_text(), **fields)
        Path(self.args.output_dir, "README.md").write_text(text)


# ------------------------------------------------------------------------------------------------- run
def prepare_catalog(data_args) -> str:
    """The catalog's location. With a `catalog` preset: `data_path` (default data/PRESET), built there when
    absent. Without: `data_path` as given, a catalog folder or a Hub dataset id. Call inside `main_process_first()` so that one process builds and the others wait."""
    if data_args.catalog is None:
        if not data_args.data_path:
            raise ValueError("name the training data: --catalog PRESET (built when absent) or --data_path DIR_OR_HUB_ID")
        return data_args.data_path
    from .catalog.presets import get_preset
    from .catalog.writer import build_catalog

    get_preset(data_args.catalog)  # an unknown preset fails here, before any work
    path = data_args.data_path or os.path.join("data", data_args.catalog)
    if Path(path).exists():
        check_preset_catalog(path, data_args)
        return path
    logger.info("building the %s catalog into %s", data_args.catalog, path)
    build_catalog(path, data_args.catalog, seed=data_args.catalog_seed, sfh_convention=data_args.sfh_convention,
                  noise=data_args.noise, progress=True)
    return path


def argument_defaults(arguments) -> dict:
    """An argument dataclass's defaults by name: a value that differs from its default was given by the user."""
    return {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(arguments)}


def check_preset_catalog(path: str, data_args) -> None:
    """A preset's catalog is built only when absent: a folder already there must be that preset drawn with the
    options asked for, or a run would train on other galaxies than its arguments (and card) say."""
    info = Path(path, "catalog.json")
    if not info.is_file():
        return  # load_catalog names an unfinished folder
    provenance = json.loads(info.read_text()).get("provenance", {})
    if provenance.get("origin") != "generated" or provenance.get("config") != data_args.catalog:
        what = (f"the {provenance.get('config')!r} preset" if provenance.get("origin") == "generated"
                else "an imported catalog")
        raise ValueError(f"--data_path {path} holds {what}, not the {data_args.catalog!r} preset that --catalog "
                         "names: pass --catalog none to train on it as it is, or another --data_path to build there")
    options = provenance.get("options", {})
    asked = {"seed": "catalog_seed", "sfh_convention": "sfh_convention", "noise": "noise"}
    defaults = argument_defaults(data_args)
    for option, argument in asked.items():  # an option left at its default takes the catalog as it was drawn
        value = getattr(data_args, argument)
        if value != defaults.get(argument) and option in options and options[option] != value:
            raise ValueError(f"--data_path {path} holds the {data_args.catalog!r} preset built with {option}="
                             f"{options[option]}, but --{argument} {value} asks for another draw: build it elsewhere "
                             "(--data_path) or drop the option")


def prepare_calibration_catalog(data_args, training_path: str) -> str | None:
    """The independent catalog the gaussian head is calibrated on, built from the preset with
    `calibration_catalog_seed` when absent; None: calibrate on the validation rows. A sharper model needs more
    galaxies than a validation split holds (the PIT of N galaxies resolves a KS distance of ~1.4 / sqrt(N)).
    Call inside `main_process_first()`, like `prepare_catalog`."""
    path, seed = data_args.calibration_data, data_args.calibration_catalog_seed
    if path is None:
        if seed is not None or data_args.calibration_rows is not None:
            raise ValueError("--calibration_catalog_seed and --calibration_rows need --calibration_data")
        return None
    if Path(path).resolve() == Path(training_path).resolve():
        raise ValueError(f"--calibration_data {path} is the training catalog: calibrate on galaxies the model "
                         "has not seen (another draw: --calibration_catalog_seed)")
    if data_args.calibration_rows is not None and data_args.calibration_rows < 1:
        raise ValueError(f"--calibration_rows must be a positive integer, got {data_args.calibration_rows}")
    if seed is None:
        return path
    if data_args.catalog is None:
        raise ValueError("--calibration_catalog_seed draws from a catalog preset: give --catalog too")
    if seed == data_args.catalog_seed:
        raise ValueError(f"--calibration_catalog_seed {seed} equals --catalog_seed: the same galaxies as training")
    return prepare_catalog(replace(data_args, data_path=path, catalog_seed=seed))


def calibration_split(path: str, rows: int | None, columns):
    """The last `rows` (default all) train rows of the calibration catalog, checked before any training."""
    from .catalog.io import load_catalog

    data = load_catalog(path, split="train")
    check_columns(data, columns, path)
    rows = rows or len(data)
    if rows > len(data):
        raise ValueError(f"--calibration_rows {rows}: the train split of {path} has only {len(data)} rows")
    return data.select(range(len(data) - rows, len(data)))


def numpy_columns(dataset, columns, source: str) -> dict:
    """A split's `columns` as numpy arrays through Arrow (`arrow_to_numpy`): a null vector row (a catalog written
    by other tools, or a column its shards lack) becomes NaN, missing, where datasets' numpy formatting fails."""
    table = dataset.with_format("arrow", columns=list(columns))[:]
    return {name: arrow_to_numpy(table.column(name), name, source) for name in columns}


def check_columns(dataset, columns, where: str) -> None:
    """Fail before training if the catalog lacks a column the model needs."""
    missing = [c for c in (*columns, "galaxy_id") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"catalog {where} has no column(s) {', '.join(missing)}; it has {', '.join(dataset.column_names)}")


#: Training rows that the step spreads (`MosaicConfig.step_inputs`) are measured on: plenty for a spread.
STEP_STATISTICS_ROWS = 20_000


def figure2_queries(modalities) -> list:
    """The paper's figure-2 conditions a model of these modalities can pose: its training queries, in order."""
    from .evaluation.conditions import CONDITIONS

    return [c for c in CONDITIONS if set(c.inputs_needed) <= set(modalities)]


def json_argument(text: str | None, argument: str) -> dict:
    """A JSON object given on the command line (or as a mapping in a config file) -> dict; None -> {}."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument}: not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{argument}: expected a JSON object such as '{{\"redshift\": 2}}', got {text!r}")
    return value


def check_output_dir(training_args, overwrite: bool) -> None:
    """--output_dir receives checkpoints (rotated: `save_total_limit` deletes the oldest checkpoint-* folders), the
    model and its card (README.md). A folder that already holds files is refused, so that an earlier run's
    checkpoints are not deleted nor its model mixed with this one's, unless the run resumes from a checkpoint in
    it or `--overwrite_output_dir true` says so; a folder holding a catalog always."""
    output = Path(training_args.output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {output} is a file; name a folder")
    if (output / "catalog.json").exists():
        raise ValueError(f"--output_dir {output} holds a catalog: the model and its card would be written over it; "
                         "choose another --output_dir")
    resume = training_args.resume_from_checkpoint
    resuming_here = resume is not None and (resume.lower() == "true" or
                                            Path(resume).resolve().parent == output.resolve())
    held = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if held and not (overwrite or resuming_here):
        raise ValueError(f"--output_dir {output} already holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}: "
                         "a run would rotate its checkpoints away and write its model and README.md over them; "
                         f"choose an empty or new folder, resume with --resume_from_checkpoint {output}/checkpoint-N, "
                         "or pass --overwrite_output_dir true")


def check_precision(training_args) -> None:
    """--fp16 needs a GPU: on a CPU accelerate trains in float32 while the card would say fp16. --bf16 on a CPU
    without native bf16 products trains correctly but ~3x slower: a warning."""
    if training_args.device.type == "cpu":
        if training_args.fp16:
            raise ValueError("--fp16: float16 mixed precision needs a GPU; on a CPU it would silently train in "
                             "float32. Use --bf16 on a CPU with bf16 units, or neither")
        if training_args.bf16 and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
            logger.warning("--bf16 on a CPU without native bf16 products (capability %s): bf16 matmuls run far "
                           "slower than float32 here", torch.backends.cpu.get_cpu_capability())


def reproducible_compile(training_args) -> None:
    """--torch_compile on a CPU: inductor's generated kernels do not sum in a fixed order (two 40-step demo runs of
    one seed ended with different weights), so such a run sets --full_determinism, with which they agree."""
    if training_args.torch_compile and training_args.device.type == "cpu" and not training_args.full_determinism:
        logger.info("--torch_compile on a CPU: --full_determinism set, so that the seed fixes the weights")
        training_args.full_determinism = True


def resume_checkpoint(training_args) -> str:
    """--resume_from_checkpoint checked before any data work: `true` is the last checkpoint-N in --output_dir; a
    folder must be a whole Trainer checkpoint (safetensors weights, config, trainer state, optimizer and scheduler:
    a run killed while saving leaves some out) holding no pickled weights."""
    from transformers.trainer_utils import get_last_checkpoint

    path = training_args.resume_from_checkpoint
    if path.lower() == "true":
        last = get_last_checkpoint(training_args.output_dir) if Path(training_args.output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint true: no checkpoint-N folder in {training_args.output_dir}")
        path = last
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--resume_from_checkpoint {path}: no such folder")
    if any(folder.glob("*.bin")):
        raise ValueError(f"--resume_from_checkpoint {path}: holds pickled weights (*.bin); MOSAIC loads safetensors "
                         "weights only")
    missing = [n for n in ("model.safetensors", "config.json", "trainer_state.json", "optimizer.pt", "scheduler.pt")
               if not (folder / n).exists()]
    if missing:
        raise ValueError(f"--resume_from_checkpoint {path}: not a whole Trainer checkpoint (no {', '.join(missing)}); "
                         "resume from a checkpoint-N folder a run saved, or start from a model's weights with "
                         "--model_name_or_path")
    return str(folder)


#: The config entries that shape a model's weights: a checkpoint resumes only into a model that has them all.
ARCHITECTURE_KEYS = ("modalities", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "head_type", "redshift_mixture_components", "error_inputs")
#: Model arguments that a checkpoint's config holds under the same name (JSON ones compared after parsing).
CHECKPOINT_SETTINGS = (*ARCHITECTURE_KEYS, "hidden_dropout_prob", "attention_dropout", "visible_loss_weight",
                       "mask_visible_decay", "mask_query_probability", "nll_beta", "noise_on_the_fly", "noise_scale")


def check_model_arguments_match(model_args) -> None:
    """--model_name_or_path starts from a checkpoint's weights with its config: a model argument given (not left
    at its default) that the checkpoint has otherwise would be silently ignored, so it is an error."""
    from .configuration_mosaic import MosaicConfig

    try:
        config = MosaicConfig.from_pretrained(model_args.model_name_or_path)
    except OSError as error:  # no such folder here, and no such (reachable) Hub repo
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path}: {error}") from None
    defaults = argument_defaults(model_args)
    differ = [f"--{name} {getattr(model_args, name)} (the checkpoint's: {getattr(config, name)})"
              for name in CHECKPOINT_SETTINGS if getattr(model_args, name) != defaults[name]
              and _as_config_value(getattr(model_args, name)) != _as_config_value(getattr(config, name))]
    weights = json_argument(model_args.loss_weights, "--loss_weights")
    differ += [f"--loss_weights {name}: {w} (the checkpoint's: {config.loss_weights.get(name)})"
               for name, w in weights.items() if config.loss_weights.get(name) != float(w)]
    if model_args.mask_query_weights is not None:
        differ.append("--mask_query_weights (the checkpoint keeps its own)")
    if differ:
        raise ValueError(f"--model_name_or_path {model_args.model_name_or_path} keeps its config, but "
                         f"{'; '.join(differ)}: drop them, or train a new model")


def _as_config_value(value):
    """An argument's list (noise_scale, modalities) as a config holds it: numbers as floats."""
    return [float(v) if not isinstance(v, str) else v for v in value] if isinstance(value, (list, tuple)) else value


def build_model(model_args, normalization, train_sample):
    """A fresh model sized by the arguments, or the checkpoint `model_name_or_path`; normalisation from the
    catalog's statistics, step spreads from `train_sample` (modality columns of training rows)."""
    from .configuration_mosaic import MosaicConfig
    from .modeling_mosaic import MosaicModel

    if model_args.model_name_or_path:
        folder = Path(model_args.model_name_or_path)
        if folder.is_dir() and not (folder / "model.safetensors").exists():
            raise ValueError(f"--model_name_or_path {folder}: no model.safetensors; MOSAIC loads safetensors weights "
                             "only, never pickles")
        check_model_arguments_match(model_args)
        return MosaicModel.from_pretrained(model_args.model_name_or_path, use_safetensors=True,
                                           attn_implementation=model_args.attn_implementation)
    queries = figure2_queries(model_args.modalities)
    query_weights = json_argument(model_args.mask_query_weights, "--mask_query_weights")
    if unknown := set(query_weights) - {c.name for c in queries}:
        raise ValueError(f"--mask_query_weights: {sorted(unknown)} are not among this model's figure-2 conditions "
                         f"{[c.name for c in queries]}")
    config = MosaicConfig(
        modalities=model_args.modalities,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=model_args.intermediate_size,
        hidden_dropout_prob=model_args.hidden_dropout_prob,
        attention_dropout=model_args.attention_dropout,
        visible_loss_weight=model_args.visible_loss_weight,
        mask_visible_decay=model_args.mask_visible_decay,
        mask_queries=[condition.given_ranges() for condition in queries],
        mask_query_probability=model_args.mask_query_probability,
        mask_query_weights=[query_weights.get(condition.name, 1.0) for condition in queries],
        loss_weights=json_argument(model_args.loss_weights, "--loss_weights"),
        head_type=model_args.head_type,
        redshift_mixture_components=model_args.redshift_mixture_components,
        nll_beta=model_args.nll_beta,
        error_inputs=model_args.error_inputs,
        noise_on_the_fly=model_args.noise_on_the_fly,
        noise_scale=model_args.noise_scale,
        attn_implementation=model_args.attn_implementation,
    )
    config.set_normalization({n: normalization[n] for n in config.modalities})
    config.set_step_std_from_data(train_sample)
    return MosaicModel(config)


def run_training(model_args, data_args, training_args, callbacks=None, card_template: str | None = None):
    """Build or load the catalog, train, evaluate on the held-out rows, save with the model card, push."""
    from accelerate import PartialState

    from .catalog.io import load_catalog, read_normalization
    from .configuration_mosaic import MosaicConfig
    from .masking import MosaicMaskingCollator
    from .noise import CALIBRATION_NOISE_STREAM, depth_columns, error_columns, noise_columns, redraw_photometry

    MosaicConfig(modalities=model_args.modalities)  # an unknown modality fails here, before any data work
    if data_args.catalog is not None and data_args.catalog.strip().lower() in ("", "none", "null"):
        data_args.catalog = None  # --catalog none: a config's preset unset from the command line
    for argument in ("validation_size", "max_train_samples"):
        value = getattr(data_args, argument)
        if value is not None and value < 1:
            raise ValueError(f"--{argument} must be a positive integer, got {value}")
    check_output_dir(training_args, data_args.overwrite_output_dir)
    check_precision(training_args)
    reproducible_compile(training_args)
    for argument in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, argument) < 1:
            raise ValueError(f"--{argument} must be a positive integer, got {getattr(training_args, argument)}")
    if not (math.isfinite(training_args.learning_rate) and training_args.learning_rate > 0):
        raise ValueError(f"--learning_rate must be a finite positive number, got {training_args.learning_rate}")
    if training_args.load_best_model_at_end and training_args.metric_for_best_model in ("loss", "eval_loss"):
        training_args.metric_for_best_model = "masked_loss"  # the Trainer's default names a loss this run never logs
    if training_args.resume_from_checkpoint is not None:
        training_args.resume_from_checkpoint = resume_checkpoint(training_args)
    keep_freed_memory()
    if training_args.push_to_hub and training_args.hub_strategy != "end":
        raise ValueError(f"--hub_strategy {training_args.hub_strategy.value}: pushing during training uploads the "
                         "Trainer's pickles (its arguments, with any --hub_token, and for the checkpoint strategies "
                         "the optimiser state); MOSAIC pushes the safetensors model once, at the end: "
                         "--hub_strategy end")
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        raise ValueError("--dataloader_persistent_workers: the masks change every epoch through the collator, and "
                         "persistent workers would keep their copy of the first epoch's; leave it false")
    with PartialState().main_process_first():
        path = prepare_catalog(data_args)
        train = load_catalog(path, split="train")
        calibration_path = None
        if model_args.head_type == "gaussian" or model_args.model_name_or_path:  # a checkpoint's head is its own
            calibration_path = prepare_calibration_catalog(data_args, path)
        elif data_args.calibration_data is not None:
            logger.warning("--calibration_data %s is not used: a point head (--head_type point) has no predictive "
                           "distribution to calibrate", data_args.calibration_data)
    # Calibrating a model with error inputs at the end gives it the errors of the held-out photometry. A model that
    # drew its noise on the fly over a range of depths is calibrated over that range: the held-out photometry is
    # observed afresh there from its noise-free fluxes (at the catalog's one depth the shallow end was overconfident).
    calibrated = model_args.head_type == "gaussian"
    redraw = calibrated and model_args.noise_on_the_fly
    calibration_columns = list(dict.fromkeys([
        *model_args.modalities, *error_columns(model_args.modalities, model_args.error_inputs and calibrated),
        *(depth_columns(model_args.modalities) if redraw else [])]))
    needed = [c for c in calibration_columns if c != "galaxy_id"]
    check_columns(train, needed, path)
    calibration = calibration_split(calibration_path, data_args.calibration_rows, needed) if calibration_path else None
    n_val = min(data_args.validation_size, len(train) // 5)
    if n_val < data_args.validation_size:
        logger.warning("--validation_size %d: %s holds %d train rows, so %d (a fifth) are held out",
                       data_args.validation_size, path, len(train), n_val)
    if n_val < 1:
        raise ValueError(f"catalog {path}: its train split has {len(train)} rows; a run holds a fifth of them (at "
                         "least one) out for validation, so it needs at least 5")
    n_train = len(train) - n_val
    if data_args.max_train_samples is not None:
        n_train = min(n_train, data_args.max_train_samples)
    sample = train.select(range(min(n_train, STEP_STATISTICS_ROWS)))
    set_seed(training_args.seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(model_args, read_normalization(path),
                        numpy_columns(sample, model_args.modalities, path))
    config = model.config
    if training_args.resume_from_checkpoint is not None:
        checkpoint = json.loads(Path(training_args.resume_from_checkpoint, "config.json").read_text())
        for name in ARCHITECTURE_KEYS:
            if checkpoint.get(name) != getattr(config, name):
                raise ValueError(f"--resume_from_checkpoint {training_args.resume_from_checkpoint}: its model has "
                                 f"{name}={checkpoint.get(name)}, this run's {getattr(config, name)}; resume with the "
                                 "arguments it was trained with")
    columns = [*config.modalities, "galaxy_id", *noise_columns(config)]
    val = train.select(range(len(train) - n_val, len(train)))
    train_set = ColumnarDataset(train.select(range(n_train)), columns)
    eval_sets = {"masked": ColumnarDataset(val, columns),
                 **{task: ColumnarDataset(val, columns, task=task) for task, shown in EVAL_TASKS.items()
                    if set(shown) <= set(config.modalities)}}

    # What the collator and compute_metrics need from each batch, whatever the user's arguments said.
    training_args.remove_unused_columns = False
    training_args.label_names = ["target_mask"]
    training_args.include_for_metrics = ["inputs"]

    collator = TrainingCollator(MosaicMaskingCollator(config, seed=training_args.seed), config)
    catalog_info = _catalog_description(path, len(train_set), n_val)
    if config.head_type == "gaussian":
        catalog_info += (f" Predictive distributions calibrated on the last {len(calibration)} training rows of "
                         f"`{calibration_path}`, an independent catalog." if calibration is not None
                         else " Predictive distributions calibrated on the validation rows.")
        if redraw:
            low, high = config.noise_scale
            catalog_info += (f" Their photometry was observed afresh for it at per-galaxy depths, the flux errors "
                             f"scaled by s in [{low:g}, {high:g}], as in training.")
    trainer = MosaicTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_sets,
        data_collator=collator,
        compute_metrics=make_compute_metrics(config),
        callbacks=[EpochCallback(collator), *(callbacks or [])],
        card_template=card_template,
        card_fields={"data_description": catalog_info,
                     "training_description": _training_description(config, training_args)},
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.log_metrics("train", result.metrics)
    metrics = trainer.evaluate()
    if config.head_type == "gaussian":
        # Shifts and temperatures for the figure-2 queries, fitted on unseen galaxies and saved in the config.
        from .evaluation.conditions import calibrate_for_conditions

        unseen = val if calibration is None else calibration
        held_out = numpy_columns(unseen, calibration_columns, calibration_path or path)
        if redraw:
            held_out = redraw_photometry(held_out, config.modalities, config.noise_scale, training_args.seed,
                                         CALIBRATION_NOISE_STREAM)
        fitted = calibrate_for_conditions(trainer.model.eval(), held_out)
        metrics.update({f"calibration_{c}_{t}_{k}": v for c, ts in fitted.items() for t, f in ts.items()
                        for k, v in f.items() if t in ("redshift", "log_stellar_mass")})
    trainer.save_state()
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", {**result.metrics, **metrics})
    if training_args.push_to_hub:
        trainer.push_to_hub()  # saves the model and its card, then uploads the folder: one commit
    else:
        trainer.save_model()
        trainer.create_model_card()
    return trainer, metrics


def _catalog_description(path: str, n_train: int, n_val: int) -> str:
    """What the model was trained on, for the card: the catalog's provenance and the rows used."""
    text = f"Catalog `{path}`: {n_train} training rows, {n_val} held out for validation (the last rows of train)."
    info = Path(path, "catalog.json")
    if info.exists():
        provenance = json.loads(info.read_text())["provenance"]
        if provenance.get("origin") == "generated":
            options = ", ".join(f"{k}={v}" for k, v in provenance["options"].items())
            text += (f" Generated by `mosaic-catalog build --config {provenance['config']}` "
                     f"(stellar-population synthesis on BC03 grids; {options}).")
        else:
            text += f" Imported from {', '.join(i['file'] for i in provenance.get('inputs', []))}."
    return text


def _training_description(config, args) -> str:
    """The encoder's size and the optimisation, for the card."""
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    weighted = {n: w for n, w in config.loss_weights.items() if w != 1.0}
    weights = f" Loss weights {weighted} (others 1)." if weighted else ""
    if config.mask_query_probability > 0:
        weights += (f" {config.mask_query_probability:.0%} of the samples show exactly one of the paper's figure-2 "
                    f"input sets, drawn with weights "
                    f"{dict(zip((c.name for c in figure2_queries(config.modalities)), config.mask_query_weights))}.")
    return (
        f"Encoder: {config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
        f"{config.num_attention_heads} heads, MLP {config.intermediate_size}; modalities {', '.join(config.modalities)}. "
        f"Masked regression ({config.loss_type if config.head_type == 'point' else 'beta-NLL, gaussian head'}) "
        f"with dynamic modality and segment masking.{weights} "
        f"AdamW, learning rate {args.learning_rate} ({schedule} schedule), "
        f"batch {args.per_device_train_batch_size} x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es), {precision}, seed {args.seed}."
    )
