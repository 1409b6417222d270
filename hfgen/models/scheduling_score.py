"""Annealed Langevin dynamics as a diffusers scheduler, for noise-conditional score networks.

- NCSN (Song & Ermon 2019, https://arxiv.org/abs/1907.05600): geometric noise levels sigma_1 > ... > sigma_L and
  Algorithm 1, annealed Langevin dynamics: at each level i, `steps_per_level` steps
  x <- x + alpha_i / 2 * s(x, sigma_i) + sqrt(alpha_i) z with alpha_i = eps * sigma_i^2 / sigma_L^2.
- NCSNv2 (Song & Ermon 2020, https://arxiv.org/abs/2006.09011), appendix C.2 / "denoising": one last step
  x <- x + sigma_L^2 s(x, sigma_L) (Tweedie's formula, the posterior mean E[x_0 | x]) removes the noise of sigma_L
  that Langevin dynamics leaves in the samples.

Saved and loaded like any diffusers scheduler (`save_pretrained` writes `scheduler_config.json`).
"""

import math

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class AnnealedLangevinScheduler(SchedulerMixin, ConfigMixin):
    r"""Annealed Langevin dynamics over the geometric noise levels a score network was trained on.

    `timesteps` are noise-level indices (0 is the largest sigma), each repeated `steps_per_level` times, plus one
    last index for the denoising step; `step` takes the score s(x, sigma) at that level, not a raw network output.

    Args:
        num_train_timesteps (`int`, *optional*, defaults to 10): L, the number of noise levels.
        sigma_min (`float`, *optional*, defaults to 0.01): sigma_L, the smallest level (below the data's resolution).
        sigma_max (`float`, *optional*, defaults to 1.0): sigma_1, the largest level (about the largest distance
            between two training points, NCSNv2 technique 1).
        steps_per_level (`int`, *optional*, defaults to 100): T, Langevin steps at each level.
        step_lr (`float`, *optional*, defaults to 2e-5): eps, the step size at sigma_L; alpha_i = eps sigma_i^2 /
            sigma_L^2.
        denoise_final (`bool`, *optional*, defaults to True): End with the Tweedie step x + sigma_L^2 s(x, sigma_L).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 10,
        sigma_min: float = 0.01,
        sigma_max: float = 1.0,
        steps_per_level: int = 100,
        step_lr: float = 2e-5,
        denoise_final: bool = True,
    ):
        if (
            isinstance(num_train_timesteps, bool)
            or not isinstance(num_train_timesteps, int)
            or num_train_timesteps < 1
        ):
            raise ValueError(
                f"num_train_timesteps (the noise levels L) must be an int >= 1, got {num_train_timesteps!r}."
            )
        if not 0 < sigma_min < sigma_max or not math.isfinite(sigma_max):
            raise ValueError(
                f"Need 0 < sigma_min < sigma_max (finite), got sigma_min={sigma_min}, sigma_max={sigma_max}."
            )
        if isinstance(steps_per_level, bool) or not isinstance(steps_per_level, int) or steps_per_level < 1:
            raise ValueError(f"steps_per_level must be an int >= 1, got {steps_per_level!r}.")
        if not 0 < step_lr < 1:
            raise ValueError(f"step_lr (eps, the step size at sigma_min) must be in (0, 1), got {step_lr}.")
        # sigma_1 > ... > sigma_L, a geometric sequence (NCSN section 4.2); computed in float64, stored in float32.
        self.sigmas = torch.logspace(
            math.log10(sigma_max), math.log10(sigma_min), num_train_timesteps, dtype=torch.float64
        ).float()
        if num_train_timesteps == 1:
            self.sigmas = torch.tensor([sigma_min], dtype=torch.float32)
        # The initial sample is N(0, sigma_1^2 I): at the largest level the perturbed data is about that wide.
        self.init_noise_sigma = float(self.sigmas[0])
        self.set_timesteps()

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None, steps_per_level=None
    ):
        """Chooses the levels to anneal through and lays out the steps.

        Args:
            num_inference_steps (`int`, *optional*): The number of noise levels used, evenly spaced over the L trained
                ones (always including the first and the last); None uses all L. Each level takes `steps_per_level`
                score evaluations, so a call costs num_inference_steps * steps_per_level (+ 1 to denoise) of them.
            device (`str` or `torch.device`, *optional*): Where `timesteps` live.
            steps_per_level (`int`, *optional*): Overrides the config's T for this sampling run.
        """
        num_levels = self.config.num_train_timesteps
        levels = num_levels if num_inference_steps is None else num_inference_steps
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= num_levels:
            raise ValueError(
                f"num_inference_steps (noise levels to anneal through) must be an int in [1, {num_levels}] (the "
                f"trained levels), got {num_inference_steps!r}."
            )
        steps = self.config.steps_per_level if steps_per_level is None else steps_per_level
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps_per_level must be an int >= 1, got {steps_per_level!r}.")
        self.num_inference_steps = levels
        # With one level the smallest is used: it is the one the final samples must match.
        chosen = (
            torch.linspace(0, num_levels - 1, levels).round().long() if levels > 1 else torch.tensor([num_levels - 1])
        )
        timesteps = chosen.repeat_interleave(steps)
        if self.config.denoise_final:
            timesteps = torch.cat([timesteps, timesteps[-1:]])
        self.timesteps = timesteps.to(device)
        self._step_index = 0

    def step_size(self, timestep) -> torch.Tensor:
        """alpha_i = eps * sigma_i^2 / sigma_L^2 (NCSN Algorithm 1): the same signal-to-noise ratio at every level."""
        sigma = self.sigmas[torch.as_tensor(timestep).long().cpu()]
        return self.config.step_lr * (sigma / self.sigmas[-1]) ** 2

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The score network takes x as it is (diffusers' interface)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple:
        """One Langevin step at the level `timestep` (or, as the last of `timesteps` with `denoise_final`, the
        Tweedie step).

        Args:
            model_output (`torch.Tensor`): The score s(x, sigma_i), same shape as `sample`.
            timestep (`int` or `torch.Tensor`): The level index i (an entry of `timesteps`).
            sample (`torch.Tensor`): x.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): For the Langevin noise z (one per
                sample in the batch, or one for all).
            return_dict (`bool`, *optional*, defaults to True): A [`SchedulerOutput`] or a tuple.
        """
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output {tuple(model_output.shape)} must have the shape of sample {tuple(sample.shape)}."
            )
        score = model_output.float()
        if self.config.denoise_final and self._step_index == len(self.timesteps) - 1:
            # x_0 = E[x | x + sigma_L z] = x + sigma_L^2 grad log p_sigma_L(x) (Tweedie), without noise
            sigma = self.sigmas[torch.as_tensor(timestep).long().cpu()].item()
            prev_sample = sample.float() + sigma**2 * score
        else:
            alpha = self.step_size(timestep).item()
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
            prev_sample = sample.float() + 0.5 * alpha * score + math.sqrt(alpha) * noise
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x + sigma_i z for the level indices `timesteps` (b,): the perturbed data of denoising score matching."""
        sigma = self.sigmas.to(original_samples.device)[timesteps.long()]
        return original_samples + sigma.view(-1, *[1] * (original_samples.ndim - 1)).to(original_samples.dtype) * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
