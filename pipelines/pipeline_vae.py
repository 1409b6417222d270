"""Pipeline for the VAE family: sample, encode, decode, reconstruct, interpolate, and the importance-weighted
log-likelihood of images."""

import math

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput

from hfgen.models.modeling_vae import VAEModel

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch

        >>> pipe = hfgen.VAEPipeline.from_pretrained("out/vae-digits")
        >>> generator = torch.manual_seed(0)
        >>> images = pipe(prompt="a handwritten digit seven", num_images_per_prompt=4, generator=generator).images
        >>> pipe.log_likelihood(images, num_samples=50).bits_per_dim
        ```
"""


class VAEPipeline(HFGenPipeline):
    r"""Generation with a [`VAEModel`]: z ~ N(0, I), then the decoder's mean image.

    Parameters:
        vae ([`VAEModel`]): The autoencoder.
        tokenizer ([`~transformers.PreTrainedTokenizerFast`], *optional*): Tokenizer for text-conditioned models.
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): Text encoder for text-conditioned models.
    """

    model_cpu_offload_seq = "text_encoder->vae"

    def __init__(self, vae: VAEModel, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        temperature: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned model; None samples unconditionally.
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or per batch entry).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): z of shape (num_images, latent_dim), instead of sampling it.
            temperature (`float`, *optional*, defaults to 1.0): Scales the prior's standard deviation.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        prompts, num_images = self.check_inputs(prompt, batch_size, num_images_per_prompt, class_labels)
        condition = self.prepare_condition(self.vae, prompts, num_images, class_labels)

        # 2. z ~ N(0, temperature^2 I)
        latent_shape = (num_images, self.vae.config.latent_dim)
        if latents is None:
            latents = randn_tensor(latent_shape, generator=generator, device=self.device, dtype=self.vae.dtype)
            latents = latents * temperature
        elif tuple(latents.shape) != latent_shape:
            raise ValueError(f"latents must have shape {latent_shape}, got {tuple(latents.shape)}.")

        # 3. x = the decoder's mean image for z
        images = self.vae.decode(latents.to(self.device, self.vae.dtype), condition).sample

        # 4. Convert
        images = self.postprocess(images, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ----- what a VAE is good at -------------------------------------------------------------------------------------
    def _images(self, images) -> torch.Tensor:
        return self.preprocess(images, self.vae.config.sample_size, self.vae.config.in_channels)

    def _condition_for(self, num_images: int, prompt=None, class_labels=None):
        prompts, _ = self.check_inputs(prompt, 1, 1) if prompt is not None else (None, num_images)
        if prompts is not None and len(prompts) == 1:
            prompts = prompts * num_images
        if prompts is not None and len(prompts) != num_images:
            raise ValueError(f"Got {len(prompts)} prompts for {num_images} images: give one prompt, or one per image.")
        return self.prepare_condition(self.vae, prompts, num_images, class_labels)

    @torch.no_grad()
    def encode(self, images, prompt=None, class_labels=None) -> torch.Tensor:
        """Images -> the mean of q(z | x), (b, latent_dim)."""
        images = self._images(images)
        return self.vae.encode(images, self._condition_for(len(images), prompt, class_labels)).latent_mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, prompt=None, class_labels=None, output_type: str = "pil"):
        """z (b, latent_dim) -> images."""
        condition = self._condition_for(len(latents), prompt, class_labels)
        return self.postprocess(
            self.vae.decode(latents.to(self.device, self.vae.dtype), condition).sample, output_type
        )

    @torch.no_grad()
    def reconstruct(self, images, prompt=None, class_labels=None, output_type: str = "pil"):
        """Images -> decode(mean of q(z | x))."""
        return self.decode(self.encode(images, prompt, class_labels), prompt, class_labels, output_type)

    @torch.no_grad()
    def interpolate(self, start, end, num_steps: int = 8, prompt=None, class_labels=None, output_type: str = "pil"):
        """Decodes `num_steps` points on the straight line between two latents, or between the encodings of two
        images. `start`/`end`: a latent (latent_dim,) or (1, latent_dim), or an image the model takes."""
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2, got {num_steps}.")
        ends = []
        for point in (start, end):
            latent_dim = self.vae.config.latent_dim
            if isinstance(point, torch.Tensor) and point.ndim <= 2 and point.numel() == point.shape[-1] == latent_dim:
                ends.append(point.reshape(1, -1).to(self.device, self.vae.dtype))
            else:
                ends.append(self.encode(point, prompt, class_labels)[:1])
        weights = torch.linspace(0, 1, num_steps, device=self.device, dtype=self.vae.dtype).unsqueeze(1)
        latents = (1 - weights) * ends[0] + weights * ends[1]  # (num_steps, latent_dim)
        return self.decode(latents, prompt, class_labels, output_type)

    @torch.no_grad()
    def log_likelihood(
        self, images, num_samples: int = 50, prompt=None, class_labels=None, generator: torch.Generator | None = None
    ) -> LikelihoodOutput:
        """The importance-weighted lower bound on log p(x) with K = `num_samples` (IWAE; K = 1 is the ELBO)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        images = self._images(images)
        condition = self._condition_for(len(images), prompt, class_labels)
        log_px = self.vae.importance_weighted_log_likelihood(images, num_samples, condition, generator).float()
        config = self.vae.config
        num_dims = images[0].numel()
        if config.likelihood == "gaussian":
            # A density on [-1, 1]: P(pixel bin) ~ p(x) * bin width, the uniform-dequantisation bound.
            bin_width = 2.0 / (config.num_bins - 1)
            log_prob_discrete = log_px + num_dims * math.log(bin_width)
            dequantization = (
                f"Gaussian density times bin width 2/{config.num_bins - 1} per pixel ({config.num_bins} levels)"
            )
        elif config.likelihood == "bernoulli":
            log_prob_discrete = log_px
            dequantization = "none: Bernoulli on grey levels, a normalised probability only for binary images"
        else:
            log_prob_discrete = log_px
            dequantization = f"none: discretized logistic over {config.num_bins} levels (exact probabilities)"
        return LikelihoodOutput(
            log_likelihood=log_px.cpu(),
            bits_per_dim=(-log_prob_discrete / (num_dims * math.log(2))).cpu(),
            kind=f"lower bound (IWAE, K={num_samples})",
            dequantization=dequantization,
        )


VAEPipeline.__call__.__doc__ = VAEPipeline.__call__.__doc__.replace(
    "Examples:\n", EXAMPLE_DOC_STRING.strip() + "\n", 1
)
