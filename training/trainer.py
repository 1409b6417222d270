"""The one training loop every hfgen family shares.

Nothing in this file knows about any family. A family subclasses [`Trainer`] and adds its config fields, its model
(`build_model`), its pipeline (`build_pipeline`) and its loss (`compute_loss`, returning a dict with "loss" and named
terms), or overrides `training_step` when it needs several optimizers (networks besides the model, such as a GAN's
discriminator, come from `prepare_auxiliary_models`).

The loop owns: data loading, text conditioning (caption dropout), Accelerate (processes, mixed precision, gradient
accumulation), the optimizer and learning-rate schedule, EMA, logging, atomic checkpoints and exact resume, NaN
detection, validation grids, the final save with a model card, and the push to the Hub.
"""

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from hfgen.pipelines.pipeline_utils import image_grid
from hfgen.training import checks
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hfgen import hub
from hfgen.data import EMBEDDED_DATASETS, collate_fn, load_image_dataset
from hfgen.metrics.evaluate import generate_images
from hfgen.metrics.features import load_feature_extractor, shipped_extractors
from hfgen.metrics.sample_quality import GaussianStatistics, fid
from hfgen.text import build_clip_text_encoder, build_word_tokenizer, encode_prompts, load_pretrained_text_encoder

CHECKPOINT_PATTERN = checks.CHECKPOINT_PATTERN


