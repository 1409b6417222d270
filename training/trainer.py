"""The one training loop every hfgen family shares.

Nothing in this file knows about any family. A family subclasses [`Trainer`] and writes:
- its config fields (a `TrainingConfig` subclass) and `build_model()`;
- `compute_loss(batch, condition) -> {"loss": ..., named terms}`, where `condition` is a
  [`~hfgen.conditioning.Condition`] (or None for an unconditional run);
- `build_pipeline(model, tokenizer=None, text_encoder=None, **frozen_components)`;
and, only when it needs them:
- `build_frozen_components()`: frozen first stages (a latent model's autoencoder), loaded before `build_model` with
  [`load_frozen_component`]; `preprocess_batch(batch)`: images -> latents or codes, once per batch, without gradients;
- `prepare_auxiliary_models()`: networks trained besides the model (a GAN's discriminator), with their own
  optimizers from `build_optimizer`; and `training_step` when it alternates several optimizers (each step through
  `optimizer_step`).

The loop owns: data loading (per-epoch augmentation), conditioning (caption dropout to the null condition),
Accelerate (processes, mixed precision, gradient accumulation), the optimizer and learning-rate schedule, EMA (also at
validation), logging, atomic checkpoints and exact resume, NaN detection, validation grids through the pipeline's
`generate`, the final save with a model card, and the push to the Hub.
"""

import contextlib
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
from transformers import CLIPTextModel

import hfgen
from hfgen import hub
from hfgen.conditioning import Condition, ConditionEncoder
from hfgen.data import EMBEDDED_DATASETS, collate_fn, load_image_dataset
from hfgen.metrics.adherence import ATTRIBUTES as ADHERENCE_ATTRIBUTES
from hfgen.metrics.adherence import format_adherence, prompt_adherence
from hfgen.metrics.adherence import summary as adherence_summary
from hfgen.metrics.evaluate import held_out_split
from hfgen.metrics.features import load_feature_extractor, shipped_extractors
from hfgen.metrics.sample_quality import GaussianStatistics, fid
from hfgen.text import build_clip_text_encoder, build_word_tokenizer, load_pretrained_text_encoder

CHECKPOINT_PATTERN = checks.CHECKPOINT_PATTERN
# Where torch has a fused AdamW kernel that hfgen uses (a parameter elsewhere gets torch's default implementation).
FUSED_ADAM_DEVICES = ("cpu", "cuda")
# What a transformers config records about its saving, not about the model: left out when --init_from compares configs.
TRANSFORMERS_BOOKKEEPING = ("architectures", "transformers_version", "dtype")


