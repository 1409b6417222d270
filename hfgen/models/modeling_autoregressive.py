"""Autoregressive models over a grid of discrete tokens: the pixels of an image, or a VQ-VAE's codes.

The chain rule writes any distribution over the d = channels x height x width tokens as a product of conditionals,
p(x) = prod_i p(x_i | x_<i), in raster order with the channels (R, G, B) inside each pixel; every model here outputs
one categorical over `num_levels` values per token (2 binarized, 17 for the digits, 256 for 8-bit) from the tokens
before it only, so log p(x) is exact.

- PixelCNN (mask A then mask B, residual blocks): van den Oord et al. 2016, "Pixel Recurrent Neural Networks",
  https://arxiv.org/abs/1601.06759 (sections 3.4-3.5); it has a blind spot above and to the right.
- Gated PixelCNN (vertical + horizontal stacks, no blind spot, tanh x sigmoid gates, conditional biases from a
  class or a text embedding): van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders",
  https://arxiv.org/abs/1606.05328 (equations 2-4).
- Row LSTM and Diagonal BiLSTM (skewed input, right-to-left map shifted down one row): "Pixel Recurrent Neural
  Networks", sections 3.1-3.2.
- A transformer prior: transformers' own `GPT2LMHeadModel`, trained from scratch over the tokens in raster order
  (Radford et al. 2019; as Image GPT, Chen et al. 2020, https://openai.com/research/image-gpt), a class as its first
  token, a text through cross-attention. See [`build_transformer_prior`] and [`transformer_forward`].

Channels within a pixel: the convolutional and recurrent models compute features of pixel p from the pixels before p
only (mask A first); channel k of pixel p then reads those features plus the embeddings of channels 0..k-1 of the
same pixel (`channel_context`), so R, G, B are predicted in that order.

Cached sampling (`init_cache` + `cached_logits`), in the spirit of Fast PixelCNN++ (Ramachandran et al. 2017, "Fast
Generation for Convolutional Autoregressive Models", https://arxiv.org/abs/1704.06001): every layer's output at a
position depends only on the pixels before it, so once computed it is final. Each model keeps a cache of the
activation maps its spatial convolutions read and, per pixel, computes every layer's output at that pixel only (a
convolution of the kernel's causal neighbourhood gathered from the cache); what depends on whole rows above (Gated
PixelCNN's vertical stack, the LSTMs' state-to-state terms, the Diagonal BiLSTM's right-to-left walk) is computed
once per row. The logits equal the full forward pass's at every position.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from hfgen.conditioning import Condition
from hfgen.layers import check_condition_config, check_positive_sizes, condition_embedding, embed_condition

ARCHITECTURES = ("pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm", "transformer")
OUTPUT_DISTRIBUTIONS = ("categorical", "logistic_mixture")


def images_to_tokens(images: torch.Tensor, num_levels: int) -> torch.Tensor:
    """(b, c, h, w) in [-1, 1] -> (b, c, h, w) long levels in [0, num_levels)."""
    return torch.round((images.float().clamp(-1, 1) + 1) / 2 * (num_levels - 1)).long()


def tokens_to_images(tokens: torch.Tensor, num_levels: int) -> torch.Tensor:
    """(b, c, h, w) levels -> (b, c, h, w) in [-1, 1]."""
    return tokens.float() / (num_levels - 1) * 2 - 1


@dataclass
class AutoregressiveOutput(BaseOutput):
    """`logits` (b, num_levels, c, h, w): the categorical of every token given the tokens before it;
    `log_likelihood` (b,): log p(x) in nats (exact)."""

    logits: torch.Tensor
    log_likelihood: torch.Tensor = None


def discretized_logistic_mixture_logits(params: torch.Tensor, pixels: torch.Tensor, num_levels: int) -> torch.Tensor:
    r"""PixelCNN++'s discretized mixture of logistics (Salimans et al. 2017, https://arxiv.org/abs/1701.05517,
    section 2.1-2.2), written as exact per-channel conditionals so that it is a categorical like the others.

    Per pixel and component j: a logistic per channel with mean mu_jk + sum_{i<k} coef_jki x_i (the pixel's own
    earlier channels, on [-1, 1]) and scale s_jk. The probability of level v, at x = 2 v / (L - 1) - 1 with bins of
    half-width 1 / (L - 1), is sigma((x + 1/(L-1) - mu) / s) - sigma((x - 1/(L-1) - mu) / s); the edge levels take
    the tails: v = 0 gets sigma((x + 1/(L-1) - mu) / s), v = L - 1 gets 1 - sigma((x - 1/(L-1) - mu) / s).
    p(pixel) = sum_j pi_j prod_k p_jk(x_k); the conditional of channel k is the mixture with weights
    pi_j prod_{i<k} p_ji(x_i) (renormalised), so the sum of the channels' log-conditionals is log p(pixel) exactly.
    The difference of sigmoids is computed in log space (no pdf approximation, unlike the paper's code). Memory:
    (n, K, L, c) floats, all levels of every component.

    Args:
        params (`torch.Tensor`): (n, K * (1 + 2 c + c (c - 1) / 2)): per component, a logit, c means, c log-scales,
            then the coefficients (R->G, R->B, G->B for RGB), component-major.
        pixels (`torch.Tensor`): (n, c) long levels in [0, num_levels); channel k's conditional reads channels < k.
        num_levels (`int`): L, 256 for 8-bit.

    Returns:
        (n, num_levels, c) normalised log-probabilities: the logits of each channel's level given the ones before.
    """
    n, c = pixels.shape
    num_coefs = c * (c - 1) // 2
    params = params.float().view(n, -1, 1 + 2 * c + num_coefs)  # (n, K, per component)
    log_pi = params[:, :, 0].log_softmax(-1)  # (n, K)
    means, log_scales = params[:, :, 1 : 1 + c], params[:, :, 1 + c : 1 + 2 * c].clamp(min=-7.0)  # (n, K, c)
    coefs = torch.tanh(params[:, :, 1 + 2 * c :])  # (n, K, c (c - 1) / 2), in (-1, 1) as in the paper's code
    x = pixels.float() * (2 / (num_levels - 1)) - 1  # (n, c) on [-1, 1]
    shifted, pair = [], 0
    for k in range(c):  # mu_jk + sum_{i<k} coef_jki x_i
        mean = means[:, :, k]
        for i in range(k):
            mean = mean + coefs[:, :, pair] * x[:, None, i]
            pair += 1
        shifted.append(mean)
    means = torch.stack(shifted, dim=-1)  # (n, K, c)
    # Every level v of every channel: (n, K, L, c).
    levels = torch.linspace(-1, 1, num_levels, device=params.device)[None, None, :, None]
    inv_scale = torch.exp(-log_scales)[:, :, None]  # (n, K, 1, c)
    centred = levels - means[:, :, None]
    upper = (centred + 1 / (num_levels - 1)) * inv_scale  # (x + half bin - mu) / s
    lower = (centred - 1 / (num_levels - 1)) * inv_scale
    # log(sigma(a) - sigma(b)) = log sigma(a) + log sigma(-b) + log(1 - exp(b - a)), stable for a > b.
    log_mass = -F.softplus(-upper) - F.softplus(lower) + torch.log(-torch.expm1(lower - upper))
    log_mass[:, :, 0] = -F.softplus(-upper[:, :, 0])  # level 0: sigma(upper), the whole left tail
    log_mass[:, :, -1] = -F.softplus(lower[:, :, -1])  # level L - 1: 1 - sigma(lower), the whole right tail
    # The component weights of channel k: pi_j prod_{i<k} p_ji(x_i) (the pixel's observed earlier channels).
    observed = log_mass.gather(2, pixels[:, None, None, :].expand(n, log_mass.shape[1], 1, c))[:, :, 0]  # (n, K, c)
    before = torch.cumsum(observed, dim=-1) - observed  # (n, K, c): sum over i < k
    weights = (log_pi[:, :, None] + before).log_softmax(1)  # (n, K, c)
    return torch.logsumexp(weights[:, :, None] + log_mass, dim=1)  # (n, L, c)


class MaskedConv2d(nn.Conv2d):
    r"""A convolution that sees only the pixels before the centre in raster order (mask "A") or also the centre
    ("B"): rows above, and the centre row up to (A: excluding, B: including) the centre."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, mask_type: str):
        kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(in_channels, out_channels, kernel_size, padding=(kernel_size[0] // 2, kernel_size[1] // 2))
        mask = torch.ones(kernel_size)
        row, col = kernel_size[0] // 2, kernel_size[1] // 2
        mask[row, col + (mask_type == "B") :] = 0
        mask[row + 1 :] = 0
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def forward_at(self, cache: "CausalMap", row: int, col: int) -> torch.Tensor:
        """The output at (row, col) only, from the kernel's neighbourhood in `cache`: (b, out). The rows below the
        centre are masked out, so only the rows up to the centre's are gathered (`_prepare_at` keeps those rows of
        the masked kernel)."""
        kh, kw = self.kernel_size
        patch = cache.window(row, col, up=kh // 2, left=kw // 2, right=kw // 2)  # (b, in, kh // 2 + 1, kw)
        return _conv_at(self, patch)


def _prepare_at(conv: nn.Module):
    """Stores a convolution's kernel as a matrix (out, in * kh * kw) with its bias, as `conv.at_weights`, for
    `_conv_at`; a masked one keeps the masked kernel's rows up to the centre's. Done once per sampling run (the
    weights do not change while sampling): per pixel, flattening the kernel and reading parameters through
    `nn.Module.__getattr__` would cost as much as the products themselves."""
    weight = conv.weight
    if isinstance(conv, MaskedConv2d):
        weight = (weight * conv.mask)[:, :, : conv.kernel_size[0] // 2 + 1]
    conv.at_weights = (weight.flatten(1), conv.bias)


def _conv_at(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution's output at one position from its input patch (b, in, kh, kw), or (b, in) for a 1x1: (b, out).
    A matrix product: on a single position it costs far less than `conv2d` on a 1x1 map."""
    weight, bias = conv.at_weights
    return F.linear(x.flatten(1) if x.ndim > 2 else x, weight, bias)


class CausalMap:
    r"""A (b, channels, h, w) activation map filled in raster order during cached sampling, zero-padded by `pad`
    above, left and right as the convolutions reading it pad (nothing below: no causal kernel reaches down). The
    positions not written yet are zeros, and every kernel that reads them gives them weight 0."""

    def __init__(self, like: torch.Tensor, batch: int, channels: int, height: int, width: int, pad: int):
        self.pad = pad
        self.data = like.new_zeros(batch, channels, height + pad, width + 2 * pad)

    def write(self, row: int, col: int, value: torch.Tensor):
        """value (b, channels) at (row, col)."""
        self.data[:, :, row + self.pad, col + self.pad] = value

    def write_row(self, row: int, value: torch.Tensor):
        """value (b, channels, 1, w) or (b, channels, w) as row `row`."""
        self.data[:, :, row + self.pad, self.pad : self.data.shape[3] - self.pad] = value.reshape(*value.shape[:2], -1)

    def window(self, row: int, col: int, up: int, left: int, right: int) -> torch.Tensor:
        """(b, channels, up + 1, left + 1 + right): rows row - up .. row, columns col - left .. col + right."""
        r, c = row + self.pad, col + self.pad
        return self.data[:, :, r - up : r + 1, c - left : c + right + 1]

    def rows(self, row: int, up: int) -> torch.Tensor:
        """(b, channels, up + 1, w + 2 * pad): rows row - up .. row at full padded width."""
        return self.data[:, :, row + self.pad - up : row + self.pad + 1]


class AutoregressiveImageModel(ModelMixin, ConfigMixin):
    r"""What the convolutional and recurrent models share: the token embedding, the condition, the per-channel output
    head (a softmax per channel, or PixelCNN++'s logistic mixture), the exact log-likelihood and the cached sampler.
    A subclass builds `self.trunk_*` layers and defines `trunk(x, cond)`: (b, c * embedding_dim, h, w) embedded tokens
    -> (b, hidden_channels, h, w) features of each pixel that depend on the pixels before it only; and, for
    `cached_logits`, the same computation at one pixel: `_init_trunk_cache`, `_start_row` and `_trunk_at`."""

    def _build_common(
        self, sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
        text_embed_dim, output_distribution, num_mixtures,
    ):  # fmt: skip
        check_condition_config(condition_type, num_classes, text_embed_dim)
        check_positive_sizes(
            sample_size=sample_size,
            in_channels=in_channels,
            embedding_dim=embedding_dim,
            hidden_channels=hidden_channels,
            num_layers=self.config.num_layers,
        )
        if output_distribution not in OUTPUT_DISTRIBUTIONS:
            raise ValueError(
                f"output_distribution must be one of {', '.join(OUTPUT_DISTRIBUTIONS)}, got {output_distribution!r}."
            )
        if output_distribution == "logistic_mixture" and num_mixtures < 1:
            raise ValueError(f"num_mixtures must be at least 1, got {num_mixtures}.")
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2 (2 for binary data, 256 for 8-bit), got {num_levels}.")
        # One table for all channels: token t of channel k is row k * num_levels + t.
        self.token_embedding = nn.Embedding(in_channels * num_levels, embedding_dim)
        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, hidden_channels)
        if output_distribution == "logistic_mixture":
            # Per pixel and component: a logit, c means, c log-scales, c (c - 1) / 2 channel coefficients.
            per_component = 1 + 2 * in_channels + in_channels * (in_channels - 1) // 2
            self.to_mixture = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden_channels, num_mixtures * per_component, 1))
            return
        self.channel_context = nn.ModuleList(
            [nn.Conv2d(k * embedding_dim, hidden_channels, 1) for k in range(1, in_channels)]
        )
        self.to_logits = nn.ModuleList(
            [nn.Sequential(nn.ReLU(), nn.Conv2d(hidden_channels, num_levels, 1)) for _ in range(in_channels)]
        )

    def check_tokens(self, tokens: torch.Tensor):
        config = self.config
        expected = (config.in_channels, config.sample_size, config.sample_size)
        if tokens.ndim != 4 or tokens.shape[1] != expected[0] or tokens.shape[2] > expected[1]:
            raise ValueError(
                f"Expected tokens of shape (batch, {', '.join(map(str, expected))}), got {tuple(tokens.shape)}."
            )
        if tokens.dtype != torch.long or tokens.min() < 0 or tokens.max() >= config.num_levels:
            raise ValueError(
                f"tokens must be long integers in [0, {config.num_levels - 1}]; convert images in [-1, 1] with "
                "`images_to_tokens(images, num_levels)`."
            )

    def forward(self, sample: torch.Tensor, condition: Condition | None = None, return_dict: bool = True):
        r"""`sample` (b, c, h, w) long tokens -> logits (b, num_levels, c, h, w) and log p(x) (b,).

        Any grid of h <= sample_size rows and any number of columns is accepted: no layer depends on the grid's
        size."""
        self.check_tokens(sample)
        b, c, h, w = sample.shape
        offsets = torch.arange(c, device=sample.device).view(1, c, 1, 1) * self.config.num_levels
        embedded = self.token_embedding(sample + offsets)  # (b, c, h, w, e)
        embedded = embedded.permute(0, 1, 4, 2, 3)  # (b, c, e, h, w)
        cond = embed_condition(self, condition, b)  # (b, hidden) or None
        features = self.trunk(embedded.flatten(1, 2), cond)  # (b, hidden, h, w): pixels before each pixel only
        if self.config.output_distribution == "logistic_mixture":
            params = self.to_mixture(features).permute(0, 2, 3, 1).flatten(0, 2)  # (b h w, params)
            pixels = sample.permute(0, 2, 3, 1).flatten(0, 2)  # (b h w, c)
            logits = discretized_logistic_mixture_logits(params, pixels, self.config.num_levels)  # (b h w, L, c)
            logits = logits.view(b, h, w, -1, c).permute(0, 3, 4, 1, 2)  # (b, num_levels, c, h, w)
        else:
            logits = []
            for k in range(c):
                z = features
                if k > 0:  # channel k also reads channels 0..k-1 of its own pixel
                    z = z + self.channel_context[k - 1](embedded[:, :k].flatten(1, 2))
                logits.append(self.to_logits[k](z))  # (b, num_levels, h, w)
            logits = torch.stack(logits, dim=2).float()  # (b, num_levels, c, h, w)
        log_likelihood = -F.cross_entropy(logits, sample, reduction="none").flatten(1).sum(1)  # (b,)
        if not return_dict:
            return logits, log_likelihood
        return AutoregressiveOutput(logits=logits, log_likelihood=log_likelihood)

    def trunk(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ----- cached sampling: one pixel at a time, every layer computed at that pixel only --------------------------
    def _embed_pixel(self, tokens: torch.Tensor, row: int, col: int, cache: dict, channels: int | None = None):
        """(b, channels * embedding_dim): the embeddings of the first `channels` tokens of pixel (row, col)."""
        c = tokens.shape[1] if channels is None else channels
        rows = tokens[:, :c, row, col] + cache["offsets"][:c]  # token t of channel k is row k * num_levels + t
        return F.embedding(rows, self.token_embedding.weight).flatten(1)  # (b, c * e)

    def init_cache(self, tokens: torch.Tensor, condition: Condition | None = None) -> dict:
        r"""An empty cache for sampling `tokens` (b, c, h, w) with [`cached_logits`], called for token 0, 1, 2, ...
        in raster order. `cache["embedded"]` holds the token embeddings of the pixels drawn so far; the subclass adds
        the activation maps its layers read (`_init_trunk_cache`)."""
        self.check_tokens(tokens)
        b, c, h, w = tokens.shape
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                _prepare_at(module)
        weight = self.token_embedding.weight
        pad = self.config.first_kernel_size // 2 + 1  # + 1: Gated PixelCNN's first horizontal kernel ends at col - 1
        cache = {
            "shape": (b, c, h, w),
            "next_pixel": 0,
            "cond": embed_condition(self, condition, b),  # (b, hidden) or None
            "offsets": torch.arange(c, device=tokens.device) * self.config.num_levels,
            "embedded": CausalMap(weight, b, c * self.config.embedding_dim, h, w, pad),  # (b, c * e, h, w)
        }
        self._init_trunk_cache(cache, weight, b, h, w)
        return cache

    def cached_logits(self, tokens: torch.Tensor, index: int, cache: dict) -> torch.Tensor:
        r"""(b, num_levels) logits of token `index` (raster order over c x h x w, channels inside pixels) given the
        tokens before it, equal to `forward(tokens).logits[:, :, channel, row, col]`. Call it for every index in
        order from 0: at a pixel's first channel it computes the trunk at that pixel from the cache (O(layers)
        work, not O(h w layers)); the other channels reuse it."""
        b, c, h, w = cache["shape"]
        if tuple(tokens.shape) != (b, c, h, w):
            raise ValueError(f"The cache was made for tokens of shape {(b, c, h, w)}, got {tuple(tokens.shape)}.")
        pixel, channel = divmod(index, c)
        row, col = divmod(pixel, w)
        if channel == 0:
            if pixel != cache["next_pixel"]:
                raise ValueError(
                    f"cached_logits must be called in raster order from token 0: expected pixel {cache['next_pixel']}"
                    f", got pixel {pixel} (token {index})."
                )
            if pixel > 0:  # the previous pixel is now complete: its embedding is final
                prev_row, prev_col = divmod(pixel - 1, w)
                cache["embedded"].write(prev_row, prev_col, self._embed_pixel(tokens, prev_row, prev_col, cache))
            if col == 0:
                self._start_row(row, cache)
            cache["features"] = self._trunk_at(row, col, cache)  # (b, hidden)
            cache["next_pixel"] = pixel + 1
        elif pixel != cache["next_pixel"] - 1:
            raise ValueError(f"Token {index} is channel {channel} of pixel {pixel}: call its channel 0 first.")
        z = cache["features"]
        if self.config.output_distribution == "logistic_mixture":  # channels < k of the pixel enter the mixture
            params = _conv_at(self.to_mixture[1], F.relu(z))  # (b, params)
            return discretized_logistic_mixture_logits(params, tokens[:, :, row, col], self.config.num_levels)[
                :, :, channel
            ]
        if channel > 0:  # channel k also reads channels 0..k-1 of its own pixel
            z = z + _conv_at(self.channel_context[channel - 1], self._embed_pixel(tokens, row, col, cache, channel))
        return _conv_at(self.to_logits[channel][1], F.relu(z)).float()  # (b, num_levels): ReLU then the 1x1

    def _init_trunk_cache(self, cache: dict, like: torch.Tensor, b: int, h: int, w: int):
        raise NotImplementedError

    def _start_row(self, row: int, cache: dict):
        """What depends only on the rows above `row`, computed once when the row starts (nothing by default)."""

    def _trunk_at(self, row: int, col: int, cache: dict) -> torch.Tensor:
        """(b, hidden): `trunk`'s output at (row, col) alone, from the cache; writes what later pixels read."""
        raise NotImplementedError


def _add_bias(h: torch.Tensor, projection: nn.Module | None, cond: torch.Tensor | None) -> torch.Tensor:
    """h (b, n, h, w) + a per-image conditional bias (b, n) (the conditional PixelCNN's V^T h)."""
    if cond is None:
        return h
    return h + projection(cond)[:, :, None, None].to(h.dtype)


class PixelCNNModel(AutoregressiveImageModel):
    r"""PixelCNN: a mask-A convolution, then residual blocks (1x1, mask-B k x k, 1x1), then the per-channel head.

    Parameters:
        sample_size (`int`, *optional*, defaults to 8): Side of the square grid.
        in_channels (`int`, *optional*, defaults to 1): Channels per pixel (3 for RGB, predicted in order).
        num_levels (`int`, *optional*, defaults to 17): Values per token (2, 17, 256, or a codebook size).
        embedding_dim (`int`, *optional*, defaults to 16): Token embedding size per channel.
        hidden_channels (`int`, *optional*, defaults to 64): Width of the network.
        num_layers (`int`, *optional*, defaults to 5): Residual blocks.
        kernel_size (`int`, *optional*, defaults to 3): Mask-B kernel of the blocks.
        first_kernel_size (`int`, *optional*, defaults to 7): Mask-A kernel of the first layer.
        condition_type (`str`, *optional*): None, "class" or "text" (a bias per block from the pooled embedding).
        num_classes (`int`, *optional*): For `condition_type="class"`.
        text_embed_dim (`int`, *optional*): Pooled text embedding size, for `condition_type="text"`.
        output_distribution (`str`, *optional*, defaults to "categorical"): "categorical" (a softmax over
            `num_levels` per channel) or "logistic_mixture" (PixelCNN++'s discretized mixture of logistics per pixel,
            the channels linearly dependent; [`discretized_logistic_mixture_logits`]).
        num_mixtures (`int`, *optional*, defaults to 5): Mixture components, for "logistic_mixture".
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_levels: int = 17,
        embedding_dim: int = 16,
        hidden_channels: int = 64,
        num_layers: int = 5,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        output_distribution: str = "categorical",
        num_mixtures: int = 5,
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim, output_distribution, num_mixtures,
        )  # fmt: skip
        h = hidden_channels
        self.conv_in = MaskedConv2d(in_channels * embedding_dim, h, first_kernel_size, "A")
        self.blocks = nn.ModuleList(
            [
                nn.ModuleDict(
                    {
                        "reduce": nn.Conv2d(h, h // 2, 1),
                        "masked": MaskedConv2d(h // 2, h // 2, kernel_size, "B"),
                        "expand": nn.Conv2d(h // 2, h, 1),
                    }
                )
                for _ in range(num_layers)
            ]
        )
        self.condition_bias = (
            nn.ModuleList([nn.Linear(h, h // 2) for _ in range(num_layers)]) if condition_type else None
        )

    def receptive_field(self) -> tuple[int, int, int]:
        """(rows above, columns left, columns right) the stacked kernels span; the blind spot lies inside it."""
        reach = self.config.first_kernel_size // 2 + self.config.num_layers * (self.config.kernel_size // 2)
        return reach, reach, reach

    def trunk(self, x, cond):
        h = self.conv_in(x)  # (b, hidden, h, w): mask A, pixels strictly before
        for i, block in enumerate(self.blocks):
            y = block["reduce"](F.relu(h))
            y = _add_bias(block["masked"](F.relu(y)), self.condition_bias and self.condition_bias[i], cond)
            h = h + block["expand"](F.relu(y))  # residual block of the PixelRNN paper, figure 5
        return h

    def _init_trunk_cache(self, cache, like, b, h, w):
        # The only spatial convolutions: conv_in (reads the embeddings) and each block's masked k x k (reads relu of
        # its 1x1 reduction); everything else is 1x1 and computed at the pixel itself.
        half, k = self.config.hidden_channels // 2, self.config.kernel_size
        cache["reduced"] = [CausalMap(like, b, half, h, w, k // 2) for _ in self.blocks]

    def _trunk_at(self, row, col, cache):
        cond = cache["cond"]
        h = self.conv_in.forward_at(cache["embedded"], row, col)  # (b, hidden): mask A, pixels strictly before
        for i, block in enumerate(self.blocks):
            cache["reduced"][i].write(row, col, F.relu(_conv_at(block["reduce"], F.relu(h))))  # (b, hidden // 2)
            y = block["masked"].forward_at(cache["reduced"][i], row, col)  # mask B: this pixel and the ones before
            if cond is not None:
                y = y + self.condition_bias[i](cond)
            h = h + _conv_at(block["expand"], F.relu(y))
        return h


class GatedPixelCNNModel(AutoregressiveImageModel):
    r"""Gated PixelCNN: a vertical stack (the rows above, full width) and a horizontal stack (the row to the left)
    with no blind spot, gated activations tanh(W_f * x + V_f^T c) x sigmoid(W_g * x + V_g^T c), residual connections
    in the horizontal stack, and conditional biases from a class or a pooled text embedding.

    Cached sampling: the vertical stack of a row reads only rows up to it, and the horizontal stack of row r reads it
    through a one-row shift, so the vertical stack (all layers, whole row r - 1) is computed once when row r starts,
    and the horizontal stack once per pixel.

    Parameters: as [`PixelCNNModel`] (`num_layers` gated layers after the first).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_levels: int = 17,
        embedding_dim: int = 16,
        hidden_channels: int = 64,
        num_layers: int = 5,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        output_distribution: str = "categorical",
        num_mixtures: int = 5,
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim, output_distribution, num_mixtures,
        )  # fmt: skip
        h = hidden_channels
        self.layers = nn.ModuleList()
        for i in range(num_layers + 1):
            k, c_in = (first_kernel_size, in_channels * embedding_dim) if i == 0 else (kernel_size, h)
            layer = {
                # (k // 2 + 1) x k: the rows up to the current one; shifted down one row before the horizontal stack.
                "vertical": nn.Conv2d(c_in, 2 * h, (k // 2 + 1, k)),
                "vertical_to_horizontal": nn.Conv2d(2 * h, 2 * h, 1),
                # 1 x (k // 2 + 1): the row up to the current pixel; the first layer excludes it (mask A).
                "horizontal": nn.Conv2d(c_in, 2 * h, (1, k // 2 + 1)),
                "horizontal_out": nn.Conv2d(h, h, 1),
            }
            if condition_type:
                layer["horizontal_bias"] = nn.Linear(h, 2 * h)
                if i < num_layers:  # the last layer's vertical stack feeds only its horizontal one, before the gate
                    layer["vertical_bias"] = nn.Linear(h, 2 * h)
            self.layers.append(nn.ModuleDict(layer))

    @staticmethod
    def _gate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def trunk(self, x, cond):
        v, h = x, x
        for i, layer in enumerate(self.layers):
            k = self.config.first_kernel_size if i == 0 else self.config.kernel_size
            v_pre = layer["vertical"](F.pad(v, (k // 2, k // 2, k // 2, 0)))  # (b, 2h, h, w): rows <= r
            v_shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # rows < r: what the horizontal stack may see
            if i == 0:  # mask A: the pixels left of the current one
                h_pre = layer["horizontal"](F.pad(h, (k // 2 + 1, 0)))[:, :, :, :-1]
            else:
                h_pre = layer["horizontal"](F.pad(h, (k // 2, 0)))
            h_pre = h_pre + layer["vertical_to_horizontal"](v_shifted)
            if cond is not None:
                h_pre = _add_bias(h_pre, layer["horizontal_bias"], cond)
                if "vertical_bias" in layer:
                    v_pre = _add_bias(v_pre, layer["vertical_bias"], cond)
            v = self._gate(v_pre)
            h_out = layer["horizontal_out"](self._gate(h_pre))
            h = h_out if i == 0 else h + h_out  # residual in the horizontal stack (not across the mask-A layer)
        return h

    def _init_trunk_cache(self, cache, like, b, h, w):
        # Layer i's vertical stack reads layer i - 1's vertical output (rows up to its own, full width): one map per
        # layer after the first (the first reads the embeddings). Its horizontal stack reads layer i - 1's horizontal
        # output in the current row, to the left. `v_to_h[i]` (b, 2h, 1, w): the vertical stack's contribution to
        # the current row's horizontal stack (from the row above), computed once per row in `_start_row`.
        n, k = self.config.hidden_channels, self.config.kernel_size
        cache["vertical"] = [None] + [CausalMap(like, b, n, h, w, k // 2) for _ in self.layers[1:]]
        cache["horizontal"] = [None] + [CausalMap(like, b, n, h, w, k // 2) for _ in self.layers[1:]]
        cache["v_to_h"] = [None] * len(self.layers)

    def _start_row(self, row, cache):
        """The vertical stack of every layer for row - 1 (complete now): the horizontal stack of `row` sees it
        through the one-row shift. Row 0 sees the shift's zero padding."""
        cond, (b, _, _, w) = cache["cond"], cache["shape"]
        for i, layer in enumerate(self.layers):
            if row == 0:
                shifted = cache["embedded"].data.new_zeros(b, 2 * self.config.hidden_channels, 1, w)
                cache["v_to_h"][i] = layer["vertical_to_horizontal"](shifted)[:, :, 0]  # (b, 2h, w)
                continue
            k = self.config.first_kernel_size if i == 0 else self.config.kernel_size
            source = cache["embedded"] if i == 0 else cache["vertical"][i]
            slab = source.rows(row - 1, up=k // 2)  # (b, c_in, k // 2 + 1, w + 2 pad)
            if source.pad > k // 2:  # the embeddings are padded for the horizontal mask-A kernel too: trim
                slab = slab[:, :, :, source.pad - k // 2 : slab.shape[3] - (source.pad - k // 2)]
            v_pre = layer["vertical"](slab)  # (b, 2h, 1, w): row - 1 of the full pass's v_pre
            cache["v_to_h"][i] = layer["vertical_to_horizontal"](v_pre)[:, :, 0]  # (b, 2h, w)
            if i + 1 < len(self.layers):  # the last layer's vertical output feeds nothing
                if "vertical_bias" in layer:
                    v_pre = _add_bias(v_pre, layer["vertical_bias"], cond)
                cache["vertical"][i + 1].write_row(row - 1, self._gate(v_pre))

    def _trunk_at(self, row, col, cache):
        cond, h = cache["cond"], None
        for i, layer in enumerate(self.layers):
            if i == 0:  # mask A: the kernel's k // 2 + 1 pixels left of this one
                k = self.config.first_kernel_size
                patch = cache["embedded"].window(row, col - 1, up=0, left=k // 2, right=0)  # (b, c * e, 1, k // 2 + 1)
            else:  # this pixel and the k // 2 before it
                k = self.config.kernel_size
                cache["horizontal"][i].write(row, col, h)
                patch = cache["horizontal"][i].window(row, col, up=0, left=k // 2, right=0)  # (b, h, 1, k // 2 + 1)
            h_pre = _conv_at(layer["horizontal"], patch) + cache["v_to_h"][i][:, :, col]  # (b, 2h)
            if cond is not None:
                h_pre = h_pre + layer["horizontal_bias"](cond)
            h_out = _conv_at(layer["horizontal_out"], self._gate(h_pre))
            h = h_out if i == 0 else h + h_out
        return h


class RowLSTMModel(AutoregressiveImageModel):
    r"""PixelRNN's Row LSTM: a mask-A convolution, then LSTM layers that process the image row by row; the gates of
    row r come from a masked 1 x k convolution of row r (input-to-state) and a 1-D convolution of the hidden state of
    row r - 1 (state-to-state), so each pixel sees a triangle above it. Residual connections between layers.

    Cached sampling: the state-to-state term of row r reads only the hidden row r - 1, so it is computed once when
    row r starts; the input-to-state convolution (mask B, this row to the left) and the LSTM step run per pixel.

    Parameters: as [`PixelCNNModel`] (`num_layers` LSTM layers, `kernel_size` of both their convolutions).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_levels: int = 17,
        embedding_dim: int = 16,
        hidden_channels: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        output_distribution: str = "categorical",
        num_mixtures: int = 5,
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim, output_distribution, num_mixtures,
        )  # fmt: skip
        h = hidden_channels
        self.conv_in = MaskedConv2d(in_channels * embedding_dim, h, first_kernel_size, "A")
        self.input_to_state = nn.ModuleList([MaskedConv2d(h, 4 * h, (1, kernel_size), "B") for _ in range(num_layers)])
        self.state_to_state = nn.ModuleList(
            [nn.Conv1d(h, 4 * h, kernel_size, padding=kernel_size // 2) for _ in range(num_layers)]
        )
        self.condition_bias = (
            nn.ModuleList([nn.Linear(h, 4 * h) for _ in range(num_layers)]) if condition_type else None
        )

    def trunk(self, x, cond):
        f = self.conv_in(x)  # (b, hidden, h, w)
        b, n, height, width = f.shape
        for i in range(self.config.num_layers):
            gates_in = _add_bias(self.input_to_state[i](f), self.condition_bias and self.condition_bias[i], cond)
            hidden = f.new_zeros(b, n, width)
            cell = f.new_zeros(b, n, width)
            rows = []
            for r in range(height):
                gates = gates_in[:, :, r] + self.state_to_state[i](hidden)  # (b, 4h, w)
                i_gate, f_gate, o_gate, g = gates.chunk(4, dim=1)
                cell = torch.sigmoid(f_gate) * cell + torch.sigmoid(i_gate) * torch.tanh(g)
                hidden = torch.sigmoid(o_gate) * torch.tanh(cell)
                rows.append(hidden)
            f = f + torch.stack(rows, dim=2)  # residual
        return f

    def _init_trunk_cache(self, cache, like, b, h, w):
        # Per layer: its input map (read by the 1 x k input-to-state, this row only), the hidden and cell states of
        # the row above (b, n, w) and of this row as it fills, and the state-to-state term of this row (b, 4n, w).
        n, k = self.config.hidden_channels, self.config.kernel_size
        cache["inputs"] = [CausalMap(like, b, n, h, w, k // 2) for _ in range(self.config.num_layers)]
        cache["hidden"] = [like.new_zeros(b, n, w) for _ in range(self.config.num_layers)]
        cache["cell"] = [like.new_zeros(b, n, w) for _ in range(self.config.num_layers)]

    def _start_row(self, row, cache):
        """The state-to-state term of `row` reads the whole hidden row above: computed once per row. The rows of
        hidden and cell states filled during the row above become the previous row (zeros for row 0)."""
        cache["hidden_above"], cache["cell_above"] = cache["hidden"], cache["cell"]
        cache["hidden"] = [torch.zeros_like(t) for t in cache["hidden_above"]]
        cache["cell"] = [torch.zeros_like(t) for t in cache["cell_above"]]
        cache["state_gates"] = [s2s(hidden) for s2s, hidden in zip(self.state_to_state, cache["hidden_above"])]

    def _trunk_at(self, row, col, cache):
        f = self.conv_in.forward_at(cache["embedded"], row, col)  # (b, hidden)
        for i in range(self.config.num_layers):
            cache["inputs"][i].write(row, col, f)
            gates = self.input_to_state[i].forward_at(cache["inputs"][i], row, col)  # (b, 4h)
            if cache["cond"] is not None:
                gates = gates + self.condition_bias[i](cache["cond"])
            gates = gates + cache["state_gates"][i][:, :, col]
            i_gate, f_gate, o_gate, g = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f_gate) * cache["cell_above"][i][:, :, col] + torch.sigmoid(i_gate) * torch.tanh(g)
            hidden = torch.sigmoid(o_gate) * torch.tanh(cell)  # (b, h)
            cache["cell"][i][:, :, col], cache["hidden"][i][:, :, col] = cell, hidden
            f = f + hidden  # residual
        return f


class DiagonalBiLSTMModel(AutoregressiveImageModel):
    r"""PixelRNN's Diagonal BiLSTM: the input map is skewed (row r shifted right by r) so that a diagonal becomes a
    column; an LSTM walks the columns, its state-to-state a 2 x 1 convolution (the pixel above and the one to the
    left), its input-to-state a 1 x 1 convolution. A second LSTM walks right to left; its output is shifted down one
    row, so no pixel sees its own row to the right. Residual connections between layers.

    Cached sampling: the left-to-right state at (r, c) reads (r - 1, c) and (r, c - 1) only, so it is computed per
    pixel. The right-to-left state at (r, c) reads (r, c + 1): the rest of its row, not drawn yet, so no per-pixel
    cache exists for it; but pixel (r, c) reads it only through the one-row shift, from row r - 1, so the whole
    right-to-left walk over row r - 1 runs once when row r starts (w steps per row; see `_start_row`).

    Parameters: as [`PixelCNNModel`] (`num_layers` bidirectional layers).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_levels: int = 17,
        embedding_dim: int = 16,
        hidden_channels: int = 32,
        num_layers: int = 2,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        condition_type: str | None = None,
        num_classes: int | None = None,
        text_embed_dim: int | None = None,
        output_distribution: str = "categorical",
        num_mixtures: int = 5,
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim, output_distribution, num_mixtures,
        )  # fmt: skip
        h = hidden_channels
        self.conv_in = MaskedConv2d(in_channels * embedding_dim, h, first_kernel_size, "A")
        # [layer][direction]: 0 left to right, 1 right to left.
        self.input_to_state = nn.ModuleList([nn.Conv2d(h, 8 * h, 1) for _ in range(num_layers)])
        self.state_to_state = nn.ModuleList(
            [nn.ModuleList([nn.Conv1d(h, 4 * h, 2, padding=1) for _ in range(2)]) for _ in range(num_layers)]
        )
        self.output = nn.ModuleList([nn.Conv2d(h, h, 1) for _ in range(num_layers)])
        self.condition_bias = (
            nn.ModuleList([nn.Linear(h, 8 * h) for _ in range(num_layers)]) if condition_type else None
        )

    @staticmethod
    def skew(x: torch.Tensor) -> torch.Tensor:
        """(b, n, h, w) -> (b, n, h, w + h - 1), row r shifted right by r."""
        b, n, height, width = x.shape
        out = x.new_zeros(b, n, height, width + height - 1)
        for r in range(height):
            out[:, :, r, r : r + width] = x[:, :, r]
        return out

    @staticmethod
    def unskew(x: torch.Tensor, width: int) -> torch.Tensor:
        return torch.stack([x[:, :, r, r : r + width] for r in range(x.shape[2])], dim=2)

    def _diagonal_lstm(self, gates_in: torch.Tensor, state_to_state: nn.Module) -> torch.Tensor:
        """gates_in (b, 4h, rows, columns) of a skewed map -> hidden states (b, h, rows, columns)."""
        b, n4, height, columns = gates_in.shape
        hidden = gates_in.new_zeros(b, n4 // 4, height)
        cell = gates_in.new_zeros(b, n4 // 4, height)
        out = []
        for j in range(columns):
            # Padding 1 on both sides and dropping the last output: row r reads rows r - 1 and r of the last column.
            gates = gates_in[:, :, :, j] + state_to_state(hidden)[:, :, :height]  # (b, 4h, rows)
            i_gate, f_gate, o_gate, g = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f_gate) * cell + torch.sigmoid(i_gate) * torch.tanh(g)
            hidden = torch.sigmoid(o_gate) * torch.tanh(cell)
            out.append(hidden)
        return torch.stack(out, dim=3)

    def trunk(self, x, cond):
        f = self.conv_in(x)  # (b, hidden, h, w)
        width = f.shape[3]
        for i in range(self.config.num_layers):
            outputs = []
            for direction in range(2):
                g = f if direction == 0 else f.flip(3)
                gates = _add_bias(self.input_to_state[i](g), self.condition_bias and self.condition_bias[i], cond)
                gates = gates.chunk(2, dim=1)[direction]  # (b, 4h, h, w)
                out = self.unskew(self._diagonal_lstm(self.skew(gates), self.state_to_state[i][direction]), width)
                outputs.append(out if direction == 0 else F.pad(out.flip(3), (0, 0, 1, 0))[:, :, :-1])
            f = f + self.output[i](outputs[0] + outputs[1])  # residual
        return f

    # Cached sampling. In image coordinates the skewed column walk reads, for pixel (r, c), the states at (r - 1, c)
    # and (r, c - 1) (left to right) or (r - 1, c) and (r, c + 1) (right to left, in the flipped map). So:
    # - left to right: a true per-pixel cache; the state at (r, c) needs only (r - 1, c) and (r, c - 1);
    # - right to left: a pixel's state depends on its whole row to the right, which is not drawn yet. But its output
    #   is shifted down one row, so pixel (r, c) reads only row r - 1's right-to-left states: the whole walk over row
    #   r - 1 is computed once, when row r starts (w steps per row, as many as the row's pixels).
    # - At the left end of a row the walk reads a skewed position outside the image: its input gates are the skew's
    #   zero padding, so its state depends on the weights alone (`_outside_states`), not on any pixel.
    def _outside_states(self, state_to_state: nn.Module, height: int, like: torch.Tensor):
        """(height, h) hidden and cell states of the skewed position just before each row starts (row 0: zeros),
        found by walking the columns left of the image with zero input gates."""
        n = self.config.hidden_channels
        hidden, cell = like.new_zeros(1, n, height), like.new_zeros(1, n, height)
        before_h, before_c = like.new_zeros(height, n), like.new_zeros(height, n)
        for j in range(height - 1):  # row r starts at skewed column r; column j of rows > j is outside the image
            gates = state_to_state(hidden)[:, :, :height]
            i_gate, f_gate, o_gate, g = gates.chunk(4, dim=1)
            cell = torch.sigmoid(f_gate) * cell + torch.sigmoid(i_gate) * torch.tanh(g)
            hidden = torch.sigmoid(o_gate) * torch.tanh(cell)
            before_h[j + 1], before_c[j + 1] = hidden[0, :, j + 1], cell[0, :, j + 1]
        return before_h, before_c

    @staticmethod
    def _lstm_cell(gates_in, state_to_state, above, before, cell_before):
        """One step of the column walk at one pixel: gates_in (b, 4h), above / before / cell_before (b, h)."""
        # state_to_state is a length-2 convolution over (row above, this row) of the previous skewed column.
        gates = gates_in + _conv_at(state_to_state, torch.stack([above, before], dim=2))  # (b, 4h): taps (b, h, 2)
        i_gate, f_gate, o_gate, g = gates.chunk(4, dim=1)
        cell = torch.sigmoid(f_gate) * cell_before + torch.sigmoid(i_gate) * torch.tanh(g)
        return torch.sigmoid(o_gate) * torch.tanh(cell), cell

    def _init_trunk_cache(self, cache, like, b, h, w):
        # Per layer and direction: hidden and cell states (b, h, rows, w); the right-to-left input gates (b, 4h, h, w)
        # filled as pixels are computed; the states just outside each row's start (shared by the batch).
        n, layers = self.config.hidden_channels, self.config.num_layers
        cache["states"] = [[[like.new_zeros(b, n, h, w) for _ in range(2)] for _ in range(2)] for _ in range(layers)]
        cache["gates_rl"] = [like.new_zeros(b, 4 * n, h, w) for _ in range(layers)]
        cache["outside"] = [[self._outside_states(s2s, h, like) for s2s in pair] for pair in self.state_to_state]

    def _start_row(self, row, cache):
        """The right-to-left walk over row - 1, now complete: what row `row` reads through the one-row shift."""
        if row == 0:
            return
        r, w = row - 1, cache["shape"][3]
        for i in range(self.config.num_layers):
            hidden, cell = cache["states"][i][1]
            before_h, before_c = cache["outside"][i][1]
            h_prev = before_h[r].expand(hidden.shape[0], -1)  # (b, h): right of the row's end, in the flipped map
            c_prev = before_c[r].expand(hidden.shape[0], -1)
            for col in reversed(range(w)):
                above = hidden[:, :, r - 1, col] if r > 0 else torch.zeros_like(h_prev)
                gates_in = cache["gates_rl"][i][:, :, r, col]
                h_prev, c_prev = self._lstm_cell(gates_in, self.state_to_state[i][1], above, h_prev, c_prev)
                hidden[:, :, r, col], cell[:, :, r, col] = h_prev, c_prev

    def _trunk_at(self, row, col, cache):
        f = self.conv_in.forward_at(cache["embedded"], row, col)  # (b, hidden)
        for i in range(self.config.num_layers):
            gates = _conv_at(self.input_to_state[i], f)  # (b, 8h)
            if cache["cond"] is not None:
                gates = gates + self.condition_bias[i](cache["cond"])
            gates_lr, gates_rl = gates.chunk(2, dim=1)  # (b, 4h) each; 1x1, so flipping is irrelevant
            cache["gates_rl"][i][:, :, row, col] = gates_rl
            hidden, cell = cache["states"][i][0]
            before_h, before_c = cache["outside"][i][0]
            if col > 0:
                left, cell_left = hidden[:, :, row, col - 1], cell[:, :, row, col - 1]
            else:  # the skewed position just before the row starts
                left, cell_left = before_h[row].expand(len(f), -1), before_c[row].expand(len(f), -1)
            above = hidden[:, :, row - 1, col] if row > 0 else torch.zeros_like(left)
            h_lr, c_lr = self._lstm_cell(gates_lr, self.state_to_state[i][0], above, left, cell_left)
            hidden[:, :, row, col], cell[:, :, row, col] = h_lr, c_lr
            h_rl = cache["states"][i][1][0][:, :, row - 1, col] if row > 0 else torch.zeros_like(h_lr)  # shifted down
            f = f + _conv_at(self.output[i], h_lr + h_rl)  # residual
        return f


def _check_kernels(kernel_size: int, first_kernel_size: int):
    if kernel_size % 2 == 0 or first_kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"Kernel sizes must be odd, got kernel_size={kernel_size}, first={first_kernel_size}.")


MODEL_CLASSES = {
    "pixelcnn": PixelCNNModel,
    "gated_pixelcnn": GatedPixelCNNModel,
    "row_lstm": RowLSTMModel,
    "diagonal_bilstm": DiagonalBiLSTMModel,
}


# ----- the transformer prior: transformers' GPT-2 over the tokens ---------------------------------------------------
def build_transformer_prior(
    sample_size: int = 8,
    in_channels: int = 1,
    num_levels: int = 17,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    condition_type: str | None = None,
    num_classes: int | None = None,
    text_embed_dim: int | None = None,
    dropout: float = 0.0,
) -> GPT2LMHeadModel:
    r"""A GPT-2 (random weights) over the c x h x w tokens in raster order. The vocabulary is the `num_levels` values
    plus the start tokens: one, or for a class model one per class and one for the null class (`num_classes`), so
    the class is the first token. A text model cross-attends to the text encoder's per-token states, which GPT-2 reads
    at its own width: `n_embd` must equal `text_embed_dim`. hfgen's reading of the sequence (grid shape, levels,
    conditioning) is stored in the config, so `config.json` says everything. `dropout` is GPT-2's own (on the
    embeddings, the attention weights and each residual branch), active in training mode only."""
    check_condition_config(condition_type, num_classes, text_embed_dim)
    check_positive_sizes(n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    if condition_type == "text" and n_embd != text_embed_dim:
        raise ValueError(
            f"GPT-2's cross-attention reads text states of its own width: n_embd={n_embd} must equal the text "
            f"encoder's hidden size {text_embed_dim} (set --n_embd {text_embed_dim})."
        )
    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be a multiple of n_head={n_head}.")
    num_start = num_classes + 1 if condition_type == "class" else 1
    config = GPT2Config(
        vocab_size=num_levels + num_start,
        n_positions=in_channels * sample_size * sample_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        add_cross_attention=condition_type == "text",
        bos_token_id=num_levels,
        eos_token_id=None,
        sample_size=sample_size,
        in_channels=in_channels,
        num_levels=num_levels,
        condition_type=condition_type,
        num_classes=num_classes,
        text_embed_dim=text_embed_dim,
    )
    return GPT2LMHeadModel(config)


def transformer_start_tokens(config, condition: Condition | None, batch_size: int, device) -> torch.Tensor:
    """(b, 1) the first token: `num_levels` plus the class (the null class when there is none)."""
    start = torch.full((batch_size, 1), config.num_levels, dtype=torch.long, device=device)
    if config.condition_type == "class":
        labels = None if condition is None else condition.class_labels
        if labels is None:
            labels = torch.full((batch_size,), config.num_classes, dtype=torch.long, device=device)
        start = start + labels.view(-1, 1).to(device)
    return start


def transformer_text_kwargs(config, condition: Condition | None) -> dict:
    if config.condition_type != "text":
        if config.condition_type is None and condition is not None:
            raise ValueError("This transformer prior was trained without conditioning: pass no condition.")
        return {}
    if condition is None or condition.text_hidden_states is None:
        raise ValueError("This transformer prior is conditioned on text: pass a Condition with text_hidden_states.")
    return {
        "encoder_hidden_states": condition.text_hidden_states,
        "encoder_attention_mask": condition.text_attention_mask,
    }


def transformer_forward(model, sample: torch.Tensor, condition: Condition | None = None, config=None):
    r"""[`AutoregressiveOutput`] of a GPT-2 prior for tokens (b, c, h, w): the same contract as the other models'
    `forward`. `model` may be wrapped (Accelerate, DDP): pass the unwrapped model's `config`."""
    config = config or model.config
    b, c, h, w = sample.shape
    sequence = sample.permute(0, 2, 3, 1).reshape(b, c * h * w)  # raster order, channels inside each pixel
    start = transformer_start_tokens(config, condition, b, sample.device)
    inputs = torch.cat([start, sequence[:, :-1]], dim=1)  # (b, n): token i is predicted from the ones before it
    logits = model(input_ids=inputs, **transformer_text_kwargs(config, condition)).logits  # (b, n, vocab)
    logits = logits[..., : config.num_levels].float()  # start tokens are never predicted
    logits = logits.reshape(b, h, w, c, -1).permute(0, 4, 3, 1, 2)  # (b, num_levels, c, h, w)
    log_likelihood = -F.cross_entropy(logits, sample, reduction="none").flatten(1).sum(1)
    return AutoregressiveOutput(logits=logits, log_likelihood=log_likelihood)


def prior_forward(model, sample: torch.Tensor, condition: Condition | None = None, config=None):
    """Any autoregressive prior (an hfgen model or a GPT-2) -> [`AutoregressiveOutput`]."""
    config = config or model.config
    if getattr(config, "model_type", None) == "gpt2":
        return transformer_forward(model, sample, condition, config)
    return model(sample, condition)
