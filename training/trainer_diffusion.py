"""Training the diffusion family: diffusers' UNets and DDPM noise schedule through hfgen's shared trainer.

    accelerate launch training/train.py --recipe training/recipes/diffusion_digits.yaml
    accelerate launch training/train.py --family diffusion --prediction_type sample --snr_gamma 5 ...
    accelerate launch training/train.py --family diffusion --vae_name_or_path my-autoencoder-kl ...   # latent

The step is the inner loop of diffusers' `examples/unconditional_image_generation/train_unconditional.py` (DDPM, Ho
et al. 2020, https://arxiv.org/abs/2006.11239, Algorithm 1): noise, a random timestep per image, `add_noise`, the
UNet, the MSE against the target of `--prediction_type` (epsilon; x0 = "sample"; v, Salimans & Ho 2022,
https://arxiv.org/abs/2202.00512), optionally weighted by Min-SNR-gamma (Hang et al. 2023,
https://arxiv.org/abs/2303.09556) as diffusers' `train_text_to_image.py` does; `--timestep_bias_strategy` draws chosen
timesteps more often, as `train_text_to_image_sdxl.py` does. Text conditioning trains a
`UNet2DConditionModel` from scratch with the shared caption dropout, so the same model samples with classifier-free
guidance. With `--vae_name_or_path` the UNet denoises a frozen autoencoder's latents (latent diffusion), scaled to unit
standard deviation by a `scaling_factor` measured on the training set and stored in the autoencoder's config.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel, VQModel
from diffusers.training_utils import compute_snr
from hfgen.pipelines.pipeline_diffusion import DiffusionImagePipeline, encode_to_latents, unet_forward
from hfgen.training.trainer import Trainer, TrainingConfig, load_frozen_component
from torch.utils.data import DataLoader

from hfgen.conditioning import Condition
from hfgen.data import collate_fn, grey_levels
from hfgen.models.modeling_vae import VAEModel


@dataclass
class UNetTrainingConfig(TrainingConfig):
    """The diffusers UNet of the families that denoise images (diffusion, score models)."""

    # ----- UNet -----
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64], metadata={"help": "UNet widths per resolution (each level halves it)."}
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per resolution."})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups (divides every width)."})
    attention_head_dim: int = field(default=8, metadata={"help": "Channels per attention head."})
    attention: bool = field(
        default=True, metadata={"help": "Self-attention at the lowest resolution (unconditional and class UNets)."}
    )
    cross_attention_levels: list[int] | None = field(
        default=None,
        metadata={"help": "Text UNets: the levels (0 = full resolution) with cross-attention; default every level."},
    )
    coordinate_channels: bool = field(
        default=False,
        metadata={
            "help": "Give the UNet every position's (x, y) as two more input channels (CoordConv): convolutions and "
            "attention alone know where they are only from the zero padding at the borders."
        },
    )

    ranges: ClassVar[dict[str, str]] = {
        "block_out_channels": "[1, 4096]",
        "layers_per_block": "[1, 16]",
        "norm_num_groups": "[1, 1024]",
        "attention_head_dim": "[1, 4096]",
    }

    def __post_init__(self):
        super().__post_init__()
        if any(width % self.norm_num_groups for width in self.block_out_channels):
            raise ValueError(
                f"--norm_num_groups {self.norm_num_groups} must divide every --block_out_channels "
                f"{self.block_out_channels}."
            )
        levels = range(len(self.block_out_channels))
        if self.cross_attention_levels is not None and not set(self.cross_attention_levels) <= set(levels):
            raise ValueError(
                f"--cross_attention_levels {self.cross_attention_levels} must be levels of --block_out_channels "
                f"{self.block_out_channels}: {list(levels)}."
            )


@dataclass
class DiffusionTrainingConfig(UNetTrainingConfig):
    # ----- diffusion -----
    prediction_type: str = field(default="epsilon", metadata={"help": "epsilon, sample (x0) or v_prediction."})
    beta_schedule: str = field(default="linear", metadata={"help": "linear or squaredcos_cap_v2 (cosine)."})
    num_train_timesteps: int = field(default=1000, metadata={"help": "T, the steps of the forward process."})
    snr_gamma: float | None = field(
        default=None, metadata={"help": "Min-SNR-gamma loss weighting (5.0 in the paper); None: plain MSE."}
    )
    # ----- which timesteps are trained (diffusers' train_text_to_image_sdxl.py --timestep_bias_*) -----
    timestep_bias_strategy: str = field(
        default="none",
        metadata={
            "help": "none (uniform timesteps), later (more high-noise steps, where the layout is decided), earlier, "
            "or range (--timestep_bias_begin to --timestep_bias_end)."
        },
    )
    timestep_bias_multiplier: float = field(
        default=1.0, metadata={"help": "How many times as often the biased timesteps are drawn."}
    )
    timestep_bias_portion: float = field(
        default=0.25, metadata={"help": "later / earlier: the fraction of the timesteps that is biased."}
    )
    timestep_bias_begin: int = field(default=0, metadata={"help": "range: the first biased timestep."})
    timestep_bias_end: int = field(default=1000, metadata={"help": "range: the end (exclusive) of the biased range."})
    clip_sample: bool = field(
        default=False,
        metadata={
            "help": "Clamp each x0 prediction to [-1, 1] while sampling (the saved DDPMScheduler's clip_sample, which "
            "DDIMScheduler.from_config inherits). Off by default: with eta 0 every clamped x0 is baked into DDIM's "
            "path, and on the digits it costs FID and breaks guidance (benchmarks/README.md, Diffusion)."
        },
    )
    # ----- EMA (diffusers' EMAModel warm-up, with --use_ema) -----
    ema_warmup: bool = field(
        default=False, metadata={"help": "EMA warm-up: decay 1 - (1 + step / inv_gamma) ** -power, capped."}
    )
    ema_inv_gamma: float = field(default=1.0, metadata={"help": "EMA warm-up inv_gamma."})
    ema_power: float = field(default=0.75, metadata={"help": "EMA warm-up power (2/3 long runs, 3/4 short)."})
    # ----- latent diffusion -----
    vae_name_or_path: str | None = field(
        default=None, metadata={"help": "A diffusers AutoencoderKL / VQModel (folder or Hub id): latent diffusion."}
    )
    scaling_factor_images: int = field(
        default=512, metadata={"help": "Training images whose latents measure the scaling factor (latent std 1)."}
    )
    # ----- validation and evaluation -----
    validation_inference_steps: int = field(
        default=50, metadata={"help": "Sampling steps of the validation grids and FID (few: validation stays cheap)."}
    )
    num_bins: int | None = field(
        default=None,
        metadata={
            "help": "Levels of the data; default: hfgen.data.grey_levels (digits 17, mnist_binarized 2, else 256)."
        },
    )
    eval_likelihood_images: int = field(
        default=0, metadata={"help": "Test images for the final L_vlb bound in bits/dim (T UNet calls; 0: none)."}
    )

    ranges: ClassVar[dict[str, str]] = {
        "timestep_bias_portion": "[0, 1]",  # NaN is refused here; which fractions bias any step, below
        "ema_inv_gamma": "(0, inf)",  # 0 divides by zero; a negative power makes the decay negative, clamped to 0
        "ema_power": "(0, inf)",
        "scaling_factor_images": "[1, inf)",
        "eval_likelihood_images": "[0, inf)",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(
                f"--prediction_type must be epsilon, sample or v_prediction, got {self.prediction_type!r}."
            )
        if self.beta_schedule not in ("linear", "squaredcos_cap_v2"):
            raise ValueError(f"--beta_schedule must be linear or squaredcos_cap_v2, got {self.beta_schedule!r}.")
        if self.num_train_timesteps < 2:
            raise ValueError(f"--num_train_timesteps must be at least 2, got {self.num_train_timesteps}.")
        if self.snr_gamma is not None and not 0 < self.snr_gamma < math.inf:
            raise ValueError(f"--snr_gamma must be positive (5.0 in the paper), got {self.snr_gamma}.")
        self.check_timestep_bias()
        if not 1 <= self.validation_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"--validation_inference_steps must be in [1, --num_train_timesteps={self.num_train_timesteps}], got "
                f"{self.validation_inference_steps}."
            )
        if self.num_bins is None:
            self.num_bins = grey_levels(self.dataset_name)
        if self.vae_name_or_path and self.clip_sample:
            raise ValueError(
                "--clip_sample clamps predictions to the pixel range [-1, 1]; latents (--vae_name_or_path) have no "
                "such range: leave --clip_sample off."
            )
        if self.vae_name_or_path and self.eval_likelihood_images:
            raise ValueError(
                "--eval_likelihood_images bounds log p(x) of pixels; a latent diffusion model has no such bound "
                "here: set it to 0."
            )

    def check_timestep_bias(self):
        strategy, T = self.timestep_bias_strategy, self.num_train_timesteps
        if strategy not in ("none", "later", "earlier", "range"):
            raise ValueError(f"--timestep_bias_strategy must be none, later, earlier or range, got {strategy!r}.")
        if strategy == "none":
            return
        if not 0 < self.timestep_bias_multiplier < math.inf:
            raise ValueError(
                f"--timestep_bias_multiplier must be positive (above 1 favours the biased steps, below 1 avoids "
                f"them), got {self.timestep_bias_multiplier}."
            )
        if strategy in ("later", "earlier") and not 0 < int(self.timestep_bias_portion * T) < T:
            raise ValueError(
                f"--timestep_bias_portion {self.timestep_bias_portion} of {T} timesteps must bias at least one and "
                "not all of them: pass a fraction between 0 and 1."
            )
        if strategy == "range" and not 0 <= self.timestep_bias_begin < self.timestep_bias_end <= T:
            raise ValueError(
                f"--timestep_bias_begin {self.timestep_bias_begin} and --timestep_bias_end {self.timestep_bias_end} "
                f"must satisfy 0 <= begin < end <= --num_train_timesteps {T}."
            )


def timestep_weights(config: DiffusionTrainingConfig) -> torch.Tensor | None:
    """The probability of drawing each training timestep (T,), or None for uniform: diffusers'
    `generate_timestep_weights` (train_text_to_image_sdxl.py), the chosen steps `--timestep_bias_multiplier` times as
    likely. Unlike Min-SNR this changes how often a step is trained, not how much its error counts."""
    strategy, T = config.timestep_bias_strategy, config.num_train_timesteps
    if strategy == "none" or config.timestep_bias_multiplier == 1:
        return None
    weights = torch.ones(T)
    biased = int(config.timestep_bias_portion * T)
    chosen = {"later": slice(T - biased, T), "earlier": slice(0, biased)}.get(
        strategy, slice(config.timestep_bias_begin, config.timestep_bias_end)
    )
    weights[chosen] *= config.timestep_bias_multiplier
    return weights / weights.sum()


def build_unet(trainer: Trainer, channels: int, height: int, width: int) -> UNet2DModel | UNet2DConditionModel:
    """The diffusers UNet a `UNetTrainingConfig` describes, for inputs (channels, height, width), conditioned as
    --conditioning says (text: cross-attention; class: `num_class_embeds` with the null class last)."""
    config = trainer.config
    levels = len(config.block_out_channels)
    if height != width or height % 2 ** (levels - 1):
        raise ValueError(
            f"The UNet takes square inputs whose size halves {levels - 1} times; got {height}x{width} for "
            f"--block_out_channels {config.block_out_channels}: pass --resolution or fewer levels."
        )
    shared = dict(
        sample_size=height,
        in_channels=channels + 2 if config.coordinate_channels else channels,  # unet_forward adds the (x, y) grid
        out_channels=channels,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
    )
    if config.conditioning == "text":
        # Cross-attention to the prompt's per-token states at the chosen resolutions (and in the middle block).
        text_encoder = trainer.accelerator.unwrap_model(trainer.text_encoder, keep_fp32_wrapper=True)
        attend = range(levels) if config.cross_attention_levels is None else config.cross_attention_levels
        down = [("CrossAttnDownBlock2D" if level in attend else "DownBlock2D") for level in range(levels)]
        up = [("CrossAttnUpBlock2D" if level in attend else "UpBlock2D") for level in reversed(range(levels))]
        return UNet2DConditionModel(
            **shared,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            cross_attention_dim=text_encoder.config.hidden_size,
        )
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        **shared,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        add_attention=config.attention,
        # The null class (caption dropout, guidance) is the extra last index.
        num_class_embeds=trainer.num_classes + 1 if config.conditioning == "class" else None,
    )


class DiffusionTrainer(Trainer):
    family = "diffusion"
    config_class = DiffusionTrainingConfig

    # ----- latent diffusion: the frozen first stage ------------------------------------------------------------------
    def build_frozen_components(self) -> dict[str, torch.nn.Module]:
        if not self.config.vae_name_or_path:
            return {}
        vae = load_frozen_component(self.config.vae_name_or_path)
        spatial_vae = isinstance(vae, VAEModel) and vae.config.latent_channels is not None
        if not (isinstance(vae, (AutoencoderKL, VQModel)) or spatial_vae):
            what = "with a vector latent (no height or width)" if isinstance(vae, VAEModel) else "(not an autoencoder)"
            raise ValueError(
                f"--vae_name_or_path {self.config.vae_name_or_path!r} is a {type(vae).__name__} {what}. Latent "
                "diffusion needs a spatial latent that a UNet can denoise: an hfgen VAE "
                "trained with --latent_channels (e.g. --family vae --conditioning none --latent_channels 4 --beta "
                "0.1), or a diffusers AutoencoderKL or VQModel. A vector is refused rather than reshaped into a grid "
                "without spatial meaning."
            )
        vae.requires_grad_(False).eval()
        # Rombach et al. 2022, section 4.3.2 / D.1: scale latents to unit standard deviation, measured on the
        # training images (the same first images and noise on every rank and on resume).
        loader = DataLoader(self.splits["train"], batch_size=64, collate_fn=collate_fn)
        vae.register_to_config(scaling_factor=1.0)
        generator, latents, count = torch.Generator().manual_seed(self.config.seed), [], 0
        with torch.no_grad():
            for batch in loader:
                latents.append(encode_to_latents(vae, batch["pixel_values"], generator))
                count += len(batch["pixel_values"])
                if count >= self.config.scaling_factor_images:
                    break
        std = torch.cat(latents)[: self.config.scaling_factor_images].float().std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
        return {"vae": vae}

    def preprocess_batch(self, batch: dict) -> dict:
        vae = self.frozen_components.get("vae")
        if vae is None:
            return batch
        pixels = batch["pixel_values"].to(self.accelerator.device, vae.dtype)
        return {**batch, "latents": encode_to_latents(vae, pixels).float()}

    # ----- the model -------------------------------------------------------------------------------------------------
    def build_model(self) -> UNet2DModel | UNet2DConditionModel:
        config = self.config
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,  # diffusers' default is True; see the option's help
        )
        self.timestep_weights = timestep_weights(config)
        channels, height, width = self.image_shape
        if "vae" in self.frozen_components:
            with torch.no_grad():
                example = self.preprocess_batch({"pixel_values": self.example_batch["pixel_values"]})["latents"]
            channels, height, width = example.shape[1:]
        return build_unet(self, channels, height, width)

    def prepare_auxiliary_models(self):
        if self.ema is not None:  # diffusers' EMA warm-up (train_unconditional.py's --use_ema_warmup)
            self.ema.use_ema_warmup = self.config.ema_warmup
            self.ema.inv_gamma, self.ema.power = self.config.ema_inv_gamma, self.config.ema_power

    # ----- the loss --------------------------------------------------------------------------------------------------
    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        clean = batch["latents"] if "latents" in batch else batch["pixel_values"]  # (b, c, h, w)
        scheduler = self.noise_scheduler
        # 1. noise and a random timestep per image; x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps in closed form
        noise = torch.randn_like(clean)
        if self.timestep_weights is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
        else:  # --timestep_bias_strategy
            timesteps = torch.multinomial(self.timestep_weights, len(clean), replacement=True).to(clean.device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        # 2. the UNet's prediction and its target
        prediction = unet_forward(self.model, noisy, timesteps, condition)
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        elif scheduler.config.prediction_type == "sample":
            target = clean
        else:
            target = scheduler.get_velocity(clean, noise, timesteps)
        mse = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)  # (b,)
        # 3. Min-SNR-gamma: weight min(SNR, gamma) on the x0 error, divided back for the epsilon (/SNR) and v
        # (/(SNR + 1)) targets, as diffusers' train_text_to_image.py
        if self.config.snr_gamma is None:
            loss = mse.mean()
        else:
            snr = compute_snr(scheduler, timesteps)
            weights = snr.clamp(max=self.config.snr_gamma)
            if scheduler.config.prediction_type == "epsilon":
                weights = weights / snr
            elif scheduler.config.prediction_type == "v_prediction":
                weights = weights / (snr + 1)
            loss = (mse * weights).mean()
        return {"loss": loss, "mse": mse.detach().mean()}

    def build_pipeline(self, model, tokenizer=None, text_encoder=None, vae=None) -> DiffusionImagePipeline:
        pipeline = DiffusionImagePipeline(
            unet=model,
            scheduler=DDPMScheduler.from_config(self.noise_scheduler.config),
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            num_bins=self.config.num_bins,
        )
        # Validation grids and FID sample through `generate` with these steps; a saved pipeline keeps the class's.
        steps = {"num_inference_steps": self.config.validation_inference_steps}
        pipeline.default_sampling_kwargs = {**pipeline.default_sampling_kwargs, **steps}
        return pipeline

    @torch.no_grad()
    def evaluate(self, pipeline: DiffusionImagePipeline) -> dict[str, float]:
        """The DDPM variational bound on held-out images (the null condition), in bits/dim."""
        count = self.config.eval_likelihood_images
        images = self.test_images(count) if count else None
        if images is None:
            return {}
        prompt = [""] * len(images) if pipeline.condition_type == "text" else None
        bound = pipeline.log_likelihood(
            images, prompt=prompt, generator=torch.Generator().manual_seed(self.config.seed)
        )
        return {"test_vlb_bits_per_dim": bound.bits_per_dim.mean().item()}
