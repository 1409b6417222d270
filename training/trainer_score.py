"""Training score models: a diffusers UNet as a noise-conditional score network, by denoising score matching.

    accelerate launch training/train.py --recipe training/recipes/score_digits.yaml
    accelerate launch training/train.py --family score --num_noise_levels 10 --sigma_min 0.01 --output_dir out/ncsn

NCSN (Song & Ermon 2019, https://arxiv.org/abs/1907.05600), eq. 5-6: for geometric levels sigma_1 > ... > sigma_L,
minimise sum_i lambda(sigma_i) E ||s(x + sigma_i z, sigma_i) + z / sigma_i||^2 / 2 with lambda(sigma) = sigma^2,
that is E ||sigma s + z||^2 / 2: every level contributes on the same scale. The network is the shared UNet given the
level index as its timestep; its output divided by sigma is the score (NCSNv2, Song & Ermon 2020,
https://arxiv.org/abs/2006.09011, technique 3). sigma_1 defaults to the largest distance between two training images
(NCSNv2 technique 1), so that Langevin dynamics started at N(0, sigma_1^2 I) can reach every mode.
"""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from hfgen.pipelines.pipeline_score import ScorePipeline, score_forward
from hfgen.training.trainer import Trainer
from hfgen.training.trainer_diffusion import UNetTrainingConfig, build_unet
from torch.utils.data import DataLoader

from hfgen.conditioning import Condition
from hfgen.data import collate_fn
from hfgen.models.scheduling_score import AnnealedLangevinScheduler


def denoising_score_matching_loss(score: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per example (b,): 0.5 * ||sigma * s(x + sigma z, sigma) + z||^2, averaged over the dimensions. That is NCSN's
    eq. 6 term with lambda(sigma) = sigma^2 divided by the constant D (the same minimiser, the true score of the
    perturbed data); the mean keeps the loss and gradient clipping on one scale at any image size. `sigma` is (b,) or
    a number."""
    sigma = torch.as_tensor(sigma, dtype=score.dtype, device=score.device)
    if sigma.ndim:
        sigma = sigma.view(-1, *[1] * (score.ndim - 1))
    return 0.5 * (sigma * score.float() + noise.float()).pow(2).flatten(1).mean(1)


@dataclass
class ScoreTrainingConfig(UNetTrainingConfig):
    # ----- noise levels (the AnnealedLangevinScheduler) -----
    num_noise_levels: int = field(default=10, metadata={"help": "L, geometric noise levels (NCSN: 10)."})
    sigma_min: float = field(default=0.01, metadata={"help": "sigma_L, the smallest level (NCSN: 0.01)."})
    sigma_max: float | None = field(
        default=None,
        metadata={"help": "sigma_1, the largest level; default: the largest distance between two training images."},
    )
    # ----- annealed Langevin sampling -----
    steps_per_level: int = field(default=100, metadata={"help": "T, Langevin steps per level (NCSN: 100)."})
    step_lr: float = field(default=2e-5, metadata={"help": "eps: alpha_i = eps sigma_i^2 / sigma_L^2 (NCSN: 2e-5)."})
    denoise_final: bool = field(
        default=True, metadata={"help": "End sampling with x + sigma_L^2 s(x, sigma_L) (NCSNv2)."}
    )
    validation_steps_per_level: int = field(
        default=100,
        metadata={"help": "Langevin steps per level of the validation grids (10 on the digits left only noise)."},
    )

    ranges: ClassVar[dict[str, str]] = {
        "num_noise_levels": "[1, 10000]",
        "steps_per_level": "[1, 100000]",
        "validation_steps_per_level": "[1, 100000]",
    }
    model_settings: ClassVar[tuple[str, ...]] = ("num_noise_levels", "sigma_min", "sigma_max", "block_out_channels")

    def __post_init__(self):
        super().__post_init__()
        if not self.sigma_min > 0:
            raise ValueError(f"--sigma_min must be positive (NCSN: 0.01), got {self.sigma_min}.")
        if self.sigma_max is not None and not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"--sigma_max {self.sigma_max} must be above --sigma_min {self.sigma_min}; leave it out to use the "
                "largest distance between two training images."
            )
        if not 0 < self.step_lr < 1:
            raise ValueError(f"--step_lr must be in (0, 1) (NCSN: 2e-5 for sigma_min 0.01), got {self.step_lr}.")


class ScoreTrainer(Trainer):
    family = "score"
    config_class = ScoreTrainingConfig

    def largest_distance(self, max_images: int = 1000) -> float:
        """The largest Euclidean distance between two of the first `max_images` training images (NCSNv2 technique
        1: sigma_1 about this far makes the perturbed modes overlap). The same images on every rank and on resume."""
        loader = DataLoader(self.splits["train"], batch_size=500, collate_fn=collate_fn)
        images, count = [], 0
        for batch in loader:
            images.append(batch["pixel_values"].flatten(1).double())
            count += len(images[-1])
            if count >= max_images:
                break
        flat = torch.cat(images)[:max_images]
        return torch.cdist(flat, flat).max().item()

    def build_model(self) -> UNet2DModel | UNet2DConditionModel:
        config = self.config
        sigma_max = config.sigma_max if config.sigma_max is not None else self.largest_distance()
        if not sigma_max > config.sigma_min:
            raise ValueError(
                f"sigma_max {sigma_max} (measured on the data) is not above --sigma_min {config.sigma_min}."
            )
        self.noise_scheduler = AnnealedLangevinScheduler(
            num_train_timesteps=config.num_noise_levels,
            sigma_min=config.sigma_min,
            sigma_max=sigma_max,
            steps_per_level=config.steps_per_level,
            step_lr=config.step_lr,
            denoise_final=config.denoise_final,
        )
        return build_unet(self, *self.image_shape)

    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        clean = batch["pixel_values"]  # (b, c, h, w) in [-1, 1]
        scheduler = self.noise_scheduler
        # 1. a random level per image and its perturbation x + sigma_i z
        levels = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
        noise = torch.randn_like(clean)
        noisy = scheduler.add_noise(clean, noise, levels)
        # 2. the score s(x + sigma_i z, sigma_i) = UNet / sigma_i, and the sigma^2-weighted DSM loss
        score = score_forward(self.model, noisy, levels, scheduler.sigmas, condition)
        sigma = scheduler.sigmas.to(clean.device)[levels]
        per_example = denoising_score_matching_loss(score, noise, sigma)  # (b,)
        return {"loss": per_example.mean()}

    def build_pipeline(self, model, tokenizer=None, text_encoder=None) -> ScorePipeline:
        pipeline = ScorePipeline(
            unet=model,
            scheduler=AnnealedLangevinScheduler.from_config(self.noise_scheduler.config),
            tokenizer=tokenizer,
            text_encoder=text_encoder,
        )
        # Validation grids sample through `generate` with few steps; a saved pipeline keeps the scheduler's T.
        steps = {"steps_per_level": self.config.validation_steps_per_level}
        pipeline.default_sampling_kwargs = {**pipeline.default_sampling_kwargs, **steps}
        return pipeline
