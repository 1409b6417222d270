"""The autoregressive family: PixelCNN, Gated PixelCNN, Row LSTM, Diagonal BiLSTM and a GPT-2 prior through the
shared mixins, plus what only this family shows: causality (autograd), the blind spot, probabilities that sum to one,
cached sampling equal to naive sampling, completion, the exact likelihood and its anomaly AUROC."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hfgen.training.trainer_autoregressive import AutoregressiveTrainer
from testing_utils import (
    ModelTesterMixin,
    PipelineTesterMixin,
    TrainerTesterMixin,
    record_logs,
    train_on_two_cpu_ranks,
)

import hfgen
from hfgen.conditioning import Condition
from hfgen.data import make_digits_dataset
from hfgen.metrics.anomaly import anomaly_auroc, out_of_distribution_images
from hfgen.models.modeling_autoregressive import (
    ARCHITECTURES,
    MODEL_CLASSES,
    build_transformer_prior,
    discretized_logistic_mixture_logits,
    images_to_tokens,
    prior_forward,
)

TINY = dict(hidden_channels=8, embedding_dim=4, num_layers=2)
TINY_TRANSFORMER = dict(n_embd=16, n_layer=2, n_head=2)


def tiny_prior(architecture: str, **config):
    """A seeded tiny model of `architecture` in eval mode; `config` gives its grid and conditioning."""
    torch.manual_seed(0)
    if architecture == "transformer":
        return build_transformer_prior(**{**TINY_TRANSFORMER, **config}).eval()
    return MODEL_CLASSES[architecture](**{**TINY, **config}).eval()


def tiny_pipeline(architecture: str, **config) -> hfgen.AutoregressivePipeline:
    pipe = hfgen.AutoregressivePipeline(prior=tiny_prior(architecture, **config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dependence(model, tokens: torch.Tensor, channel: int, row: int, col: int) -> torch.Tensor:
    """(c, h, w) total |gradient| of the logits of token (channel, row, col) with respect to the embedding of every
    input token, by autograd through the model's own token embedding."""
    is_transformer = not hasattr(model, "token_embedding")
    embedding = model.transformer.wte if is_transformer else model.token_embedding
    inputs = {}

    def keep(module, args, output):
        inputs["embedded"] = output.detach().requires_grad_()
        return inputs["embedded"]

    handle = embedding.register_forward_hook(keep)
    try:
        logits = prior_forward(model, tokens).logits  # (1, num_levels, c, h, w)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, :, channel, row, col].sum(), inputs["embedded"])
    _, c, h, w = tokens.shape
    if is_transformer:  # input position p + 1 holds token p (raster order, channels inside pixels)
        per_token = torch.zeros(c * h * w)
        per_token[:-1] = grad[0, 1:].abs().sum(-1)
        return per_token.view(h, w, c).permute(2, 0, 1)
    return grad[0].abs().sum(-1)  # (c, h, w)


# ----- the shared mixins --------------------------------------------------------------------------------------------
MODEL_VARIANTS = {
    "pixelcnn-grey": ("pixelcnn", dict(sample_size=6, in_channels=1, num_levels=17)),
    "gated-rgb-text": ("gated_pixelcnn", dict(sample_size=4, in_channels=3, num_levels=8, condition_type="text",
                                              text_embed_dim=12)),
    "row_lstm-class": ("row_lstm", dict(sample_size=5, in_channels=1, num_levels=4, condition_type="class",
                                        num_classes=3)),
    "diagonal_bilstm-rgb": ("diagonal_bilstm", dict(sample_size=4, in_channels=3, num_levels=4)),
    "pixelcnn-rgb-mixture": ("pixelcnn", dict(sample_size=4, in_channels=3, num_levels=256,
                                              output_distribution="logistic_mixture", num_mixtures=2)),
}  # fmt: skip


class TestAutoregressiveModel(ModelTesterMixin):
    @pytest.fixture(autouse=True, params=list(MODEL_VARIANTS))
    def variant(self, request):
        self.architecture, self.config = MODEL_VARIANTS[request.param]
        self.model_class = MODEL_CLASSES[self.architecture]

    def get_init_dict(self):
        return {**TINY, **self.config}

    def get_inputs(self):
        config = self.config
        generator = torch.Generator().manual_seed(0)
        shape = (2, config["in_channels"], config["sample_size"], config["sample_size"])
        condition = None
        if config.get("condition_type") == "text":
            condition = Condition(text_embeds=torch.randn(2, config["text_embed_dim"], generator=generator))
        elif config.get("condition_type") == "class":
            condition = Condition(class_labels=torch.tensor([1, config["num_classes"]]))  # and the null class
        return {"sample": torch.randint(0, config["num_levels"], shape, generator=generator), "condition": condition}

    def get_bad_init_dicts(self):
        base = self.get_init_dict()
        return [
            {**base, "num_levels": 1},
            {**base, "kernel_size": 4},
            {**base, "condition_type": "class", "num_classes": None},
            {**base, "condition_type": "audio"},
            {**base, "output_distribution": "gaussian"},
            {**base, "output_distribution": "logistic_mixture", "num_mixtures": 0},
        ]


