#!/usr/bin/env python
"""Train MOSAIC with `transformers.Trainer`: `accelerate launch train_mosaic.py --config configs/demo.yaml`.

Arguments come in three groups (model, data, `TrainingArguments`), from a YAML/JSON file given with
`--config`, overridden by any `--name value` on the command line. Plain `python train_mosaic.py ...` runs the
same job on one device; `accelerate launch` runs it on several (DDP, or FSDP/DeepSpeed through an accelerate
config). The catalog named by the data arguments is built when absent (main process first), then read
memory-mapped by every process.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from modeling_mosaic.modalities import MODALITY_NAMES


@dataclass
class ModelArguments:
    """The network: width, depth and loss. Normalisation statistics come from the training data."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "start from this checkpoint"})
    modalities: list[str] = field(default_factory=lambda: list(MODALITY_NAMES))
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    hidden_dropout_prob: float = 0.0
    attention_dropout: float = 0.0
    visible_loss_weight: float = field(default=0.0, metadata={"help": "weight of the loss on visible elements"})
    mask_visible_decay: float = field(default=0.6, metadata={"help": "P(k visible modalities) ~ decay**(k-1)"})
    mask_query_probability: float = field(default=0.0, metadata={
        "help": "chance that a sample shows exactly one of the paper's figure-2 input sets, hiding the rest"})
    mask_query_weights: str | None = field(default=None, metadata={
        "help": 'JSON {condition: weight}: relative chance of each figure-2 input set (default 1 each), e.g. '
                '\'{"lsst+spherex": 2}\''})
    loss_weights: str | None = field(default=None, metadata={
        "help": 'JSON {modality: weight} on its masked error in the loss (default 1 each), e.g. \'{"redshift": 2}\''})
    head_type: str = field(default="point", metadata={"help": "point, or gaussian (mean and variance; p(z))"})
    redshift_mixture_components: int = 5
    nll_beta: float = field(default=0.5, metadata={"help": "gaussian head: NLL weighted by variance**beta"})
    error_inputs: bool = field(default=False, metadata={"help": "embed measurement errors beside the values"})
    noise_on_the_fly: bool = field(default=False, metadata={"help": "draw photometric noise from stored errors"})
    noise_scale: list[float] = field(default_factory=lambda: [1.0, 1.0], metadata={"help": "range of error factor"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa or eager"})


@dataclass
class DataArguments:
    """Which catalog to train on, and how to build it when it is not there yet."""

    catalog: str | None = field(default=None, metadata={"help": "catalog preset (tiny, demo, paper) to build when absent"})
    data_path: str | None = field(default=None, metadata={"help": "catalog folder (default data/PRESET) or Hub dataset id"})
    catalog_seed: int = 0
    sfh_convention: str = field(default="observed", metadata={"help": "observed or full"})
    noise: str = field(default="none", metadata={"help": "none or realistic"})
    validation_size: int = field(default=1000, metadata={"help": "rows held out of train for evaluation"})
    max_train_samples: int | None = None
    calibration_data: str | None = field(default=None, metadata={
        "help": "catalog whose last train rows calibrate the gaussian head (default: the validation rows)"})
    calibration_catalog_seed: int | None = field(default=None, metadata={
        "help": "build calibration_data from the catalog preset with this seed when absent (an independent draw)"})
    calibration_rows: int | None = field(default=None, metadata={"help": "rows of calibration_data (default all)"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "train into an --output_dir that already holds files (its checkpoints are rotated away)"})


def parse_args(argv: list[str] | None = None):
    """Parse `--config FILE` (YAML or JSON) and command-line overrides into the three argument groups."""
    from modeling_mosaic.training import config_file_to_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [part for word in argv for part in (word.split("=", 1) if word.startswith("--config=") else [word])]
    file_argv = []
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments),
                              description="Train MOSAIC. --config FILE (YAML or JSON) gives arguments as name: value "
                                          "pairs; any --name value on the command line overrides the file.")
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a file name")
        file_argv = config_file_to_argv(argv[i + 1])
        unknown = [w for w in file_argv if w.startswith("--") and w not in parser._option_string_actions]
        if unknown:
            raise SystemExit(f"config file {argv[i + 1]}: unknown argument(s) {', '.join(w[2:] for w in unknown)}; "
                             "`python train_mosaic.py --help` lists them")
        del argv[i : i + 2]
    # Push the finished model once (the Trainer's default pushes at every save, with its pickles).
    parser.set_defaults(hub_strategy="end")
    return parser.parse_args_into_dataclasses(args=file_argv + argv, look_for_args_file=False)


def main(argv: list[str] | None = None, callbacks=None):
    """Run one training job; `callbacks` are extra TrainerCallbacks (tests use one to interrupt a run)."""
    from modeling_mosaic.training import run_training

    from accelerate import PartialState

    model_args, data_args, training_args = parse_args(argv)
    card = Path(__file__).with_name("model_card.md")
    result = run_training(model_args, data_args, training_args, callbacks=callbacks, card_template=str(card))
    # Ranks wait for each other with the interpreter's lock released, so gloo's worker threads can free their
    # finished collectives now: freed at interpreter exit instead, they can abort a rank after everything is saved
    # ("terminate called without an active exception"). No-op in a single process.
    PartialState().wait_for_everyone()
    return result


if __name__ == "__main__":
    main()
