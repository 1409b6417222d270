"""Normalizing flows: RealNVP and Glow (and NICE's additive coupling) in one configurable model.

- NICE: Dinh et al. 2015, "NICE: Non-linear Independent Components Estimation", https://arxiv.org/abs/1410.8516
  (additive coupling: `coupling="additive"`, a volume-preserving step)
- RealNVP: Dinh et al. 2017, "Density estimation using Real NVP", https://arxiv.org/abs/1605.08803 (affine coupling
  with checkerboard and channel masks, squeeze, multi-scale factoring out, the logit transform of section 4.1)
- Glow: Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions",
  https://arxiv.org/abs/1807.03039 (ActNorm with data-dependent initialisation, invertible 1x1 convolutions in LU
  form, affine coupling, multi-scale with a learned prior, class-conditional priors, temperature)
- Dequantisation: Theis et al. 2016, "A note on the evaluation of generative models", https://arxiv.org/abs/1511.01844
- Variational dequantisation: Ho et al. 2019, "Flow++: Improving Flow-Based Generative Models with Variational
  Dequantization and Architecture Design", https://arxiv.org/abs/1902.00275 (section 3.1: `dequantization=
  "variational"`)

A flow is a chain of invertible maps f = f_L o ... o f_1 from an image to a latent z of the same size, with
    log p(x) = log N(z; 0, I) + sum_l log |det df_l / dh_{l-1}|        (change of variables)
so the likelihood is exact and sampling runs the inverses: z ~ N(0, T^2 I), x = f^-1(z).

Discrete pixels (K levels) get a density by uniform dequantisation, y = (k + u) / K with u ~ U[0, 1)^D, then the
logit transform s = logit(alpha + (1 - 2 alpha) y) maps (0, 1) to the real line. log p(y) is the exact density of the
dequantised image; log p(y) - D log K bounds the probability of the discrete image from below in expectation over u
(Jensen), so its bits/dim are an upper bound on the true discrete code length. Variational dequantisation (Flow++)
draws u from a learned q(u | x) instead, a small flow conditioned on the image, and trains the tighter bound
    log P(x) >= E_{u ~ q(u | x)} [log p((k + u) / K) - D log K - log q(u | x)]
(uniform dequantisation is the special case q = 1).

One class, because the two architectures share everything but the order of their steps: RealNVP is, per scale,
checkerboard couplings, a squeeze, channel couplings, and a split (a standard normal prior); Glow is, per scale, a
squeeze, then [ActNorm, 1x1 convolution, channel coupling] steps, and a split whose factored-out half gets a learned
Gaussian prior given the kept half. Each prior is written as an affine layer (z -> (z - mean) / std) so that the
whole latent is one standard normal vector: temperature, interpolation and encode/decode see one space.
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
    check_condition_config,
    check_positive_sizes,
    condition_embedding,
    embed_condition,
    standard_normal_log_prob,
)

ARCHITECTURES = ("realnvp", "glow")
COUPLINGS = ("affine", "additive")
DEQUANTIZATIONS = ("uniform", "variational")


@dataclass
class FlowEncoderOutput(BaseOutput):
    """x -> z: `latents` (b, D) standard normal under the model; `log_det` (b,) the log|det| of the whole map from
    the dequantised image y in [0, 1]^D (the logit included); `log_likelihood` (b,) log p(y), nats; `label_logits`
    (b, num_label_classes) the label head's logits (None without one); `condition_logits` (b, b) log p(top_i | c_j),
    the top prior's density of image i's top latent under image j's condition (nats; only when asked for)."""

    latents: torch.Tensor
    log_det: torch.Tensor = None
    log_likelihood: torch.Tensor = None
    label_logits: torch.Tensor = None
    condition_logits: torch.Tensor = None


@dataclass
class FlowDecoderOutput(BaseOutput):
    """z -> x: `sample` the image on the data's levels in [-1, 1]; `dequantized` the continuous y in [0, 1]."""

    sample: torch.Tensor
    dequantized: torch.Tensor = None


