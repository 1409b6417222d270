"""A small noise-conditional score network for points (the 2-D toys), with the UNet's interface.

- NCSN (Song & Ermon 2019, https://arxiv.org/abs/1907.05600): one network s(x, sigma_i) for all noise levels,
  conditioned on the level.
- NCSNv2 (Song & Ermon 2020, https://arxiv.org/abs/2006.09011), technique 3: the network's output divided by sigma
  is the score, since ||grad log p_sigma|| grows like 1 / sigma. The division happens outside the network (in
  `hfgen.pipelines.pipeline_score.score_forward`), so images use diffusers' `UNet2DModel` unchanged, and this model
  returns the unscaled output the same way: `model(sample, timestep).sample`.
"""

from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class ScoreModelOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor`): (b, in_features), sigma_i times the score at the level (NCSNv2's scaling).
    """

    sample: torch.Tensor


class ScoreMLPModel(ModelMixin, ConfigMixin):
    r"""An MLP s(x, i) for points: x (b, in_features) and the noise-level index i, embedded and added to each hidden
    layer (a learned embedding per level, as NCSN's conditional normalisation has parameters per level).

    Args:
        in_features (`int`, *optional*, defaults to 2): Dimensions of a point.
        hidden_size (`int`, *optional*, defaults to 128): Width of the hidden layers.
        num_layers (`int`, *optional*, defaults to 3): Hidden layers.
        num_levels (`int`, *optional*, defaults to 10): L, the noise levels (the scheduler's `num_train_timesteps`).
    """

    @register_to_config
    def __init__(self, in_features: int = 2, hidden_size: int = 128, num_layers: int = 3, num_levels: int = 10):
        super().__init__()
        for name, value in (
            ("in_features", in_features), ("hidden_size", hidden_size), ("num_layers", num_layers),
            ("num_levels", num_levels),
        ):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.input = nn.Linear(in_features, hidden_size)
        self.level_embedding = nn.Embedding(num_levels, hidden_size)
        self.hidden = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(num_layers - 1)])
        self.output = nn.Linear(hidden_size, in_features)
        self.act = nn.SiLU()

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        """sample (b, in_features), timestep: level indices (b,) or one for all; `class_labels` must be None (the
        toys are unconditional; the argument is there because the pipeline calls UNets with it)."""
        if class_labels is not None:
            raise ValueError("ScoreMLPModel is unconditional: pass no class_labels.")
        if sample.ndim != 2 or sample.shape[1] != self.config.in_features:
            raise ValueError(f"sample must be (batch, {self.config.in_features}), got {tuple(sample.shape)}.")
        levels = torch.as_tensor(timestep, device=sample.device).long().reshape(-1).expand(len(sample))
        if levels.min() < 0 or levels.max() >= self.config.num_levels:
            raise ValueError(f"timestep (a level index) must be in [0, {self.config.num_levels - 1}].")
        embedding = self.level_embedding(levels)  # (b, hidden)
        h = self.act(self.input(sample) + embedding)
        for layer in self.hidden:
            h = self.act(layer(h) + embedding)
        out = self.output(h)  # (b, in_features)
        return ScoreModelOutput(sample=out) if return_dict else (out,)
