"""The few building blocks that several hfgen models share.

Model files import only torch, diffusers, transformers and this module, so that they can later be shipped inside Hub
repos as remote code. Keep this file small: a block belongs here only once a second family needs it.
"""

import math

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from hfgen.conditioning import Condition


class ConvEncoder(nn.Module):
    r"""Image -> feature map, halving the resolution once per entry of `block_out_channels`.

    (b, c, s, s) -> (b, block_out_channels[-1], s / 2**n, s / 2**n), built from diffusers' ResNet blocks.
    """

    def __init__(self, in_channels: int, block_out_channels: tuple[int, ...], layers_per_block: int, norm_groups: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        blocks = []
        channels = block_out_channels[0]
        for out_channels in block_out_channels:
            for _ in range(layers_per_block):
                blocks.append(
                    ResnetBlock2D(
                        in_channels=channels, out_channels=out_channels, temb_channels=None, groups=norm_groups
                    )
                )
                channels = out_channels
            # name="op": the default "conv" also registers a legacy alias of the same weights (refused by safetensors).
            blocks.append(Downsample2D(channels, use_conv=True, padding=1, name="op"))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, None) if isinstance(block, ResnetBlock2D) else block(h)
        return h


class ConvDecoder(nn.Module):
    r"""Feature map -> image parameters, doubling the resolution once per entry of `block_out_channels` (the mirror
    of [`ConvEncoder`]). (b, block_out_channels[-1], r, r) -> (b, out_channels, r * 2**n, r * 2**n)."""

    def __init__(
        self, out_channels: int, block_out_channels: tuple[int, ...], layers_per_block: int, norm_groups: int
    ):
        super().__init__()
        blocks = []
        channels = block_out_channels[-1]
        for block_channels in reversed(block_out_channels):
            blocks.append(Upsample2D(channels, use_conv=True))
            for _ in range(layers_per_block):
                blocks.append(
                    ResnetBlock2D(
                        in_channels=channels, out_channels=block_channels, temb_channels=None, groups=norm_groups
                    )
                )
                channels = block_channels
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = nn.GroupNorm(norm_groups, channels)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h, None) if isinstance(block, ResnetBlock2D) else block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def quantize(x: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Snaps `x` in [-1, 1] to the nearest of `num_bins` evenly spaced levels (data stored as uint8 may carry rounding
    from another grid, e.g. digits' 17 grey levels scaled to 0..255)."""
    levels = torch.round((x.clamp(-1, 1) + 1) / 2 * (num_bins - 1))
    return levels / (num_bins - 1) * 2 - 1


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, num_bins: int
) -> torch.Tensor:
    r"""Per-dimension log-probability of `num_bins`-level data in [-1, 1] under a logistic discretized to those bins.

    The edge bins take the remaining tail mass, so the probabilities of all `num_bins` values sum to one exactly
    (Salimans et al. 2017, PixelCNN++, https://arxiv.org/abs/1701.05517, eq. 2).
    """
    x = quantize(x, num_bins)
    half_bin = 1.0 / (num_bins - 1)
    inv_scale = torch.exp(-log_scale)
    cdf_plus = torch.sigmoid(inv_scale * (x - mean + half_bin))
    cdf_minus = torch.sigmoid(inv_scale * (x - mean - half_bin))
    log_cdf_plus = F.logsigmoid(inv_scale * (x - mean + half_bin))  # log P(value <= top of the lowest bin)
    log_one_minus_cdf_minus = -F.softplus(inv_scale * (x - mean - half_bin))  # log P(value >= bottom of the top bin)
    # For a very peaked logistic the bin mass underflows: use the density at the bin centre times the bin width.
    mid = inv_scale * (x - mean)
    log_pdf_mid = mid - log_scale - 2.0 * F.softplus(mid)
    log_bin_mass = torch.where(
        cdf_plus - cdf_minus > 1e-5,
        torch.log((cdf_plus - cdf_minus).clamp(min=1e-12)),
        log_pdf_mid + math.log(2 * half_bin),
    )
    return torch.where(
        x < -1 + half_bin, log_cdf_plus, torch.where(x > 1 - half_bin, log_one_minus_cdf_minus, log_bin_mass)
    )


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-dimension log-density of a diagonal Gaussian."""
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over all but the batch dimension."""
    return (-0.5 * math.log(2 * math.pi) - 0.5 * z**2).flatten(1).sum(1)


# ----- conditioning, shared by every conditional model ---------------------------------------------------------------
CONDITION_TYPES = (None, "class", "text")


def check_positive_sizes(**sizes) -> None:
    """ValueError naming every layer size that is not a positive int: a 0-wide or 0-deep model would otherwise be
    built and fail deep inside torch at the first batch (or, 0 layers, train a different model without a word)."""
    bad = [f"{name}={value!r}" for name, value in sizes.items() if isinstance(value, bool) or not value >= 1]
    if bad:
        raise ValueError(f"{', '.join(bad)}: layer sizes and counts must be positive ints.")


def check_condition_config(condition_type: str | None, num_classes: int | None, text_embed_dim: int | None):
    """ValueError for a conditioning configuration a model cannot be built from."""
    if condition_type not in CONDITION_TYPES:
        raise ValueError(f"condition_type must be one of {CONDITION_TYPES}, got {condition_type!r}.")
    if condition_type == "class" and not num_classes:
        raise ValueError("condition_type='class' needs num_classes.")
    if condition_type == "text" and not text_embed_dim:
        raise ValueError("condition_type='text' needs text_embed_dim (the text encoder's pooled output size).")
    # A setting of the other kind would be ignored, leaving a silently unconditional (or class-only) model.
    if num_classes is not None and condition_type != "class":
        raise ValueError(
            f"num_classes={num_classes} is used only with condition_type='class'; got {condition_type!r}."
        )
    if text_embed_dim is not None and condition_type != "text":
        raise ValueError(
            f"text_embed_dim={text_embed_dim} is used only with condition_type='text'; got {condition_type!r}."
        )


def condition_embedding(condition_type, num_classes, text_embed_dim, dim: int) -> nn.Module | None:
    """The module that maps a condition to (b, dim): a class table with an extra "no class" row (index
    `num_classes`, what caption dropout trains), or a small MLP on a pooled text embedding; None if unconditional."""
    if condition_type == "class":
        return nn.Embedding(num_classes + 1, dim)
    if condition_type == "text":
        return nn.Sequential(nn.Linear(text_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
    return None


def embed_condition(model, condition: Condition | None, batch_size: int) -> torch.Tensor | None:
    """A [`Condition`] -> (b, dim) through `model.condition_embedding`: its `class_labels` (the null class
    `num_classes` when there are none) or its pooled `text_embeds`; None for an unconditional model."""
    config = model.config
    if config.condition_type is None:
        if condition is not None:
            raise ValueError(f"This {type(model).__name__} was trained without conditioning: pass no condition.")
        return None
    if config.condition_type == "class":
        labels = None if condition is None else condition.class_labels
        if labels is None:
            labels = torch.full((batch_size,), config.num_classes, dtype=torch.long, device=model.device)
        if labels.numel() and (labels.min() < 0 or labels.max() > config.num_classes):
            raise ValueError(
                f"class_labels must be in [0, {config.num_classes}] ({config.num_classes} is the null class), got "
                f"{labels.tolist()}."
            )
        return model.condition_embedding(labels)
    if condition is None or condition.text_embeds is None:
        raise ValueError(
            f"This {type(model).__name__} is conditioned on text: pass a Condition with text_embeds (the pipeline "
            "encodes an empty prompt for unconditional samples)."
        )
    return model.condition_embedding(condition.text_embeds.to(model.dtype))