class TestAutoregressivePipeline(PipelineTesterMixin):
    pipeline_class = hfgen.AutoregressivePipeline

    @pytest.fixture(autouse=True, params=["gated-text", "transformer-class", "pixelcnn"])
    def variant(self, request, tiny_text_components):
        self.variant = request.param
        self.text_components = tiny_text_components

    def get_pipeline(self):
        grid = dict(sample_size=4, in_channels=1, num_levels=17)
        if self.variant == "gated-text":
            tokenizer, text_encoder = self.text_components
            prior = tiny_prior("gated_pixelcnn", **grid, condition_type="text", text_embed_dim=32)
            return hfgen.AutoregressivePipeline(prior=prior, tokenizer=tokenizer, text_encoder=text_encoder)
        if self.variant == "transformer-class":
            return tiny_pipeline("transformer", **grid, condition_type="class", num_classes=10)
        return tiny_pipeline("pixelcnn", **grid)

    def get_call_kwargs(self):
        if self.variant == "gated-text":
            return {"prompt": ["a handwritten digit seven", "a handwritten digit one"], "guidance_scale": 2.0}
        if self.variant == "transformer-class":
            return {"class_labels": [3, 7, 1]}
        return {"batch_size": 3}

    def get_expected_shape(self):
        return (2 if self.variant == "gated-text" else 3, 1, 4, 4)


