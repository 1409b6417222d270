"""Pipeline for the normalizing flows (RealNVP, Glow): sample with a temperature (and guidance by resampling), encode
x -> z, decode z -> x, interpolate in z, and the exact log-likelihood of images."""

import math

import torch
from diffusers import ImagePipelineOutput
from diffusers.utils import replace_example_docstring
from hfgen.pipelines.pipeline_utils import HFGenPipeline, LikelihoodOutput, check_int, check_latents, check_number

from hfgen.conditioning import Condition
from hfgen.models.modeling_flow import FlowModel

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import hfgen, torch

        >>> pipe = hfgen.FlowPipeline.from_pretrained("out/flow-glow-digits")
        >>> images = pipe(batch_size=16, temperature=0.7, generator=torch.manual_seed(0)).images
        >>> pipe = hfgen.FlowPipeline.from_pretrained("out/flow-glow-class-mnist")  # a class-conditional flow
        >>> sevens = pipe(class_labels=[7] * 4, guidance_scale=3.0, num_candidates=16).images  # guided by resampling
        >>> pipe.log_likelihood(images).bits_per_dim  # exact density of the dequantised images, bits/dim
        ```
"""


class FlowPipeline(HFGenPipeline):
    r"""Generation with a [`FlowModel`]: z ~ N(0, T^2 I), then the flow's inverse x = f^-1(z), on the data's levels.

    Parameters:
        flow ([`FlowModel`]): The normalizing flow.
        tokenizer ([`~transformers.PreTrainedTokenizerFast`], *optional*): Tokenizer for text-conditioned models.
        text_encoder ([`~transformers.PreTrainedModel`], *optional*): Text encoder for text-conditioned models.
    """

    model_cpu_offload_seq = "text_encoder->flow"
    model_component = "flow"
    # "guidance" by resampling (see `__call__`): a flow has no prediction to extrapolate, but it has exact densities.
    family_capabilities = frozenset({"guidance", "interpolation", "likelihood", "encode"})
    default_sampling_kwargs = {"temperature": 0.7}
    sampling_controls = {"temperature": (0.0, 1.0, 0.7, "Temperature (prior standard deviation)")}

    def __init__(self, flow: FlowModel, tokenizer=None, text_encoder=None):
        super().__init__()
        self.register_modules(flow=flow, tokenizer=tokenizer, text_encoder=text_encoder)

    def latent_shape(self, num_images: int) -> tuple[int, int]:
        return (num_images, self.flow.num_dims)

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        class_labels: int | list[int] | torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        temperature: float = 1.0,
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_candidates: int = 16,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ):
        r"""
        Args:
            prompt (`str` or `list[str]`, *optional*): Text for a text-conditioned model; None samples unconditionally
                (the empty prompt, which caption dropout trained).
            batch_size (`int`, *optional*, defaults to 1): Number of images when no prompt is given.
            num_images_per_prompt (`int`, *optional*, defaults to 1): Images per prompt (or per class label).
            class_labels (`int` or `list[int]`, *optional*): Classes for a class-conditioned model.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): Makes sampling deterministic.
            latents (`torch.Tensor`, *optional*): z of shape (num_images, D), used as given (no temperature); with
                guidance (num_images, num_candidates, D).
            temperature (`float`, *optional*, defaults to 1.0): The standard deviation T of z ~ N(0, T^2 I); Glow
                (section 5) samples at T = 0.7: smoother, less varied images.
            guidance_scale (`float`, *optional*, defaults to 1.0): Classifier-free guidance for a flow, by
                resampling: each image is chosen among `num_candidates` conditional samples x_k with probability
                proportional to (p(x_k | c) / p(x_k | negative))^(guidance_scale - 1), the flow's own implicit
                classifier p(c | x) / p(c) to that power. At T = 1 this draws, as the candidates grow, from
                p(x | c)^w p(x | negative)^(1 - w) (w = guidance_scale), the distribution classifier-free guidance
                aims at (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598, section 3.2); 1 turns it off (one
                sample, no candidates).
            negative_prompt (`str` or `list[str]`, *optional*): With guidance, what to guide away from (default: the
                empty prompt, or the null class).
            num_candidates (`int`, *optional*, defaults to 16): Conditional samples per image that guidance chooses
                from (the cost of guidance: each is decoded once and scored under both conditions).
            output_type (`str`, *optional*, defaults to "pil"): "pil", "np" or "pt".
            return_dict (`bool`, *optional*, defaults to True): Return an [`ImagePipelineOutput`] or a tuple.
            callback_on_step_end (`Callable`, *optional*): Called once before the inverse (a flow samples in one
                pass) as `callback_on_step_end(pipeline, 0, None, {"latents": z})`; it may replace z (with guidance
                of shape (num_images, num_candidates, D)).
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): The tensors passed to the callback.

        Examples:
        """
        # 1. How many images, and what they are conditioned on
        temperature = check_number("temperature", temperature, 0)
        num_candidates = check_int("num_candidates", num_candidates)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        num_images, condition, negative = self.prepare_condition(
            prompt, class_labels, batch_size, num_images_per_prompt, guidance_scale, negative_prompt
        )

        # 2. z ~ N(0, temperature^2 I), or the given latents: with guidance, num_candidates for each image
        shape = self.latent_shape(num_images)
        if negative is not None:
            shape = (num_images, num_candidates, *shape[1:])
        sampled = latents is None
        latents = self.prepare_latents(shape, self.flow.dtype, self.device, generator, latents)
        if sampled:
            latents = latents * temperature
        latents = self.step_callback(
            callback_on_step_end, callback_on_step_end_tensor_inputs, 0, None, {"latents": latents}
        )["latents"]

        # 3. The inverse flow: z -> y in [0, 1] -> the data's levels; with guidance, one candidate chosen per image
        if negative is None:
            images = self.flow.decode(latents, condition).sample
        else:
            images = self.choose_candidates(latents, condition, negative, guidance_scale, generator)

        # 4. Converted
        images = self.postprocess(images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    def choose_candidates(
        self,
        latents: torch.Tensor,
        condition: Condition,
        negative: Condition,
        guidance_scale: float,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """Guidance by sampling-importance-resampling: latents (b, k, D) -> b images (b, c, s, s) on the levels, each
        one of its k candidates drawn with weight (p(x | c) / p(x | negative))^(guidance_scale - 1)."""
        num_images, num_candidates = latents.shape[:2]
        condition, negative = condition.repeat_interleave(num_candidates), negative.repeat_interleave(num_candidates)
        candidates = self.flow.decode(latents.flatten(0, 1), condition).sample  # (b * k, c, s, s)
        # The implicit classifier of each candidate image: log p(x | c) - log p(x | negative), both densities at the
        # centre of x's bins (the image drawn, not the continuous point it came from), in one batch.
        both = self.flow.encode(torch.cat([candidates, candidates]), Condition.cat([negative, condition]))
        log_negative, log_conditional = both.log_likelihood.float().view(2, num_images, num_candidates)
        log_weights = (guidance_scale - 1) * (log_conditional - log_negative)  # (b, k)
        probabilities = torch.softmax(log_weights, dim=1)
        generators = generator if isinstance(generator, list) else [generator] * num_images
        chosen = [
            torch.multinomial(row.to(g.device if g is not None else row.device), 1, generator=g).item()
            for row, g in zip(probabilities, generators)
        ]
        return candidates.view(num_images, num_candidates, *candidates.shape[1:])[torch.arange(num_images), chosen]

    # ----- what a flow is good at ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images, prompt=None, class_labels=None) -> torch.Tensor:
        """Images -> z (b, D), exactly: each pixel at the centre of its bin, so `decode(encode(x))` gives x back."""
        images = self.model_images(images)
        return self.flow.encode(images, self.condition_for_images(len(images), prompt, class_labels)).latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, prompt=None, class_labels=None, output_type: str = "pil"):
        """z (b, D) -> images."""
        latents = check_latents(latents, self.latent_shape(len(latents)))
        condition = self.condition_for_images(len(latents), prompt, class_labels)
        images = self.flow.decode(latents.to(self.device, self.flow.dtype), condition).sample
        return self.postprocess(images, output_type)

    @torch.no_grad()
    def interpolate(self, start, end, num_steps: int = 8, prompt=None, class_labels=None, output_type: str = "pil"):
        """Decodes `num_steps` points on the straight line between two latents, the prior noise of two seeds, or the
        encodings of two images. `start`/`end`: a seed (`int`), a latent (D,) or (1, D), or an image the model takes
        (an 8x8 grey image has as many values as its latent: a tensor of shape (1, 1, 8, 8) is read as an image)."""
        num_steps = check_int("num_steps", num_steps, minimum=2)
        ends = []
        for point in (start, end):
            if isinstance(point, int) and not isinstance(point, bool):
                point = self.seed_latents(point)
            if isinstance(point, torch.Tensor) and point.ndim <= 2 and point.shape[-1] == self.flow.num_dims:
                ends.append(point.reshape(1, -1).to(self.device, self.flow.dtype))
            else:
                ends.append(self.encode(point, prompt, class_labels)[:1])
        weights = torch.linspace(0, 1, num_steps, device=self.device, dtype=self.flow.dtype).unsqueeze(1)
        latents = (1 - weights) * ends[0] + weights * ends[1]  # (num_steps, D)
        return self.decode(latents, prompt, class_labels, output_type)

    @torch.no_grad()
    def log_likelihood(
        self, images, num_samples: int = 1, prompt=None, class_labels=None, generator: torch.Generator | None = None
    ) -> LikelihoodOutput:
        r"""log p of images under the model's dequantisation y = (k + u) / K: uniform, u ~ U[0, 1)^D, or variational,
        u ~ q(u | x) (Flow++).

        `log_likelihood` is on the level scale (bins of width one, as `hfgen.metrics.baselines`),
        log p(y) - D log K - log q(u | x) (log q = 0 when uniform).
        Uniform, `num_samples=1`: the exact density of one dequantised image k + u per input (`kind="exact"`); its
        bits/dim -log2(p(y) / K^D) / D are, in expectation over u, an upper bound on the discrete code length.
        Variational, `num_samples=1`: one draw of the variational bound on the discrete log P(x) (a lower bound in
        expectation over u, `kind="lower bound (variational dequantisation, S=1)"`).
        `num_samples=S > 1`: log (1/S) sum_s p(y_s) / (K^D q(u_s | x)), a lower bound on the discrete log P(x) that
        tightens with S (importance weighting with q as the proposal).
        """
        num_samples = check_int("num_samples", num_samples)
        images = self.model_images(images)
        condition = self.condition_for_images(len(images), prompt, class_labels)
        num_dims, bins = self.flow.num_dims, self.flow.config.num_bins
        dequantization = self.flow.config.dequantization
        # 1. S dequantisations u_s ~ q(u | x) of each image, a few thousand per pass: log p(y_s) - log q(u_s | x)
        #    (log q = 0 when uniform)
        log_densities, per_pass = [], max(1, 4096 // len(images))
        for first in range(0, num_samples, per_pass):
            repeats = min(per_pass, num_samples - first)
            chunk_condition = None if condition is None else condition.repeat_interleave(repeats)
            repeated = images.repeat_interleave(repeats, 0)  # (b * repeats, c, h, w), image by image
            noise, log_q = self.flow.dequantization_noise(repeated, generator)
            output = self.flow.encode(repeated, chunk_condition, noise)
            log_densities.append((output.log_likelihood - log_q).float().view(len(images), repeats))
        log_densities = torch.cat(log_densities, dim=1).T  # (S, b)

        # 2. On the level scale (unit-width bins, as `hfgen.metrics.baselines`): log p(k + u) = log p(y) - D log K.
        #    Uniform, one sample: the exact density of the dequantised image; else a bound on the discrete log P(x).
        log_densities = log_densities - num_dims * math.log(bins)
        if num_samples == 1:
            log_likelihood = log_densities[0]
            if dequantization == "uniform":
                kind = "exact"
                bound = (
                    "the exact density of k + u; its bits/dim bound -log2 P(x) / D from above in expectation over u"
                )
            else:
                kind = "lower bound (variational dequantisation, S=1)"
                bound = "log p(k + u) - log q(u | x) bounds the discrete log P(x) from below in expectation over u"
        else:
            log_likelihood = torch.logsumexp(log_densities, 0) - math.log(num_samples)
            kind = f"lower bound ({dequantization} dequantisation, importance-weighted, S={num_samples})"
            bound = "log_likelihood is the bound on the discrete log P(x)"
        noise = "u ~ U[0, 1) per pixel" if dequantization == "uniform" else "u ~ q(u | x), a flow given the image"
        return LikelihoodOutput(
            log_likelihood=log_likelihood.cpu(),
            bits_per_dim=(-log_likelihood / (num_dims * math.log(2))).cpu(),
            kind=kind,
            dequantization=f"{dequantization}: levels k + u, {noise} ({bins} levels); {bound}",
        )
