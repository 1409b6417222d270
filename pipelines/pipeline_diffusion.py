"""Pipeline for the diffusion family: DDPM / DDIM / DPM-Solver++ sampling with diffusers' own UNets and schedulers,
classifier-free guidance, latent diffusion, RePaint inpainting and the DDPM variational bound in bits/dim.

- Denoising diffusion probabilistic models (DDPM; Ho et al. 2020, https://arxiv.org/abs/2006.11239): Algorithm 2
  (ancestral sampling) and the variational bound L_vlb of eq. 5 with the discretized decoder of section 3.3.
- DDIM (Song et al. 2020, https://arxiv.org/abs/2010.02502), `eta` 0 deterministic, 1 like DDPM.
- DPM-Solver++ (Lu et al. 2022, https://arxiv.org/abs/2211.01095), diffusers' `DPMSolverMultistepScheduler`.
- Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598).
- Latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752): the UNet denoises a frozen autoencoder's
  latents, scaled by `vae.config.scaling_factor` to unit standard deviation (section 4.3.2).
- RePaint (Lugmayr et al. 2022, https://arxiv.org/abs/2201.09865), diffusers' `RePaintScheduler`.

Swap the sampler the diffusers way: `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.
"""

import inspect
import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    RePaintScheduler,
    UNet2DConditionModel,
    VQModel,
)
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput, check_int, check_number

