"""Pipeline for the VAE family: sample, encode, decode, reconstruct, interpolate, and the importance-weighted
log-likelihood of images."""

import math

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput, check_int, check_number

from hfgen.conditioning import Condition
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
    model_component = "vae"
    family_capabilities = frozenset({"guidance", "interpolation", "likelihood", "encode"})
    sampling_controls = {"temperature": (0.0, 1.5, 1.0, "Temperature (prior standard deviation)")}

    def __init__(self, vae: VAEModel, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)

    def latent_shape(self, num_images: int) -> tuple[int, ...]:
        return (num_images, *self.vae.latent_shape)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        temperature: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned model; None samples unconditionally.
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or per batch entry).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance on the decoder's output
                distribution: params = null + scale * (conditional - null). 1 turns it off.
            negative_prompt (`str` or `list[str]`, *optional*): What to guide away from (default: the empty prompt).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): z of shape (num_images, *vae.latent_shape), instead of sampling it.
            temperature (`float`, *optional*, defaults to 1.0): Scales the prior's standard deviation.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): Called once after decoding (a VAE samples in one step) as
                `callback_on_step_end(pipeline, 0, None, {"latents": z})`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        temperature = check_number("temperature", temperature, 0)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. z ~ N(0, temperature^2 I), or the given latents
        sampled = latents is None
        latents = self.prepare_latents(self.latent_shape(num_images), self.vae.dtype, self.device, generator, latents)
        if sampled:
            latents = latents * temperature

        # 3. The decoder's distribution p(x | z, c), guided away from the null (or negative) condition
        if negative is None:
            params = self.vae.decode(latents, condition).params
        else:
            both = self.vae.decode(torch.cat([latents, latents]), Condition.cat([negative, condition])).params
            params = self.guide(*both.chunk(2), guidance_scale)
        latents = self.step_callback(
            callback_on_step_end, callback_on_step_end_tensor_inputs, 0, None, {"latents": latents}
        )["latents"]

        # 4. Its mean image, converted
        images = self.postprocess(self.vae.mean_image(params), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ----- what a VAE is good at -------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images, prompt=None, class_labels=None) -> torch.Tensor:
        """Images -> the mean of q(z | x), (b, *vae.latent_shape)."""
        images = self.model_images(images)
        return self.vae.encode(images, self.condition_for_images(len(images), prompt, class_labels)).latent_mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, prompt=None, class_labels=None, output_type: str = "pil"):
        """z (b, *vae.latent_shape) -> images."""
        condition = self.condition_for_images(len(latents), prompt, class_labels)
        return self.postprocess(
            self.vae.decode(latents.to(self.device, self.vae.dtype), condition).sample, output_type
        )

    @torch.no_grad()
    def reconstruct(self, images, prompt=None, class_labels=None, output_type: str = "pil"):
        """Images -> decode(mean of q(z | x))."""
        return self.decode(self.encode(images, prompt, class_labels), prompt, class_labels, output_type)

    @torch.no_grad()
    def interpolate(self, start, end, num_steps: int = 8, prompt=None, class_labels=None, output_type: str = "pil"):
        """Decodes `num_steps` points on the straight line between two latents, the prior noise of two seeds, or the
        encodings of two images. `start`/`end`: a seed (`int`), a latent (`vae.latent_shape`, with or without a batch
        dimension of 1), or an image the model takes."""
        num_steps = check_int("num_steps", num_steps, minimum=2)
        latent_shape = tuple(self.vae.latent_shape)
        ends = []
        for point in (start, end):
            if isinstance(point, int) and not isinstance(point, bool):
                point = self.seed_latents(point)
            if isinstance(point, torch.Tensor) and tuple(point.shape) in (latent_shape, (1, *latent_shape)):
                ends.append(point.reshape(1, *latent_shape).to(self.device, self.vae.dtype))
            else:
                ends.append(self.encode(point, prompt, class_labels)[:1])
        weights = torch.linspace(0, 1, num_steps, device=self.device, dtype=self.vae.dtype)
        weights = weights.view(-1, *[1] * len(latent_shape))
        latents = (1 - weights) * ends[0] + weights * ends[1]  # (num_steps, *latent_shape)
        return self.decode(latents, prompt, class_labels, output_type)

    @torch.no_grad()
    def log_likelihood(
        self, images, num_samples: int = 50, prompt=None, class_labels=None, generator: torch.Generator | None = None
    ) -> LikelihoodOutput:
        """The importance-weighted lower bound on log p(x) with K = `num_samples` (IWAE; K = 1 is the ELBO)."""
        num_samples = check_int("num_samples", num_samples)
        images = self.model_images(images)
        condition = self.condition_for_images(len(images), prompt, class_labels)
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
