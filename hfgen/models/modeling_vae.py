"""Variational autoencoders: VAE, beta-VAE and conditional VAE in one configurable model.

- VAE: Kingma & Welling 2014, "Auto-Encoding Variational Bayes", https://arxiv.org/abs/1312.6114
- beta-VAE: Higgins et al. 2017, https://openreview.net/forum?id=Sy2fzU9gl (`beta` weights the KL term)
- Conditional VAE: Sohn et al. 2015, "Learning Structured Output Representation using Deep Conditional Generative
  Models" (encoder and decoder both see the condition: a class label or a text embedding)
- Importance-weighted bound: Burda et al. 2016, "Importance Weighted Autoencoders", https://arxiv.org/abs/1509.00519

The model maps images in [-1, 1] to a latent z and back:
    q(z | x, c) = N(mu(x, c), diag(sigma^2(x, c)))      encoder
    p(z)        = N(0, I)                               prior
    p(x | z, c) = Gaussian / Bernoulli / discretized    decoder, chosen by `likelihood`
z is a vector of `latent_dim` numbers, or with `latent_channels` a grid (latent_channels, s / 2^k, s / 2^k) that keeps
the image's layout: the first stage of latent diffusion (Rombach et al. 2022, whose KL-regularised autoencoder is
this with a small `beta`), whose UNet denoises z as an image.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

from hfgen.conditioning import Condition
from hfgen.layers import (
    ConvDecoder,
    ConvEncoder,
    check_condition_config,
    condition_embedding,
    discretized_logistic_log_prob,
    embed_condition,
    gaussian_log_prob,
    quantize,
    standard_normal_log_prob,
)

LIKELIHOODS = ("gaussian", "bernoulli", "discretized")


@dataclass
class VAEEncoderOutput(BaseOutput):
    """q(z | x): `latent_mean` and `latent_logvar`, each (batch, *latent_shape)."""

    latent_mean: torch.Tensor
    latent_logvar: torch.Tensor = None


@dataclass
class VAEDecoderOutput(BaseOutput):
    """p(x | z): `sample` is the decoder's mean image in [-1, 1]; `params` the raw distribution parameters."""

    sample: torch.Tensor
    params: torch.Tensor = None


@dataclass
class VAEOutput(BaseOutput):
    """One training forward pass. Losses are in nats per image, averaged over the batch. (Fields after the first
    have defaults, as in diffusers: Accelerate rebuilds outputs from a dict when it casts mixed-precision results.)"""

    loss: torch.Tensor
    reconstruction_loss: torch.Tensor = None
    kl: torch.Tensor = None
    sample: torch.Tensor = None