# ----- causality -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_token_depends_only_on_the_tokens_before_it(architecture):
    """For every token i of a 4x4 RGB grid: zero gradient from every input token at or after i (raster order, R, G,
    B inside a pixel), and some gradient from the ones before it."""
    model = tiny_prior(architecture, sample_size=4, in_channels=3, num_levels=4)
    tokens = torch.randint(0, 4, (1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    for index in range(3 * 4 * 4):
        row, col, channel = index // 12, (index // 3) % 4, index % 3
        grad = dependence(model, tokens, channel, row, col).permute(1, 2, 0).flatten()  # raster order
        assert grad[index:].abs().sum() == 0, (
            f"token {index} (row {row}, col {col}, channel {channel}) sees itself or later"
        )
        if index > 0:
            assert grad[:index].abs().sum() > 0, f"token {index} depends on nothing before it"


def test_pixelcnn_has_a_blind_spot_that_gated_pixelcnn_has_not():
    """PixelCNN's stacked masked 3x3 kernels never reach up-and-right beyond their first layer's kernel: pixel
    (3, 6) is before (4, 2) and within the reach of its 4 rows / columns, yet has no influence. The Gated PixelCNN's
    vertical stack covers every pixel above, its horizontal stack the row to the left."""
    config = dict(sample_size=8, in_channels=1, num_levels=4, num_layers=3, kernel_size=3, first_kernel_size=3)
    tokens = torch.randint(0, 4, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    before = torch.arange(64).view(8, 8) < 4 * 8 + 2  # the pixels before (4, 2) in raster order
    before[:, 7] = False  # column 7 is 5 columns right of column 2: beyond the 4 columns both models can reach

    pixelcnn = dependence(tiny_prior("pixelcnn", **config), tokens, 0, 4, 2)[0]
    assert max(tiny_prior("pixelcnn", **config).receptive_field()) >= 4
    assert pixelcnn[3, 6] == 0 and pixelcnn[3, 3] > 0 and pixelcnn[4, 1] > 0
    assert (pixelcnn[before] == 0).sum() > 0

    gated = dependence(tiny_prior("gated_pixelcnn", **config), tokens, 0, 4, 2)[0]
    assert gated[3, 6] > 0
    assert (gated[before] > 0).all(), f"blind pixels: {(before & (gated == 0)).nonzero().tolist()}"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_probabilities_of_all_2x2_binary_images_sum_to_one(architecture):
    model = tiny_prior(architecture, sample_size=2, in_channels=1, num_levels=2)
    images = torch.tensor(list(itertools.product([0, 1], repeat=4))).view(16, 1, 2, 2)
    with torch.no_grad():
        log_p = prior_forward(model, images).log_likelihood.double()
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert (log_p < 0).all()


def test_class_conditional_probabilities_sum_to_one_per_class():
    model = tiny_prior("gated_pixelcnn", sample_size=2, in_channels=1, num_levels=2, condition_type="class",
                       num_classes=3)  # fmt: skip
    images = torch.tensor(list(itertools.product([0, 1], repeat=4))).view(16, 1, 2, 2)
    totals = []
    with torch.no_grad():
        for label in range(4):  # the 3 classes and the null class
            condition = Condition(class_labels=torch.full((16,), label))
            totals.append(prior_forward(model, images, condition).log_likelihood.double().exp().sum().item())
    assert totals == pytest.approx([1.0] * 4, abs=1e-5)


# ----- sampling ------------------------------------------------------------------------------------------------------
CONV_AND_RNN = ["pixelcnn", "gated_pixelcnn", "row_lstm", "diagonal_bilstm"]


@pytest.mark.parametrize(
    "architecture, kwargs",
    [
        ("pixelcnn", {}),
        ("gated_pixelcnn", {"class_labels": [2, 5], "guidance_scale": 3.0}),
        ("row_lstm", {"class_labels": [0, 9]}),
        ("diagonal_bilstm", {}),
        ("transformer", {}),
    ],
)
def test_cached_sampling_equals_naive_sampling(architecture, kwargs):
    """A 7x7 grid (6x6 RGB for the transformer): the cached sampler (the transformer's key/value cache; for the
    other models every layer's activations at the pixels drawn so far) gives exactly the images of a full forward
    pass per token, and the convolutional and recurrent models never run a full forward pass."""
    conditioning = dict(condition_type="class", num_classes=10) if "class_labels" in kwargs else {}
    if architecture == "transformer":
        pipe = tiny_pipeline(architecture, sample_size=6, in_channels=3, num_levels=4)
    else:
        pipe = tiny_pipeline(architecture, sample_size=7, in_channels=1, num_levels=4, first_kernel_size=3,
                             **conditioning)  # fmt: skip
    kwargs = kwargs or {"batch_size": 2}
    widths = []
    hook = pipe.prior.register_forward_pre_hook(
        lambda module, args, kw: widths.append(tuple((args[0] if args else kw["input_ids"]).shape)), with_kwargs=True
    )
    naive = pipe(**kwargs, generator=torch.manual_seed(0), use_cache=False, output_type="np").images
    widths[:] = []
    cached = pipe(**kwargs, generator=torch.manual_seed(0), use_cache=True, output_type="np").images
    hook.remove()
    np.testing.assert_array_equal(cached, naive)
    assert len(np.unique(naive)) > 1
    if architecture == "transformer":  # the prefix once, then one token per step
        assert [shape[1] for shape in widths[1:]] == [1] * (len(widths) - 1)
    else:  # no full forward pass at all: every step is the cache's
        assert widths == []


@pytest.mark.parametrize("architecture", CONV_AND_RNN)
def test_cached_sampling_equals_naive_on_a_non_square_grid_with_text_guidance(architecture):
    """A 5x7 grid of 2-channel pixels with a pooled-text condition and classifier-free guidance (the pipeline's
    sampling loop on a grid the model was not built square for): cached and naive draw the same tokens."""
    pipe = tiny_pipeline(architecture, sample_size=7, in_channels=2, num_levels=5, first_kernel_size=3,
                         condition_type="text", text_embed_dim=6)  # fmt: skip
    text = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    condition, negative = Condition(text_embeds=text), Condition(text_embeds=torch.zeros(2, 6))
    drawn = {}
    for use_cache in (False, True):
        tokens = torch.zeros(2, 2, 5, 7, dtype=torch.long)
        start = torch.zeros(2, dtype=torch.long)
        drawn[use_cache] = pipe.sample_tokens(
            tokens, start, condition, negative, 2.5, torch.manual_seed(0), 1.0, use_cache
        )  # fmt: skip
    assert torch.equal(drawn[True], drawn[False])
    assert len(drawn[True].unique()) > 2


CACHE_VARIANTS = {
    "plain": dict(sample_size=7, in_channels=1, num_levels=5),
    "rgb-k5": dict(sample_size=7, in_channels=3, num_levels=4, first_kernel_size=3, kernel_size=5),
    "class": dict(sample_size=7, in_channels=2, num_levels=4, condition_type="class", num_classes=3),
    "text": dict(sample_size=7, in_channels=1, num_levels=4, condition_type="text", text_embed_dim=6),
}


@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
@pytest.mark.parametrize("architecture", CONV_AND_RNN)
def test_cached_logits_equal_the_full_forward_logits(architecture, variant):
    """The strongest check of the cache: on a random 5x7 grid (not a sample: every token is arbitrary), the logits
    `cached_logits` gives for every token, stepping in raster order, equal those of one full forward pass (1e-5)."""
    config = CACHE_VARIANTS[variant]
    model = tiny_prior(architecture, **config)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config["num_levels"], (3, config["in_channels"], 5, 7), generator=generator)
    condition = None
    if variant == "class":
        condition = Condition(class_labels=torch.tensor([0, 2, 3]))  # 3 is the null class
    elif variant == "text":
        condition = Condition(text_embeds=torch.randn(3, 6, generator=generator))
    with torch.no_grad():
        full = model(tokens, condition).logits  # (3, num_levels, c, 5, 7)
        cache = model.init_cache(tokens, condition)
        c = config["in_channels"]
        for index in range(c * 5 * 7):
            row, col, channel = index // (c * 7), (index // c) % 7, index % c
            cached = model.cached_logits(tokens, index, cache)
            torch.testing.assert_close(cached, full[:, :, channel, row, col], rtol=0, atol=1e-5, msg=f"token {index}")


def test_cached_logits_must_be_called_in_order():
    model = tiny_prior("pixelcnn", sample_size=4, in_channels=2, num_levels=4)
    tokens = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    cache = model.init_cache(tokens)
    with pytest.raises(ValueError, match="raster order"):
        model.cached_logits(tokens, 2, cache)  # pixel 1 before pixel 0
    model.cached_logits(tokens, 0, cache)
    with pytest.raises(ValueError, match="call its channel 0 first"):
        model.cached_logits(tokens, 3, cache)  # channel 1 of pixel 1
    with pytest.raises(ValueError, match="shape"):
        model.cached_logits(tokens[:, :, :3], 2, cache)
    with pytest.raises(ValueError, match="use_cache"):
        tiny_pipeline("row_lstm", sample_size=3)(use_cache="yes")


def test_temperature():
    pipe = tiny_pipeline("gated_pixelcnn", sample_size=4, in_channels=1, num_levels=17)
    # Near zero, sampling picks the most likely token: the seed no longer matters.
    cold = [
        pipe(batch_size=2, generator=torch.manual_seed(s), temperature=1e-4, output_type="np").images for s in (0, 1)
    ]
    np.testing.assert_array_equal(*cold)
    warm = [pipe(batch_size=2, generator=torch.manual_seed(s), output_type="np").images for s in (0, 1)]
    assert not np.array_equal(*warm)
    for bad in (0, -1.0, True):
        with pytest.raises(ValueError, match="temperature"):
            pipe(temperature=bad)


def test_guidance_changes_the_samples_and_needs_a_condition():
    pipe = tiny_pipeline("transformer", sample_size=4, in_channels=1, num_levels=17, condition_type="class",
                         num_classes=10)  # fmt: skip
    plain = pipe(class_labels=[3, 3], generator=torch.manual_seed(0), output_type="np").images
    guided = pipe(class_labels=[3, 3], guidance_scale=4.0, generator=torch.manual_seed(0), output_type="np").images
    assert not np.array_equal(plain, guided)
    with pytest.raises(ValueError, match="guidance"):
        tiny_pipeline("pixelcnn", sample_size=4)(guidance_scale=2.0)


# ----- completion ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["gated_pixelcnn", "diagonal_bilstm", "transformer"])
def test_completion_keeps_the_given_pixels(architecture):
    pipe = tiny_pipeline(architecture, sample_size=8, in_channels=1, num_levels=17)
    digits = torch.stack(
        [torch.as_tensor(np.asarray(im, dtype=np.float32)) for im in make_digits_dataset()["image"][:3]]
    )
    images = (digits / 255)[:, None]  # (3, 1, 8, 8) in [0, 1], as pipelines take images
    mask = torch.zeros(3, 8, 8)
    mask[:, :4] = 1  # the top half
    mask[1, 4, :3] = 1  # and, for the second image, the start of the next row
    completed = pipe.complete(images, mask, generator=torch.manual_seed(0), output_type="pt") * 2 - 1  # [-1, 1]
    kept = mask[:, None].bool()
    tokens = images_to_tokens(images * 2 - 1, 17)  # the model's scale
    assert torch.equal(images_to_tokens(completed, 17)[kept], tokens[kept])
    assert not torch.equal(images_to_tokens(completed, 17), tokens)
    again = pipe.complete(images, mask, generator=torch.manual_seed(0), output_type="pt") * 2 - 1
    assert torch.equal(again, completed)
    # The cache steps through the given prefix (drawing nothing there): the naive completion is the same.
    naive = pipe.complete(images, mask, generator=torch.manual_seed(0), use_cache=False, output_type="pt") * 2 - 1
    assert torch.equal(naive, completed)

    holes = torch.ones(8, 8)
    holes[2, 2] = 0  # a hole before kept pixels: not a raster-order prefix
    with pytest.raises(ValueError, match="raster-order prefix"):
        pipe.complete(images, holes)
    # Masks of another size or count, or with values other than 0 and 1, used to fail inside torch or be rounded.
    for bad, message in (
        (torch.ones(4, 4), r"mask must be \(h, w\).*\(8, 8\).*got shape \(4, 4\)"),
        (mask[:2], r"b 1 or 3 \(one per image\), got shape \(2, 8, 8\)"),
        (mask * 0.5, "only 1 .pixels to keep. and 0"),
    ):
        with pytest.raises(ValueError, match=message):
            pipe.complete(images, bad)


def test_completion_takes_one_condition_for_every_image_or_one_each(tiny_text_components):
    images, mask = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(4, 4)
    mask[:2] = 1
    tokenizer, text_encoder = tiny_text_components
    prior = tiny_prior("gated_pixelcnn", sample_size=4, num_levels=5, condition_type="text", text_embed_dim=32)
    pipes = {
        "prompt": hfgen.AutoregressivePipeline(prior=prior, tokenizer=tokenizer, text_encoder=text_encoder),
        "class_labels": tiny_pipeline("pixelcnn", sample_size=4, num_levels=5, condition_type="class", num_classes=3),
    }
    for argument, one in (("prompt", "a handwritten digit seven"), ("class_labels", 2)):
        pipe = pipes[argument]
        shared = pipe.complete(images, mask, **{argument: one}, generator=torch.manual_seed(0), output_type="pt")
        each = pipe.complete(images, mask, **{argument: [one, one]}, generator=torch.manual_seed(0), output_type="pt")
        assert torch.equal(shared, each)
        with pytest.raises(ValueError, match="3"):  # neither one nor one per image
            pipe.complete(images, mask, **{argument: [one] * 3})


# ----- likelihood ----------------------------------------------------------------------------------------------------
def test_log_likelihood_is_exact_and_sums_the_conditionals():
    pipe = tiny_pipeline("row_lstm", sample_size=4, in_channels=3, num_levels=5)
    images = torch.randint(0, 5, (3, 3, 4, 4), generator=torch.Generator().manual_seed(0)) / 4 * 2 - 1
    output = pipe.log_likelihood((images + 1) / 2)  # pipelines take images in [0, 1]
    assert output.kind == "exact" and "5 levels" in output.dequantization
    logits = pipe.prior(images_to_tokens(images, 5)).logits  # (3, 5, 3, 4, 4)
    picked = logits.log_softmax(1).gather(1, images_to_tokens(images, 5)[:, None])  # log p(x_i | x_<i)
    torch.testing.assert_close(output.log_likelihood, picked.flatten(1).sum(1).detach())
    torch.testing.assert_close(output.bits_per_dim, -output.log_likelihood / (48 * np.log(2)))


# ----- PixelCNN++'s discretized logistic mixture ---------------------------------------------------------------------
MIXTURE = dict(in_channels=3, num_levels=256, output_distribution="logistic_mixture", num_mixtures=3)


def brute_force_log_prob(params: torch.Tensor, pixel: list[int], num_mixtures: int, num_levels: int) -> float:
    """log p(pixel) of PixelCNN++'s mixture written out as in the paper: one component and channel at a time,
    differences of sigmoids and the two tail cases, in 80-digit arithmetic (mpmath) so that far tails, where float64
    would cancel to 0, are exact too: the reference the vectorised log-space version is checked against."""
    import mpmath

    mpmath.mp.dps = 80
    c = len(pixel)
    params = params.double().view(num_mixtures, 1 + 2 * c + c * (c - 1) // 2).tolist()
    x = [mpmath.mpf(2 * v) / (num_levels - 1) - 1 for v in pixel]
    half_bin = mpmath.mpf(1) / (num_levels - 1)
    normaliser = sum(mpmath.exp(component[0]) for component in params)
    total = mpmath.mpf(0)
    for component in params:
        coefs = [mpmath.tanh(value) for value in component[1 + 2 * c :]]
        probability = mpmath.exp(component[0]) / normaliser
        for k in range(c):
            mean = component[1 + k] + sum(coefs[k * (k - 1) // 2 + i] * x[i] for i in range(k))
            scale = mpmath.exp(max(component[1 + c + k], -7.0))
            upper = 1 / (1 + mpmath.exp(-(x[k] + half_bin - mean) / scale))
            lower = 1 / (1 + mpmath.exp(-(x[k] - half_bin - mean) / scale))
            if pixel[k] == 0:
                probability *= upper  # all the mass below the first bin's upper edge
            elif pixel[k] == num_levels - 1:
                probability *= 1 - lower  # all the mass above the last bin's lower edge
            else:
                probability *= upper - lower
        total += probability
    return float(mpmath.log(total))


@pytest.mark.parametrize("architecture", CONV_AND_RNN)
def test_logistic_mixture_probabilities_of_all_256_values_sum_to_one(architecture):
    """Every sub-pixel's conditional over its 256 values sums to 1, also given pixels at the edges (0 and 255),
    where the first and last bins take the logistic's tails."""
    model = tiny_prior(architecture, sample_size=4, **MIXTURE)
    tokens = torch.randint(0, 256, (2, 3, 3, 4), generator=torch.Generator().manual_seed(0))
    tokens[0, :, 0] = 0
    tokens[1, :, 1] = 255
    with torch.no_grad():
        logits = model(tokens).logits.double()  # (2, 256, 3, 3, 4) normalised log-probabilities
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(2, 3, 3, 4, dtype=torch.double), rtol=0, atol=1e-5)


def test_logistic_mixture_likelihood_matches_brute_force():
    """The model's exact log p(x) (the sum of the per-channel conditionals) equals the paper's formula summed over
    components and written out pixel by pixel, for random parameters with wide and narrow scales and pixels at 0,
    255 and in between; so does the function on its own."""
    model = tiny_prior("gated_pixelcnn", sample_size=4, **MIXTURE)
    tokens = torch.randint(0, 256, (2, 3, 3, 4), generator=torch.Generator().manual_seed(0))
    tokens[0, :, 0, :2], tokens[1, :, 2, 1:] = 0, 255
    tokens[0, 1, 1, 1] = 255
    captured = {}
    model.to_mixture.register_forward_hook(lambda module, args, output: captured.update(params=output))
    with torch.no_grad():
        log_likelihood = model(tokens).log_likelihood  # (2,)
    params = captured["params"]  # (2, K * 10, 3, 4)
    expected = [
        sum(brute_force_log_prob(params[b, :, r, c], tokens[b, :, r, c].tolist(), 3, 256)
            for r in range(3) for c in range(4))
        for b in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(log_likelihood.double(), torch.tensor(expected, dtype=torch.double), rtol=1e-5, atol=0)

    # The function alone: means anywhere, scales from wide to the -7 floor (rows 16-23, means within a few bins of
    # the pixel, where a bin holds most of the mass), tails far out, pixels at 0, 255 and in between.
    generator = torch.Generator().manual_seed(1)
    params = torch.randn(64, 3, 10, generator=generator) * 1.5
    pixels = torch.randint(0, 256, (64, 3), generator=generator)
    pixels[:8] = 0
    pixels[8:16] = 255
    narrow = slice(16, 24)
    params[narrow, :, 4:7] = -8.0  # log-scales below the floor
    params[narrow, :, 7:] = 0.0  # no channel coefficients: the means are where they are set
    x = pixels[narrow].float() * 2 / 255 - 1  # (8, 3)
    params[narrow, :, 1:4] = x[:, None] + torch.randn(8, 3, 3, generator=generator) * 3 / 255
    params = params.flatten(1)  # (64, 30)
    logits = discretized_logistic_mixture_logits(params, pixels, 256)  # (64, 256, 3)
    ours = logits.gather(1, pixels[:, None]).sum((1, 2)).double()
    expected = torch.tensor([brute_force_log_prob(params[i], pixels[i].tolist(), 3, 256) for i in range(64)])
    torch.testing.assert_close(ours, expected.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("architecture", ["pixelcnn", "diagonal_bilstm"])
def test_logistic_mixture_cached_sampling_equals_naive(architecture):
    """8-bit RGB through the mixture: the cached logits match the full pass (log-probabilities of 256 values in
    float32: 1e-4) and the cached sampler draws the same images as the naive one."""
    pipe = tiny_pipeline(architecture, sample_size=4, first_kernel_size=3, **MIXTURE)
    tokens = torch.randint(0, 256, (2, 3, 3, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = pipe.prior(tokens).logits
        cache = pipe.prior.init_cache(tokens)
        for index in range(3 * 3 * 4):
            row, col, channel = index // 12, (index // 3) % 4, index % 3
            torch.testing.assert_close(
                pipe.prior.cached_logits(tokens, index, cache), full[:, :, channel, row, col], rtol=0, atol=1e-4
            )
    naive = pipe(batch_size=2, generator=torch.manual_seed(0), use_cache=False, output_type="np").images
    cached = pipe(batch_size=2, generator=torch.manual_seed(0), use_cache=True, output_type="np").images
    np.testing.assert_array_equal(cached, naive)
    assert len(np.unique(naive)) > 10


# ----- training ------------------------------------------------------------------------------------------------------
TINY_ARGS = (
    "--family autoregressive --architecture gated_pixelcnn --dataset_name digits --train_batch_size 16 "
    "--hidden_channels 8 --embedding_dim 4 --num_layers 1 --report_to none --eval_max_images 16 "
    "--num_validation_images 4 --text_hidden_size 32 --text_num_layers 1"
).split()


class TestAutoregressiveTrainer(TrainerTesterMixin):
    trainer_class = AutoregressiveTrainer

    def get_args(self, output_dir) -> list[str]:
        return [*TINY_ARGS, "--output_dir", str(output_dir)]

    def test_loss_falls_and_the_likelihood_detects_anomalies(self, tmp_path):
        """60 steps of a small Gated PixelCNN on the digits: the exact NLL falls, and noise images score far more
        bits/dim than held-out digits (AUROC through hfgen.metrics.anomaly)."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "60", "--learning_rate", "5e-3", "--logging_steps", "10",
            "--conditioning", "none", "--hidden_channels", "16", "--train_batch_size", "32",
        )  # fmt: skip
        logs = record_logs(trainer)
        summary = trainer.train()
        first, last = logs[0][1]["bits_per_dim"], logs[-1][1]["bits_per_dim"]
        # Measured: 3.79 -> 2.39 bits/dim (seed 0), 3.67 -> 2.29 (seed 1), test 2.30 / 2.34, AUROC 1.0 against noise
        # (5.1 bits/dim); uniform over 17 levels is 4.09.
        assert last < first * 0.85, (first, last)
        assert summary["metrics"]["test_bits_per_dim"] < 3.0

        pipe = hfgen.load_pipeline(str(tmp_path))
        digits = (torch.stack([trainer.splits["test"][i]["pixel_values"] for i in range(64)]) + 1) / 2  # [0, 1]
        result = anomaly_auroc(pipe, digits, (out_of_distribution_images("noise", 64) + 1) / 2)
        assert result["kind"] == "exact"
        assert result["auroc"] > 0.95, result

    def test_transformer_trains_class_conditioned(self, tmp_path):
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "2", "--architecture", "transformer", "--conditioning", "class",
            "--num_layers", "1", "--n_embd", "16", "--n_head", "2",
        )  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        assert type(model).__name__ == "GPT2LMHeadModel" and model.config.vocab_size == 17 + 11
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        trainer.train()
        assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
        pipe = hfgen.load_pipeline(str(tmp_path))
        assert type(pipe.prior).__name__ == "GPT2LMHeadModel" and pipe.capabilities >= {"class", "likelihood"}
        images = pipe(class_labels=[3, 7], generator=torch.manual_seed(0), output_type="np").images
        assert images.shape == (2, 8, 8, 1)

    def test_transformer_fine_tunes_from_a_saved_prior(self, tmp_path):
        """--init_from copies a saved GPT-2 prior, whose config is a transformers one (no `.get`, and bookkeeping,
        `architectures` and `dtype`, that a saved config holds and a fresh one does not); another size is refused by
        name."""
        prior_args = ["--architecture", "transformer", "--conditioning", "class", "--num_layers", "1", "--n_head", "2"]
        self.build_trainer(tmp_path / "pretrained", *prior_args, "--n_embd", "16", "--max_train_steps", "2").train()
        saved = hfgen.load_pipeline(str(tmp_path / "pretrained")).prior
        start = ["--init_from", str(tmp_path / "pretrained")]

        trainer = self.build_trainer(tmp_path / "tuned", *prior_args, "--n_embd", "16", *start)
        weights = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        assert all(torch.equal(weights[name], p) for name, p in saved.state_dict().items())
        with pytest.raises(ValueError, match=r"n_embd: saved 16, here 32"):
            self.build_trainer(tmp_path / "wider", *prior_args, "--n_embd", "32", *start)

    def test_transformer_dropout_acts_in_training_only(self, tmp_path):
        """`--dropout` is GPT-2's own: two forward passes differ in training mode and agree in eval mode, where the
        likelihood is computed (so it stays exact and deterministic); the other architectures refuse it."""
        trainer = self.build_trainer(
            tmp_path, "--architecture", "transformer", "--conditioning", "none", "--num_layers", "1",
            "--n_embd", "16", "--n_head", "2", "--dropout", "0.3",
        )  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        assert model.config.resid_pdrop == model.config.embd_pdrop == model.config.attn_pdrop == 0.3
        tokens = torch.randint(0, 17, (2, 1, 8, 8))
        model.train()
        assert not torch.equal(
            prior_forward(model, tokens).log_likelihood, prior_forward(model, tokens).log_likelihood
        )
        model.eval()
        with torch.no_grad():
            assert torch.equal(
                prior_forward(model, tokens).log_likelihood, prior_forward(model, tokens).log_likelihood
            )

        with pytest.raises(ValueError, match="--dropout is GPT-2's"):
            self.build_trainer(tmp_path, "--architecture", "row_lstm", "--dropout", "0.3")
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            self.build_trainer(tmp_path, "--architecture", "transformer", "--dropout", "1")

    def test_unknown_architecture_raises(self, tmp_path):
        with pytest.raises(ValueError, match="--architecture must be one of"):
            self.build_trainer(tmp_path, "--architecture", "pixelgan")
        with pytest.raises(ValueError, match="--output_distribution must be one of"):
            self.build_trainer(tmp_path, "--output_distribution", "gaussian")
        with pytest.raises(ValueError, match="convolutional and recurrent"):
            self.build_trainer(tmp_path, "--architecture", "transformer", "--output_distribution", "logistic_mixture")

    def test_logistic_mixture_trains_and_samples(self, tmp_path):
        """`--output_distribution logistic_mixture` reaches the model; two steps change every parameter of its head,
        and the saved pipeline samples with the cache."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "2", "--conditioning", "none", "--output_distribution", "logistic_mixture",
            "--num_mixtures", "3",
        )  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        assert model.config.output_distribution == "logistic_mixture" and model.config.num_mixtures == 3
        before = model.to_mixture[1].weight.detach().clone()
        summary = trainer.train()
        assert np.isfinite(summary["metrics"]["train_loss"])
        assert not torch.equal(before, model.to_mixture[1].weight)
        pipe = hfgen.load_pipeline(str(tmp_path))
        assert pipe(batch_size=2, generator=torch.manual_seed(0), output_type="np").images.shape == (2, 8, 8, 1)

    def test_two_cpu_ranks_train_together(self, tmp_path, repo_root):
        args = [*self.get_args(tmp_path / "run"), "--max_train_steps", "3"]
        train_on_two_cpu_ranks(repo_root, tmp_path / "run", args)


# ----- Hub and remote code -------------------------------------------------------------------------------------------
def test_pushed_pipelines_load_with_diffusers_alone(hub, tmp_path):
    """A Gated PixelCNN (its code bundled into the repo) and a GPT-2 prior (a transformers model) pushed to the
    local Hub: diffusers alone, in a process that cannot import hfgen, loads them with `trust_remote_code=True` and
    draws the same images; hfgen loads them with its installed classes."""
    from conftest import HUB_TOKEN, HUB_USER, hub_subprocess_env
    from test_remote_code import SUBPROCESS_SCRIPT, images_hash

    from hfgen.hub import push_to_hub

    pipelines = {
        "gated": (tiny_pipeline("gated_pixelcnn", sample_size=4, condition_type="class", num_classes=3),
                  {"class_labels": [0, 2]}),
        "gpt2": (tiny_pipeline("transformer", sample_size=4, in_channels=3, num_levels=8), {"batch_size": 2}),
    }  # fmt: skip
    calls, expected = {}, {}
    for name, (pipe, call) in pipelines.items():
        pipe.save_pretrained(tmp_path / name)
        hfgen.hub.write_model_card(
            str(tmp_path / name), family="autoregressive", pipeline_class="AutoregressivePipeline",
            pipeline_tag="unconditional-image-generation", dataset="digits", settings={},
        )  # fmt: skip
        repo_id = f"{HUB_USER}/ar-{name}"
        push_to_hub(str(tmp_path / name), repo_id, token=HUB_TOKEN)
        calls[repo_id] = call
        expected[repo_id] = pipe(**call, generator=torch.manual_seed(0), output_type="np").images
        loaded = hfgen.load_pipeline(repo_id)
        assert type(loaded.prior) is type(pipe.prior)
        np.testing.assert_array_equal(loaded(**call, generator=torch.manual_seed(0), output_type="np").images,
                                      expected[repo_id])  # fmt: skip

    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps(calls)],
        env=hub_subprocess_env(hub, tmp_path / "hf_home"), cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # No hfgen module was imported. (diffusers' import check does try `import hfgen` once per file, and fails as it
    # should: the bundled ConditionEncoder keeps its function-level `from hfgen.text import encode_text`, only run for
    # text models, which hfgen.remote_code leaves as it is.)
    assert run["hfgen_modules"] == [] and "custom code" in run["refused"]
    for repo_id, images in expected.items():
        assert run[repo_id]["images"] == images_hash(images), repo_id
    assert run[f"{HUB_USER}/ar-gated"]["classes"]["prior"].startswith("diffusers_modules.")
    assert run[f"{HUB_USER}/ar-gpt2"]["classes"]["prior"].endswith("GPT2LMHeadModel")


@pytest.mark.parametrize("recipe", ["autoregressive_gated_digits", "autoregressive_transformer_digits",
                                    "autoregressive_shapes"])  # fmt: skip
def test_recipes_parse(recipe, repo_root):
    from hfgen.training.train import parse_config

    trainer_class, config = parse_config(["--recipe", str(repo_root / "training" / "recipes" / f"{recipe}.yaml")])
    assert trainer_class is AutoregressiveTrainer and config.architecture in ARCHITECTURES
    assert config.num_levels == (256 if config.dataset_name == "shapes" else 17)
