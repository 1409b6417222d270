"""Pipeline for the autoregressive family: sampling one token at a time (naive or cached), completion of a partly
known image, and the exact log-likelihood."""

import math

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput, check_generator, check_number

from hfgen.conditioning import Condition
from hfgen.models.modeling_autoregressive import (
    images_to_tokens,
    prior_forward,
    tokens_to_images,
    transformer_start_tokens,
    transformer_text_kwargs,
)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch

        >>> pipe = hfgen.AutoregressivePipeline.from_pretrained("out/ar-gated-digits")
        >>> images = pipe(prompt="a handwritten digit seven", num_images_per_prompt=4, guidance_scale=2.0,
        ...               generator=torch.manual_seed(0)).images
        >>> pipe.log_likelihood(images).bits_per_dim  # exact
        ```
"""


class AutoregressivePipeline(HFGenPipeline):
    r"""Generation with an autoregressive prior: each token (pixel channel, or code) drawn from its categorical given
    the ones before it, in raster order.

    Parameters:
        prior ([`PixelCNNModel`], [`GatedPixelCNNModel`], [`RowLSTMModel`], [`DiagonalBiLSTMModel`] or
            [`~transformers.GPT2LMHeadModel`]): The model of p(x_i | x_<i, c).
        tokenizer ([`~transformers.PreTrainedTokenizerFast`], *optional*): Tokenizer for text-conditioned models.
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): Text encoder for text-conditioned models.
    """

    model_cpu_offload_seq = "text_encoder->prior"
    model_component = "prior"
    # "completion", not "inpainting": `complete` fills a raster-order suffix, not an arbitrary mask as `inpaint` does.
    family_capabilities = frozenset({"guidance", "likelihood", "completion"})
    sampling_controls = {"temperature": (0.1, 2.0, 1.0, "Temperature (logits / T)")}
    _callback_tensor_inputs = ["tokens"]

    def __init__(self, prior, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(prior=prior, tokenizer=tokenizer, text_encoder=text_encoder)

    @property
    def is_transformer(self) -> bool:
        return getattr(self.prior.config, "model_type", None) == "gpt2"

    def latent_shape(self, num_images: int) -> tuple[int, int, int, int]:
        """The grid of tokens drawn: (num_images, channels, height, width)."""
        config = self.prior.config
        return (num_images, config.in_channels, config.sample_size, config.sample_size)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0,
        use_cache: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["tokens"],
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned model; None samples unconditionally.
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or per class label).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance on each token's logits:
                null + scale * (conditional - null). 1 turns it off.
            negative_prompt (`str` or `list[str]`, *optional*): What to guide away from (default: the empty prompt).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): One, or one per image: each token
                is drawn by inverting its CDF at a uniform number from the generator.
            temperature (`float`, *optional*, defaults to 1.0): Divides the logits (< 1 sharper, > 1 flatter).
            use_cache (`bool`, *optional*): The transformer's key/value cache, or for the convolutional and recurrent
                models every layer's activations at the pixels drawn so far (`init_cache` / `cached_logits`: each
                step computes every layer at the next pixel only); the same samples as without it, faster.
                Defaults to True.
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): Called after each row as
                `callback_on_step_end(pipeline, row, None, {"tokens": tokens})`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. An empty grid, filled token by token in raster order
        tokens = torch.zeros(self.latent_shape(num_images), dtype=torch.long, device=self.device)
        start = torch.zeros(num_images, dtype=torch.long, device=self.device)
        tokens = self.sample_tokens(
            tokens, start, condition, negative, guidance_scale, generator, temperature, use_cache,
            callback_on_step_end, callback_on_step_end_tensor_inputs,
        )  # fmt: skip

        # 3. Tokens -> images
        images = self.postprocess(tokens_to_images(tokens, self.prior.config.num_levels), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ----- the sampling loop ----------------------------------------------------------------------------------------
    def check_sampling(self, temperature, use_cache) -> bool:
        check_number("temperature", temperature, 0, strict=True)
        if use_cache is not None and not isinstance(use_cache, bool):
            raise ValueError(f"use_cache must be True, False or None, got {use_cache!r}.")
        return True if use_cache is None else use_cache

    def draw_uniforms(self, num_images: int, num_tokens: int, generator) -> torch.Tensor:
        """(num_images, num_tokens) uniform numbers, one per token, from one generator or one per image."""
        check_generator(generator, num_images)
        if isinstance(generator, list):
            return torch.stack([torch.rand(num_tokens, generator=g) for g in generator]).to(self.device)
        return torch.rand(num_images, num_tokens, generator=generator).to(self.device)

    def sample_tokens(
        self,
        tokens: torch.Tensor,
        start: torch.Tensor,
        condition: Condition | None,
        negative: Condition | None,
        guidance_scale: float,
        generator,
        temperature: float,
        use_cache: bool | None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["tokens"],
    ) -> torch.Tensor:
        """Draws every token at or after `start` (b,) (a raster index over c x h x w) in `tokens` (b, c, h, w) and
        never changes the ones before it."""
        use_cache = self.check_sampling(temperature, use_cache)
        b, c, h, w = tokens.shape
        uniforms = self.draw_uniforms(b, c * h * w, generator)  # drawn first: cached and naive use the same numbers
        if negative is not None:  # classifier-free guidance: [null or negative, conditional] in one batch
            condition = Condition.cat([negative, condition])
        # The convolutional and recurrent caches are filled pixel by pixel from the first one, so they step through
        # the given prefix too (drawing nothing there); the transformer reads its prefix in one pass.
        first = 0 if use_cache and not self.is_transformer else int(start.min())
        last_given = int(start.max())  # from here on every image draws every token
        state = {}
        with self.progress_bar(total=h * w - first // c) as progress:
            for index in range(first, c * h * w):
                row, col, channel = index // (c * w), (index // c) % w, index % c
                both = tokens if negative is None else torch.cat([tokens, tokens])
                logits = self.next_logits(both, index, condition, use_cache, state)  # (b or 2b, num_levels)
                if negative is not None:
                    logits = self.guide(*logits.chunk(2), guidance_scale)
                logits = logits.float() if temperature == 1 else logits.float() / temperature
                cdf = torch.softmax(logits, dim=-1).cumsum(-1)  # (b, num_levels)
                drawn = torch.searchsorted(cdf, uniforms[:, index, None] * cdf[:, -1:]).squeeze(1)
                drawn = drawn.clamp(max=cdf.shape[1] - 1)
                if index < last_given:  # some images keep their given token here
                    drawn = torch.where(index >= start, drawn, tokens[:, channel, row, col])
                tokens[:, channel, row, col] = drawn
                if channel == c - 1:
                    progress.update()
                if channel == c - 1 and col == w - 1:
                    tokens = self.step_callback(
                        callback_on_step_end, callback_on_step_end_tensor_inputs, row, None, {"tokens": tokens}
                    )["tokens"]
        return tokens

    def next_logits(self, tokens, index: int, condition, use_cache: bool, state: dict) -> torch.Tensor:
        """(b, num_levels) logits of token `index` (raster order) given the tokens before it."""
        config = self.prior.config
        b, c, h, w = tokens.shape
        row, col, channel = index // (c * w), (index // c) % w, index % c
        if self.is_transformer:
            sequence = tokens.permute(0, 2, 3, 1).reshape(b, -1)  # (b, n)
            start = transformer_start_tokens(config, condition, b, tokens.device)
            text = transformer_text_kwargs(config, condition)
            if not use_cache:  # the whole prefix again
                inputs = torch.cat([start, sequence[:, :index]], dim=1)
                return self.prior(input_ids=inputs, **text).logits[:, -1, : config.num_levels]
            # Key/value cache: the prefix once, then only the newest token.
            if "cache" not in state:
                inputs = torch.cat([start, sequence[:, :index]], dim=1)
            else:
                inputs = sequence[:, index - 1 : index]
            output = self.prior(input_ids=inputs, cache=state.get("cache"), use_cache=True, **text)
            state["cache"] = output.cache
            return output.logits[:, -1, : config.num_levels]
        if not use_cache:  # a full forward pass over the grid
            return self.prior(tokens, condition).logits[:, :, channel, row, col]
        # Every layer at this pixel only, from the activations cached at the pixels before (token 0 onwards).
        if "cache" not in state:
            state["cache"] = self.prior.init_cache(tokens, condition)
        return self.prior.cached_logits(tokens, index, state["cache"])

    # ----- completion and likelihood --------------------------------------------------------------------------------
    @torch.no_grad()
    def complete(
        self,
        image,
        mask,
        prompt=None,
        class_labels=None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        temperature: float = 1.0,
        use_cache: bool | None = None,
        output_type: str = "pil",
    ):
        r"""Keeps the pixels where `mask` is 1, a prefix in raster order (e.g. the top rows), and samples the rest.

        Args:
            image: Images as `preprocess` takes them (PIL, numpy in [0, 1], a tensor in [-1, 1]).
            mask (`torch.Tensor`): (h, w), (b, h, w) or (b, 1, h, w); 1 keeps a pixel. Per image, the kept pixels must
                be the first ones in raster order (all rows above a point, then the start of its row).
            prompt, class_labels: One for every image, or one per image.
            guidance_scale, generator, temperature, use_cache: As in `__call__`.
        """
        images = self.model_images(image)
        b, c, h, w = images.shape
        mask = torch.as_tensor(mask, device=self.device)
        if mask.ndim == 4 and mask.shape[1] == 1:
            mask = mask[:, 0]
        if mask.ndim not in (2, 3) or mask.shape[-2:] != (h, w) or (mask.ndim == 3 and len(mask) not in (1, b)):
            raise ValueError(
                f"mask must be (h, w), (b, h, w) or (b, 1, h, w) with (h, w) = {(h, w)} and b 1 or {b} (one per "
                f"image), got shape {tuple(mask.shape)}."
            )
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must hold only 1 (pixels to keep) and 0 (pixels to draw).")
        mask = mask.expand(b, h, w).flatten(1).bool()  # (b, h * w)
        known = mask.sum(1)  # (b,) pixels kept
        prefix = torch.arange(h * w, device=self.device)[None] < known[:, None]
        if not torch.equal(mask, prefix):
            raise ValueError(
                "mask must keep a raster-order prefix of each image (whole rows from the top, then the start of the "
                "next row): an autoregressive model can only condition on the pixels before the ones it draws. "
                "E.g. mask = torch.zeros(h, w); mask[: h // 2] = 1 keeps the top half."
            )
        # One prompt or class label for every image, or one per image.
        single = isinstance(prompt, str) or (class_labels is not None and torch.as_tensor(class_labels).ndim == 0)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, 1 if single else b, b if single else 1, guidance_scale, None
        )
        if num_images != b:
            raise ValueError(f"Got {num_images} prompts or labels for {b} images: give one, or one per image.")
        tokens = images_to_tokens(images, self.prior.config.num_levels)
        tokens = self.sample_tokens(
            tokens, known * c, condition, negative, guidance_scale, generator, temperature, use_cache
        )
        return self.postprocess(tokens_to_images(tokens, self.prior.config.num_levels), output_type)

    @torch.no_grad()
    def log_likelihood(self, images, prompt=None, class_labels=None, generator=None) -> LikelihoodOutput:
        """log p(x), exact: the sum of the log-probabilities of every token given the ones before it (`generator`
        is unused: nothing is sampled)."""
        images = self.model_images(images)
        config = self.prior.config
        condition = self.condition_for_images(len(images), prompt, class_labels)
        tokens = images_to_tokens(images, config.num_levels)
        log_px = prior_forward(self.prior, tokens, condition).log_likelihood.float()
        return LikelihoodOutput(
            log_likelihood=log_px.cpu(),
            bits_per_dim=(-log_px / (tokens[0].numel() * math.log(2))).cpu(),
            kind="exact",
            dequantization=f"none: a categorical over {config.num_levels} levels per channel (exact probabilities)",
        )
