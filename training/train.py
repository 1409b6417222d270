"""The one training entry point for every family.

    accelerate launch training/train.py --family vae --dataset_name digits --output_dir out/vae-digits
    torchrun --nproc_per_node 2 training/train.py --family vae ...          # 2 real CPU processes (gloo)
    accelerate launch training/train.py --recipe training/recipes/vae_digits.yaml --max_train_steps 200

Settings come from the family's config dataclass; a `--recipe` YAML supplies defaults and flags override it.
"""

import argparse
import gc
import sys

import yaml
from hfgen.training.trainer_autoregressive import AutoregressiveTrainer
from hfgen.training.trainer_diffusion import DiffusionTrainer
from hfgen.training.trainer_flow import FlowTrainer
from hfgen.training.trainer_gan import GANTrainer
from hfgen.training.trainer_score import ScoreTrainer
from hfgen.training.trainer_vae import VAETrainer
from transformers import HfArgumentParser

TRAINERS = {
    trainer.family: trainer
    for trainer in (VAETrainer, GANTrainer, DiffusionTrainer, FlowTrainer, AutoregressiveTrainer, ScoreTrainer)
}


def parse_config(argv: list[str] | None = None):
    """argv -> (trainer class, its config): --family picks the trainer, --recipe gives defaults, flags win."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family")
    pre.add_argument("--recipe")
    pre.add_argument("--dataset_name")
    pre.add_argument("--train_data_dir")
    known, _ = pre.parse_known_args(argv)
    recipe = {}
    if known.recipe:
        with open(known.recipe) as f:
            recipe = yaml.safe_load(f) or {}
    # A data source given as a flag replaces the recipe's, whichever kind it is (both at once are refused).
    if known.train_data_dir is not None:
        recipe.pop("dataset_name", None)
        recipe.pop("dataset_config_name", None)
    if known.dataset_name is not None:
        recipe.pop("train_data_dir", None)
    family = known.family or recipe.get("family")
    if family is None:
        raise SystemExit(f"--family is required (or `family:` in the --recipe): one of {', '.join(sorted(TRAINERS))}.")
    if family not in TRAINERS:
        raise SystemExit(f"Unknown --family {family!r}; choose one of: {', '.join(sorted(TRAINERS))}.")
    trainer_class = TRAINERS[family]
    parser = HfArgumentParser(trainer_class.config_class, description=f"Train an hfgen {family} model.")
    unknown = set(recipe) - {action.dest for action in parser._actions}
    if unknown:
        raise SystemExit(f"{known.recipe}: unknown settings {sorted(unknown)} for family {family!r}.")
    parser.set_defaults(**recipe)
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    config.family = family
    return trainer_class, config


def main(argv: list[str] | None = None) -> dict:
    trainer_class, config = parse_config(argv)
    trainer = trainer_class(config)
    summary = trainer.train()
    is_main_process = trainer.accelerator.is_main_process
    # Free the DDP-wrapped model, its gradient buckets and the optimizer now, while the interpreter is whole: left to
    # interpreter shutdown, one gloo rank of a finished two-process run aborted in CI ("terminate called without an
    # active exception", exit -6), which made torchrun report the saved run as failed.
    del trainer
    gc.collect()
    if is_main_process:
        print(f"Saved the {config.family} pipeline to {config.output_dir}")
        print(f"Samples: {config.output_dir}/samples/final.png")
        print(f"Try it:  hfgen generate {config.output_dir} -n 16 -o grid.png")
        # The gallery Space has a tab for every family (spaces/vae and spaces/gan are single-family Spaces).
        print(f"Space:   python spaces/gallery/app.py --{config.family} {config.output_dir}")
    return summary


if __name__ == "__main__":
    main()
