"""Generative adversarial networks: a DCGAN generator and discriminator, and the objectives that train them.

- GAN: Goodfellow et al. 2014, "Generative Adversarial Nets", https://arxiv.org/abs/1406.2661 (the minimax game and
  the non-saturating generator loss -log D(G(z)))
- DCGAN: Radford et al. 2016, https://arxiv.org/abs/1511.06434 (transposed convolutions, batch norm, LeakyReLU in D)
- WGAN: Arjovsky et al. 2017, https://arxiv.org/abs/1701.07875 (a critic without sigmoid, weight clipping)
- WGAN-GP: Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028 (gradient penalty on interpolates, eq. 3)
- Spectral normalisation: Miyato et al. 2018, https://arxiv.org/abs/1802.05957 (with the hinge loss, eq. 16-17)
- Projection discriminator: Miyato & Koyama 2018, https://arxiv.org/abs/1802.05637 (D(x, y) = psi(h) + <embed(y), h>)

Images are in [-1, 1]; the generator maps noise z ~ N(0, I) of size `noise_dim` (plus an optional class label or
text embedding) to an image; the discriminator maps an image (plus the same condition) to one score per image: a
logit for the cross-entropy objectives, an unbounded critic value for the Wasserstein and hinge objectives.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as spectral_normalize

from hfgen.conditioning import Condition
from hfgen.layers import check_condition_config, condition_embedding, embed_condition

GAN_LOSSES = ("non-saturating", "minimax", "wgan", "wgan-gp", "hinge")
DISCRIMINATOR_NORMS = ("batch", "layer", "none")
DISCRIMINATOR_CONDITIONINGS = ("projection", "concat")


@dataclass
class GANGeneratorOutput(BaseOutput):
    """`sample`: generated images (b, c, s, s) in [-1, 1]."""

    sample: torch.Tensor


@dataclass
class GANDiscriminatorOutput(BaseOutput):
    """`scores`: one logit / critic value per image, (b,); `features`: the flattened last feature map (b, f), which a
    feature-matching loss compares. (Fields after the first have defaults: Accelerate rebuilds outputs from a dict.)"""

    scores: torch.Tensor
    features: torch.Tensor = None


def _check_common(sample_size: int, block_out_channels, condition_type, num_classes, text_embed_dim):
    upsamplings = 2 ** len(block_out_channels)
    if not block_out_channels or sample_size % upsamplings or sample_size < upsamplings:
        raise ValueError(
            f"sample_size={sample_size} must be a multiple of 2**len(block_out_channels)={upsamplings} (one "
            f"resolution doubling per width in {tuple(block_out_channels)}): change one of them."
        )
    check_condition_config(condition_type, num_classes, text_embed_dim)


class GANGenerator(ModelMixin, ConfigMixin):
    r"""The DCGAN generator: z -> a linear projection to a small feature map, then transposed convolutions that double
    the resolution, with batch norm and ReLU, and tanh on the output.

    Parameters:
        sample_size (`int`, *optional*, defaults to 8): Image side, a multiple of 2**len(block_out_channels).
        out_channels (`int`, *optional*, defaults to 1): Image channels (1 grey, 3 RGB, 4 RGBA).
        noise_dim (`int`, *optional*, defaults to 32): Size of z ~ N(0, I).
        block_out_channels (`tuple[int]`, *optional*, defaults to (32, 64)): Widths from the output resolution down;
            each width is one doubling of the resolution.
        condition_type (`str`, *optional*): None, "class" or "text".
        num_classes (`int`, *optional*): Number of classes when `condition_type="class"`.
        text_embed_dim (`int`, *optional*): Size of the pooled text embedding when `condition_type="text"`.
        condition_dim (`int`, *optional*, defaults to 32): Size the condition is embedded to (concatenated to z).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        out_channels: int = 1,
        noise_dim: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64),
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        condition_dim: int = 32,
    ):
        super().__init__()
        _check_common(sample_size, block_out_channels, condition_type, num_classes, text_embed_dim)
        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, condition_dim)
        cond = condition_dim if condition_type else 0
        self.feature_size = sample_size // 2 ** len(block_out_channels)
        widths = list(reversed(block_out_channels))  # low resolution (wide) first
        self.project = nn.Linear(noise_dim + cond, widths[0] * self.feature_size**2)
        self.norm_in = nn.BatchNorm2d(widths[0])
        blocks = []
        for in_width, out_width in zip(widths[:-1], widths[1:]):
            blocks += [nn.ConvTranspose2d(in_width, out_width, 4, 2, 1, bias=False), nn.BatchNorm2d(out_width)]
            blocks.append(nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = nn.ConvTranspose2d(widths[-1], out_channels, 4, 2, 1)

    def forward(self, noise: torch.Tensor, condition: Condition | None = None, return_dict: bool = True):
        """(b, noise_dim) noise and an optional condition -> (b, c, s, s) images in [-1, 1]."""
        if noise.ndim != 2 or noise.shape[1] != self.config.noise_dim:
            raise ValueError(f"Expected noise of shape (batch, {self.config.noise_dim}), got {tuple(noise.shape)}.")
        c = embed_condition(self, condition, noise.shape[0])
        h = noise if c is None else torch.cat([noise, c], dim=1)  # (b, noise_dim + cond)
        h = self.project(h).view(noise.shape[0], -1, self.feature_size, self.feature_size)  # (b, w, r, r)
        h = self.blocks(F.relu(self.norm_in(h)))  # (b, block_out_channels[0], s / 2, s / 2)
        sample = torch.tanh(self.conv_out(h))  # (b, c, s, s)
        return GANGeneratorOutput(sample=sample) if return_dict else (sample,)


class GANDiscriminator(ModelMixin, ConfigMixin):
    r"""The DCGAN discriminator (a critic for the Wasserstein objectives): strided convolutions with LeakyReLU(0.2)
    that halve the resolution, then one linear score per image.

    Parameters:
        sample_size (`int`, *optional*, defaults to 8): Image side, a multiple of 2**len(block_out_channels).
        in_channels (`int`, *optional*, defaults to 1): Image channels.
        block_out_channels (`tuple[int]`, *optional*, defaults to (32, 64)): Widths; each block halves the resolution.
        norm (`str`, *optional*, defaults to "batch"): "batch" (DCGAN), "layer" (for WGAN-GP, whose per-sample
            penalty batch norm would couple across the batch) or "none" (usual with spectral norm). The first block
            is never normalised, as in DCGAN.
        spectral_norm (`bool`, *optional*, defaults to False): Spectral normalisation of every convolution and linear
            layer, so each has largest singular value ~1 (Miyato et al. 2018).
        condition_type (`str`, *optional*): None, "class" or "text".
        num_classes (`int`, *optional*): Number of classes when `condition_type="class"`.
        text_embed_dim (`int`, *optional*): Size of the pooled text embedding when `condition_type="text"`.
        conditioning (`str`, *optional*, defaults to "projection"): How the condition enters: "projection" adds
            <embed(c), features> to the score (Miyato & Koyama 2018); "concat" concatenates embed(c) to the image
            as `condition_dim` constant channels (Mirza & Osindero 2014, https://arxiv.org/abs/1411.1784).
        condition_dim (`int`, *optional*, defaults to 32): Channels of embed(c) for "concat".
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64),
        norm: str = "batch",
        spectral_norm: bool = False,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        conditioning: str = "projection",
        condition_dim: int = 32,
    ):
        super().__init__()
        _check_common(sample_size, block_out_channels, condition_type, num_classes, text_embed_dim)
        if norm not in DISCRIMINATOR_NORMS:
            raise ValueError(f"norm must be one of {DISCRIMINATOR_NORMS}, got {norm!r}.")
        if conditioning not in DISCRIMINATOR_CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {DISCRIMINATOR_CONDITIONINGS}, got {conditioning!r}.")
        feature_size = sample_size // 2 ** len(block_out_channels)
        features = block_out_channels[-1] * feature_size**2
        embed_dim = features if conditioning == "projection" else condition_dim
        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, embed_dim)
        concat = condition_dim if condition_type and conditioning == "concat" else 0
        layers, channels = [], in_channels + concat
        for i, width in enumerate(block_out_channels):
            layers.append(nn.Conv2d(channels, width, 4, 2, 1))
            if i > 0 and norm == "batch":
                layers.append(nn.BatchNorm2d(width))
            elif i > 0 and norm == "layer":
                layers.append(nn.GroupNorm(1, width))  # one group: normalises each sample over (c, h, w)
            layers.append(nn.LeakyReLU(0.2))
            channels = width
        self.blocks = nn.Sequential(*layers)
        self.score = nn.Linear(features, 1, bias=False)  # as DCGAN's last layer
        if spectral_norm:
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    spectral_normalize(module)

    def forward(self, sample: torch.Tensor, condition: Condition | None = None, return_dict: bool = True):
        """(b, c, s, s) images in [-1, 1] and an optional condition -> scores (b,) and features (b, f)."""
        size, channels = self.config.sample_size, self.config.in_channels
        if sample.shape[1:] != (channels, size, size):
            raise ValueError(
                f"Expected images of shape (batch, {channels}, {size}, {size}), got {tuple(sample.shape)}: resize "
                f"to {size}x{size} (--resolution {size}) and use {channels} channel(s)."
            )
        c = embed_condition(self, condition, sample.shape[0])
        if c is not None and self.config.conditioning == "concat":
            c_map = c[:, :, None, None].expand(-1, -1, size, size)  # (b, condition_dim, s, s)
            sample = torch.cat([sample, c_map], dim=1)
        features = self.blocks(sample).flatten(1)  # (b, f)
        scores = self.score(features).squeeze(1)  # (b,)
        if c is not None and self.config.conditioning == "projection":
            scores = scores + (c * features).sum(1)  # higher when the features agree with the condition's embedding
        return GANDiscriminatorOutput(scores=scores, features=features) if return_dict else (scores, features)


# ----- objectives ----------------------------------------------------------------------------------------------------
def _check_loss(gan_loss: str):
    if gan_loss not in GAN_LOSSES:
        raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {gan_loss!r}.")


def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor, gan_loss: str) -> torch.Tensor:
    """The loss the discriminator minimises: low when real scores are high and fake scores low (before any penalty).

    - "non-saturating", "minimax": binary cross-entropy, -log D(x) - log(1 - D(G(z))) with D = sigmoid(score);
    - "wgan", "wgan-gp": the negated Wasserstein estimate, E[D(G(z))] - E[D(x)];
    - "hinge": E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))].
    """
    _check_loss(gan_loss)
    if gan_loss in ("non-saturating", "minimax"):  # -log sigmoid(r) - log(1 - sigmoid(f))
        return F.softplus(-real_scores).mean() + discriminator_fake_loss(fake_scores, gan_loss)
    if gan_loss == "hinge":
        return F.relu(1 - real_scores).mean() + discriminator_fake_loss(fake_scores, gan_loss)
    return fake_scores.mean() - real_scores.mean()


def discriminator_fake_loss(fake_scores: torch.Tensor, gan_loss: str) -> torch.Tensor:
    """The half of [`discriminator_loss`] for images that must be judged fake (generated ones, and the matching-aware
    discriminator's real images with a wrong condition): -log(1 - D(x)) or E[max(0, 1 + D(x))]. Bounded losses only:
    a critic's unbounded score would simply run off."""
    if gan_loss in ("non-saturating", "minimax"):
        return F.softplus(fake_scores).mean()
    if gan_loss == "hinge":
        return F.relu(1 + fake_scores).mean()
    raise ValueError(f"Only hinge, non-saturating and minimax have a bounded fake half, not {gan_loss!r}.")


def generator_loss(fake_scores: torch.Tensor, gan_loss: str) -> torch.Tensor:
    """The loss the generator minimises: low when its images get high scores.

    - "minimax": log(1 - D(G(z))), the original game, whose gradient vanishes while D wins;
    - "non-saturating": -log D(G(z)), the same fixed point with strong early gradients;
    - "wgan", "wgan-gp", "hinge": -E[D(G(z))].
    """
    _check_loss(gan_loss)
    if gan_loss == "minimax":
        return -F.softplus(fake_scores).mean()  # log(1 - sigmoid(f))
    if gan_loss == "non-saturating":
        return F.softplus(-fake_scores).mean()  # -log sigmoid(f)
    return -fake_scores.mean()


def interpolate_images(
    real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_hat = eps * x + (1 - eps) * G(z), eps ~ U[0, 1] per image: where WGAN-GP evaluates the critic's gradient.
    Returned as a leaf that requires grad."""
    eps = torch.rand((real.shape[0],) + (1,) * (real.ndim - 1), generator=generator, device=real.device)
    return (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)


def gradient_penalty(scores: torch.Tensor, interpolates: torch.Tensor) -> torch.Tensor:
    r"""E[(||\nabla_x D(x_hat)||_2 - 1)^2] from the critic's scores (b,) at `interpolates` (b, ...), keeping the graph
    so that the penalty itself is differentiated (Gulrajani et al. 2017, eq. 3; multiply by lambda_gp)."""
    (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    return ((gradients.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