@dataclass
class TrainingConfig:
    """Settings every family shares; flag names follow diffusers' training examples."""

    # ----- run -----
    family: str = field(default="vae", metadata={"help": "Model family to train (see `hfgen train --help`)."})
    recipe: str | None = field(default=None, metadata={"help": "YAML recipe with defaults; flags override it."})
    output_dir: str = field(default="out/run", metadata={"help": "Where checkpoints, samples and the model go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a folder holding another run (its checkpoints are deleted)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order and noise."})

    # ----- data -----
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, a `save_to_disk` folder, or an embedded set: digits (default), shapes."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of a Hub data set."})
    train_data_dir: str | None = field(default=None, metadata={"help": "An imagefolder (metadata.jsonl captions)."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str | None = field(default=None, metadata={"help": "Column holding captions."})
    label_column: str | None = field(default=None, metadata={"help": "Class labels; become captions by name."})
    resolution: int | None = field(default=None, metadata={"help": "Resize and crop images to this size."})
    center_crop: bool = field(default=False, metadata={"help": "Center crop (default: random crop)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    image_mode: str | None = field(
        default=None, metadata={"help": "L, RGB or RGBA (default: L if every image is greyscale, else RGB)."}
    )
    skip_bad_images: bool = field(
        default=False, metadata={"help": "--train_data_dir: skip unreadable images (counted) instead of stopping."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data set (needs --max_train_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set."})
    test_size: float = field(
        default=0.1, metadata={"help": "Held-out fraction (or count) when there is no test split."}
    )

    # ----- conditioning -----
    conditioning: str = field(default="text", metadata={"help": "none, text or class."})
    text_encoder_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Frozen pretrained text encoder; default: a small CLIP text model trained jointly."},
    )
    text_hidden_size: int = field(default=64, metadata={"help": "Width of the from-scratch CLIP text model."})
    text_num_layers: int = field(default=2, metadata={"help": "Layers of the from-scratch CLIP text model."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Probability of training on an empty prompt."})

    # ----- optimisation -----
    train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    num_epochs: int = field(default=10, metadata={"help": "Epochs, unless --max_train_steps is set."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps; overrides --num_epochs."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    lr_scheduler: str = field(default="constant", metadata={"help": "diffusers' get_scheduler name (cosine, ...)."})
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 turns it off)."})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16."})
    use_ema: bool = field(default=False, metadata={"help": "Keep an EMA of the weights and save it."})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay."})

    # ----- checkpoints, logging, validation -----
    checkpointing_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or 'latest'."})
    logging_steps: int = field(default=10, metadata={"help": "Log losses every N steps."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none."})
    validation_steps: int | None = field(default=None, metadata={"help": "Write a sample grid every N steps."})
    validation_prompts: list[str] | None = field(default=None, metadata={"help": "Prompts for validation grids."})
    num_validation_images: int = field(default=16, metadata={"help": "Images in each validation grid."})
    validation_fid: bool = field(
        default=False, metadata={"help": "Also log FID (hfgen.metrics domain features) at each validation."}
    )
    validation_fid_samples: int = field(default=500, metadata={"help": "Generated images for the validation FID."})

    # ----- hub -----
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final pipeline and card to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id (default: output_dir's name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Token (default: HF_TOKEN / hf auth login)."})

    # The valid range of each numeric flag, checked in __post_init__ ("[1, inf)": at least 1; None passes).
    ranges: ClassVar[dict[str, str]] = {
        "seed": "[0, 4294967295]",  # what numpy's seeding accepts
        "resolution": "[1, 1024]",
        "max_train_samples": "[1, inf)",
        "text_hidden_size": "[1, 4096]",
        "text_num_layers": "[1, 48]",
        "caption_dropout": "[0, 1)",
        "train_batch_size": "[1, 65536]",
        "num_epochs": "[1, inf)",
        "max_train_steps": "[1, inf)",
        "gradient_accumulation_steps": "[1, inf)",
        "learning_rate": "[0, 1]",  # 0 freezes the model (a test of the GAN's divergence check does)
        "lr_warmup_steps": "[0, inf)",
        "adam_beta1": "[0, 1)",
        "adam_beta2": "[0, 1)",
        "adam_weight_decay": "[0, inf)",
        "max_grad_norm": "[0, inf)",
        "ema_decay": "[0, 1]",
        "checkpointing_steps": "[1, inf)",
        "checkpoints_total_limit": "[1, inf)",
        "logging_steps": "[1, inf)",
        "validation_steps": "[0, inf)",  # 0: no validation
        "num_validation_images": "[1, 1024]",
        "validation_fid_samples": "[2, inf)",
    }
    # Settings that shape the model: resuming a checkpoint with other values is refused (see checks.py).
    model_settings: ClassVar[tuple[str, ...]] = (
        "family", "conditioning", "resolution", "image_mode", "text_encoder_name_or_path", "text_hidden_size",
        "text_num_layers",
    )  # fmt: skip

    def __post_init__(self):
        checks.check_ranges(self)
        checks.check_test_size(self.test_size)
        checks.check_mixed_precision(self.mixed_precision)
        if self.train_data_dir is None and self.dataset_name is None:
            self.dataset_name = "digits"
        if self.train_data_dir is not None and self.dataset_name is not None:
            raise ValueError("Give --dataset_name or --train_data_dir, not both.")
        # The embedded data sets know their columns, so `--dataset_name digits` works without column flags.
        if self.dataset_name in EMBEDDED_DATASETS and self.caption_column is None and self.label_column is None:
            self.caption_column = "text"
            self.label_column = "label"
        if self.conditioning not in ("none", "text", "class"):
            raise ValueError(f"--conditioning must be none, text or class, got {self.conditioning!r}.")
        if self.streaming and self.max_train_steps is None:
            raise ValueError("--streaming data has no length: set --max_train_steps.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.validation_fid and not (self.validation_steps and self.dataset_name in shipped_extractors()):
            raise ValueError(
                "--validation_fid needs --validation_steps and a data set with a shipped feature extractor "
                f"({', '.join(shipped_extractors())}); for other data use `hfgen evaluate` after training."
            )


class Trainer:
    """The shared Accelerate loop. Subclasses set `family`, `config_class`, `pipeline_class` and implement
    `build_model`, `compute_loss` and `build_pipeline`."""

    family: str = ""
    config_class = TrainingConfig
    pipeline_class = None
    pipeline_tag_unconditional = "unconditional-image-generation"

    def __init__(self, config: TrainingConfig):
        checks.check_output_dir(config, is_main_process=int(os.environ.get("RANK", "0")) == 0)
        self.config = config
        self.accelerator = Accelerator(
            # Without a GPU, Accelerate forms a multi-process (gloo) group under torchrun only when told it is on CPU.
            cpu=not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(
                project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, "logs")
            ),
            # A sampler seeded by (seed + epoch): the data order does not depend on the global RNG, so a resumed run
            # sees exactly the batches an uninterrupted one would.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )
        set_seed(config.seed)

        # 1. Data: a ready `datasets.Dataset` with on-the-fly transforms.
        self.splits = load_image_dataset(
            config.dataset_name,
            train_data_dir=config.train_data_dir,
            dataset_config_name=config.dataset_config_name,
            image_column=config.image_column,
            caption_column=config.caption_column,
            label_column=config.label_column,
            resolution=config.resolution,
            center_crop=config.center_crop,
            random_flip=config.random_flip,
            image_mode=config.image_mode,
            test_size=config.test_size,
            seed=config.seed,
            streaming=config.streaming,
            max_train_samples=config.max_train_samples,
            skip_bad_images=config.skip_bad_images,
        )
        first = next(iter(self.splits["train"]))
        self.image_shape = tuple(first["pixel_values"].shape)  # (c, h, w)

        # 2. Conditioning components, then the family's model.
        self.tokenizer, self.text_encoder, self.train_text_encoder = self.build_text_components()
        self.num_classes = self.count_classes() if config.conditioning == "class" else None
        self.model = self.build_model()

        # 3. Data loader, optimizer, schedule, and everything through Accelerate.
        self.train_dataloader = DataLoader(
            self.splits["train"],
            batch_size=config.train_batch_size,
            shuffle=not config.streaming,
            collate_fn=collate_fn,
            drop_last=True,
            # Each new iterator draws a seed from this generator, not from the global RNG that a resumed run restores.
            generator=torch.Generator().manual_seed(config.seed),
        )
        if config.max_train_steps is not None:
            self.max_train_steps = config.max_train_steps
        else:
            batches = len(self.train_dataloader) // self.accelerator.num_processes
            self.max_train_steps = config.num_epochs * math.ceil(batches / config.gradient_accumulation_steps)
        parameters = list(self.model.parameters())
        if self.train_text_encoder:
            parameters += list(self.text_encoder.parameters())
        self.optimizer, self.lr_scheduler = self.build_optimizer(parameters)
        self.model, self.optimizer, self.train_dataloader, self.lr_scheduler = self.accelerator.prepare(
            self.model, self.optimizer, self.train_dataloader, self.lr_scheduler
        )
        if self.train_text_encoder:
            self.text_encoder = self.accelerator.prepare(self.text_encoder)
        elif self.text_encoder is not None:
            self.text_encoder.to(self.accelerator.device)
        self.ema = None
        if config.use_ema:
            model = self.accelerator.unwrap_model(self.model)
            self.ema = EMAModel(
                model.parameters(), decay=config.ema_decay, model_cls=type(model), model_config=model.config
            )
            self.ema.to(self.accelerator.device)
            self.accelerator.register_for_checkpointing(self.ema)
        self.prepare_auxiliary_models()

    # ----- what a family provides ------------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def compute_loss(self, batch: dict, condition: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The family's loss on one batch: a dict with "loss" (to minimise) and any named terms to log."""
        raise NotImplementedError

    def build_pipeline(self, model, tokenizer, text_encoder):
        raise NotImplementedError

    def prepare_auxiliary_models(self):
        """Builds and prepares the networks a family trains besides `self.model` (a GAN's discriminator), each with
        its own optimizer from `build_optimizer`. Whatever goes through `self.accelerator.prepare` here is saved in
        checkpoints and restored on resume; only `self.model` (and the text components) goes into the pipeline."""

    def build_optimizer(self, parameters, learning_rate: float | None = None, betas: tuple | None = None):
        """(AdamW, its learning-rate schedule) over `parameters`; the learning rate and betas default to the config's.
        Prepare both with Accelerate."""
        config = self.config
        optimizer = torch.optim.AdamW(
            parameters,
            lr=config.learning_rate if learning_rate is None else learning_rate,
            betas=(config.adam_beta1, config.adam_beta2) if betas is None else betas,
            weight_decay=config.adam_weight_decay,
        )
        lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            # Accelerate steps a prepared scheduler once per process.
            num_warmup_steps=config.lr_warmup_steps * self.accelerator.num_processes,
            num_training_steps=self.max_train_steps * self.accelerator.num_processes,
        )
        return optimizer, lr_scheduler

    def evaluate(self, pipeline) -> dict[str, float]:
        """Final metrics on the test split for the model card (optional)."""
        return {}

    def condition_kwargs(self) -> dict:
        """The model-config arguments that describe the conditioning, for `build_model`."""
        if self.config.conditioning == "text":
            # Unwrapped, so that this also works once the encoder is prepared (a family's auxiliary models).
            text_encoder = self.accelerator.unwrap_model(self.text_encoder, keep_fp32_wrapper=True)
            return {"condition_type": "text", "text_embed_dim": text_encoder.config.hidden_size}
        if self.config.conditioning == "class":
            return {"condition_type": "class", "num_classes": self.num_classes}
        return {"condition_type": None}

    # ----- conditioning, shared -------------------------------------------------------------------------------------
    def build_text_components(self):
        """(tokenizer, text_encoder, trainable) for text conditioning, else (None, None, False)."""
        if self.config.conditioning != "text":
            return None, None, False
        if self.config.text_encoder_name_or_path:
            tokenizer, text_encoder = load_pretrained_text_encoder(self.config.text_encoder_name_or_path)
            return tokenizer, text_encoder, False
        captions = self.all_captions()
        if not any(captions):
            raise ValueError(
                "--conditioning text needs captions, but the data set gave none: pass --caption_column (or "
                "--label_column for class names), or train with --conditioning none."
            )
        tokenizer = build_word_tokenizer(captions)
        text_encoder = build_clip_text_encoder(
            tokenizer, hidden_size=self.config.text_hidden_size, num_layers=self.config.text_num_layers
        )
        return tokenizer, text_encoder, True

    def all_captions(self) -> list[str]:
        train = self.splits["train"]
        if self.config.streaming:  # the vocabulary comes from a bounded look at the stream
            return [example["captions"] for example in train.take(10_000)]
        return [example["captions"] for example in train]

    def count_classes(self) -> int:
        labels = [example["labels"] for example in self.splits["train"]]
        if min(labels) < 0:
            raise ValueError("--conditioning class needs class labels: pass --label_column.")
        return max(labels) + 1

    def condition_from_batch(self, batch: dict) -> torch.Tensor | None:
        """Text embeddings or class labels for a batch, with caption dropout: a fraction of examples train on the
        empty prompt (or "no class"), so one model serves both prompted and unconditional generation."""
        conditioning = self.config.conditioning
        if conditioning == "none":
            return None
        drop = torch.rand(len(batch["labels"])) < self.config.caption_dropout
        if conditioning == "class":
            return torch.where(drop.to(batch["labels"].device), -1, batch["labels"])
        captions = ["" if dropped else caption for caption, dropped in zip(batch["captions"], drop.tolist())]
        # A caller's torch.no_grad() wins: a family may need a step's condition without training the encoder on it.
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return encode_prompts(self.tokenizer, self.text_encoder, captions, device=self.accelerator.device)

    # ----- one optimisation step -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Forward, NaN check, backward, clip, step. Families with several optimizers override this."""
        losses = self.compute_loss(batch, self.condition_from_batch(batch))
        self.check_finite(losses, step)
        self.accelerator.backward(losses["loss"])
        if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses

    def check_finite(self, losses: dict[str, torch.Tensor], step: int):
        if torch.isfinite(losses["loss"]).all():
            return
        latest = self.latest_checkpoint()
        raise FloatingPointError(
            f"The {self.family} loss is {losses['loss'].item()} at step {step}: training stopped. "
            f"Last good checkpoint: {latest or 'none yet'} (kept). Lower --learning_rate or --max_grad_norm, then "
            "restart with --resume_from_checkpoint latest."
        )

    # ----- the loop --------------------------------------------------------------------------------------------------
    def train(self) -> dict:
        checks.before_training(self)  # a split without a full batch is refused; Ctrl-C writes a checkpoint
        config, accelerator = self.config, self.accelerator
        self.start_time = time.perf_counter()
        if config.report_to != "none":
            accelerator.init_trackers(f"hfgen-{self.family}", config=self.tracker_config())
        global_step = self.resume() if config.resume_from_checkpoint else 0
        steps_per_epoch = (
            None if config.streaming else math.ceil(len(self.train_dataloader) / config.gradient_accumulation_steps)
        )
        progress = tqdm(
            total=self.max_train_steps,
            initial=global_step,
            desc=f"{self.family} steps",
            disable=not accelerator.is_local_main_process,
        )
        # Each logged term is averaged over the batches that reported it (a GAN's generator loss comes every
        # n_critic-th batch only).
        running, counts, logged = {}, {}, {}
        epoch = global_step // steps_per_epoch if steps_per_epoch else 0
        self.model.train()
        while global_step < self.max_train_steps:
            self.train_dataloader.set_epoch(epoch)
            dataloader = self.train_dataloader
            if steps_per_epoch and global_step % steps_per_epoch:  # resuming mid-epoch: skip what was seen
                skip = (global_step % steps_per_epoch) * config.gradient_accumulation_steps
                dataloader = accelerator.skip_first_batches(self.train_dataloader, skip)
                dataloader.set_epoch(epoch)
            for batch in dataloader:
                with accelerator.accumulate(self.model, *([self.text_encoder] if self.train_text_encoder else [])):
                    losses = self.training_step(batch, global_step + 1)
                for name, value in losses.items():
                    running[name] = running.get(name, 0.0) + value.detach().float()
                    counts[name] = counts.get(name, 0) + 1
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                progress.update(1)
                if self.ema is not None:
                    self.ema.step(accelerator.unwrap_model(self.model).parameters())
                if global_step % config.logging_steps == 0 or global_step == self.max_train_steps:
                    logged = {k: accelerator.reduce(v / counts[k], "mean").item() for k, v in running.items()}
                    logged["lr"] = self.lr_scheduler.get_last_lr()[0]
                    accelerator.log(logged, step=global_step)
                    progress.set_postfix(loss=f"{logged['loss']:.4g}")
                    running, counts = {}, {}
                if global_step % config.checkpointing_steps == 0:
                    self.save_checkpoint(global_step)
                if config.validation_steps and global_step % config.validation_steps == 0:
                    self.validate(global_step)
                if global_step >= self.max_train_steps:
                    break
            epoch += 1
        progress.close()
        return self.finish(global_step, logged)

    # ----- checkpoints -----------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, str]]:
        return checks.checkpoints_in(self.config.output_dir)

    def latest_checkpoint(self) -> str | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save_checkpoint(self, step: int):
        """Writes the full training state (and the settings) to a temporary folder and renames it: a killed run never
        leaves a half checkpoint that `--resume_from_checkpoint latest` would pick. Old checkpoints beyond
        --checkpoints_total_limit are removed only once the new one is complete; on a full disk the new one is
        removed and the previous ones kept."""
        accelerator, output_dir = self.accelerator, self.config.output_dir
        final = os.path.join(output_dir, f"checkpoint-{step}")
        temporary = os.path.join(output_dir, f".checkpoint-{step}.tmp")
        latest = self.latest_checkpoint()
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        accelerator.wait_for_everyone()
        with checks.explain_write_errors(f"checkpoint-{step} in {output_dir}", latest, cleanup=temporary):
            accelerator.save_state(temporary)
            if accelerator.is_main_process:
                checks.save_training_config(self.config, temporary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            limit = self.config.checkpoints_total_limit
            if limit is not None:
                for _, path in self.checkpoints()[:-limit]:
                    shutil.rmtree(path)
        accelerator.wait_for_everyone()

    def resume(self) -> int:
        """Loads model, optimizer, scheduler, EMA and RNG states; returns the step to continue from. Every state file
        is checked first, and so are the model settings; a changed --learning_rate applies from the resumed step."""
        path = self.config.resume_from_checkpoint
        if path == "latest":
            path = self.latest_checkpoint()
            if path is None:
                self.accelerator.print(f"No checkpoint in {self.config.output_dir}: starting a new run.")
                return 0
        match = CHECKPOINT_PATTERN.match(os.path.basename(os.path.normpath(path)))
        if not os.path.isdir(path) or match is None:
            raise FileNotFoundError(
                f"--resume_from_checkpoint {path!r} is not a checkpoint-<step> folder. Use 'latest' or one of: "
                f"{[p for _, p in self.checkpoints()] or 'none in ' + self.config.output_dir}."
            )
        step = int(match.group(1))
        if step > self.max_train_steps:
            raise ValueError(
                f"{path} is at step {step}, past the {self.max_train_steps} steps this run is set to train: raise "
                "--max_train_steps (or --num_epochs) to continue it."
            )
        checks.compare_training_config(self.config, path, print_fn=self.accelerator.print)
        checks.check_checkpoint_files(self.accelerator, path)
        self.accelerator.print(f"Resuming from {path}")
        learning_rates = checks.scheduled_learning_rates(self.accelerator)
        self.accelerator.load_state(path)
        checks.apply_learning_rates(self.accelerator, learning_rates, print_fn=self.accelerator.print)
        return step

    # ----- validation and the end of the run ------------------------------------------------------------------------
    def pipeline(self):
        """The pipeline of the current weights (EMA weights when --use_ema), on the training device."""
        model = self.accelerator.unwrap_model(self.model)
        text_encoder = self.accelerator.unwrap_model(self.text_encoder) if self.text_encoder is not None else None
        return self.build_pipeline(model, self.tokenizer, text_encoder)

    def validation_prompts(self) -> list[str] | None:
        if self.config.conditioning != "text":
            return None
        if self.config.validation_prompts:
            return self.config.validation_prompts
        test = self.splits["test"]
        captions = [
            e["captions"]
            for e in (test.take(200) if self.config.streaming else test.select(range(min(200, len(test)))))
        ]
        return sorted(set(captions))[:4] or None

    @torch.no_grad()
    def sample_grid(self, pipeline, path: str):
        """Writes a grid of validation samples (fixed seed, so grids are comparable across steps) and returns it."""
        prompts, n = self.validation_prompts(), self.config.num_validation_images
        generator = torch.Generator().manual_seed(self.config.seed)  # never reseed the global RNG mid-run
        if prompts:  # one row per prompt
            per_prompt = max(1, n // len(prompts))
            images = pipeline(prompt=prompts, num_images_per_prompt=per_prompt, generator=generator).images
            grid = image_grid(images, cols=per_prompt)
        else:
            grid = image_grid(pipeline(batch_size=n, generator=generator).images)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        grid.save(path)
        return grid

    def validate(self, step: int):
        if not self.accelerator.is_main_process:
            return
        self.model.eval()
        pipeline = self.pipeline()
        grid = self.sample_grid(pipeline, os.path.join(self.config.output_dir, "samples", f"step-{step:06d}.png"))
        if self.config.validation_fid:
            self.accelerator.log({"validation_fid": self.validation_fid(pipeline)}, step=step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        self.model.train()

    @torch.no_grad()
    def validation_fid(self, pipeline) -> float:
        """FID of `validation_fid_samples` fixed-seed samples against the training images, in the features of the
        data set's domain classifier (hfgen.metrics); the real statistics are computed once per run."""
        if not hasattr(self, "fid_reference"):
            extractor = load_feature_extractor(self.config.dataset_name)
            loader = DataLoader(self.splits["train"], batch_size=500, collate_fn=collate_fn)
            statistics = GaussianStatistics()
            for batch in loader:
                statistics.update(extractor.features(batch["pixel_values"]))
            self.fid_reference = (extractor, statistics)
        extractor, real = self.fid_reference
        fake, _ = generate_images(pipeline, self.config.validation_fid_samples, seed=self.config.seed)
        return fid(real, extractor.features(fake))

    def finish(self, global_step: int, logged: dict) -> dict:
        """Saves a last checkpoint, then the pipeline (EMA weights if kept), samples, model card; pushes if asked."""
        checks.restore_interrupt_handler()
        accelerator, config = self.accelerator, self.config
        if global_step % config.checkpointing_steps != 0:
            self.save_checkpoint(global_step)
        # Every rank reports a checksum of its weights: equal sums show that the ranks really trained together.
        model = accelerator.unwrap_model(self.model)
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        checksums = accelerator.gather(checksum.to(accelerator.device)).tolist()
        summary = {}
        if accelerator.is_main_process:
            if self.ema is not None:
                self.ema.copy_to(model.parameters())
            model.eval()
            pipeline = self.pipeline()
            # The pipeline goes to a temporary folder first: a full disk leaves the output folder as it was.
            writing = checks.explain_write_errors(f"the final model in {config.output_dir}", self.latest_checkpoint())
            with writing:
                checks.save_pipeline(pipeline, config.output_dir)
                self.sample_grid(pipeline, os.path.join(config.output_dir, "samples", "final.png"))
            metrics = {f"train_{k}": v for k, v in logged.items() if k != "lr"}
            metrics["train_wall_seconds"] = time.perf_counter() - self.start_time  # this session's, if resumed
            metrics.update(self.evaluate(pipeline))
            summary = {
                "family": self.family,
                "steps": global_step,
                "world_size": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
                "rank_weight_checksums": checksums,
                "metrics": metrics,
            }
            repo_id = hub.repo_id_for(config.output_dir, config.hub_model_id)
            with writing:
                with open(os.path.join(config.output_dir, "train_summary.json"), "w") as f:
                    json.dump(summary, f, indent=2)
                hub.write_model_card(
                    config.output_dir,
                    family=self.family,
                    pipeline_class=type(pipeline).__name__,
                    pipeline_tag="text-to-image" if self.tokenizer is not None else self.pipeline_tag_unconditional,
                    dataset=config.dataset_name or config.train_data_dir,
                    settings={**self.tracker_config(), "command": " ".join(sys.argv)},
                    metrics=metrics,
                    sample_grid="samples/final.png",
                    repo_id=repo_id if config.push_to_hub else None,
                )
            if config.push_to_hub:
                summary["commit_url"] = hub.push_to_hub(config.output_dir, repo_id, token=config.hub_token)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return summary

    def tracker_config(self) -> dict:
        """The settings as flat scalars (what trackers and the model card can show)."""
        values = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
        values = {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in values.items()}
        return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}