@dataclass
class FlowOutput(BaseOutput):
    """One training forward pass: `loss` the mean bits/dim of the dequantised images on the discrete scale;
    `log_likelihood` (b,) log p(y) - log q(u | x) in nats (log q = 0 for uniform dequantisation); `bits_per_dim`
    (b,); `label_logits` (b, num_label_classes) the label head's logits (None without one); `condition_logits` (b, b)
    as in [`FlowEncoderOutput`] (only when asked for)."""

    loss: torch.Tensor
    log_likelihood: torch.Tensor = None
    bits_per_dim: torch.Tensor = None
    label_logits: torch.Tensor = None
    condition_logits: torch.Tensor = None


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Log-determinants are summed in float32 or better, also under bf16 autocast (a bf16 sum over thousands of
    dimensions would lose the likelihood's digits); float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def random_like(sample: torch.Tensor, generator: torch.Generator | None, draw=torch.rand) -> torch.Tensor:
    """`draw` (torch.rand or torch.randn) of the sample's shape, drawn on the generator's device (so a seed means the
    same on any device; the sample's device if None), in the sample's device and dtype."""
    device = sample.device if generator is None else generator.device
    return draw(sample.shape, generator=generator, device=device).to(sample.device, sample.dtype)


# ----- the invertible layers: forward(h, c) -> (h', log_det (b,)), inverse(h', c) -> h ------------------------------
def squeeze(h: torch.Tensor) -> torch.Tensor:
    """(b, c, s, s) -> (b, 4c, s/2, s/2): each 2x2 patch becomes 4 channels (RealNVP section 3.6)."""
    b, c, height, width = h.shape
    h = h.view(b, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return h.reshape(b, c * 4, height // 2, width // 2)


def unsqueeze(h: torch.Tensor) -> torch.Tensor:
    """(b, 4c, s, s) -> (b, c, 2s, 2s), the inverse of [`squeeze`]."""
    b, c, height, width = h.shape
    h = h.view(b, c // 4, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // 4, height * 2, width * 2)


class Squeeze(nn.Module):
    def forward(self, h, c=None):
        return squeeze(h), h.new_zeros(h.shape[0])

    def inverse(self, h, c=None):
        return unsqueeze(h)


class ActNorm(nn.Module):
    r"""Per-channel affine h * exp(logs) + bias (Glow section 3.1). The first batch seen in training mode sets bias
    and logs so that the output has zero mean and unit variance per channel; the `initialized` buffer is saved with
    the weights, so a loaded or resumed model is never initialised again."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, h: torch.Tensor):
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        std = h.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean / (std + 1e-6))
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(1)

    def forward(self, h, c=None):
        if self.training and not self.initialized:
            self.initialize(h)
        log_det = at_least_float32(self.logs).sum() * h.shape[2] * h.shape[3]
        return h * torch.exp(self.logs) + self.bias, log_det.expand(h.shape[0])

    def inverse(self, h, c=None):
        return (h - self.bias) * torch.exp(-self.logs)


class InvertibleConv1x1(nn.Module):
    r"""A 1x1 convolution with W = P L (U + diag(sign * exp(log_s))) (Glow section 3.2, LU form): log|det W| is
    sum(log_s), O(c) instead of O(c^3). P is fixed; W starts as a random rotation."""

    def __init__(self, channels: int):
        super().__init__()
        weight = torch.linalg.qr(torch.randn(channels, channels))[0]
        p, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def weight(self) -> torch.Tensor:
        eye = torch.eye(len(self.log_s), device=self.log_s.device, dtype=self.log_s.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper  # (c, c)

    def forward(self, h, c=None):
        log_det = at_least_float32(self.log_s).sum() * h.shape[2] * h.shape[3]
        return F.conv2d(h, self.weight()[:, :, None, None]), log_det.expand(h.shape[0])

    def inverse(self, h, c=None):
        weight = torch.linalg.inv(self.weight().double()).to(h.dtype)
        return F.conv2d(h, weight[:, :, None, None])


class ZeroConv2d(nn.Conv2d):
    """A 3x3 convolution that starts at zero, so each coupling (and each learned prior) starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def with_condition(h: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """Appends the condition to `h` (b, ch, s, s): an embedding (b, d) as d constant channels, or a map (b, d, s, s)
    (the image, for the variational dequantiser) as it is."""
    if c is None:
        return h
    if c.ndim == 2:
        c = c[:, :, None, None].expand(-1, -1, *h.shape[2:])
    return torch.cat([h, c.to(h.dtype)], dim=1)


class Coupling(nn.Module):
    r"""Coupling layer: the masked part h_a passes unchanged and sets a shift t and a log-scale s for the rest:
    h_b' = h_b * exp(s(h_a, c)) + t(h_a, c) (affine, RealNVP eq. 7-9) or h_b + t(h_a, c) (additive, NICE eq. 6).
    log|det| = sum(s) (0 for additive). `mask`: "checkerboard" (alternate pixels) or "channel" (half the channels);
    `parity` swaps which part passes."""

    def __init__(self, channels, hidden_channels, mask, parity, coupling, condition_dim=0):
        super().__init__()
        self.mask_type, self.parity, self.additive = mask, parity, coupling == "additive"
        inputs = channels if mask == "checkerboard" else channels // 2
        outputs = inputs * (1 if self.additive else 2)
        self.net = nn.Sequential(
            nn.Conv2d(inputs + condition_dim, hidden_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, outputs),
        )

    def mask(self, h: torch.Tensor) -> torch.Tensor:
        """(1, 1, s, s): 1 where the pixel passes unchanged."""
        rows = torch.arange(h.shape[2], device=h.device)[:, None]
        columns = torch.arange(h.shape[3], device=h.device)[None, :]
        return ((rows + columns + self.parity) % 2 == 0).to(h.dtype)[None, None]

    def shift_and_log_scale(self, passed, c):
        out = self.net(with_condition(passed, c))
        if self.additive:
            return out, torch.zeros_like(out)
        shift, raw = out.chunk(2, dim=1)
        return shift, torch.tanh(raw)  # a bounded log-scale keeps deep stacks stable

    def forward(self, h, c=None):
        if self.mask_type == "checkerboard":
            mask = self.mask(h)
            shift, log_scale = self.shift_and_log_scale(h * mask, c)
            shift, log_scale = shift * (1 - mask), log_scale * (1 - mask)
            return h * torch.exp(log_scale) + shift, at_least_float32(log_scale).flatten(1).sum(1)
        passed, changed = h.chunk(2, dim=1)[:: 1 - 2 * self.parity]
        shift, log_scale = self.shift_and_log_scale(passed, c)
        changed = changed * torch.exp(log_scale) + shift
        parts = (passed, changed) if self.parity == 0 else (changed, passed)
        return torch.cat(parts, dim=1), at_least_float32(log_scale).flatten(1).sum(1)

    def inverse(self, h, c=None):
        if self.mask_type == "checkerboard":
            mask = self.mask(h)
            shift, log_scale = self.shift_and_log_scale(h * mask, c)
            return h * mask + (1 - mask) * (h - shift) * torch.exp(-log_scale)
        passed, changed = h.chunk(2, dim=1)[:: 1 - 2 * self.parity]
        shift, log_scale = self.shift_and_log_scale(passed, c)
        changed = (changed - shift) * torch.exp(-log_scale)
        return torch.cat((passed, changed) if self.parity == 0 else (changed, passed), dim=1)


class GaussianPrior(nn.Module):
    r"""A Gaussian N(mean, exp(logs)^2) for z written as the affine layer z -> eps = (z - mean) * exp(-logs), so the
    latent the model returns is standard normal. Learned (Glow): mean and logs from `context` (the kept half at a
    split) and the condition through a zero-initialised convolution, or a learned map at the top; else N(0, I)."""

    def __init__(self, channels, context_channels, size, learned, condition_dim=0, spatial_condition=False):
        super().__init__()
        self.learned = learned
        if learned and context_channels:
            self.net = ZeroConv2d(context_channels + condition_dim, 2 * channels)
        elif learned:
            self.top = nn.Parameter(torch.zeros(1, 2 * channels, size, size))
            # The condition's shift of the top's mean and log-scale: one per channel (Glow), or one per position.
            self.condition_shape = (2 * channels, size, size) if spatial_condition else (2 * channels, 1, 1)
            self.condition_proj = nn.Linear(condition_dim, math.prod(self.condition_shape)) if condition_dim else None
            if self.condition_proj is not None:
                nn.init.zeros_(self.condition_proj.weight)
                nn.init.zeros_(self.condition_proj.bias)

    def mean_and_logs(self, z, context, c):
        if hasattr(self, "net"):
            return self.net(with_condition(context, c)).chunk(2, dim=1)
        params = self.top.expand(z.shape[0], -1, -1, -1)
        if self.condition_proj is not None:
            params = params + self.condition_proj(c).reshape(-1, *self.condition_shape)
        return params.chunk(2, dim=1)

    def forward(self, z, context=None, c=None):
        if not self.learned:
            return z, z.new_zeros(z.shape[0])
        mean, logs = self.mean_and_logs(z, context, c)
        return (z - mean) * torch.exp(-logs), -at_least_float32(logs).flatten(1).sum(1)

    def inverse(self, eps, context=None, c=None):
        if not self.learned:
            return eps
        mean, logs = self.mean_and_logs(eps, context, c)
        return eps * torch.exp(logs) + mean

    def pairwise_log_prob(self, z, c):
        """The top prior only: log N(z_i; mean(c_j), exp(logs(c_j))^2) summed per image, for every image i of `z`
        (b_z, ch, s, s) and every condition j of `c` (b_c, d): (b_z, b_c) nats."""
        mean, logs = self.mean_and_logs(c, None, c)  # (b_c, ch, s, s) each
        eps = (at_least_float32(z)[:, None] - mean[None]) * torch.exp(-logs[None])
        return (-0.5 * math.log(2 * math.pi) - 0.5 * eps**2).flatten(2).sum(2) - logs.flatten(1).sum(1)[None]


class VariationalDequantizer(nn.Module):
    r"""q(u | x), the dequantisation noise as a flow conditioned on the image (Flow++ section 3.1): eps ~ N(0, I),
    `num_steps` checkerboard affine couplings whose networks also see x, then a sigmoid into (0, 1). Each coupling
    starts as the identity, so q starts as the logistic-normal sigmoid(N(0, I)).
        log q(u | x) = log N(eps; 0, I) - sum of the couplings' log|det| - sum log sigmoid'(h)"""

    def __init__(self, channels: int, hidden_channels: int, num_steps: int):
        super().__init__()
        self.couplings = nn.ModuleList(
            Coupling(channels, hidden_channels, "checkerboard", step % 2, "affine", condition_dim=channels)
            for step in range(num_steps)
        )

    def transform(self, eps: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """eps (b, c, s, s) -> (u = sigmoid(h) in (0, 1), log|det du/deps| (b,)) given the images x in [-1, 1]."""
        h, log_det = eps, eps.new_zeros(eps.shape[0], dtype=torch.promote_types(eps.dtype, torch.float32))
        for coupling in self.couplings:
            h, coupling_log_det = coupling(h, sample)
            log_det = log_det + coupling_log_det
        log_sigmoid_derivative = -F.softplus(-h) - F.softplus(h)  # log sigmoid(h) (1 - sigmoid(h))
        # sigmoid(h) rounds to 1 for h > 17 in float32, the next bin's edge: keep u below 1 (by at most 6e-8)
        finfo = torch.finfo(h.dtype)
        noise = torch.sigmoid(h).clamp(finfo.tiny, 1 - finfo.eps / 2)
        return noise, log_det + at_least_float32(log_sigmoid_derivative).flatten(1).sum(1)

    def forward(self, sample: torch.Tensor, generator: torch.Generator | None = None):
        """Images x (b, c, s, s) in [-1, 1] -> (u ~ q(u | x) (b, c, s, s) in (0, 1), log q(u | x) (b,)), eps drawn
        on the generator's device (the sample's if None)."""
        eps = random_like(sample, generator, torch.randn)
        noise, log_det = self.transform(eps, sample)
        return noise, standard_normal_log_prob(at_least_float32(eps)) - log_det


# ----- the model -----------------------------------------------------------------------------------------------------
class FlowModel(ModelMixin, ConfigMixin):
    r"""A multi-scale normalizing flow over images (RealNVP or Glow), optionally conditioned on a class or a text
    embedding (fed to every coupling network and, with `learned_prior`, to the priors).

    Parameters:
        sample_size (`int`, *optional*, defaults to 8): Image side, a multiple of 2**num_scales.
        in_channels (`int`, *optional*, defaults to 1): Image channels.
        num_bins (`int`, *optional*, defaults to 256): Levels of the data: 256 for 8-bit images, 17 for the digits.
        architecture (`str`, *optional*, defaults to "glow"): "realnvp" or "glow".
        num_scales (`int`, *optional*, defaults to 2): Scales; each but the last factors out half the channels.
        steps_per_scale (`int`, *optional*, defaults to 4): Glow: [ActNorm, 1x1 conv, coupling] steps per scale;
            RealNVP: checkerboard couplings, then as many channel couplings, per scale.
        hidden_channels (`int`, *optional*, defaults to 64): Width of each coupling network.
        coupling (`str`, *optional*, defaults to "affine"): "affine" (RealNVP, Glow) or "additive" (NICE).
        learned_prior (`bool`, *optional*, defaults to True): Learned Gaussian priors at the splits and the top
            (Glow); False: N(0, I) (RealNVP).
        logit_alpha (`float`, *optional*, defaults to 0.05): s = logit(alpha + (1 - 2 alpha) y), in (0, 0.5).
        condition_type (`str`, *optional*): None, "class" or "text".
        num_classes (`int`, *optional*): Number of classes when `condition_type="class"`.
        text_embed_dim (`int`, *optional*): Size of the pooled text embedding when `condition_type="text"`.
        condition_dim (`int`, *optional*, defaults to 16): Size the condition is projected to.
        condition_couplings (`bool`, *optional*, defaults to True): Feed the condition to the coupling networks;
            False: to the priors only, so z depends on the image alone (Glow's class-conditional model).
        spatial_prior_condition (`bool`, *optional*, defaults to False): The condition shifts the top prior's mean
            and log-scale at every position; False: one shift per channel, as Glow.
        num_label_classes (`int`, *optional*): Adds a label head as Glow's: a linear classifier of the image's class
            from the top scale's output, trained beside the likelihood (`label_logits`). It reads every position,
            where Glow averages them: at 28x28 the top is 7x7x8, and its 8 channel means hold little of the class.
        dequantization (`str`, *optional*, defaults to "uniform"): "uniform" (u ~ U[0, 1)^D) or "variational" (u from
            a learned q(u | x), Flow++).
        dequantizer_steps (`int`, *optional*, defaults to 4): Affine couplings of q(u | x) when variational.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_bins: int = 256,
        architecture: str = "glow",
        num_scales: int = 2,
        steps_per_scale: int = 4,
        hidden_channels: int = 64,
        coupling: str = "affine",
        learned_prior: bool = True,
        logit_alpha: float = 0.05,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        condition_dim: int = 16,
        condition_couplings: bool = True,
        spatial_prior_condition: bool = False,
        num_label_classes: int | None = None,
        dequantization: str = "uniform",
        dequantizer_steps: int = 4,
    ):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}.")
        check_positive_sizes(
            num_scales=num_scales,
            steps_per_scale=steps_per_scale,
            hidden_channels=hidden_channels,
            dequantizer_steps=dequantizer_steps,
            **({"condition_dim": condition_dim} if condition_type else {}),
        )
        # Glow squeezes at every scale, RealNVP at every scale but the last.
        squeezes = num_scales if architecture == "glow" else num_scales - 1
        if sample_size % 2**squeezes != 0:
            raise ValueError(
                f"sample_size={sample_size} cannot be squeezed {squeezes} times ({architecture} with "
                f"num_scales={num_scales}): use a multiple of {2**squeezes} or fewer scales."
            )
        if not 0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must be in (0, 0.5), got {logit_alpha}.")
        if num_bins < 2:
            raise ValueError(f"num_bins must be at least 2 (the number of levels of the data), got {num_bins}.")
        if dequantization not in DEQUANTIZATIONS:
            raise ValueError(f"dequantization must be one of {DEQUANTIZATIONS}, got {dequantization!r}.")
        check_condition_config(condition_type, num_classes, text_embed_dim)
        if num_label_classes is not None and num_label_classes < 2:
            raise ValueError(
                f"num_label_classes must be at least 2 (or None: no label head), got {num_label_classes}."
            )

        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, condition_dim)
        self.dequantizer = (
            VariationalDequantizer(in_channels, hidden_channels, dequantizer_steps)
            if dequantization == "variational"
            else None
        )
        prior_cond = condition_dim if condition_type else 0
        cond = prior_cond if condition_couplings else 0  # for the coupling networks
        channels, size = in_channels, sample_size
        self.scales, self.priors, self.latent_shapes = nn.ModuleList(), nn.ModuleList(), []
        for scale in range(num_scales):
            last = scale == num_scales - 1
            layers = []
            if architecture == "glow":
                layers.append(Squeeze())
                channels, size = channels * 4, size // 2
                for step in range(steps_per_scale):
                    layers += [ActNorm(channels), InvertibleConv1x1(channels)]
                    layers.append(Coupling(channels, hidden_channels, "channel", step % 2, coupling, cond))
            else:
                for step in range(steps_per_scale):
                    layers.append(Coupling(channels, hidden_channels, "checkerboard", step % 2, coupling, cond))
                if not last:
                    layers.append(Squeeze())
                    channels, size = channels * 4, size // 2
                    for step in range(steps_per_scale):
                        layers.append(Coupling(channels, hidden_channels, "channel", step % 2, coupling, cond))
            self.scales.append(nn.ModuleList(layers))
            if last:  # the top: all remaining channels
                self.priors.append(
                    GaussianPrior(channels, 0, size, learned_prior, prior_cond, spatial_prior_condition)
                )
                self.latent_shapes.append((channels, size, size))
            else:  # factor out the second half of the channels, with a prior given the first half
                self.priors.append(
                    GaussianPrior(channels - channels // 2, channels // 2, size, learned_prior, prior_cond)
                )
                self.latent_shapes.append((channels - channels // 2, size, size))
                channels = channels // 2
        # Glow's y_logits: the likelihood alone gives the condition at most log(num classes) nats of an image's
        # hundreds, so a short run can ignore it; a classifier on the top latent makes it carry the class.
        self.label_head = nn.Linear(channels * size * size, num_label_classes) if num_label_classes else None
        if self.label_head is not None:
            nn.init.zeros_(self.label_head.weight)
            nn.init.zeros_(self.label_head.bias)

    @property
    def num_dims(self) -> int:
        return self.config.in_channels * self.config.sample_size**2

    def embed_condition(self, condition: Condition | None, batch_size: int) -> torch.Tensor | None:
        """A [`Condition`] (class labels or pooled text embeddings) -> (b, condition_dim); None if unconditional."""
        return embed_condition(self, condition, batch_size)

    def check_sample(self, sample: torch.Tensor):
        size, channels = self.config.sample_size, self.config.in_channels
        if sample.shape[1:] != (channels, size, size):
            raise ValueError(
                f"Expected images of shape (batch, {channels}, {size}, {size}), got {tuple(sample.shape)}: resize to "
                f"{size}x{size} (--resolution {size}) and use {channels} channel(s)."
            )

    # ----- dequantisation and the logit transform ------------------------------------------------------------------
    def dequantize(self, sample: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x in [-1, 1] on K levels -> y = (k + u) / K in [0, 1); `noise` u in [0, 1) (None: the bin centres)."""
        levels = torch.round((sample.clamp(-1, 1) + 1) / 2 * (self.config.num_bins - 1))  # k in 0..K-1
        noise = torch.full_like(sample, 0.5) if noise is None else noise
        return (levels + noise) / self.config.num_bins

    def dequantization_noise(self, sample: torch.Tensor, generator: torch.Generator | None = None):
        """(u (b, c, s, s) in [0, 1), log q(u | x) (b,)) for images x in [-1, 1]: uniform noise (log q = 0) or a draw
        of the variational dequantiser, on the generator's device (the sample's if None)."""
        if self.dequantizer is not None:
            return self.dequantizer(sample, generator)
        noise = random_like(sample, generator, torch.rand)
        return noise, noise.new_zeros(sample.shape[0], dtype=torch.promote_types(sample.dtype, torch.float32))

    def quantize(self, dequantized: torch.Tensor) -> torch.Tensor:
        """y in [0, 1] -> the level k = floor(K y) as x in [-1, 1] (the inverse of `dequantize` for any u)."""
        bins = self.config.num_bins
        levels = torch.floor(dequantized.clamp(0, 1) * bins).clamp(max=bins - 1)
        return levels / (bins - 1) * 2 - 1

    def logit(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y in [0, 1] -> s = logit(alpha + (1 - 2 alpha) y) and log|ds/dy| summed per image (RealNVP 4.1)."""
        alpha = self.config.logit_alpha
        p = alpha + (1 - 2 * alpha) * y
        s = torch.log(p) - torch.log1p(-p)
        log_det = (math.log(1 - 2 * alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return s, log_det

    def sigmoid(self, s: torch.Tensor) -> torch.Tensor:
        alpha = self.config.logit_alpha
        return (torch.sigmoid(s) - alpha) / (1 - 2 * alpha)

    # ----- the flow: y -> z and z -> y ------------------------------------------------------------------------------
    def transform(self, y: torch.Tensor, condition: Condition | None = None):
        """y (b, c, s, s) in (0, 1) -> (z (b, D) standard normal under the model, log|det dz/dy| (b,))."""
        latents, log_det, _ = self.transform_with_top(y, condition)
        return latents, log_det

    def transform_with_top(self, y: torch.Tensor, condition: Condition | None = None):
        """[`transform`], plus the top scale's output before its prior (b, c_top, s_top, s_top)."""
        c = self.embed_condition(condition, y.shape[0])
        coupling_c = c if self.config.condition_couplings else None
        h, log_det = self.logit(y)
        latents = []
        for layers, prior in zip(self.scales, self.priors):
            for layer in layers:
                h, layer_log_det = layer(h, coupling_c)
                log_det = log_det + layer_log_det
            if prior is self.priors[-1]:
                eps, prior_log_det = prior(h, None, c)
            else:
                h, z = h[:, : h.shape[1] // 2], h[:, h.shape[1] // 2 :]  # keep, factor out
                eps, prior_log_det = prior(z, h, c)
            latents.append(eps.flatten(1))
            log_det = log_det + prior_log_det
        return torch.cat(latents, dim=1), log_det, h

    def inverse_transform(self, latents: torch.Tensor, condition: Condition | None = None) -> torch.Tensor:
        """z (b, D) -> y (b, c, s, s) in (0, 1), the inverse of [`transform`]."""
        if latents.ndim != 2 or latents.shape[1] != self.num_dims:
            raise ValueError(f"latents must have shape (batch, {self.num_dims}), got {tuple(latents.shape)}.")
        c = self.embed_condition(condition, latents.shape[0])
        coupling_c = c if self.config.condition_couplings else None
        sizes = [math.prod(shape) for shape in self.latent_shapes]
        parts = [
            eps.reshape(-1, *shape) for eps, shape in zip(latents.split(sizes, dim=1), self.latent_shapes)
        ]  # one (b, c_i, s_i, s_i) per scale
        h = None
        for layers, prior, eps in reversed(list(zip(self.scales, self.priors, parts))):
            if h is None:
                h = prior.inverse(eps, None, c)
            else:
                h = torch.cat([h, prior.inverse(eps, h, c)], dim=1)
            for layer in reversed(layers):
                h = layer.inverse(h, coupling_c)
        return self.sigmoid(h)

    # ----- what the pipeline and the trainer call -------------------------------------------------------------------
    def encode(self, sample, condition=None, noise=None, condition_logits: bool = False, return_dict: bool = True):
        """Images (b, c, s, s) in [-1, 1] -> z (b, D), with log p(y) of the dequantised images y = (k + u) / K
        (`noise` u; None: the bin centres, a deterministic encoding). `condition_logits=True` adds log p(top_i | c_j)
        for every pair of the batch (see [`check_condition_logits`])."""
        self.check_sample(sample)
        y = self.dequantize(sample, noise)
        latents, log_det, top = self.transform_with_top(y, condition)
        log_likelihood = standard_normal_log_prob(at_least_float32(latents)) + log_det
        label_logits = self.label_head(top.flatten(1)) if self.label_head is not None else None
        pair_logits = None
        if condition_logits:
            self.check_condition_logits(condition)
            pair_logits = self.priors[-1].pairwise_log_prob(top, self.embed_condition(condition, len(sample)))
        output = FlowEncoderOutput(latents, log_det, log_likelihood, label_logits, pair_logits)
        # The tuple holds the fields that are set, as diffusers' and transformers' outputs do: no head, no logits.
        return output if return_dict else output.to_tuple()

    def check_condition_logits(self, condition: Condition | None):
        """log p(top_i | c_j) for all pairs is the top prior's classifier of which of the batch's conditions belongs to
        each image: it needs a condition, a learned top prior that reads it, and a top latent that does not (the
        condition in the priors only), else the pairs would not be densities of the same latent."""
        if condition is None or self.config.condition_type is None:
            raise ValueError("condition_logits compares the batch's conditions: pass a conditional flow a condition.")
        if not self.config.learned_prior or self.config.condition_couplings:
            raise ValueError(
                "condition_logits needs the condition in the priors only (learned_prior=True, "
                "condition_couplings=False; training: --condition_couplings false), so that the top latent does not "
                "depend on it."
            )

    def decode(self, latents, condition=None, return_dict: bool = True):
        """z (b, D) -> the image on the data's levels in [-1, 1] (and the continuous y)."""
        y = self.inverse_transform(latents, condition)
        sample = self.quantize(y)
        return FlowDecoderOutput(sample=sample, dequantized=y) if return_dict else (sample, y)

    def bits_per_dim(self, log_likelihood: torch.Tensor) -> torch.Tensor:
        """log p(y) (nats, y in [0, 1]^D) -> -log2(p(y) / K^D) / D, bits/dim on the discrete scale."""
        num_dims = self.num_dims
        return -(log_likelihood - num_dims * math.log(self.config.num_bins)) / (num_dims * math.log(2))

    @torch.no_grad()
    def initialize_actnorm(self, sample: torch.Tensor, condition=None, generator: torch.Generator | None = None):
        """Glow's data-dependent initialisation: one forward pass in training mode on a batch of images sets every
        ActNorm not yet initialised (each from the batch's activations at its input)."""
        was_training = self.training
        self.train()
        self.encode(sample, condition, self.dequantization_noise(sample, generator)[0])
        self.train(was_training)

    def forward(
        self, sample, condition=None, generator=None, condition_logits: bool = False, return_dict: bool = True
    ):
        """The negative log-likelihood of dequantised images, log p(y) - log q(u | x) (q = 1 when uniform), in
        bits/dim on the discrete scale: for both dequantisations an upper bound on -log2 P(x) / D in expectation."""
        noise, log_q = self.dequantization_noise(sample, generator)
        encoded = self.encode(sample, condition, noise, condition_logits=condition_logits)
        log_likelihood = encoded.log_likelihood - log_q
        bits_per_dim = self.bits_per_dim(log_likelihood)
        output = FlowOutput(
            bits_per_dim.mean(), log_likelihood, bits_per_dim, encoded.label_logits, encoded.condition_logits
        )
        return output if return_dict else output.to_tuple()


class PointFlow(nn.Module):
    r"""The same layers on 2-D points (b, 2) (as (b, 2, 1, 1) maps): `num_steps` Glow steps [ActNorm, 1x1
    convolution, affine coupling] under N(0, I): the toy densities of `benchmarks/flows.py`, whose density must
    integrate to one."""

    def __init__(self, num_steps: int = 8, hidden_channels: int = 64):
        super().__init__()
        layers = []
        for step in range(num_steps):
            layers += [ActNorm(2), InvertibleConv1x1(2), Coupling(2, hidden_channels, "channel", step % 2, "affine")]
        self.layers = nn.ModuleList(layers)

    def log_prob(self, points: torch.Tensor) -> torch.Tensor:
        """(b, 2) -> log p(points) (b,)."""
        h, log_det = points[:, :, None, None], points.new_zeros(points.shape[0])
        for layer in self.layers:
            h, layer_log_det = layer(h)
            log_det = log_det + layer_log_det
        return standard_normal_log_prob(h) + log_det

    @torch.no_grad()
    def sample(self, num_points: int, generator: torch.Generator | None = None) -> torch.Tensor:
        h = torch.randn(num_points, 2, 1, 1, generator=generator).to(next(self.parameters()).dtype)
        for layer in reversed(self.layers):
            h = layer.inverse(h)
        return h[:, :, 0, 0]
