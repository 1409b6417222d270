"""Training the VAE family (VAE, beta-VAE, conditional VAE): its settings, its model, its loss.

accelerate launch training/train.py --family vae --dataset_name digits --output_dir out/vae-digits
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from hfgen.pipelines.pipeline_vae import VAEPipeline
from hfgen.training.trainer import Trainer, TrainingConfig

from hfgen.conditioning import Condition
from hfgen.data import grey_levels
from hfgen.models.modeling_vae import VAEModel


@dataclass
class VAETrainingConfig(TrainingConfig):
    latent_dim: int = field(default=16, metadata={"help": "Size of the latent z."})
    latent_channels: int | None = field(
        default=None,
        metadata={
            "help": "A spatial latent (latent_channels, s / 2^k, s / 2^k) instead of a vector: an autoencoder for "
            "latent diffusion's --vae_name_or_path (unconditional; latent_dim is then unused)."
        },
    )
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64], metadata={"help": "Widths per resolution."}
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per resolution."})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups."})
    likelihood: str = field(default="discretized", metadata={"help": "gaussian, bernoulli or discretized."})
    num_bins: int | None = field(
        default=None,
        metadata={
            "help": "Levels of the data; default: hfgen.data.grey_levels (digits 17, mnist_binarized 2, else 256)."
        },
    )
    beta: float = field(default=1.0, metadata={"help": "KL weight: 1 is the ELBO, >1 a beta-VAE."})
    condition_dim: int = field(default=32, metadata={"help": "Size the condition is projected to."})
    eval_num_samples: int = field(default=50, metadata={"help": "K of the IWAE bound reported on the test split."})
    eval_max_images: int = field(default=256, metadata={"help": "Test images used for the final IWAE bound."})

    ranges: ClassVar[dict[str, str]] = {
        "latent_dim": "[1, 4096]",
        "latent_channels": "[1, 4096]",
        "block_out_channels": "[1, 4096]",
        "layers_per_block": "[1, 16]",
        "norm_num_groups": "[1, 1024]",
        "num_bins": "[2, 65536]",
        "beta": "[0, inf)",
        "condition_dim": "[1, 4096]",
        "eval_num_samples": "[1, 10000]",
        "eval_max_images": "[0, inf)",
    }
    model_settings: ClassVar[tuple[str, ...]] = (
        "latent_dim", "latent_channels", "block_out_channels", "layers_per_block", "norm_num_groups", "likelihood",
        "num_bins", "beta", "condition_dim",
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if self.num_bins is None:
            self.num_bins = grey_levels(self.dataset_name)
        if self.latent_channels is not None and self.conditioning != "none":
            raise ValueError(
                f"--latent_channels trains an unconditional autoencoder (latent diffusion's first stage; its UNet "
                f"takes the condition), but --conditioning is {self.conditioning!r}: add --conditioning none."
            )


class VAETrainer(Trainer):
    family = "vae"
    config_class = VAETrainingConfig

    def build_model(self) -> VAEModel:
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"The VAE takes square images, got {height}x{width}: pass --resolution.")
        config = self.config
        return VAEModel(
            sample_size=height,
            in_channels=channels,
            latent_dim=config.latent_dim,
            latent_channels=config.latent_channels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups,
            likelihood=config.likelihood,
            num_bins=config.num_bins,
            beta=config.beta,
            condition_dim=config.condition_dim,
            **self.condition_kwargs(),
        )

    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        output = self.model(batch["pixel_values"], condition)
        num_dims = batch["pixel_values"][0].numel()
        return {
            "loss": output.loss,
            "reconstruction_loss": output.reconstruction_loss,
            "kl": output.kl,
            # The negative ELBO in bits per dimension, comparable across image sizes.
            "elbo_bits_per_dim": (output.reconstruction_loss + output.kl).detach() / (num_dims * math.log(2)),
        }

    def build_pipeline(self, model, tokenizer=None, text_encoder=None) -> VAEPipeline:
        return VAEPipeline(vae=model, tokenizer=tokenizer, text_encoder=text_encoder)

    @torch.no_grad()
    def evaluate(self, pipeline: VAEPipeline) -> dict[str, float]:
        """IWAE bound on held-out images (unconditional: the empty prompt), in bits/dim."""
        images = self.test_images(self.config.eval_max_images)
        if images is None:
            return {}
        prompt = [""] * len(images) if pipeline.tokenizer is not None else None
        likelihood = pipeline.log_likelihood(
            images,
            num_samples=self.config.eval_num_samples,
            prompt=prompt,
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return {f"test_iwae{self.config.eval_num_samples}_bits_per_dim": likelihood.bits_per_dim.mean().item()}
