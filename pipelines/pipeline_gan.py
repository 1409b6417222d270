"""Pipeline for the GAN family: sample from the generator, with truncation, and walk between noise vectors on the
sphere (slerp). Only the generator (and the text components) is saved; the discriminator lives in training
checkpoints."""

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from hfgen.pipelines.pipeline_utils import HFGenPipeline

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

    def __init__(self, generator: GANGenerator, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(generator=generator, tokenizer=tokenizer, text_encoder=text_encoder)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        truncation_psi: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned model; None samples unconditionally.
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or per batch entry).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model, one image each.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): Noise z of shape (num_images, noise_dim), instead of sampling it.
            truncation_psi (`float`, *optional*, defaults to 1.0): The truncation trick: z is pulled towards the
                prior's mean, z' = psi * z, trading variety for fidelity; 1.0 is no truncation, 0.0 the mean image.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        if not 0.0 <= truncation_psi <= 1.0:
            raise ValueError(f"truncation_psi must be in [0, 1] (1 = no truncation), got {truncation_psi}.")
        prompts, num_images = self.check_inputs(prompt, batch_size, num_images_per_prompt, class_labels)
        condition = self.prepare_condition(self.generator, prompts, num_images, class_labels)

        # 2. z ~ N(0, I), or the given noise
        noise_shape = (num_images, self.generator.config.noise_dim)
        if latents is None:
            latents = randn_tensor(noise_shape, generator=generator, device=self.device, dtype=self.generator.dtype)
        elif tuple(latents.shape) != noise_shape:
            raise ValueError(f"latents must have shape {noise_shape}, got {tuple(latents.shape)}.")

        # 3. Truncation: towards the prior's mean (0), as StyleGAN's psi does in its latent space
        latents = latents.to(self.device, self.generator.dtype) * truncation_psi

        # 4. One generator pass
        images = self.generator(latents, condition).sample

        # 5. Convert
        images = self.postprocess(images, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def noise(self, seed: int) -> torch.Tensor:
        """The noise z (noise_dim,) that `seed` gives, drawn on the CPU so that a seed means the same on any device."""
        return torch.randn(self.generator.config.noise_dim, generator=torch.Generator().manual_seed(seed))

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
        if num_steps < 2:
            raise ValueError(f"num_steps must be at least 2, got {num_steps}.")
        ends = [
            self.noise(point) if isinstance(point, int) else point.reshape(-1).float().cpu() for point in (start, end)
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


GANPipeline.__call__.__doc__ = GANPipeline.__call__.__doc__.replace(
    "Examples:\n", EXAMPLE_DOC_STRING.strip() + "\n", 1
)