@dataclass
class TrainingConfig:
    """Settings every family shares; flag names follow diffusers' training examples."""

    # ----- run -----
    family: str | None = field(default=None, metadata={"help": "Model family to train (required): vae, gan, ..."})
    recipe: str | None = field(default=None, metadata={"help": "YAML recipe with defaults; flags override it."})
    output_dir: str = field(default="out/run", metadata={"help": "Where checkpoints, samples and the model go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a folder holding another run (its checkpoints are deleted)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for weights, data order, augmentation and noise."})

    # ----- data -----
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub id, a `save_to_disk` folder, or an embedded set: digits (default), shapes."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config of a Hub data set."})
    train_data_dir: str | None = field(default=None, metadata={"help": "An imagefolder (metadata.jsonl captions)."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str | None = field(
        default=None, metadata={"help": "Column holding captions (`none`: no captions, over a recipe's column)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Class labels; become captions by name (`none`: no labels)."}
    )
    resolution: int | None = field(default=None, metadata={"help": "Resize and crop images to this size."})
    center_crop: bool = field(default=False, metadata={"help": "Center crop (default: random crop in training)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips (training split only)."})
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
    split_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of that held-out split, apart from --seed: runs with any --seed hold out the same images, "
            "those that hfgen evaluate and the benchmarks score (split seed 0)."
        },
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "DataLoader worker processes decoding images (0: in the training process)."}
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
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Fine-tune: start from the weights of a pipeline this family saved (a folder or Hub id) built "
            "with the same model flags; its tokenizer and text encoder too when this run trains its own. A fresh "
            "optimizer, schedule and step count (a GAN's discriminator starts afresh); to continue a run, "
            "--resume_from_checkpoint."
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "Log losses every N steps."})
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all or none."})
    validation_steps: int | None = field(default=None, metadata={"help": "Write a sample grid every N steps."})
    validation_prompts: list[str] | None = field(default=None, metadata={"help": "Prompts for validation grids."})
    num_validation_images: int = field(default=16, metadata={"help": "Images in each validation grid."})
    validation_fid: bool = field(
        default=False, metadata={"help": "Also log FID (hfgen.metrics domain features) at each validation."}
    )
    validation_fid_samples: int = field(default=500, metadata={"help": "Generated images for the validation FID."})
    validation_adherence: bool = field(
        default=False,
        metadata={
            "help": "Also log prompt adherence (hfgen.metrics.prompt_adherence: seen and paraphrase prompts) at each "
            "validation; text conditioning on digits, mnist or shapes."
        },
    )
    validation_evaluate: bool = field(
        default=False,
        metadata={
            "help": "Also log the family's held-out metrics (those of the final summary and model card: a flow's or "
            "autoregressive model's test bits/dim, a VAE's IWAE bound, ...) at each validation, to see over-fitting."
        },
    )
    adherence_samples: int = field(
        default=100, metadata={"help": "Images per prompt group for validation and final prompt adherence."}
    )

    # ----- hub -----
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final pipeline and card to the Hub."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id (default: output_dir's name)."})
    hub_token: str | None = field(default=None, metadata={"help": "Token (default: HF_TOKEN / hf auth login)."})

    # The valid range of each numeric flag, checked in __post_init__ ("[1, inf)": at least 1; None passes).
    ranges: ClassVar[dict[str, str]] = {
        "seed": "[0, 4294967295]",  # what numpy's seeding accepts
        "split_seed": "[0, 4294967295]",
        "resolution": "[1, 1024]",
        "max_train_samples": "[1, inf)",
        "dataloader_num_workers": "[0, 64]",
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
        "adherence_samples": "[10, 4096]",
    }
    # Settings that shape the model: resuming a checkpoint with other values is refused (see checks.py).
    model_settings: ClassVar[tuple[str, ...]] = (
        "family", "conditioning", "resolution", "image_mode", "text_encoder_name_or_path", "text_hidden_size",
        "text_num_layers", "init_from",  # --init_from's tokenizer replaces one built from the captions
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
        # `--caption_column none` unsets a recipe's column, so a recipe can be pointed at data without captions.
        if self.caption_column is not None and self.caption_column.lower() == "none":
            self.caption_column = None
        if self.label_column is not None and self.label_column.lower() == "none":
            self.label_column = None
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
        if self.validation_evaluate and not self.validation_steps:
            raise ValueError("--validation_evaluate needs --validation_steps (how often to measure).")
        if self.validation_adherence:
            if not self.validation_steps:
                raise ValueError("--validation_adherence needs --validation_steps (how often to measure it).")
            if self.conditioning != "text":
                raise ValueError(
                    f"--validation_adherence measures how text-conditioned models follow their prompts, but "
                    f"--conditioning is {self.conditioning!r}: train with --conditioning text, or drop the flag."
                )
            if self.dataset_name not in ADHERENCE_ATTRIBUTES:
                raise ValueError(
                    "--validation_adherence needs a data set with an adherence judge "
                    f"({', '.join(ADHERENCE_ATTRIBUTES)}), not {self.dataset_name or self.train_data_dir!r}: drop "
                    "the flag."
                )
            size = load_feature_extractor(self.dataset_name).config.sample_size
            if self.resolution not in (None, size):
                raise ValueError(
                    f"--validation_adherence judges {self.dataset_name} samples with a classifier of {size}x{size} "
                    f"images, but --resolution is {self.resolution}: train at {size} (the default), or drop the flag."
                )

    @property
    def measures_adherence(self) -> bool:
        """Whether the final metrics include prompt adherence: text conditioning on digits, mnist or shapes at the
        data set's own size (the size its shipped classifier judges)."""
        if self.conditioning != "text" or self.dataset_name not in ADHERENCE_ATTRIBUTES:
            return False
        return self.resolution in (None, load_feature_extractor(self.dataset_name).config.sample_size)


def load_frozen_component(name_or_path: str, **kwargs) -> torch.nn.Module:
    """A trained model to build on, from a local folder or a Hub id: an hfgen pipeline (its conditioned model, e.g. a
    `VAEPipeline`'s `vae`), an hfgen model folder, or a diffusers model such as `AutoencoderKL` or `VQModel`. Loaded
    from safetensors only."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    def config_file(name: str) -> str | None:
        if os.path.isdir(name_or_path):
            path = os.path.join(name_or_path, name)
            return path if os.path.isfile(path) else None
        try:
            return hf_hub_download(name_or_path, name, **kwargs)
        except EntryNotFoundError:
            return None
        except RepositoryNotFoundError as error:
            raise OSError(f"No model at {name_or_path!r}: not a local folder and not a Hub repo.") from error
        except HFValidationError as error:  # e.g. a mistyped local path, which cannot be a Hub id either
            raise OSError(f"No model at {name_or_path!r}: no such local folder, and not a Hub repo id.") from error

    if config_file("model_index.json"):
        return hfgen.load_pipeline(name_or_path, **kwargs).conditioned_model
    path = config_file("config.json")
    if path is None:
        raise OSError(
            f"{name_or_path!r} holds neither a pipeline (model_index.json) nor a model (config.json): give the folder "
            "or Hub id of a saved hfgen pipeline or model, or of a diffusers AutoencoderKL / VQModel."
        )
    with open(path) as f:
        class_name = json.load(f).get("_class_name")
    import diffusers

    model_class = getattr(hfgen, class_name or "", None) or getattr(diffusers, class_name or "", None)
    if not (isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin)):
        raise ValueError(
            f"{path} names the model class {class_name!r}, which is neither an hfgen nor a diffusers model."
        )
    return model_class.from_pretrained(name_or_path, use_safetensors=True, **kwargs)


class Trainer:
    """The shared Accelerate loop. Subclasses set `family` and `config_class` and implement `build_model`,
    `compute_loss` and `build_pipeline` (see the module docstring for the optional hooks)."""

    family: str = ""
    config_class = TrainingConfig
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
            split_seed=config.split_seed,
            streaming=config.streaming,
            max_train_samples=config.max_train_samples,
            skip_bad_images=config.skip_bad_images,
        )
        self.example_batch = collate_fn([next(iter(self.splits["train"]))])  # one example, for shapes
        self.image_shape = tuple(self.example_batch["pixel_values"].shape[1:])  # (c, h, w)

        # 2. Conditioning components, frozen first stages, then the family's model (from --init_from's weights).
        self.init_pipeline = self.load_init_pipeline() if config.init_from else None
        self.tokenizer, self.text_encoder, self.train_text_encoder = self.build_text_components()
        self.num_classes = self.count_classes() if config.conditioning == "class" else None
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.mixed_precision, torch.float32)
        self.frozen_components = {}
        for name, module in self.build_frozen_components().items():
            # Frozen: no gradients, eval mode (no dropout, fixed norms), in the compute dtype; never prepared, so it
            # stays out of the optimizer and the checkpoints, and goes into the final pipeline as it is.
            module.requires_grad_(False).eval()
            module.to(self.accelerator.device)
            if self.weight_dtype != torch.float32:
                module.to(dtype=self.weight_dtype)
            self.frozen_components[name] = module
        self.model = self.build_model()
        if self.init_pipeline is not None:
            self.initialise_from_pipeline(self.model)
            self.init_pipeline = None  # the weights are copied; free the saved pipeline

        # 3. Data loader, optimizer, schedule, and everything through Accelerate.
        self.train_dataloader = DataLoader(
            self.splits["train"],
            batch_size=config.train_batch_size,
            shuffle=not config.streaming,
            collate_fn=collate_fn,
            drop_last=True,
            num_workers=config.dataloader_num_workers,
            # Each new iterator draws a seed from this generator, not from the global RNG that a resumed run restores.
            generator=torch.Generator().manual_seed(config.seed),
        )
        if config.max_train_steps is not None:
            self.max_train_steps = config.max_train_steps
        else:
            batches = len(self.train_dataloader) // self.accelerator.num_processes
            self.max_train_steps = config.num_epochs * math.ceil(batches / config.gradient_accumulation_steps)
        parameters = list(self.model.parameters())
        if self.train_text_encoder and self.text_encoder_learns_with_model():
            parameters += list(self.text_encoder.parameters())
        self.optimizer, self.lr_scheduler = self.build_optimizer(parameters)
        self.model, self.optimizer, self.train_dataloader, self.lr_scheduler = self.accelerator.prepare(
            self.model, self.optimizer, self.train_dataloader, self.lr_scheduler
        )
        if self.train_text_encoder:
            self.text_encoder = self.accelerator.prepare(self.text_encoder)
        elif self.text_encoder is not None:
            self.text_encoder.to(self.accelerator.device)
        self.condition_encoder = ConditionEncoder(
            None if config.conditioning == "none" else config.conditioning,
            self.tokenizer,
            self.text_encoder,
            self.num_classes,
        )
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

    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        """The family's loss on one batch: a dict with "loss" (to minimise) and any named terms to log."""
        raise NotImplementedError

    def build_pipeline(self, model, tokenizer=None, text_encoder=None, **frozen_components):
        """The family's pipeline from the trained model, the text components and the frozen stages."""
        raise NotImplementedError

    def build_frozen_components(self) -> dict[str, torch.nn.Module]:
        """Frozen stages the model builds on, by pipeline component name (e.g. {"vae": load_frozen_component(path)}).
        They run in eval mode without gradients, in the mixed-precision dtype, outside the optimizer and the
        checkpoints, and are saved into the final pipeline. Runs before `build_model`."""
        return {}

    def preprocess_batch(self, batch: dict) -> dict:
        """What the model trains on, from a batch (e.g. images -> a frozen autoencoder's latents). Called once per
        batch, under `torch.no_grad()`; `self.example_batch` gives the shapes to `build_model`."""
        return batch

    def text_encoder_learns_with_model(self) -> bool:
        """Whether a jointly trained text encoder is in the model's optimizer (a GAN may give it to the
        discriminator's instead, see [`prepare_auxiliary_models`])."""
        return True

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
            # torch's fused AdamW updates every parameter in one kernel; its default on CPU is a Python loop over the
            # parameters, ~5x slower a step for a small UNet (benchmarks/README, throughput). Same update to rounding.
            fused=all(p.is_floating_point() and p.device.type in FUSED_ADAM_DEVICES for p in parameters),
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

    def test_images(self, max_images: int) -> torch.Tensor | None:
        """The first `max_images` held-out images as (n, c, h, w) in [0, 1] (as pipelines take images), or None when
        the test split is empty: what a family's `evaluate` scores."""
        test = self.splits["test"]
        count = max_images if self.config.streaming else min(max_images, len(test))
        examples = list(test.take(count)) if self.config.streaming else [test[i] for i in range(count)]
        return (torch.stack([e["pixel_values"] for e in examples]) + 1) / 2 if examples else None

    def condition_kwargs(self) -> dict:
        """The model-config arguments that describe the conditioning, for `build_model`."""
        if self.config.conditioning == "text":
            # Unwrapped, so that this also works once the encoder is prepared (a family's auxiliary models).
            text_encoder = self.accelerator.unwrap_model(self.text_encoder, keep_fp32_wrapper=True)
            return {"condition_type": "text", "text_embed_dim": text_encoder.config.hidden_size}
        if self.config.conditioning == "class":
            return {"condition_type": "class", "num_classes": self.num_classes}
        return {"condition_type": None}

    # ----- fine-tuning (--init_from), shared ------------------------------------------------------------------------
    def load_init_pipeline(self):
        """The saved pipeline `--init_from` names (safetensors only), refused when it trained on this run's test
        images: the same data set with another held-out split."""
        config = self.config
        dataset = config.dataset_name or config.train_data_dir
        saved = held_out_split(config.init_from, dataset)
        if saved is not None and saved != {"test_size": config.test_size, "split_seed": config.split_seed}:
            raise ValueError(
                f"--init_from {config.init_from} trained on {dataset} holding out test_size={saved['test_size']}, "
                f"split_seed={saved['split_seed']}; this run holds out test_size={config.test_size}, split_seed="
                f"{config.split_seed}, images that model trained on, so its test figures would be optimistic. "
                f"Pass --test_size {saved['test_size']} --split_seed {saved['split_seed']}."
            )
        try:
            return hfgen.load_pipeline(config.init_from)
        except OSError as error:
            raise OSError(
                f"--init_from {config.init_from}: no saved pipeline there ({error}). Give the folder or Hub id of a "
                "pipeline the trainer saved (it holds model_index.json); a checkpoint-N folder continues its run "
                "with --resume_from_checkpoint instead."
            ) from error

    def initialise_from_pipeline(self, model: torch.nn.Module):
        """Copies the saved pipeline's trained model (its `model_component`) into `model`, which the run's flags
        built: the same class and config, or a ValueError that lists what differs."""
        saved = self.init_pipeline.conditioned_model
        source = f"--init_from {self.config.init_from}"
        if type(saved) is not type(model):
            raise ValueError(
                f"{source} holds a {type(self.init_pipeline).__name__} whose model is a {type(saved).__name__}; "
                f"--family {self.family} with these flags builds a {type(model).__name__}. Give a pipeline of this "
                "family."
            )

        def settings(config) -> dict:
            if not isinstance(config, dict):  # a transformers config (the GPT-2 prior), without its bookkeeping
                config = {k: v for k, v in config.to_dict().items() if k not in TRANSFORMERS_BOOKKEEPING}
            return {key: value for key, value in config.items() if not key.startswith("_")}

        def plain(value):  # a config read from JSON has lists where a freshly built one may have tuples
            return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value

        saved_settings, settings_here = settings(saved.config), settings(model.config)
        keys = sorted({*saved_settings, *settings_here})
        differ = [key for key in keys if plain(saved_settings.get(key)) != plain(settings_here.get(key))]
        if differ:
            listed = "; ".join(
                f"{key}: saved {saved_settings.get(key)!r}, here {settings_here.get(key)!r}" for key in differ
            )
            raise ValueError(
                f"{source}: its {self.init_pipeline.model_component} was built otherwise than this run's model "
                f"({listed}). Pass the saved run's model flags (its README lists its settings)."
            )
        model.load_state_dict(saved.state_dict())

    def saved_text_components(self):
        """--init_from's tokenizer and text encoder, for a run that trains its own: the model's text input was
        learnt through them. Refused when the run's text flags ask for another encoder."""
        tokenizer = getattr(self.init_pipeline, "tokenizer", None)
        text_encoder = getattr(self.init_pipeline, "text_encoder", None)
        if text_encoder is None:
            return None
        if not isinstance(text_encoder, CLIPTextModel):
            raise ValueError(
                f"--init_from {self.config.init_from} has a pretrained {type(text_encoder).__name__} text encoder, "
                "which its run kept frozen: name it again with --text_encoder_name_or_path."
            )
        wanted = {"hidden_size": self.config.text_hidden_size, "num_hidden_layers": self.config.text_num_layers}
        saved = {key: getattr(text_encoder.config, key, None) for key in wanted}
        if saved != wanted:
            raise ValueError(
                f"--init_from {self.config.init_from} has a text encoder of {saved['hidden_size']} wide, "
                f"{saved['num_hidden_layers']} layers; this run asks for --text_hidden_size "
                f"{wanted['hidden_size']} --text_num_layers {wanted['num_hidden_layers']}. Pass the saved values."
            )
        # The saved tokenizer knows the words of the captions it was built from; others read as [UNK].
        unknown = sorted(
            {word for caption in self.all_captions() for word in caption.lower().split()} - set(tokenizer.get_vocab())
        )
        if unknown:
            self.accelerator.print(
                f"Warning: {len(unknown)} words of these captions are not in the vocabulary of --init_from's "
                f"tokenizer and read as [UNK], one token for all of them: {', '.join(unknown[:10])}"
                f"{', ...' * (len(unknown) > 10)}."
            )
        return tokenizer, text_encoder.requires_grad_(True).train()  # loaded in eval mode; it trains on here

    # ----- conditioning, shared -------------------------------------------------------------------------------------
    def build_text_components(self):
        """(tokenizer, text_encoder, trainable) for text conditioning, else (None, None, False)."""
        if self.config.conditioning != "text":
            return None, None, False
        if self.config.text_encoder_name_or_path:
            tokenizer, text_encoder = load_pretrained_text_encoder(self.config.text_encoder_name_or_path)
            return tokenizer, text_encoder, False
        saved = self.saved_text_components() if self.init_pipeline is not None else None
        if saved is not None:
            return (*saved, True)
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
        # Every wording of every caption (a row may hold several), read from the caption column alone; a stream gives
        # the vocabulary from a bounded look.
        return self.splits.every_caption("train", limit=10_000 if self.config.streaming else None)

    def count_classes(self) -> int:
        labels = self.splits.captions_and_labels("train", limit=10_000 if self.config.streaming else None)[1]
        if not labels or min(labels) < 0:
            raise ValueError(
                "Class labels are needed (--conditioning class, a label loss), but the data set gave none: pass "
                "--label_column."
            )
        return max(labels) + 1

    def condition_from_batch(self, batch: dict, drop: torch.Tensor | None = None) -> Condition | None:
        """The batch's [`Condition`] (its captions or class labels), with caption dropout: a fraction of examples
        (or those `drop` marks) train on the null condition (empty prompt, null class), so one model serves prompted
        and unconditional generation, and classifier-free guidance has the null condition to extrapolate from."""
        conditioning = self.config.conditioning
        if conditioning == "none":
            return None
        if drop is None:
            drop = torch.rand(len(batch["labels"])) < self.config.caption_dropout
        # A caller's torch.no_grad() wins: a family may need a step's condition without training the encoder on it.
        with torch.set_grad_enabled(self.train_text_encoder and torch.is_grad_enabled()):
            return self.condition_encoder(
                prompts=batch["captions"] if conditioning == "text" else None,
                class_labels=batch["labels"] if conditioning == "class" else None,
                drop=drop,
                device=self.accelerator.device,
            )

    # ----- one optimisation step -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """Forward, NaN check, backward, one optimizer step. Families with several optimizers override this."""
        losses = self.compute_loss(batch, self.condition_from_batch(batch))
        self.check_finite(losses, step)
        self.accelerator.backward(losses["loss"])
        self.optimizer_step(self.optimizer, self.lr_scheduler)
        return losses

    def optimizer_step(self, optimizer, lr_scheduler=None):
        """Clip the gradients of every parameter group (the model's and a trained text encoder's) when they are
        synchronised, step, advance the schedule, zero the gradients: the one optimizer step of every family."""
        if self.accelerator.sync_gradients and self.config.max_grad_norm > 0:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            self.accelerator.clip_grad_norm_(parameters, self.config.max_grad_norm)
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

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
            self.splits.set_epoch(epoch)
            dataloader = self.train_dataloader
            if steps_per_epoch and global_step % steps_per_epoch:  # resuming mid-epoch: skip what was seen
                skip = (global_step % steps_per_epoch) * config.gradient_accumulation_steps
                dataloader = accelerator.skip_first_batches(self.train_dataloader, skip)
                dataloader.set_epoch(epoch)
            for batch in dataloader:
                with torch.no_grad():
                    batch = self.preprocess_batch(batch)
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
        try:
            self.accelerator.load_state(path)
        except (RuntimeError, ValueError, KeyError) as error:  # torch's size and key mismatches, Accelerate's counts
            raise ValueError(
                f"{path} does not fit this run's model or optimizer ({type(error).__name__}: {str(error)[:300]}). It "
                f"was written with other model settings (compare its {checks.TRAINING_CONFIG_NAME}, when it has one) "
                "or by another hfgen version. Resume with the settings it was trained with, or start a new run in "
                "another --output_dir."
            ) from error
        checks.apply_learning_rates(self.accelerator, learning_rates, print_fn=self.accelerator.print)
        return step

    # ----- validation and the end of the run ------------------------------------------------------------------------
    def pipeline(self):
        """The pipeline of the model's current weights, on the training device (see `ema_weights`)."""
        unwrap = self.accelerator.unwrap_model
        return self.build_pipeline(
            unwrap(self.model),
            tokenizer=self.tokenizer,
            text_encoder=unwrap(self.text_encoder) if self.text_encoder is not None else None,
            **self.frozen_components,
        )

    @contextlib.contextmanager
    def ema_weights(self):
        """With --use_ema, the EMA weights are in the model inside the block and the trained ones come back after it
        (diffusers' store / copy_to / restore); otherwise nothing changes."""
        if self.ema is None:
            yield
            return
        parameters = list(self.accelerator.unwrap_model(self.model).parameters())
        self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            self.ema.restore(parameters)

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
        """Writes a grid of validation samples (fixed seed, so grids are comparable across steps; one row per
        validation prompt or per class) through the pipeline's `generate`, with its validation defaults."""
        prompts, n, seed = self.validation_prompts(), self.config.num_validation_images, self.config.seed
        # `generate` seeds its own generator: the global RNG, which resume restores, is never touched.
        if prompts:
            per_row = max(1, n // len(prompts))
            grid = image_grid(pipeline.generate(per_row, prompt=prompts, seed=seed, output_type="pil"), cols=per_row)
        elif self.num_classes:
            classes = list(range(min(4, self.num_classes)))
            per_row = max(1, n // len(classes))
            images = pipeline.generate(per_row, class_labels=classes, seed=seed, output_type="pil")
            grid = image_grid(images, cols=per_row)
        else:
            grid = image_grid(pipeline.generate(n, seed=seed, output_type="pil"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        grid.save(path)
        return grid

    def validate(self, step: int):
        if not self.accelerator.is_main_process:
            return
        self.model.eval()
        with self.ema_weights():
            pipeline = self.pipeline()
            path = os.path.join(self.config.output_dir, "samples", f"step-{step:06d}.png")
            grid = self.sample_grid(pipeline, path)
            if self.config.validation_fid:
                self.accelerator.log({"validation_fid": self.validation_fid(pipeline)}, step=step)
            if self.config.validation_adherence:
                adherence = adherence_summary(self.adherence(pipeline))
                self.accelerator.log({f"validation_{k}": v for k, v in adherence.items()}, step=step)
            if self.config.validation_evaluate:
                metrics = {f"validation_{k}": v for k, v in self.evaluate(pipeline).items()}
                self.accelerator.log(metrics, step=step)
                self.accelerator.print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
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
        fake = pipeline.generate(self.config.validation_fid_samples, seed=self.config.seed) * 2 - 1  # [-1, 1]
        return fid(real, extractor.features(fake))

    @torch.no_grad()
    def adherence(self, pipeline) -> dict:
        """Prompt adherence (hfgen.metrics) of `adherence_samples` fixed-seed samples per prompt group (the training
        captions' template and paraphrases never seen in training), judged by the data set's shipped classifier."""
        return prompt_adherence(
            pipeline, self.config.dataset_name, num_samples=self.config.adherence_samples, seed=self.config.seed
        )

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
            adherence = self.adherence(pipeline) if config.measures_adherence else None
            if adherence is not None:
                metrics.update(adherence_summary(adherence))
            summary = {
                "family": self.family,
                "steps": global_step,
                "world_size": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type),
                "rank_weight_checksums": checksums,
                # What was held out, so that `hfgen evaluate` can tell whether its test images are unseen.
                "held_out": {
                    "dataset": config.dataset_name or config.train_data_dir,
                    **(self.splits.drawn_split or {}),
                },
                "initialised_from": config.init_from,
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
                    adherence=format_adherence(adherence) if adherence is not None else None,
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