class VAEModel(ModelMixin, ConfigMixin):
    r"""A convolutional VAE over images with a vector (or spatial) latent, optionally conditioned on a class or a text
    embedding.

    Parameters:
        sample_size (`int`, *optional*, defaults to 8): Image side, a multiple of 2**len(block_out_channels).
        in_channels (`int`, *optional*, defaults to 1): Image channels (1 grey, 3 RGB, 4 RGBA).
        latent_dim (`int`, *optional*, defaults to 16): Size of z (a vector latent).
        latent_channels (`int`, *optional*): When set, z is a spatial latent of shape (latent_channels, s / 2^k,
            s / 2^k) with k = len(block_out_channels), and `latent_dim` is unused; unconditional models only (latent
            diffusion conditions its UNet instead).
        block_out_channels (`tuple[int]`, *optional*, defaults to (32, 64)): Widths; each block halves the resolution.
        layers_per_block (`int`, *optional*, defaults to 1): ResNet blocks per resolution.
        norm_num_groups (`int`, *optional*, defaults to 8): GroupNorm groups; must divide every width.
        likelihood (`str`, *optional*, defaults to "discretized"): p(x|z): "gaussian" (learned per-channel scale),
            "bernoulli" (a proper likelihood only for binary data), or "discretized" (discretized logistic over
            `num_bins` levels, an exact probability for quantized data).
        num_bins (`int`, *optional*, defaults to 256): Levels of the data: 256 for 8-bit images, 17 for the digits.
        beta (`float`, *optional*, defaults to 1.0): Weight of the KL term (beta-VAE); 1.0 is the ELBO.
        condition_type (`str`, *optional*): None, "class" or "text".
        num_classes (`int`, *optional*): Number of classes when `condition_type="class"`.
        text_embed_dim (`int`, *optional*): Size of the pooled text embedding when `condition_type="text"`.
        condition_dim (`int`, *optional*, defaults to 32): Size the condition is projected to.
        scaling_factor (`float`, *optional*, defaults to 1.0): Not used by the VAE itself: latent diffusion stores here
            the factor that scales this VAE's latents to unit standard deviation, as diffusers' `AutoencoderKL` does.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        latent_dim: int = 16,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        likelihood: str = "discretized",
        num_bins: int = 256,
        beta: float = 1.0,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        condition_dim: int = 32,
        latent_channels: int | None = None,
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        downsample = 2 ** len(block_out_channels)
        if sample_size % downsample != 0:
            raise ValueError(
                f"sample_size={sample_size} cannot be halved {len(block_out_channels)} times "
                f"(one per entry of block_out_channels={tuple(block_out_channels)}): use a multiple of {downsample} "
                "or fewer blocks."
            )
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}.")
        check_condition_config(condition_type, num_classes, text_embed_dim)
        if latent_channels is not None and condition_type is not None:
            raise ValueError(
                f"A spatial latent (latent_channels={latent_channels}) is for an unconditional autoencoder, such as "
                f"latent diffusion's first stage; got condition_type={condition_type!r}. Drop one of them."
            )
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every width in {tuple(block_out_channels)}."
            )

        # The condition is projected to `condition_dim` and concatenated to the encoder features and to z.
        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, condition_dim)
        cond = condition_dim if condition_type else 0

        self.feature_size = sample_size // downsample
        features = block_out_channels[-1] * self.feature_size**2
        self.encoder = ConvEncoder(in_channels, block_out_channels, layers_per_block, norm_num_groups)
        if latent_channels is None:
            self.latent_shape = (latent_dim,)
            self.to_latent = nn.Linear(features + cond, 2 * latent_dim)  # -> (mu, log sigma^2)
            self.from_latent = nn.Linear(latent_dim + cond, features)
        else:  # 1x1 convolutions: each latent position sees the features of its own patch
            self.latent_shape = (latent_channels, self.feature_size, self.feature_size)
            self.to_latent = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, 1)
            self.from_latent = nn.Conv2d(latent_channels, block_out_channels[-1], 1)
        params_per_channel = 2 if likelihood == "discretized" else 1  # discretized: mean and log-scale per pixel
        self.decoder = ConvDecoder(
            in_channels * params_per_channel, block_out_channels, layers_per_block, norm_num_groups
        )
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(in_channels))

    # ----- conditioning -------------------------------------------------------------------------------------------
    def embed_condition(self, condition: Condition | None, batch_size: int) -> torch.Tensor | None:
        """A [`Condition`] (class labels or pooled text embeddings) -> (b, condition_dim); None if unconditional."""
        return embed_condition(self, condition, batch_size)

    # ----- q(z | x) and p(x | z) ----------------------------------------------------------------------------------
    def encode(self, sample: torch.Tensor, condition: Condition | None = None, return_dict: bool = True):
        """(b, c, s, s) in [-1, 1] -> q(z | x) as mean and log-variance, each (b, *latent_shape)."""
        size = self.config.sample_size
        if sample.shape[1:] != (self.config.in_channels, size, size):
            raise ValueError(
                f"Expected images of shape (batch, {self.config.in_channels}, {size}, {size}), got "
                f"{tuple(sample.shape)}: resize to {size}x{size} (--resolution {size}) and use "
                f"{self.config.in_channels} channel(s)."
            )
        h = self.encoder(sample)  # (b, width, f, f)
        c = self.embed_condition(condition, sample.shape[0])  # None for an unconditional model (all spatial ones)
        if self.config.latent_channels is None:
            h = h.flatten(1)  # (b, features)
            if c is not None:
                h = torch.cat([h, c], dim=1)
        mean, logvar = self.to_latent(h).chunk(2, dim=1)  # (b, *latent_shape) each
        logvar = logvar.clamp(-30.0, 20.0)
        return VAEEncoderOutput(mean, logvar) if return_dict else (mean, logvar)

    def decode(self, latents: torch.Tensor, condition: Condition | None = None, return_dict: bool = True):
        """(b, *latent_shape) -> the mean image (b, c, s, s) in [-1, 1] and the parameters of p(x | z)."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(
                f"Expected latents of shape (batch, {', '.join(map(str, self.latent_shape))}), got "
                f"{tuple(latents.shape)}."
            )
        c = self.embed_condition(condition, latents.shape[0])
        if self.config.latent_channels is None:
            if c is not None:
                latents = torch.cat([latents, c], dim=1)
            h = self.from_latent(latents).view(latents.shape[0], -1, self.feature_size, self.feature_size)
        else:
            h = self.from_latent(latents)
        params = self.decoder(h)  # (b, c * params_per_channel, s, s)
        sample = self.mean_image(params)
        return VAEDecoderOutput(sample, params) if return_dict else (sample, params)

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        likelihood = self.config.likelihood
        if likelihood == "bernoulli":
            return torch.sigmoid(params) * 2 - 1
        mean = params[:, : self.config.in_channels]
        if likelihood == "discretized":
            return quantize(mean, self.config.num_bins)
        return mean.clamp(-1, 1)

    def reconstruction_log_prob(self, sample: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x | z) summed over pixels: (b,). Images in [-1, 1]."""
        likelihood = self.config.likelihood
        if likelihood == "bernoulli":
            targets = (sample + 1) / 2  # grey levels in [0, 1]; exact only for binary data
            log_prob = -F.binary_cross_entropy_with_logits(params, targets, reduction="none")
        elif likelihood == "gaussian":
            log_scale = self.log_scale.view(1, -1, 1, 1).expand_as(params)
            log_prob = gaussian_log_prob(sample, params, log_scale)
        else:
            mean, log_scale = params.chunk(2, dim=1)
            log_prob = discretized_logistic_log_prob(sample, mean, log_scale.clamp(min=-7.0), self.config.num_bins)
        return log_prob.flatten(1).sum(1)

    # ----- training and likelihood --------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        condition: Condition | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ):
        """The negative (beta-)ELBO: E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)), one sample of z."""
        mean, logvar = self.encode(sample, condition, return_dict=False)
        # Reparameterisation: z = mu + sigma * eps keeps the sample differentiable in mu and sigma.
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * eps
        reconstruction, params = self.decode(z, condition, return_dict=False)
        reconstruction_loss = -self.reconstruction_log_prob(sample, params).mean()
        # KL(N(mu, sigma^2) || N(0, 1)) in closed form, summed over latent dimensions.
        kl = 0.5 * (mean**2 + logvar.exp() - 1.0 - logvar).flatten(1).sum(1).mean()
        loss = reconstruction_loss + self.config.beta * kl
        if not return_dict:
            return loss, reconstruction_loss, kl, reconstruction
        return VAEOutput(loss=loss, reconstruction_loss=reconstruction_loss, kl=kl, sample=reconstruction)

    @torch.no_grad()
    def importance_weighted_log_likelihood(
        self,
        sample: torch.Tensor,
        num_samples: int,
        condition: Condition | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""The IWAE bound log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x): (b,) nats, a lower bound on
        log p(x) that tightens as K = `num_samples` grows (K = 1 is the ELBO)."""
        mean, logvar = self.encode(sample, condition, return_dict=False)
        std = torch.exp(0.5 * logvar)
        log_weights = []
        for _ in range(num_samples):
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + std * eps
            _, params = self.decode(z, condition, return_dict=False)
            log_q = standard_normal_log_prob(eps) - logvar.flatten(1).sum(1) / 2  # log N(z; mu, sigma^2)
            log_weights.append(self.reconstruction_log_prob(sample, params) + standard_normal_log_prob(z) - log_q)
        log_weights = torch.stack(log_weights, dim=0)  # (K, b)
        return torch.logsumexp(log_weights, dim=0) - math.log(num_samples)
