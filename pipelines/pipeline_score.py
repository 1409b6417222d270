"""Pipeline for score models: a noise-conditional score network sampled by annealed Langevin dynamics.

- NCSN (Song & Ermon 2019, https://arxiv.org/abs/1907.05600): a score network s(x, sigma_i) over geometric noise
  levels, sampled by annealed Langevin dynamics (Algorithm 1, `AnnealedLangevinScheduler`).
- NCSNv2 (Song & Ermon 2020, https://arxiv.org/abs/2006.09011): the score is the network's output divided by sigma
  (technique 3), and a final denoising step.
- Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) on scores: s = s_null + w (s_cond -
  s_null), the score of p(x) p(c | x)^w up to the guidance approximation.

The network is diffusers' own `UNet2DModel` (or `UNet2DConditionModel` for prompts) given the level index as its
timestep, so one UNet serves every level.
"""

from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput, replace_example_docstring
from hfgen.pipelines.pipeline_diffusion import UNetPipelineMixin, unet_forward
from hfgen.pipelines.pipeline_utils import HFGenPipeline

from hfgen.conditioning import Condition
from hfgen.models.scheduling_score import AnnealedLangevinScheduler

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch

        >>> pipe = hfgen.ScorePipeline.from_pretrained("out/score-digits")
        >>> images = pipe(batch_size=16, generator=torch.manual_seed(0)).images  # every level, T steps each
        >>> fast = pipe(batch_size=16, num_inference_steps=5, steps_per_level=20, generator=torch.manual_seed(0))
        ```
"""


@dataclass
class ScorePipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`): The samples, as `output_type` asks.
    """

    images: list | object


def score_forward(model, sample: torch.Tensor, levels, sigmas: torch.Tensor, condition: Condition | None = None):
    """s(x, sigma_i) = network(x, i) / sigma_i (NCSNv2 technique 3): `levels` are level indices, (b,) or one for all,
    `sigmas` the scheduler's. The trainer and the pipeline both use this."""
    levels = torch.as_tensor(levels, device=sample.device).long()
    sigma = sigmas.to(sample.device)[levels]
    if sigma.ndim:  # one sigma per sample: (b, 1, ..., 1)
        sigma = sigma.view(-1, *[1] * (sample.ndim - 1))
    return unet_forward(model, sample, levels, condition) / sigma.to(sample.dtype)


def annealed_langevin(
    scheduler: AnnealedLangevinScheduler, score_fn, latents: torch.Tensor, generator=None, on_step=None
):
    """The sampling loop: for each entry i of `scheduler.timesteps`, x <- scheduler.step(score_fn(x, i), i, x).
    `score_fn(x, level)` gives the score; `on_step(step, level, x)` may return a replacement x. The pipeline calls
    this with its UNet, the toys and tests with any score (an MLP, an analytic one)."""
    for i, t in enumerate(scheduler.timesteps):
        latents = scheduler.step(score_fn(latents, t), t, latents, generator=generator).prev_sample
        if on_step is not None:
            latents = on_step(i, t, latents)
    return latents


class ScorePipeline(UNetPipelineMixin, HFGenPipeline):
    r"""Sampling from a noise-conditional score network by annealed Langevin dynamics.

    Parameters:
        unet ([`UNet2DModel`] or [`UNet2DConditionModel`]): The score network; its timestep is the noise-level index,
            its output times 1 / sigma the score. Unconditional, class-conditional (`num_class_embeds` = classes + 1,
            the last the null class) or text-conditional.
        scheduler ([`AnnealedLangevinScheduler`]): The noise levels and the Langevin step sizes.
        tokenizer, text_encoder (*optional*): The text components of a text-conditioned UNet.
    """

    model_cpu_offload_seq = "text_encoder->unet"
    model_component = "unet"
    # No "steps": a Space's "Sampling steps" slider reads as steps, but `num_inference_steps` here counts noise levels
    # (at most the scheduler's L); the Langevin steps per level are the knob a Space shows (T = 100 gave digits).
    family_capabilities = frozenset({"guidance"})
    sampling_controls = {"steps_per_level": (1, 200, 100, "Langevin steps per noise level")}

    def __init__(self, unet, scheduler: AnnealedLangevinScheduler, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder)

    def score(self, latents: torch.Tensor, level, condition, negative, guidance_scale: float) -> torch.Tensor:
        """s(x, sigma_level), guided away from `negative` when it is given (one batched call)."""
        sigmas = self.scheduler.sigmas
        if negative is None:
            return score_forward(self.unet, latents, level, sigmas, condition)
        both = score_forward(self.unet, torch.cat([latents] * 2), level, sigmas, Condition.cat([negative, condition]))
        return self.guide(*both.chunk(2), guidance_scale)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        num_inference_steps: int | None = None,
        steps_per_level: int | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned UNet; None samples unconditionally.
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or class label).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned UNet.
            num_inference_steps (`int`, *optional*): The number of noise levels to anneal through (not the number of
                network calls), evenly spaced over the scheduler's L; None uses all L. Each level takes
                `steps_per_level` Langevin steps, plus one denoising step at the end.
            steps_per_level (`int`, *optional*): Langevin steps per level; defaults to the scheduler's.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance on the score; 1 turns it
                off.
            negative_prompt (`str` or `list[str]`, *optional*): What to guide away from (default: the empty prompt).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): The initial N(0, I) noise, of shape `latent_shape(num_images)`;
                it is scaled by sigma_1.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt" (in [0, 1]).
            return_dict (`bool`, *optional*, defaults to True): Return a [`ScorePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): `callback_on_step_end(pipeline, step, level,
                {"latents": x})` after each step; what it returns replaces those tensors.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 0. Check the inputs (the scheduler checks the levels and steps)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device, steps_per_level=steps_per_level)

        # 1. How many images, and what they are conditioned on (and the negative condition for guidance)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. x ~ N(0, sigma_1^2 I)
        latents = self.prepare_latents(self.latent_shape(num_images), self.unet.dtype, self.device, generator, latents)

        # 3. Annealed Langevin dynamics: T steps x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z per level,
        # then x <- x + sigma_L^2 s(x, sigma_L)
        def score_fn(x, level):
            return self.score(x, level, condition, negative, guidance_scale)

        progress = self.progress_bar(total=len(self.scheduler.timesteps))

        def on_step(step, level, x):
            progress.update()
            values = self.step_callback(
                callback_on_step_end, callback_on_step_end_tensor_inputs, step, level, {"latents": x}
            )
            return values["latents"]

        latents = annealed_langevin(self.scheduler, score_fn, latents, generator, on_step)
        progress.close()

        # 4. Convert: the model's [-1, 1] scale -> images
        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ScorePipelineOutput(images=images)
