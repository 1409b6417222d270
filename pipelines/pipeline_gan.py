"""Pipeline for the GAN family: sample from the generator, with truncation, and walk between noise vectors on the
sphere (slerp). Only the generator (and the text components) is saved; the discriminator lives in training
checkpoints."""

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from hfgen.pipelines.pipeline_utils import HFGenPipeline, check_int, check_number

from hfgen.conditioning import Condition
from hfgen.models.modeling_gan import GANGenerator

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch

        >>> pipe = hfgen.GANPipeline.from_pretrained("out/gan-wgan-gp-digits")
        >>> images = pipe(batch_size=16, truncation_psi=0.7, generator=torch.manual_seed(0)).images
        >>> strip = pipe.interpolate(0, 1, num_steps=8)  # slerp between the noise of seeds 0 and 1
        ```
"""


def slerp(t: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    r"""Spherical interpolation between noise vectors (d,) at fractions `t` (n,) -> (n, d). A Gaussian z has norm ~
    sqrt(d), and the straight line between two such vectors passes through low-norm points the generator rarely saw;
    the great circle does not (White 2016, "Sampling Generative Networks", https://arxiv.org/abs/1609.04468)."""
    cos = torch.dot(start / start.norm(), end / end.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    t = t.unsqueeze(1)  # (n, 1)
    if omega.abs() < 1e-4:  # (nearly) parallel: the arc is a line
        return (1 - t) * start + t * end
    return (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / torch.sin(omega)


class GANPipeline(HFGenPipeline):
    r"""Generation with a [`GANGenerator`]: z ~ N(0, I), optionally truncated, then one generator pass.

    Parameters:
        generator ([`GANGenerator`]): The trained generator.
        tokenizer ([`~transformers.PreTrainedTokenizerFast`], *optional*): Tokenizer for text-conditioned models.
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): Text encoder for text-conditioned models.
    """

    model_cpu_offload_seq = "text_encoder->generator"
    model_component = "generator"
    family_capabilities = frozenset({"guidance", "interpolation"})
    sampling_controls = {"truncation_psi": (0.0, 1.0, 1.0, "Truncation psi (1 = none)")}

    def __init__(self, generator: GANGenerator, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(generator=generator, tokenizer=tokenizer, text_encoder=text_encoder)

    def latent_shape(self, num_images: int) -> tuple[int, int]:
        return (num_images, self.generator.config.noise_dim)

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
        truncation_psi: float = 1.0,
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
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model, one image each.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance on the generated image:
                G(z, null) + scale * (G(z, c) - G(z, null)), clamped to [-1, 1]. 1 turns it off.
            negative_prompt (`str` or `list[str]`, *optional*): What to guide away from (default: the empty prompt).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): Noise z of shape (num_images, noise_dim), instead of sampling it.
            truncation_psi (`float`, *optional*, defaults to 1.0): The truncation trick: z is pulled towards the
                prior's mean, z' = psi * z, trading variety for fidelity; 1.0 is no truncation, 0.0 the mean image.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): Called once after the generator pass (a GAN samples in
                one step) as `callback_on_step_end(pipeline, 0, None, {"latents": z})`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        truncation_psi = check_number("truncation_psi", truncation_psi, 0, 1, why=" (1 = no truncation)")
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. z ~ N(0, I), or the given noise
        latents = self.prepare_latents(
            self.latent_shape(num_images), self.generator.dtype, self.device, generator, latents
        )

        # 3. Truncation: towards the prior's mean (0), as StyleGAN's psi does in its latent space
        latents = latents * truncation_psi

        # 4. One generator pass, guided away from the null (or negative) condition
        if negative is None:
            images = self.generator(latents, condition).sample
        else:
            both = self.generator(torch.cat([latents, latents]), Condition.cat([negative, condition])).sample
            images = self.guide(*both.chunk(2), guidance_scale).clamp(-1, 1)
        latents = self.step_callback(
            callback_on_step_end, callback_on_step_end_tensor_inputs, 0, None, {"latents": latents}
        )["latents"]

        # 5. Convert
        images = self.postprocess(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @torch.no_grad()
    def interpolate(
        self,
        start: int | torch.Tensor,
        end: int | torch.Tensor,
        num_steps: int = 8,
        prompt: str | None = None,
        class_labels: int | None = None,
        truncation_psi: float = 1.0,
        output_type: str = "pil",
    ):
        """`num_steps` images along the great circle (slerp) between two noise vectors (noise_dim,), or between the
        noise of two seeds, all with the same prompt or class."""
        num_steps = check_int("num_steps", num_steps, minimum=2)
        ends = [
            self.seed_latents(point) if isinstance(point, int) else point.reshape(-1).float().cpu()
            for point in (start, end)
        ]
        latents = slerp(torch.linspace(0, 1, num_steps), *ends)  # (num_steps, noise_dim)
        return self(
            prompt=prompt,
            num_images_per_prompt=num_steps if prompt is not None or class_labels is not None else 1,
            batch_size=num_steps if prompt is None and class_labels is None else 1,
            class_labels=class_labels,
            latents=latents,
            truncation_psi=truncation_psi,
            output_type=output_type,
        ).images