from hfgen.conditioning import Condition

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch
        >>> from diffusers import DDIMScheduler

        >>> pipe = hfgen.DiffusionImagePipeline.from_pretrained("out/diffusion-text-shapes")
        >>> pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        >>> output = pipe("a small red circle at the top left", num_images_per_prompt=4, guidance_scale=4.0,
        ...               num_inference_steps=50, return_trajectory=True, generator=torch.manual_seed(0))
        >>> output.images, output.trajectory  # the samples, and 8 snapshots of x_t on the way
        ```
"""


@dataclass
class DiffusionPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): The samples, as `output_type` asks.
        trajectory (`list`, *optional*): With `return_trajectory=True`, x_t at `trajectory_steps` evenly spaced steps
            (the first is the initial noise, the last the samples), each converted like `images`.
    """

    images: list | object
    trajectory: list | None = None


def with_coordinates(sample: torch.Tensor) -> torch.Tensor:
    """(b, c, h, w) -> (b, c + 2, h, w): every position's x and y in [-1, 1] as two more channels (CoordConv, Liu et
    al. 2018). Convolutions and attention are translation-equivariant: without these a UNet knows where it is only
    from the zero padding at its borders. (On the shapes this did not make the model follow position words:
    benchmarks/README.md, diffusion "4b".)"""
    b, _, h, w = sample.shape
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([x, y]).to(sample.device, sample.dtype).expand(b, -1, -1, -1)
    return torch.cat([sample, grid], dim=1)


def unet_forward(unet, sample: torch.Tensor, timestep, condition: Condition | None) -> torch.Tensor:
    """The UNet's output for `sample` (b, c, h, w) at `timestep`, conditioned the way the UNet takes it: a
    `UNet2DConditionModel` cross-attends to the prompt's per-token states (padding masked), a `UNet2DModel` with
    `num_class_embeds` adds the class embedding to the time embedding; a UNet built with two more input channels than
    the images have (`--coordinate_channels`) gets the (x, y) grid there. The trainer and the pipeline use this."""
    model = getattr(unet, "module", unet)  # a DistributedDataParallel wrapper during training
    if getattr(model.config, "in_channels", None) == sample.shape[1] + 2:  # not the 2-D score MLP
        sample = with_coordinates(sample)
    if isinstance(model, UNet2DConditionModel):
        if condition is None or condition.text_hidden_states is None:
            raise ValueError("A UNet2DConditionModel needs a text condition (per-token hidden states).")
        return unet(
            sample,
            timestep,
            encoder_hidden_states=condition.text_hidden_states,  # (b, t, cross_attention_dim)
            encoder_attention_mask=condition.text_attention_mask,  # (b, t)
        ).sample
    class_labels = None if condition is None else condition.class_labels
    return unet(sample, timestep, class_labels=class_labels).sample


def predicted_original_and_noise(scheduler, model_output, sample, timesteps) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) from the model's output at `timesteps` (b,) under the scheduler's `prediction_type`:
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
    abar = scheduler.alphas_cumprod.to(sample.device, torch.float32)[timesteps].view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    sample, model_output = sample.float(), model_output.float()
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (sample - s * eps) / a
    elif prediction_type == "sample":
        x0 = model_output
        eps = (sample - a * x0) / s
    elif prediction_type == "v_prediction":
        x0 = a * sample - s * model_output
        eps = s * sample + a * model_output
    else:
        raise ValueError(f"prediction_type must be epsilon, sample or v_prediction, got {prediction_type!r}.")
    return x0, eps


def discretized_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int):
    """Per-dimension log-probability of `num_bins`-level data in [-1, 1] under a Gaussian discretized to those bins,
    the edge bins taking the tails (DDPM's decoder p(x_0 | x_1), Ho et al. 2020, eq. 13)."""
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    upper, lower = inv_scale * (x - mean + half_bin), inv_scale * (x - mean - half_bin)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(value <= top of the bin)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)  # log P(value >= bottom of the bin)
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    # For a very peaked Gaussian the bin mass underflows: the density at the bin centre times the bin width.
    log_density_mid = -0.5 * (inv_scale * (x - mean)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    log_mass = torch.where(mass > 1e-5, mass.log(), log_density_mid + math.log(2 * half_bin))
    return torch.where(
        x < -1 + half_bin, log_cdf_upper, torch.where(x > 1 - half_bin, log_one_minus_cdf_lower, log_mass)
    )


def encode_to_latents(vae, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (b, c, h, w) in [-1, 1] -> the frozen autoencoder's spatial latents times `scaling_factor`: a sample of
    an `AutoencoderKL`'s (or a spatial hfgen `VAEModel`'s) posterior, a `VQModel`'s pre-quantisation latents."""
    if isinstance(vae, AutoencoderKL):
        latents = vae.encode(images).latent_dist.sample(generator)
    elif isinstance(vae, VQModel):
        latents = vae.encode(images).latents
    elif getattr(vae.config, "latent_channels", None) is not None:  # hfgen's VAEModel with a spatial latent
        mean, logvar = vae.encode(images, return_dict=False)
        latents = mean + torch.exp(0.5 * logvar) * randn_tensor(mean.shape, generator, mean.device, mean.dtype)
    else:
        raise ValueError(
            f"Latent diffusion needs an autoencoder with a spatial latent (a diffusers AutoencoderKL or VQModel, or "
            f"an hfgen VAEModel trained with --latent_channels), got {type(vae).__name__} with a vector latent, which "
            "a UNet cannot denoise as an image."
        )
    return latents * vae.config.scaling_factor


class UNetPipelineMixin:
    """What the pipelines around a diffusers UNet (diffusion, score) read off it: how it is conditioned (a
    `UNet2DConditionModel` takes text; a `UNet2DModel` with `num_class_embeds` takes classes, the last the null class)
    and the shape of the noise it starts from."""

    @property
    def condition_type(self) -> str | None:
        if isinstance(self.unet, UNet2DConditionModel):
            return "text"
        return "class" if self.unet.config.num_class_embeds else None

    @property
    def num_classes(self) -> int | None:
        num_class_embeds = getattr(self.unet.config, "num_class_embeds", None)
        return num_class_embeds - 1 if self.condition_type == "class" else None

    def latent_shape(self, num_images: int) -> tuple[int, int, int, int]:
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else size
        return (num_images, self.unet.config.out_channels, height, width)  # in_channels may add a coordinate grid


class DiffusionImagePipeline(UNetPipelineMixin, HFGenPipeline):
    r"""Sampling from a diffusion model: a diffusers UNet that predicts the noise (or x0, or v) and a diffusers
    scheduler that turns the prediction into x_{t-1}; with a `vae`, in its latent space.

    Parameters:
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`]): Unconditional or class-conditional (`num_class_embeds` =
            classes + 1, the last the null class), or text-conditional through cross-attention.
        scheduler ([`~diffusers.SchedulerMixin`]): DDPM (the training scheduler), DDIM, DPM-Solver++, ...
        tokenizer, text_encoder (*optional*): The text components of a text-conditioned UNet.
        vae ([`AutoencoderKL`], [`VQModel`] or a spatial [`VAEModel`], *optional*): The frozen first stage of latent
            diffusion.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["tokenizer", "text_encoder", "vae"]
    model_component = "unet"
    family_capabilities = frozenset({"guidance", "steps", "likelihood", "inpainting", "trajectory"})
    default_sampling_kwargs = {"num_inference_steps": 50}
    samplers = {"DDPM": DDPMScheduler, "DDIM": DDIMScheduler, "DPM-Solver++": DPMSolverMultistepScheduler}
    sampling_controls = {"eta": (0.0, 1.0, 0.0, "DDIM eta (0 deterministic, 1 like DDPM)")}  # steps: "steps"

    def __init__(self, unet, scheduler, tokenizer=None, text_encoder=None, vae=None, num_bins: int = 256):
        super().__init__()
        if num_bins < 2:
            raise ValueError("num_bins (the grey levels of the data, 17 for digits, 256 for 8-bit) must be >= 2.")
        self.register_modules(unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae)
        # Saved in model_index.json: the data's levels, for the likelihood of discrete pixels in bits/dim.
        self.register_to_config(num_bins=num_bins)

    def predict(self, latents: torch.Tensor, t, condition, negative, guidance_scale: float) -> torch.Tensor:
        """The UNet's output at step t, guided away from `negative` when it is given (one batched call)."""
        model_input = self.scheduler.scale_model_input(latents, t)
        if negative is None:
            return unet_forward(self.unet, model_input, t, condition)
        both = unet_forward(self.unet, torch.cat([model_input] * 2), t, Condition.cat([negative, condition]))
        return self.guide(*both.chunk(2), guidance_scale)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """x_0 in the UNet's space -> images in [-1, 1] (through the vae for latent diffusion)."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_trajectory: bool = False,
        trajectory_steps: int = 8,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned UNet; None samples unconditionally
                (the empty prompt).
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or class label).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned UNet.
            num_inference_steps (`int`, *optional*, defaults to 50): Denoising steps.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance, eps = null + scale *
                (conditional - null); 1 turns it off.
            negative_prompt (`str` or `list[str]`, *optional*): What to guide away from (default: the empty prompt).
            eta (`float`, *optional*, defaults to 0.0): DDIM's eta in [0, 1], passed to schedulers that take it.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): The initial noise x_T, of shape `latent_shape(num_images)`.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return a [`DiffusionPipelineOutput`] or a tuple.
            return_trajectory (`bool`, *optional*, defaults to False): Also return x_t at `trajectory_steps` steps.
            trajectory_steps (`int`, *optional*, defaults to 8): Snapshots in the trajectory (at least 2).
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(pipeline, step, timestep,
                {"latents": x_{t-1}})` after each step; what it returns replaces those tensors.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 0. Check the inputs
        if return_trajectory:
            check_int("trajectory_steps", trajectory_steps, minimum=2)
        self.check_steps_and_eta(num_inference_steps, eta)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)

        # 1. How many images, and what they are conditioned on (and the negative condition for guidance)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. x_T ~ N(0, I) (times the scheduler's init_noise_sigma), and the timesteps
        latents = self.prepare_latents(self.latent_shape(num_images), self.unet.dtype, self.device, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = self.scheduler.timesteps
        accepted = inspect.signature(self.scheduler.step).parameters
        extra_step_kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in accepted}
        snapshots = set(torch.linspace(0, len(timesteps), trajectory_steps).round().long().tolist())
        trajectory = [latents] if return_trajectory else None

        # 3. Denoise: x_t -> x_{t-1}
        for i, t in enumerate(self.progress_bar(timesteps)):
            # 3.1 predict the noise (or x0, or v), guided
            model_output = self.predict(latents, t, condition, negative, guidance_scale)
            # 3.2 compute the previous sample: x_t -> x_{t-1}
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample
            latents = self.step_callback(
                callback_on_step_end, callback_on_step_end_tensor_inputs, i, t, {"latents": latents}
            )["latents"]
            if return_trajectory and i + 1 in snapshots:
                trajectory.append(latents)

        # 4. Decode (latent diffusion) and convert
        images = self.postprocess(self.decode_latents(latents), output_type)
        if return_trajectory:
            trajectory = [self.postprocess(self.decode_latents(x), output_type) for x in trajectory]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, trajectory) if return_trajectory else (images,)
        return DiffusionPipelineOutput(images=images, trajectory=trajectory)

    def check_steps_and_eta(self, num_inference_steps, eta) -> None:
        """Sampling can take at most the steps the model was trained on; DDIM's eta in [0, 1] (0 deterministic, 1
        DDPM's variance; above 1 its noise outgrows what x_{t-1} can hold and the samples turn NaN)."""
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        check_int("num_inference_steps", num_inference_steps, 1, num_train_timesteps, why=" (the trained timesteps)")
        check_number("eta", eta, 0, 1)

    # ----- what a diffusion model is good at ------------------------------------------------------------------------
    def _pixel_images(self, images, what: str) -> torch.Tensor:
        if self.vae is not None:
            raise ValueError(
                f"{what} works in pixel space; this pipeline denoises a vae's latents (latent diffusion). Use a pixel "
                "diffusion model."
            )
        return self.model_images(images)

    def _mask(self, mask_image, images: torch.Tensor) -> torch.Tensor:
        """A mask (h, w), (b, h, w), (b, 1, h, w) or PIL image(s) -> (b, 1, h, w) floats: 1 in the hole."""
        if isinstance(mask_image, PIL.Image.Image):
            mask_image = [mask_image]
        if isinstance(mask_image, list) and isinstance(mask_image[0], PIL.Image.Image):
            mask_image = np.stack([np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in mask_image])
        mask = torch.as_tensor(mask_image, dtype=torch.float32)
        if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(
                "mask_image values must be in [0, 1] (1, white: fill; 0, black: keep), got "
                + ("NaN or inf." if not torch.isfinite(mask).all() else f"{mask.min():.3g} to {mask.max():.3g}.")
                + (" For a 0..255 mask pass `mask / 255`." if mask.max() <= 255 else "")
            )
        mask = mask.reshape(-1, 1, *mask.shape[-2:]) if mask.ndim < 4 else mask[:, :1]
        if mask.shape[-2:] != images.shape[-2:] or len(mask) not in (1, len(images)):
            raise ValueError(
                f"mask_image must be one mask or one per image of size {tuple(images.shape[-2:])}, got shape "
                f"{tuple(mask.shape)}."
            )
        return (mask > 0.5).float().expand(len(images), 1, *images.shape[-2:]).to(self.device)

    @torch.no_grad()
    def inpaint(
        self,
        image,
        mask_image,
        prompt: str | list[str] | None = None,
        class_labels=None,
        num_inference_steps: int = 100,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ):
        r"""Fills the hole of each image and keeps its known pixels: RePaint (diffusers' `RePaintScheduler`), which at
        every step replaces the known region by the original noised to that step and resamples (goes `jump_length`
        steps back and denoises again, `jump_n_sample` times) so that the filled part agrees with the known part.

        Args:
            image: Images (PIL, numpy in [0, 1], or a tensor (b, c, h, w) in [-1, 1]).
            mask_image: 1 (white) where pixels are to be generated, 0 where they are kept, as diffusers' inpainting
                pipelines; one mask for all images or one each.
            num_inference_steps, jump_length, jump_n_sample: RePaint's schedule (`jump_n_sample` 1: no resampling).
            prompt, class_labels, guidance_scale, negative_prompt: The condition, as in `__call__`.
            eta (`float`, *optional*, defaults to 0.0): RePaint's eta in [0, 1] for the generated part.

        Returns:
            The completed images, as `output_type` asks.
        """
        images = self._pixel_images(image, "Inpainting")
        known = 1.0 - self._mask(mask_image, images)  # (b, 1, h, w): RePaint's mask is 1 where pixels are kept
        self.check_steps_and_eta(num_inference_steps, eta)
        check_int("jump_length", jump_length)
        check_int("jump_n_sample", jump_n_sample, why=" (1: no resampling)")
        guidance_scale = check_number("guidance_scale", guidance_scale, 1, why=" (1 turns guidance off)")
        num_images = len(images)
        if negative_prompt is not None and guidance_scale <= 1:
            raise ValueError("negative_prompt needs guidance_scale > 1.")
        condition = self.condition_for_images(num_images, prompt, class_labels)
        negative = None
        if guidance_scale > 1:
            if "guidance" not in self.capabilities:
                raise ValueError("guidance_scale > 1 needs a conditioned model: leave guidance_scale at 1.")
            negative = self.condition_for_images(num_images, negative_prompt if prompt is not None else None)

        # RePaint takes the noise schedule only (it is always given epsilon): passing the rest, e.g. prediction_type,
        # would make diffusers warn on every call that it ignores them.
        accepted = inspect.signature(RePaintScheduler.__init__).parameters
        repaint = RePaintScheduler.from_config(
            {key: value for key, value in self.scheduler.config.items() if key in accepted}, eta=eta
        )
        repaint.set_timesteps(num_inference_steps, jump_length, jump_n_sample, device=self.device)
        latents = (
            self.prepare_latents(images.shape, images.dtype, self.device, generator) / self.scheduler.init_noise_sigma
        )
        t_last = repaint.timesteps[0] + 1
        for t in self.progress_bar(repaint.timesteps):
            if t < t_last:  # 1. denoise x_t -> x_{t-1}, the known part from the original image
                model_input = torch.cat([latents] * 2) if negative is not None else latents
                output = unet_forward(
                    self.unet,
                    model_input,
                    t,
                    Condition.cat([negative, condition]) if negative is not None else condition,
                )
                if negative is not None:
                    output = self.guide(*output.chunk(2), guidance_scale)
                _, noise = predicted_original_and_noise(self.scheduler, output, latents, t)  # RePaint takes epsilon
                latents = repaint.step(noise.to(latents.dtype), t, latents, images, known, generator).prev_sample
            else:  # 2. resample: noise x_{t_last} forward to x_t again
                latents = repaint.undo_step(latents, t_last, generator)
            t_last = t
        self.maybe_free_model_hooks()
        return self.postprocess(latents, output_type)

    @torch.no_grad()
    def log_likelihood(
        self, images, prompt=None, class_labels=None, generator: torch.Generator | None = None
    ) -> LikelihoodOutput:
        r"""The variational lower bound on log p(x) of DDPM (Ho et al. 2020, eq. 5): L_T + sum_{t>1} L_{t-1} + L_0,
        with every one of the scheduler's `num_train_timesteps` terms evaluated once (one noise sample each, as
        improved DDPM's `calc_bpd_loop`, x0 predictions clamped to [-1, 1] as its `clip_denoised`), the reverse
        variance fixed to the posterior's (`fixed_small`), and the discretized Gaussian decoder at t = 0 over the
        pipeline's `num_bins` levels. T UNet calls per batch."""
        x0 = self._pixel_images(images, "The likelihood bound").float()
        condition = self.condition_for_images(len(x0), prompt, class_labels)
        scheduler, num_bins = self.scheduler, self.config.num_bins
        betas = scheduler.betas.to(self.device, torch.float64)
        abar = scheduler.alphas_cumprod.to(self.device, torch.float64)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)  # beta~_t; 0 at t = 0
        posterior_log_variance = torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log()  # clipped at 0
        mean_coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
        mean_coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
        x0_64 = x0.double()

        # L_T = KL(q(x_T | x_0) || N(0, I))
        variance_T = 1 - abar[-1]
        nats = (0.5 * (-variance_T.log() + variance_T + abar[-1] * x0_64**2 - 1)).flatten(1).sum(1)
        for t in range(len(betas) - 1, -1, -1):
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(self.device)
            x_t = abar[t].sqrt().float() * x0 + (1 - abar[t]).sqrt().float() * noise
            timestep = torch.full((len(x0),), t, device=self.device, dtype=torch.long)
            output = unet_forward(self.unet, x_t.to(self.unet.dtype), timestep, condition)
            x0_pred, _ = predicted_original_and_noise(scheduler, output, x_t, timestep)
            # The data lie in [-1, 1], so the reverse model's mean uses x0 clamped to it, whatever the sampler's
            # clip_sample (improved DDPM's calc_bpd_loop, clip_denoised=True): still a valid bound, and a tighter one.
            x0_pred = x0_pred.clamp(-1, 1)
            mean_p = mean_coef_x0[t] * x0_pred.double() + mean_coef_xt[t] * x_t.double()
            if t == 0:  # L_0 = -log p(x_0 | x_1), discretized over the data's levels
                log_scale = 0.5 * posterior_log_variance[0]
                term = -discretized_gaussian_log_prob(x0_64, mean_p, log_scale.expand_as(mean_p), num_bins)
            else:  # L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), equal variances
                mean_q = mean_coef_x0[t] * x0_64 + mean_coef_xt[t] * x_t.double()
                term = (mean_q - mean_p) ** 2 / (2 * posterior_variance[t])
            nats = nats + term.flatten(1).sum(1)
        num_dims = x0[0].numel()
        return LikelihoodOutput(
            log_likelihood=(-nats).float().cpu(),
            bits_per_dim=(nats / (num_dims * math.log(2))).float().cpu(),
            kind=f"lower bound (DDPM L_vlb, T={len(betas)}, one noise sample per term)",
            dequantization=f"none: discretized Gaussian decoder over {num_bins} levels (exact probabilities)",
        )
