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
from hfgen.layers import check_condition_config, condition_embedding, embed_condition

ARCHITECTURES = ("pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm", "transformer")


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


class AutoregressiveImageModel(ModelMixin, ConfigMixin):
    r"""What the convolutional and recurrent models share: the token embedding, the condition, the per-channel output
    head and the exact log-likelihood. A subclass builds `self.trunk_*` layers and defines `trunk(x, cond)`: (b,
    c * embedding_dim, h, w) embedded tokens -> (b, hidden_channels, h, w) features of each pixel that depend on the
    pixels before it only."""

    # Rows above / columns left / columns right a pixel's features can depend on (None: unbounded, no cropped cache).
    def receptive_field(self) -> tuple[int, int, int] | None:
        return None

    def _build_common(
        self, sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
        text_embed_dim,
    ):  # fmt: skip
        check_condition_config(condition_type, num_classes, text_embed_dim)
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2 (2 for binary data, 256 for 8-bit), got {num_levels}.")
        if sample_size < 1 or in_channels < 1:
            raise ValueError(f"sample_size and in_channels must be positive, got {sample_size}, {in_channels}.")
        # One table for all channels: token t of channel k is row k * num_levels + t.
        self.token_embedding = nn.Embedding(in_channels * num_levels, embedding_dim)
        self.condition_embedding = condition_embedding(condition_type, num_classes, text_embed_dim, hidden_channels)
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

        A crop of rows and columns is accepted (h, w <= sample_size): the cached sampler computes only the window
        the next pixel depends on."""
        self.check_tokens(sample)
        b, c, h, w = sample.shape
        offsets = torch.arange(c, device=sample.device).view(1, c, 1, 1) * self.config.num_levels
        embedded = self.token_embedding(sample + offsets)  # (b, c, h, w, e)
        embedded = embedded.permute(0, 1, 4, 2, 3)  # (b, c, e, h, w)
        cond = embed_condition(self, condition, b)  # (b, hidden) or None
        features = self.trunk(embedded.flatten(1, 2), cond)  # (b, hidden, h, w): pixels before each pixel only
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
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim,
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
        reach = self.config.first_kernel_size // 2 + self.config.num_layers * (self.config.kernel_size // 2)
        return reach, reach, reach

    def trunk(self, x, cond):
        h = self.conv_in(x)  # (b, hidden, h, w): mask A, pixels strictly before
        for i, block in enumerate(self.blocks):
            y = block["reduce"](F.relu(h))
            y = _add_bias(block["masked"](F.relu(y)), self.condition_bias and self.condition_bias[i], cond)
            h = h + block["expand"](F.relu(y))  # residual block of the PixelRNN paper, figure 5
        return h


class GatedPixelCNNModel(AutoregressiveImageModel):
    r"""Gated PixelCNN: a vertical stack (the rows above, full width) and a horizontal stack (the row to the left)
    with no blind spot, gated activations tanh(W_f * x + V_f^T c) x sigmoid(W_g * x + V_g^T c), residual connections
    in the horizontal stack, and conditional biases from a class or a pooled text embedding.

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
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim,
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

    def receptive_field(self) -> tuple[int, int, int]:
        config = self.config
        reach = config.first_kernel_size // 2 + config.num_layers * (config.kernel_size // 2)
        return reach + 1, reach + 1, reach

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


class RowLSTMModel(AutoregressiveImageModel):
    r"""PixelRNN's Row LSTM: a mask-A convolution, then LSTM layers that process the image row by row; the gates of
    row r come from a masked 1 x k convolution of row r (input-to-state) and a 1-D convolution of the hidden state of
    row r - 1 (state-to-state), so each pixel sees a triangle above it. Residual connections between layers.

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
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim,
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


class DiagonalBiLSTMModel(AutoregressiveImageModel):
    r"""PixelRNN's Diagonal BiLSTM: the input map is skewed (row r shifted right by r) so that a diagonal becomes a
    column; an LSTM walks the columns, its state-to-state a 2 x 1 convolution (the pixel above and the one to the
    left), its input-to-state a 1 x 1 convolution. A second LSTM walks right to left; its output is shifted down one
    row, so no pixel sees its own row to the right. Residual connections between layers.

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
    ):
        super().__init__()
        _check_kernels(kernel_size, first_kernel_size)
        self._build_common(
            sample_size, in_channels, num_levels, embedding_dim, hidden_channels, condition_type, num_classes,
            text_embed_dim,
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
) -> GPT2LMHeadModel:
    r"""A GPT-2 (random weights) over the c x h x w tokens in raster order. The vocabulary is the `num_levels` values
    plus the start tokens: one, or for a class model one per class and one for the null class (`num_classes`), so
    the class is the first token. A text model cross-attends to the text encoder's per-token states, which GPT-2 reads
    at its own width: `n_embd` must equal `text_embed_dim`. hfgen's reading of the sequence (grid shape, levels,
    conditioning) is stored in the config, so `config.json` says everything."""
    check_condition_config(condition_type, num_classes, text_embed_dim)
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
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
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
