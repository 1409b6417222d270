"""The flow family: FlowModel, FlowPipeline and FlowTrainer through the shared mixins, plus what only a flow shows:
every layer inverts and has the log-determinant autograd finds, densities that integrate (sum) to one, ActNorm's
data-dependent initialisation, the exact likelihood, encode/decode, and loading with diffusers alone."""

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import HUB_TOKEN, HUB_USER, REPO_ROOT, hub_subprocess_env
from hfgen.training.trainer_flow import FlowTrainer
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
from hfgen.metrics.completion import labelled_test_images
from hfgen.metrics.evaluate import real_images
from hfgen.models.modeling_flow import (
    ActNorm,
    Coupling,
    GaussianPrior,
    InvertibleConv1x1,
    PointFlow,
    Squeeze,
    VariationalDequantizer,
)

TINY = dict(sample_size=8, in_channels=1, num_bins=17, hidden_channels=8, steps_per_scale=2)
MODEL_VARIANTS = {
    "glow-unconditional": dict(architecture="glow", **TINY),
    "realnvp-text": dict(
        architecture="realnvp", learned_prior=False, condition_type="text", text_embed_dim=32, **TINY
    ),
    "glow-additive-class": dict(
        architecture="glow", coupling="additive", condition_type="class", num_classes=10, **TINY
    ),
    "glow-variational": dict(architecture="glow", dequantization="variational", dequantizer_steps=2, **TINY),
    # Glow's class-conditional model: the condition in the priors only, and the label head on the top latent.
    "glow-text-prior-only-label-head": dict(
        architecture="glow",
        condition_type="text",
        text_embed_dim=32,
        condition_couplings=False,
        num_label_classes=10,
        **TINY,
    ),  # fmt: skip
}


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Adds seeded noise to every parameter: the zero-initialised convolutions otherwise make each coupling and
    prior the identity, which would pass any invertibility or log-determinant test."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return module


def tiny_flow(**overrides) -> hfgen.FlowModel:
    torch.manual_seed(0)
    return hfgen.FlowModel(**{**MODEL_VARIANTS["glow-unconditional"], **overrides}).eval()


@pytest.fixture(scope="module")
def digit_images() -> torch.Tensor:
    """The first 64 digits as a (64, 1, 8, 8) tensor in [-1, 1] on the 17 levels."""
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in make_digits_dataset()["image"][:64]])
    return torch.round(torch.from_numpy(pixels)[:, None] / 255 * 16) / 8 - 1


# ----- the shared mixins --------------------------------------------------------------------------------------------
class TestFlowModel(ModelTesterMixin):
    model_class = hfgen.FlowModel

    @pytest.fixture(autouse=True, params=list(MODEL_VARIANTS))
    def variant(self, request):
        self.variant = request.param

    def get_init_dict(self):
        return dict(MODEL_VARIANTS[self.variant])

    def get_inputs(self):
        config = self.get_init_dict()
        generator = torch.Generator().manual_seed(0)
        levels = torch.randint(0, 17, (2, 1, 8, 8), generator=generator)
        condition = None
        if config.get("condition_type") == "text":
            condition = Condition(text_embeds=torch.randn(2, 32, generator=generator))
        elif config.get("condition_type") == "class":
            condition = Condition(class_labels=torch.tensor([3, 10]))  # and the null class
        return {"sample": levels.float() / 8 - 1, "condition": condition}

    def get_bad_init_dicts(self):
        base = MODEL_VARIANTS["glow-unconditional"]
        return [
            {**base, "architecture": "maf"},
            {**base, "coupling": "spline"},
            {**base, "sample_size": 6},  # glow squeezes twice: 6 is not a multiple of 4
            {**base, "num_scales": 0},
            {**base, "logit_alpha": 0.5},
            {**base, "num_bins": 1},
            {**base, "condition_type": "class"},
            {**base, "condition_type": "text"},
            {**base, "dequantization": "learned"},
            {**base, "dequantization": "variational", "dequantizer_steps": 0},
            {**base, "num_label_classes": 1},
        ]


class TestFlowPipeline(PipelineTesterMixin):
    pipeline_class = hfgen.FlowPipeline

    @pytest.fixture(autouse=True, params=["unconditional", "text"])
    def variant(self, request, tiny_text_components):
        self.variant = request.param
        self.text_components = tiny_text_components

    def get_pipeline(self):
        if self.variant == "text":
            flow = perturb(tiny_flow(condition_type="text", text_embed_dim=32))
            return hfgen.FlowPipeline(
                flow=flow, tokenizer=self.text_components[0], text_encoder=self.text_components[1]
            )
        return hfgen.FlowPipeline(flow=perturb(tiny_flow()))

    def get_call_kwargs(self):
        if self.variant == "text":
            return {"prompt": ["a handwritten digit seven", "a handwritten digit one"], "num_images_per_prompt": 2}
        return {"batch_size": 3}

    def get_expected_shape(self):
        return (4 if self.variant == "text" else 3, 1, 8, 8)


# ----- every layer inverts, with the log-determinant autograd finds -------------------------------------------------
def layer_cases():
    """name -> (layer, input shape, condition size): every invertible layer, tiny, with its parameters perturbed."""
    torch.manual_seed(0)
    cases = {
        "actnorm": (ActNorm(4), (2, 4, 2, 2), 0),
        "invertible-1x1": (InvertibleConv1x1(4), (2, 4, 2, 2), 0),
        "squeeze": (Squeeze(), (2, 1, 4, 4), 0),
    }
    for mask, channels in (("checkerboard", 1), ("channel", 4)):
        for coupling in ("affine", "additive"):
            for parity in (0, 1):
                cases[f"{mask}-{coupling}-{parity}"] = (
                    Coupling(channels, 8, mask, parity, coupling, condition_dim=3),
                    (2, channels, 4 if mask == "checkerboard" else 2, 4 if mask == "checkerboard" else 2),
                    3,
                )
    cases["top-prior"] = (GaussianPrior(4, 0, 2, learned=True, condition_dim=3), (2, 4, 2, 2), 3)
    return {name: (perturb(layer.double(), 0.3), shape, cond) for name, (layer, shape, cond) in cases.items()}


def run_layer(layer, h, c):
    """(output, log_det) of one layer; a split prior gets its context, the kept half (here fixed random values)."""
    return layer(h, c=c) if not isinstance(layer, GaussianPrior) else layer(h, None, c)


def invert_layer(layer, h, c):
    return layer.inverse(h, c=c) if not isinstance(layer, GaussianPrior) else layer.inverse(h, None, c)


@pytest.mark.parametrize("name", list(layer_cases()))
def test_layer_inverts_in_float32(name):
    layer, shape, cond = layer_cases()[name]
    layer = layer.float()
    generator = torch.Generator().manual_seed(1)
    h = torch.randn(shape, generator=generator)
    c = torch.randn(shape[0], cond, generator=generator) if cond else None
    output, log_det = run_layer(layer, h, c)
    assert output.shape[0] == h.shape[0] and output.numel() == h.numel() and log_det.shape == (shape[0],)
    assert not torch.allclose(output.reshape(h.shape) if output.shape != h.shape else output, h)
    torch.testing.assert_close(invert_layer(layer, output, c), h, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(layer_cases()))
def test_layer_log_det_equals_autograd(name):
    """log|det J| of the layer's map, per example, from autograd's full Jacobian (float64) against the layer's own."""
    layer, shape, cond = layer_cases()[name]
    generator = torch.Generator().manual_seed(2)
    h = torch.randn(shape, generator=generator, dtype=torch.float64)
    c = torch.randn(shape[0], cond, generator=generator, dtype=torch.float64) if cond else None
    _, log_det = run_layer(layer, h, c)
    for i in range(shape[0]):
        ci = None if c is None else c[i : i + 1]

        def flat_map(x, ci=ci):
            return run_layer(layer, x.reshape(1, *shape[1:]), ci)[0].flatten()

        jacobian = torch.autograd.functional.jacobian(flat_map, h[i].flatten())
        _, expected = torch.linalg.slogdet(jacobian)
        torch.testing.assert_close(log_det[i].double(), expected, atol=1e-6, rtol=1e-6)


def test_split_prior_log_det_equals_autograd():
    """The learned prior at a split: z -> (z - mean(h)) / std(h) given the kept half h and the condition."""
    prior = perturb(GaussianPrior(2, 2, 2, learned=True, condition_dim=3).double(), 0.3)
    generator = torch.Generator().manual_seed(3)
    z, kept = torch.randn(2, 1, 2, 2, 2, generator=generator, dtype=torch.float64)
    c = torch.randn(1, 3, generator=generator, dtype=torch.float64)
    eps, log_det = prior(z, kept, c)
    torch.testing.assert_close(prior.inverse(eps, kept, c), z, atol=1e-10, rtol=0)
    jacobian = torch.autograd.functional.jacobian(
        lambda x: prior(x.reshape(z.shape), kept, c)[0].flatten(), z.flatten()
    )
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jacobian)[1], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS))
def test_whole_model_inverts_in_float32(variant, digit_images):
    config = {**MODEL_VARIANTS[variant], "steps_per_scale": 3}
    torch.manual_seed(0)
    flow = perturb(hfgen.FlowModel(**config), 0.05).eval()
    images = digit_images[:8]
    condition = {
        "text": Condition(text_embeds=torch.randn(8, 32)),
        "class": Condition(class_labels=torch.arange(8)),
    }.get(config.get("condition_type"))
    y = flow.dequantize(images, torch.rand(images.shape, generator=torch.Generator().manual_seed(0)))
    latents, _ = flow.transform(y, condition)
    assert latents.shape == (8, 64)
    torch.testing.assert_close(flow.inverse_transform(latents, condition), y, atol=1e-4, rtol=0)
    # Encoding at the bin centres and decoding gives the very images back.
    assert torch.equal(flow.decode(flow.encode(images, condition).latents, condition).sample, images)


@pytest.mark.parametrize("architecture", ["glow", "realnvp"])
def test_whole_model_log_det_equals_autograd(architecture):
    """A 4x4 grey image (16 dimensions): the model's log|det dz/dy| (logit, every layer, the learned priors)."""
    torch.manual_seed(0)
    flow = hfgen.FlowModel(
        sample_size=4, in_channels=1, num_bins=17, architecture=architecture, num_scales=2, steps_per_scale=2,
        hidden_channels=8, learned_prior=True, condition_type="class", num_classes=3,
    )  # fmt: skip
    flow = perturb(flow.double(), 0.2)
    condition = Condition(class_labels=torch.tensor([1]))
    y = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, log_det = flow.transform(y, condition)
    jacobian = torch.autograd.functional.jacobian(
        lambda x: flow.transform(x.reshape(1, 1, 4, 4), condition)[0].flatten(), y.flatten()
    )
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jacobian)[1], atol=1e-6, rtol=1e-8)


# ----- densities that integrate to one ------------------------------------------------------------------------------
def test_2d_density_integrates_to_one():
    """The 2-D flow's density on a 201x201 grid over [-10, 10]^2 (rectangle rule) sums to one."""
    torch.manual_seed(0)
    flow = perturb(PointFlow(num_steps=4, hidden_channels=16).double(), 0.2).eval()
    axis = torch.linspace(-10, 10, 201, dtype=torch.float64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        density = flow.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    cell = (axis[1] - axis[0]) ** 2
    assert (density * cell).sum().item() == pytest.approx(1.0, abs=1e-3)
    assert density.max() > 2 * density.mean()  # not a flat density on the box


def test_discrete_probabilities_match_the_sampled_frequencies():
    """2x2 binary images: 16 in all. The importance-weighted estimate of P(x) = E_u[p(y) / K^D] is unbiased, so each
    must match how often the model's samples fall in x's bins. The logit transform maps [0, 1] to a bounded box, so
    the flow also puts mass outside [0, 1]^D (samples there are clamped to the edge levels): the 16 probabilities sum
    to the mass inside, one minus that leak. A wrong dequantisation scale (K^D) or logit log-determinant breaks
    both."""
    torch.manual_seed(0)
    flow = hfgen.FlowModel(
        sample_size=2, in_channels=1, num_bins=2, num_scales=1, steps_per_scale=2, hidden_channels=8
    )
    flow = perturb(flow, 0.15).eval()
    bits = torch.tensor([[(i >> k) & 1 for k in (3, 2, 1, 0)] for i in range(16)], dtype=torch.float32)
    images = bits.reshape(16, 1, 2, 2)  # in [0, 1], as pipelines take images
    output = hfgen.FlowPipeline(flow=flow).log_likelihood(images, num_samples=4000, generator=torch.manual_seed(0))
    assert output.kind == "lower bound (uniform dequantisation, importance-weighted, S=4000)"
    probabilities = output.log_likelihood.exp()  # (16,)

    with torch.no_grad():
        y = flow.inverse_transform(torch.randn(200000, 4, generator=torch.Generator().manual_seed(1)))  # unclamped
    inside = ((y >= 0) & (y < 1)).flatten(1).all(1)
    codes = (torch.floor(y[inside] * 2).flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(1).long()
    frequencies = torch.bincount(codes, minlength=16) / len(y)
    torch.testing.assert_close(probabilities, frequencies, atol=0.01, rtol=0)
    assert probabilities.sum().item() == pytest.approx(inside.float().mean().item(), abs=0.01)
    assert probabilities.max() > 2 * probabilities.min()  # the model does prefer some images


# ----- variational dequantisation (Flow++) ---------------------------------------------------------------------------
def test_variational_dequantizer_log_density_equals_autograd():
    """log q(u | x) = log N(eps) - log|det du/deps|: the dequantiser's own against autograd's full Jacobian of
    eps -> u (float64, a 1x4x4 image, couplings perturbed away from the identity)."""
    dequantizer = perturb(VariationalDequantizer(1, 8, num_steps=3).double(), 0.3)
    x = torch.randint(0, 17, (1, 1, 4, 4), generator=torch.Generator().manual_seed(0)).double() / 8 - 1
    u, log_q = dequantizer(x, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).double()  # the same draw
    torch.testing.assert_close(dequantizer.transform(eps, x)[0], u, atol=0, rtol=0)
    jacobian = torch.autograd.functional.jacobian(lambda e: dequantizer.transform(e.reshape(x.shape), x)[0].flatten(),
                                                  eps.flatten())  # fmt: skip
    expected = -0.5 * (eps**2).sum() - 8 * np.log(2 * np.pi) - torch.linalg.slogdet(jacobian)[1]
    torch.testing.assert_close(log_q[0], expected, atol=1e-8, rtol=1e-8)


def test_variational_noise_stays_in_the_unit_interval_and_depends_on_the_image(digit_images):
    flow = perturb(tiny_flow(dequantization="variational"), 0.3)
    with torch.no_grad():
        u, log_q = flow.dequantization_noise(digit_images, torch.Generator().manual_seed(0))
        other, _ = flow.dequantization_noise(digit_images.flip(0), torch.Generator().manual_seed(0))
    assert u.shape == digit_images.shape and log_q.shape == (64,) and torch.isfinite(log_q).all()
    assert (u > 0).all() and (u < 1).all()
    assert not torch.equal(u, other.flip(0)), "q(u | x) ignores the image"


def test_variational_bound_is_a_bound_on_the_binary_2x2_images():
    """The 16 binary 2x2 images under a fixed (perturbed) flow, after 200 Adam steps on q alone: exp of the variational
    bound E_q[log p(k + u) - log q(u | x)] (1,000 draws of u each) sums to at most the mass the model puts on the 16
    (one minus the logit's leak, at most one), and not far below it; the importance-weighted bound with q as the
    proposal lies above and recovers the mass. A wrong log q (a sign, the sigmoid's log-determinant) breaks the bound,
    and training q would exploit it."""
    torch.manual_seed(0)
    flow = hfgen.FlowModel(
        sample_size=2, in_channels=1, num_bins=2, num_scales=1, steps_per_scale=2, hidden_channels=8,
        dequantization="variational", dequantizer_steps=2,
    )  # fmt: skip
    flow = perturb(flow, 0.15).eval()
    bits = torch.tensor([[(i >> k) & 1 for k in (3, 2, 1, 0)] for i in range(16)], dtype=torch.float32)
    images = bits.reshape(16, 1, 2, 2)  # in [0, 1], as pipelines take images
    optimizer = torch.optim.Adam(flow.dequantizer.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(3)
    for _ in range(200):
        loss = flow(images.repeat(16, 1, 1, 1) * 2 - 1, generator=generator).loss  # the bound, in bits/dim
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    pipeline = hfgen.FlowPipeline(flow=flow)
    draws = pipeline.log_likelihood(images.repeat_interleave(1000, 0), generator=torch.manual_seed(0))
    assert draws.kind == "lower bound (variational dequantisation, S=1)" and "q(u | x)" in draws.dequantization
    bound = draws.log_likelihood.view(16, 1000).mean(1)  # (16,) the variational bound on log P(x)
    weighted = pipeline.log_likelihood(images, num_samples=4000, generator=torch.manual_seed(1))
    assert weighted.kind == "lower bound (variational dequantisation, importance-weighted, S=4000)"
    with torch.no_grad():
        y = flow.inverse_transform(torch.randn(200000, 4, generator=torch.Generator().manual_seed(2)))
    inside = ((y >= 0) & (y < 1)).flatten(1).all(1).float().mean().item()  # P(all 16 images) = 1 - the leak
    assert 0.5 * inside < bound.exp().sum().item() < inside <= 1
    assert (bound < weighted.log_likelihood).all()
    assert weighted.log_likelihood.exp().sum().item() == pytest.approx(inside, abs=0.02)


def test_variational_flow_save_load_round_trip(digit_images, tmp_path):
    flow = perturb(tiny_flow(dequantization="variational"), 0.3)
    flow.save_pretrained(tmp_path)
    loaded = hfgen.FlowModel.from_pretrained(tmp_path).eval()
    assert loaded.config.dequantization == "variational" and loaded.dequantizer is not None

    def likelihood(model):
        images = (digit_images + 1) / 2  # pipelines take images in [0, 1]
        pipeline = hfgen.FlowPipeline(flow=model)
        return pipeline.log_likelihood(images, num_samples=2, generator=torch.manual_seed(0)).log_likelihood

    torch.testing.assert_close(likelihood(loaded), likelihood(flow), atol=0, rtol=0)


# ----- ActNorm's data-dependent initialisation ----------------------------------------------------------------------
def test_actnorm_initialises_to_zero_mean_unit_variance():
    layer = ActNorm(3).train()
    h = (
        torch.randn(16, 3, 4, 4) * torch.tensor([0.5, 3.0, 10.0])[:, None, None]
        + torch.tensor([-2.0, 0.0, 5.0])[:, None, None]
    )
    output, _ = layer(h)
    torch.testing.assert_close(output.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(output.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert layer.initialized.item() == 1
    bias = layer.bias.detach().clone()
    layer(h * 7 + 1)  # a second batch does not initialise again
    assert torch.equal(layer.bias.detach(), bias)


def test_model_actnorm_initialisation_on_the_first_batch_survives_save_load(digit_images, tmp_path):
    flow = tiny_flow()
    actnorms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert len(actnorms) == 4 and all(m.initialized.item() == 0 for m in actnorms)
    flow.initialize_actnorm(digit_images, generator=torch.Generator().manual_seed(0))
    assert all(m.initialized.item() == 1 for m in actnorms)

    outputs = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: outputs.append(output[0])) for m in actnorms]
    noise = torch.rand(digit_images.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flow.encode(digit_images, noise=noise)  # the same images and noise: each ActNorm's output is normalised
    for hook in hooks:
        hook.remove()
    for output in outputs:
        torch.testing.assert_close(output.mean(dim=(0, 2, 3)), torch.zeros(output.shape[1]), atol=1e-4, rtol=0)
        torch.testing.assert_close(
            output.var(dim=(0, 2, 3), unbiased=False), torch.ones(output.shape[1]), atol=1e-3, rtol=0
        )

    flow.save_pretrained(tmp_path)
    loaded = hfgen.FlowModel.from_pretrained(tmp_path).train()
    assert all(m.initialized.item() == 1 for m in loaded.modules() if isinstance(m, ActNorm))
    with torch.no_grad():
        loaded(digit_images.flip(0) * 0.5)  # training mode, other data: no second initialisation
    for saved, reloaded in zip(flow.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(saved[1], reloaded[1]), saved[0]


# ----- the pipeline: encode, decode, interpolate, temperature, likelihood --------------------------------------------
def test_encode_decode_and_interpolate(digit_images):
    pipeline = hfgen.FlowPipeline(flow=perturb(tiny_flow()))
    images = (digit_images + 1) / 2  # pipelines take images in [0, 1]
    latents = pipeline.encode(images[:5])
    assert latents.shape == (5, 64)
    torch.testing.assert_close(pipeline.decode(latents, output_type="pt"), images[:5])
    path = pipeline.interpolate(images[:1], images[1:2], num_steps=5, output_type="pt")
    assert path.shape == (5, 1, 8, 8)
    torch.testing.assert_close(path[0], (digit_images[0] + 1) / 2)
    torch.testing.assert_close(path[-1], (digit_images[1] + 1) / 2)
    seeds = pipeline.interpolate(0, 1, num_steps=3, output_type="pt")
    torch.testing.assert_close(seeds[0], pipeline.decode(pipeline.seed_latents(0)[None], output_type="pt")[0])
    with pytest.raises(ValueError, match="num_steps"):
        pipeline.interpolate(0, 1, num_steps=1)
    with pytest.raises(ValueError, match="num_steps must be an int >= 2, got 2.5"):
        pipeline.interpolate(0, 1, num_steps=2.5)
    with pytest.raises(ValueError, match="finite"):  # decoded NaN images without a word
        pipeline.decode(torch.full((1, 64), float("nan")))
    with pytest.raises(ValueError, match="latents must be a tensor of shape"):
        pipeline.decode([[0.0] * 64])


def test_temperature_scales_the_latents():
    pipeline = hfgen.FlowPipeline(flow=perturb(tiny_flow()))
    seen = {}

    def record(temperature):
        def callback(pipe, step, timestep, tensors):
            seen[temperature] = tensors["latents"]

        return callback

    for temperature in (0.0, 0.5, 1.0):
        images = pipeline(batch_size=2, temperature=temperature, generator=torch.Generator().manual_seed(0),
                          output_type="pt", callback_on_step_end=record(temperature)).images  # fmt: skip
    torch.testing.assert_close(seen[0.5], seen[1.0] * 0.5)
    assert torch.equal(seen[0.0], torch.zeros(2, 64))
    zero = pipeline(batch_size=2, temperature=0.0, output_type="pt").images
    assert torch.equal(zero[0], zero[1])  # T = 0: the image of z = 0 whatever the seed
    assert not torch.equal(images[0], images[1])
    with pytest.raises(ValueError, match="temperature"):
        pipeline(temperature=-1.0)


def test_log_likelihood_is_exact_for_one_sample_and_a_tighter_bound_for_more(digit_images):
    pipeline = hfgen.FlowPipeline(flow=perturb(tiny_flow()))
    exact = pipeline.log_likelihood((digit_images + 1) / 2, generator=torch.Generator().manual_seed(0))
    assert exact.kind == "exact" and "uniform" in exact.dequantization and "17 levels" in exact.dequantization
    noise = torch.rand(digit_images.shape, generator=torch.Generator().manual_seed(0))
    expected = pipeline.flow.encode(digit_images, noise=noise).log_likelihood
    torch.testing.assert_close(exact.log_likelihood, expected - 64 * np.log(17))  # the level scale
    torch.testing.assert_close(exact.bits_per_dim, -(expected - 64 * np.log(17)) / (64 * np.log(2)))
    bound = pipeline.log_likelihood((digit_images + 1) / 2, num_samples=8, generator=torch.Generator().manual_seed(0))
    assert bound.kind == "lower bound (uniform dequantisation, importance-weighted, S=8)"
    assert bound.bits_per_dim.mean() < exact.bits_per_dim.mean()
    with pytest.raises(ValueError, match="num_samples"):
        pipeline.log_likelihood((digit_images + 1) / 2, num_samples=0)


def test_empty_prompt_is_the_unconditional_model(tiny_text_components):
    tokenizer, text_encoder = tiny_text_components
    flow = perturb(tiny_flow(condition_type="text", text_embed_dim=32))
    pipeline = hfgen.FlowPipeline(flow=flow, tokenizer=tokenizer, text_encoder=text_encoder)

    def sample(**kwargs):
        return pipeline(**kwargs, batch_size=2, generator=torch.Generator().manual_seed(0), output_type="pt").images

    assert torch.equal(sample(), pipeline(prompt=["", ""], generator=torch.Generator().manual_seed(0),
                                          output_type="pt").images)  # fmt: skip
    assert not torch.equal(sample(), pipeline(prompt=["a handwritten digit seven"] * 2, output_type="pt",
                                              generator=torch.Generator().manual_seed(0)).images)  # fmt: skip
    assert {"guidance", "prompt"} <= pipeline.capabilities


def test_guidance_resamples_by_the_flows_own_classifier():
    """Guidance for a flow chooses each image among `num_candidates` conditional samples with weights
    (p(x | c) / p(x | null))^(w - 1), the flow's own Bayes classifier (both densities at the bins' centres): scale 1
    is the plain conditional sample, a huge scale picks the candidate that classifier finds most like the class, and
    the same seed gives the same images."""
    flow = perturb(tiny_flow(condition_type="class", num_classes=10))
    pipeline = hfgen.FlowPipeline(flow=flow)
    drawn = {}

    def record(pipe, step, timestep, tensors):
        drawn["latents"] = tensors["latents"]

    def sample(**kwargs):
        generator = torch.Generator().manual_seed(0)
        return pipeline(class_labels=[3, 7], generator=generator, output_type="pt", **kwargs).images

    assert torch.equal(sample(), sample(guidance_scale=1.0, num_candidates=5))  # 1: no candidates
    greedy = sample(guidance_scale=1e6, num_candidates=5, callback_on_step_end=record)
    assert drawn["latents"].shape == (2, 5, 64)
    assert torch.equal(greedy, sample(guidance_scale=1e6, num_candidates=5))

    conditional = Condition(class_labels=torch.tensor([3, 7]).repeat_interleave(5))
    with torch.no_grad():
        candidates = flow.decode(drawn["latents"].flatten(0, 1), conditional).sample
        log_ratio = flow.encode(candidates, conditional).log_likelihood - flow.encode(candidates).log_likelihood
    best = log_ratio.view(2, 5).argmax(1)
    assert best.tolist() != [0, 0]  # the test can tell a choice from the first candidate
    torch.testing.assert_close(greedy, (candidates.view(2, 5, 1, 8, 8)[torch.arange(2), best] + 1) / 2)
    # Moderate guidance, many images: the chosen images are the class's by the flow's classifier more than plain ones.
    labels, seeded = [3] * 64, torch.Generator().manual_seed(1)
    plain = pipeline(class_labels=labels, generator=seeded, output_type="pt").images
    guided = pipeline(class_labels=labels, guidance_scale=3.0, generator=seeded, output_type="pt").images

    def mean_log_ratio(images):
        x = images * 2 - 1
        with torch.no_grad():
            return (flow.encode(x, Condition(class_labels=torch.tensor(labels))).log_likelihood
                    - flow.encode(x).log_likelihood).mean()  # fmt: skip

    assert mean_log_ratio(guided) > mean_log_ratio(plain)
    with pytest.raises(ValueError, match="num_candidates must be"):
        pipeline(class_labels=[3], guidance_scale=2.0, num_candidates=0)
    with pytest.raises(ValueError, match="guidance_scale"):
        hfgen.FlowPipeline(flow=tiny_flow())(guidance_scale=2.0)  # unconditional: nothing to guide by


def test_guidance_guides_away_from_a_negative_prompt(tiny_text_components):
    """A text flow's guidance weighs candidates by p(x | prompt) / p(x | negative_prompt): another negative prompt
    than the empty one chooses other candidates from the same draws."""
    tokenizer, text_encoder = tiny_text_components
    flow = perturb(tiny_flow(condition_type="text", text_embed_dim=32))
    pipeline = hfgen.FlowPipeline(flow=flow, tokenizer=tokenizer, text_encoder=text_encoder)

    def sample(**kwargs):
        return pipeline(prompt="a handwritten digit seven", num_images_per_prompt=8, guidance_scale=1e6,
                        generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images  # fmt: skip

    empty, negative = sample(), sample(negative_prompt="a handwritten digit one")
    assert torch.equal(negative, sample(negative_prompt="a handwritten digit one"))
    assert not torch.equal(empty, negative)


@pytest.mark.parametrize("condition_couplings", [True, False])
def test_condition_couplings_false_keeps_the_condition_out_of_the_couplings(condition_couplings, digit_images):
    """With the condition in the priors only, the top scale's output (what the label head reads) is a function of the
    image alone, and the condition still changes the latents through the priors; by default it changes both."""
    flow = perturb(tiny_flow(condition_type="text", text_embed_dim=32, condition_couplings=condition_couplings))
    y = flow.dequantize(digit_images[:4])
    conditions = [
        Condition(text_embeds=torch.randn(4, 32, generator=torch.Generator().manual_seed(s))) for s in (1, 2)
    ]
    with torch.no_grad():
        (latents_1, _, top_1), (latents_2, _, top_2) = (flow.transform_with_top(y, c) for c in conditions)
        torch.testing.assert_close(flow.inverse_transform(latents_2, conditions[1]), y, atol=1e-4, rtol=0)
    assert not torch.allclose(latents_1, latents_2)
    assert torch.equal(top_1, top_2) != condition_couplings


@pytest.mark.parametrize("spatial", [True, False])
def test_spatial_prior_condition_shifts_the_top_prior_at_every_position(spatial):
    """With `spatial_prior_condition`, the condition moves the top prior's mean differently at each position (a class
    can have its own spatial pattern in the top latent, where the label head finds it); else once per channel."""
    flow = perturb(tiny_flow(condition_type="class", num_classes=10, spatial_prior_condition=spatial))
    top = flow.priors[-1]
    z = torch.zeros(2, *flow.latent_shapes[-1])
    means = [top.mean_and_logs(z, None, flow.embed_condition(Condition(class_labels=torch.tensor([k] * 2)), 2))[0]
             for k in (3, 7)]  # fmt: skip
    shift = means[1] - means[0]  # (2, c, s, s)
    assert shift.abs().max() > 0
    assert torch.allclose(shift, shift.mean(dim=(2, 3), keepdim=True).expand_as(shift)) != spatial


@pytest.mark.parametrize("spatial", [True, False])
def test_condition_logits_are_the_flows_own_log_likelihood_ratios(spatial, digit_images):
    """With one scale the top prior is the flow's only prior, so log p(top_i | c_j) - log p(top_i | c_i) from one
    batched call must equal log p(x_i | c_j) - log p(x_i | c_i) as `encode` computes it, condition by condition."""
    flow = perturb(
        tiny_flow(num_scales=1, condition_type="class", num_classes=10, condition_couplings=False,
                  spatial_prior_condition=spatial)
    )  # fmt: skip
    images, labels = digit_images[:6], torch.tensor([0, 3, 3, 7, 10, 1])  # 10: the null class
    with torch.no_grad():
        logits = flow.encode(images, Condition(class_labels=labels), condition_logits=True).condition_logits
        direct = torch.stack(
            [flow.encode(images, Condition(class_labels=labels[j].repeat(6))).log_likelihood for j in range(6)], dim=1
        )  # (image i, condition j)

    assert logits.shape == (6, 6)
    ratios = logits - logits.diagonal()[:, None]
    torch.testing.assert_close(ratios, direct - direct.diagonal()[:, None], atol=1e-3, rtol=1e-5)
    assert ratios.abs().max() > 1 and torch.equal(ratios[:, 1], ratios[:, 2])  # the same class, the same column


def test_condition_logits_need_the_condition_in_the_priors_only(digit_images):
    labels = Condition(class_labels=torch.tensor([1, 2]))
    cases = [
        (tiny_flow(condition_type="class", num_classes=10), labels, "condition_couplings=False"),
        (tiny_flow(condition_type="class", num_classes=10, condition_couplings=False, learned_prior=False), labels,
         "learned_prior=True"),
        (tiny_flow(), None, "pass a conditional flow a condition"),
    ]  # fmt: skip
    for flow, condition, message in cases:
        with pytest.raises(ValueError, match=message):
            flow.encode(digit_images[:2], condition, condition_logits=True)


def test_wrong_image_size_raises_with_expected_size():
    flow = tiny_flow()
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\)"):
        flow.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(batch, 64\)"):
        flow.decode(torch.zeros(1, 63))


# ----- training -----------------------------------------------------------------------------------------------------
TINY_ARGS = (
    "--family flow --dataset_name digits --train_batch_size 32 --hidden_channels 8 --steps_per_scale 2 "
    "--report_to none --eval_max_images 32 --text_hidden_size 32 --text_num_layers 1"
).split()


class TestFlowTrainer(TrainerTesterMixin):
    trainer_class = FlowTrainer

    def get_args(self, output_dir) -> list[str]:
        return [*TINY_ARGS, "--output_dir", str(output_dir)]

    @pytest.mark.parametrize("conditioning", ["text", "class"])
    def test_condition_reaches_the_loss(self, tmp_path, conditioning):
        """The mixin's test after 3 training steps: Glow's zero-initialised last layers make every coupling and prior
        ignore the condition until the first update (the flow starts as the identity), so at step 0 no caption can
        change the loss. After training, the same batch and noise with other captions / labels gives another loss."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "3", "--conditioning", conditioning, "--caption_dropout", "0"
        )
        trainer.train()
        batch = next(iter(trainer.train_dataloader))
        other = {**batch, "captions": batch["captions"][::-1], "labels": batch["labels"].flip(0)}
        losses = []
        with torch.no_grad():
            for candidate in (batch, other, batch):
                torch.manual_seed(0)
                losses.append(self.conditioned_loss(trainer, candidate, trainer.condition_from_batch(candidate)))
        assert losses[0] == losses[2], "the loss is not deterministic for a seed"
        assert losses[0] != losses[1], "the loss does not depend on the batch's captions / labels"

    def test_actnorm_is_initialised_before_training(self, tmp_path):
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "1")
        actnorms = [m for m in trainer.accelerator.unwrap_model(trainer.model).modules() if isinstance(m, ActNorm)]
        assert actnorms and all(m.initialized.item() == 1 for m in actnorms)
        assert any(not torch.equal(m.bias, torch.zeros_like(m.bias)) for m in actnorms)

    def test_validation_evaluate_logs_the_test_bits_per_dim(self, tmp_path):
        """`--validation_evaluate` logs the final summary's held-out figure at each validation (to see over-fitting as
        it starts); the last one, with no step in between, equals the summary's."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "20", "--validation_steps", "10", "--validation_evaluate"
        )
        logs = record_logs(trainer)

        summary = trainer.train()

        logged = [(step, v["validation_test_bits_per_dim"]) for step, v in logs if "validation_test_bits_per_dim" in v]
        assert [step for step, _ in logged] == [10, 20]
        assert logged[-1][1] == summary["metrics"]["test_bits_per_dim"]
        with pytest.raises(ValueError, match="--validation_evaluate needs --validation_steps"):
            self.build_trainer(tmp_path / "again", "--validation_evaluate")


def test_flow_learns_digits_and_detects_noise(tmp_path):
    """60 steps of a tiny Glow: the exact bits/dim fall, and its likelihood tells digits from noise."""
    from hfgen.training.train import parse_config

    _, config = parse_config(
        [*TINY_ARGS, "--output_dir", str(tmp_path), "--max_train_steps", "60", "--learning_rate", "3e-3",
         "--logging_steps", "10", "--conditioning", "none", "--train_batch_size", "64"]
    )  # fmt: skip
    trainer = FlowTrainer(config)
    logs = record_logs(trainer)
    summary = trainer.train()

    first, last = logs[0][1]["loss"], logs[-1][1]["loss"]
    # Measured: about 3.9 -> 2.4 bits/dim (seed 0); uniform over 17 levels is 4.09.
    assert last < first - 0.5, f"the loss went from {first} to {last} in 60 steps"
    assert summary["metrics"]["test_bits_per_dim"] < 3.5
    pipeline = hfgen.load_pipeline(str(tmp_path))
    digits = (torch.stack([trainer.splits["test"][i]["pixel_values"] for i in range(64)]) + 1) / 2  # to [0, 1]
    noise = (out_of_distribution_images("noise", 64) + 1) / 2
    result = anomaly_auroc(pipeline, digits, noise, generator=torch.manual_seed(0))
    assert result["kind"] == "exact"
    assert result["auroc"] > 0.95 and result["out_bits_per_dim"] > result["in_bits_per_dim"]


def test_label_loss_trains_a_head_that_reads_the_class_from_the_image(tmp_path):
    """`--label_loss_weight` (Glow's classification loss on the top latent, the condition in the priors only): the
    head's cross-entropy falls from log2(10) bits, and the saved head names test digits from their top latent better
    than chance, with the condition nowhere in the couplings (so it cannot pass the caption through to the head)."""
    trainer = FlowTrainer(
        parse_tiny(tmp_path, "--max_train_steps", "60", "--learning_rate", "3e-3", "--logging_steps", "10",
                   "--train_batch_size", "64", "--conditioning", "text", "--caption_dropout", "0.2",
                   "--condition_couplings", "false", "--label_loss_weight", "1")
    )  # fmt: skip
    logs = record_logs(trainer)
    trainer.train()

    label_bits = [values["label_bits"] for _, values in logs if "label_bits" in values]
    assert label_bits[0] > 3.0 and label_bits[-1] < label_bits[0] - 1.0, label_bits  # log2(10) = 3.32 at the start
    pipeline = hfgen.load_pipeline(str(tmp_path))
    flow = pipeline.flow
    assert flow.config.num_label_classes == 10 and not flow.config.condition_couplings
    test = trainer.splits["test"]
    images = torch.stack([test[i]["pixel_values"] for i in range(128)])
    labels = torch.tensor([int(test[i]["labels"]) for i in range(128)])
    with torch.no_grad():
        logits = flow.encode(images, pipeline.condition_for_images(len(images), [""] * len(images), None)).label_logits
    assert (logits.argmax(1) == labels).float().mean() > 0.6  # chance 0.1; measured 0.92
    # What the likelihood makes of the prompt (benchmarks/flows.py): measured 0.19 accuracy, 0.08 nats.
    used = load_flows_benchmark().condition_use(pipeline, (images + 1) / 2, "digits")
    assert used["likelihood classifier accuracy"] > 0.1 and used["condition worth, nats"] > 0.03, used


def test_condition_contrast_loss_keeps_the_captions_apart(tmp_path):
    """`--condition_contrast_weight` (no labels needed): the top prior's classifier of which of the batch's captions
    belongs to each image learns (its cross-entropy falls), and the trained flow's likelihood names the digit of test
    images better than the same flow trained without it."""
    accuracies = {}
    for weight in ("0", "1"):
        trainer = FlowTrainer(
            parse_tiny(tmp_path / weight, "--max_train_steps", "100", "--learning_rate", "3e-3", "--logging_steps",
                       "10", "--train_batch_size", "64", "--conditioning", "text", "--caption_dropout", "0.2",
                       "--condition_couplings", "false", "--spatial_prior_condition", "true",
                       "--condition_contrast_weight", weight)
        )  # fmt: skip
        logs = record_logs(trainer)
        trainer.train()
        pipeline = hfgen.load_pipeline(str(tmp_path / weight))
        test = trainer.splits["test"]
        images = torch.stack([test[i]["pixel_values"] for i in range(len(test))])  # the 180 test digits
        used = load_flows_benchmark().condition_use(pipeline, (images + 1) / 2, "digits")
        accuracies[weight] = used["likelihood classifier accuracy"]
    condition_bits = [values["condition_bits"] for _, values in logs if "condition_bits" in values]
    assert condition_bits[-1] < condition_bits[0] - 1.0, condition_bits  # about log2(64 / 6) = 3.4 bits at best
    # Measured (seed 0): 5.8 -> 4.1 bits; likelihood classifier 0.81 with the loss, 0.19 without (chance 0.10).
    assert accuracies["1"] > 0.6 and accuracies["1"] > accuracies["0"] + 0.3, accuracies


def parse_tiny(output_dir, *flags):
    from hfgen.training.train import parse_config

    return parse_config([*TINY_ARGS, "--output_dir", str(output_dir), *flags])[1]


def test_label_loss_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"--label_loss_weight must be in \[0, inf\)"):
        parse_tiny(tmp_path, "--label_loss_weight", "-1")
    with pytest.raises(ValueError, match="--label_loss_weight needs the images' classes: pass --label_column"):
        parse_tiny(tmp_path, "--caption_column", "text", "--label_loss_weight", "0.01")
    for flags in (
        ["--conditioning", "text"],
        ["--conditioning", "none", "--condition_couplings", "false"],
        ["--conditioning", "class", "--condition_couplings", "false", "--architecture", "realnvp"],
    ):
        with pytest.raises(ValueError, match="--condition_contrast_weight .* --condition_couplings false"):
            parse_tiny(tmp_path, *flags, "--condition_contrast_weight", "1")
    with pytest.raises(ValueError, match="compares the captions within a batch: use --train_batch_size 2 or more"):
        parse_tiny(tmp_path, "--condition_couplings", "false", "--condition_contrast_weight", "1",
                   "--train_batch_size", "1")  # fmt: skip


class TestContrastFlowTrainer(TestFlowTrainer):
    """The same checks with the contrastive condition loss (the condition in the priors only)."""

    def get_args(self, output_dir) -> list[str]:
        contrast = ["--condition_couplings", "false", "--condition_contrast_weight", "0.1"]
        return [*TINY_ARGS, "--output_dir", str(output_dir), *contrast]


class TestVariationalFlowTrainer(TestFlowTrainer):
    """The same checks (every parameter, q's included, gets a gradient and moves; exact resume; the condition
    reaches the loss) with the variational dequantiser trained jointly."""

    def get_args(self, output_dir) -> list[str]:
        return [*TINY_ARGS, "--output_dir", str(output_dir), "--dequantization", "variational"]

    def test_the_bound_falls_and_q_is_trained(self, tmp_path):
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "30", "--learning_rate", "3e-3",
                                     "--logging_steps", "5", "--train_batch_size", "64")  # fmt: skip
        model = trainer.accelerator.unwrap_model(trainer.model)
        before = {name: p.detach().clone() for name, p in model.dequantizer.named_parameters()}
        logs = record_logs(trainer)
        summary = trainer.train()
        first, last = logs[0][1]["loss"], logs[-1][1]["loss"]
        assert last < first - 0.3, f"the loss went from {first} to {last} in 30 steps"
        assert all(not torch.equal(p, before[name]) for name, p in model.dequantizer.named_parameters())
        pipeline = hfgen.load_pipeline(str(tmp_path))
        assert pipeline.flow.config.dequantization == "variational"
        assert np.isfinite(summary["metrics"]["test_bits_per_dim"])


def test_two_cpu_ranks_train_together(tmp_path, repo_root):
    # Equal weights on both ranks also show that ActNorm was initialised the same on each. With the contrastive
    # condition loss, which each rank computes over its own half of the batch (as CLIP without gathering).
    args = [*TINY_ARGS, "--output_dir", str(tmp_path), "--max_train_steps", "4", "--architecture", "glow"]
    contrast = ["--condition_couplings", "false", "--condition_contrast_weight", "0.1"]
    summary = train_on_two_cpu_ranks(repo_root, tmp_path, [*args, *contrast])
    assert np.isfinite(summary["metrics"]["train_condition_bits"])


@pytest.mark.parametrize(
    "recipe",
    ["flow_realnvp_digits", "flow_glow_digits", "flow_glow_mnist", "flow_glow_text_mnist", "flow_text_shapes"],
)
def test_recipe_parses(recipe, repo_root):
    from hfgen.training.train import parse_config

    trainer_class, config = parse_config(["--recipe", str(repo_root / "training" / "recipes" / f"{recipe}.yaml")])
    assert trainer_class is FlowTrainer and config.family == "flow"
    assert config.learned_prior == (config.architecture == "glow")


def test_text_conditioned_shapes_recipe_trains(tmp_path, repo_root):
    from hfgen.training.train import parse_config

    recipe = repo_root / "training" / "recipes" / "flow_text_shapes.yaml"
    _, config = parse_config(
        [
            *("--recipe", str(recipe), "--output_dir", str(tmp_path), "--max_train_steps", "2"),
            *("--max_train_samples", "64", "--train_batch_size", "16", "--hidden_channels", "8"),
            *("--steps_per_scale", "1", "--text_hidden_size", "32", "--text_num_layers", "1", "--report_to", "none"),
            *("--validation_steps", "0", "--eval_max_images", "16"),
        ]
    )
    summary = FlowTrainer(config).train()

    assert np.isfinite(summary["metrics"]["train_loss"]) and np.isfinite(summary["metrics"]["test_bits_per_dim"])
    pipeline = hfgen.load_pipeline(str(tmp_path))
    assert pipeline.flow.config.num_bins == 256 and pipeline.flow.latent_shapes[-1] == (48, 4, 4)
    images = pipeline(prompt="a small red circle at the top left", generator=torch.manual_seed(0), output_type="np")
    assert images.images.shape == (1, 32, 32, 3)


def test_bad_training_settings_raise(tmp_path):
    for flag, value in (("--architecture", "maf"), ("--coupling", "spline"), ("--dequantization", "learned"),
                        ("--dequantizer_steps", "0")):  # fmt: skip
        with pytest.raises(ValueError, match=flag):
            parse_tiny(tmp_path, flag, value)


# ----- benchmarks/flows.py ------------------------------------------------------------------------------------------
def test_temperature_sweep_samples_at_each_temperature(tmp_path, tiny_text_components):
    """`benchmarks/flows.py --temperatures` on a tiny text-conditioned flow: one row per temperature after the
    held-out reference, each sampled at its own T (at T = 0 every unconditional sample is the image of z = 0: one
    class, entropy 0), with FID, ms per image and prompt adherence."""
    bench = load_flows_benchmark()
    flow = perturb(tiny_flow(condition_type="text", text_embed_dim=32))
    tokenizer, text_encoder = tiny_text_components
    hfgen.FlowPipeline(flow=flow, tokenizer=tokenizer, text_encoder=text_encoder).save_pretrained(tmp_path)

    reference, *rows = bench.temperature_sweep([str(tmp_path)], [0.0, 1.0], num_samples=20)
    assert reference["flow"] == "held-out test digits" and reference["FID"] < rows[1]["FID"]
    assert [row["temperature"] for row in rows] == [0.0, 1.0] and all(row["samples"] == 20 for row in rows)
    assert rows[0]["class entropy"] == 0 < rows[1]["class entropy"]
    for row in rows:
        assert np.isfinite(row["FID"]) and row["ms per image"] > 0
        assert 0 <= row["adherence seen"] <= 1 and 0 <= row["adherence paraphrase"] <= 1


def test_temperature_sweep_asks_a_class_flow_for_each_class(tmp_path):
    """For a class-conditioned flow the sweep asks for the classes in turn and scores the samples by the digits
    classifier: the same fraction as comparing its predicted classes with the labels asked for."""
    from hfgen.metrics.adherence import predicted_classes
    from hfgen.metrics.features import load_feature_extractor

    bench = load_flows_benchmark()
    flow = perturb(tiny_flow(condition_type="class", num_classes=10))
    flow.initialize_actnorm(torch.rand(8, 1, 8, 8) * 2 - 1, Condition(class_labels=torch.full((8,), 10)))
    hfgen.FlowPipeline(flow=flow).save_pretrained(tmp_path)

    _, row = bench.temperature_sweep([str(tmp_path)], [0.7], num_samples=30, guidance_scales=(1.0, 4.0))

    labels = [i % 10 for i in range(30)]
    pipeline = hfgen.load_pipeline(str(tmp_path))
    for guidance, suffix in (({}, ""), ({"guidance_scale": 4.0, "num_candidates": 16}, ", guidance 4")):
        images = pipeline.generate(1, class_labels=labels, seed=0, temperature=0.7, **guidance)
        right = predicted_classes(images, load_feature_extractor("digits")) == torch.tensor(labels)
        assert row[f"adherence class{suffix}"] == pytest.approx(right.double().mean().item())
        assert np.isfinite(row[f"FID asked{suffix}"]) and row[f"ms per asked image{suffix}"] > 0


def load_flows_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_flows", REPO_ROOT / "benchmarks" / "flows.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_condition_use_is_zero_for_a_flow_that_ignores_its_prompt(tiny_text_components):
    """A text flow whose condition reaches nothing (no learned prior, not in the couplings): every caption gives the
    same likelihood with the same dequantisation noise, so the condition's worth is 0 nats (to rounding), and at most
    ln 10 for one that uses the prompt."""
    tokenizer, text_encoder = tiny_text_components
    test = (torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 17).floor() / 16
    bench = load_flows_benchmark()
    for couplings, prior in ((False, False), (True, True)):
        flow = perturb(
            tiny_flow(condition_type="text", text_embed_dim=32, condition_couplings=couplings, learned_prior=prior)
        )
        pipeline = hfgen.FlowPipeline(flow=flow, tokenizer=tokenizer, text_encoder=text_encoder)
        used = bench.condition_use(pipeline, test, "digits")
        if not couplings:
            assert used["condition worth, nats"] == pytest.approx(0, abs=1e-12)  # ln 10 + ln 1/10: rounding only
        assert used["condition worth, nats"] <= math.log(10) and 0 <= used["likelihood classifier accuracy"] <= 1


def test_a_class_conditional_flow_is_scored_with_its_class_summed_out(tmp_path):
    """`benchmarks/flows.py --flow` on a class-conditional flow adds p(x) = mean_y p(x | y), the same dequantisation
    for every class (here recomputed from the pipeline's own log p(x | y) per class), p(x | the true class) and the
    likelihood classifier; its other columns are the null class's."""
    bench = load_flows_benchmark()
    flow = perturb(tiny_flow(condition_type="class", num_classes=10))
    flow.initialize_actnorm(torch.rand(8, 1, 8, 8) * 2 - 1, Condition(class_labels=torch.full((8,), 10)))
    hfgen.FlowPipeline(flow=flow).save_pretrained(tmp_path)
    pipeline = hfgen.load_pipeline(str(tmp_path))
    test = (real_images("digits", "test", 32) + 1) / 2
    _, labels = labelled_test_images("digits", 32)

    (row,) = bench.trained_flows([str(tmp_path)], "digits", max_images=32)

    per_class = torch.stack(
        [
            pipeline.log_likelihood(
                test, class_labels=[k] * 32, generator=torch.Generator().manual_seed(0)
            ).bits_per_dim
            for k in range(10)
        ],
        dim=1,
    ).double()  # (32, 10) bits/dim of p(x | y)
    nats = -per_class * 64 * math.log(2)
    summed_out = -(nats.logsumexp(1) - math.log(10)) / (64 * math.log(2))
    assert row["class summed out: bits/dim (S=1)"] == pytest.approx(summed_out.mean().item(), rel=1e-5)
    assert row["true class: bits/dim (S=1)"] == pytest.approx(per_class[torch.arange(32), labels].mean().item(), 1e-5)
    accuracy = (per_class.argmin(1) == labels).double().mean().item()
    assert row["likelihood classifier accuracy"] == pytest.approx(accuracy)
    assert np.isfinite(row["class summed out: bound (S=16)"])


def test_trained_flows_scores_mnist_beside_a_vae(tmp_path):
    """`benchmarks/flows.py --dataset mnist --flow FLOW --flow VAE`: both scored on mnist test digits against outliers
    drawn at 28x28 on the 256 levels (at the digits' 8x8 the likelihoods would refuse them), the VAE's bits/dim a
    bound."""
    bench = load_flows_benchmark()
    hfgen.FlowPipeline(flow=perturb(tiny_flow(sample_size=28, num_bins=256))).save_pretrained(tmp_path / "flow")
    torch.manual_seed(0)
    vae = hfgen.VAEModel(sample_size=28, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
    hfgen.VAEPipeline(vae=vae.eval()).save_pretrained(tmp_path / "vae")

    flow_row, vae_row = bench.trained_flows([str(tmp_path / "flow"), str(tmp_path / "vae")], "mnist", max_images=64)
    assert (flow_row["architecture"], flow_row["kind (S=1)"]) == ("glow", "exact")
    assert (vae_row["architecture"], vae_row["kind (S=1)"]) == ("VAEPipeline", "lower bound (IWAE, K=1)")
    for row in (flow_row, vae_row):
        assert np.isfinite(row["bits/dim (S=1)"]) and np.isfinite(row["bound bits/dim (S=16)"])
        assert 0 <= row["AUROC vs shapes"] <= 1 and 0 <= row["AUROC vs shapes - PNG"] <= 1 and row["ms per sample"] > 0


# ----- loading with diffusers alone ---------------------------------------------------------------------------------
def test_diffusers_alone_loads_a_pushed_flow(hub, tmp_path):
    from test_remote_code import SUBPROCESS_SCRIPT

    from hfgen.hub import push_to_hub, write_model_card

    # Class-conditioned: a text-conditioned pipeline's bundled code still imports hfgen.text where it encodes prompts
    # (ConditionEncoder.__call__), which fails without hfgen for every family; see the branch's report.
    flow = perturb(tiny_flow(condition_type="class", num_classes=10))
    flow.initialize_actnorm(torch.rand(8, 1, 8, 8) * 2 - 1, Condition(class_labels=torch.full((8,), 10)))
    pipeline = hfgen.FlowPipeline(flow=flow)
    call = {"class_labels": [3, 7], "temperature": 0.7}
    images = pipeline(**call, generator=torch.manual_seed(0), output_type="np").images
    folder = tmp_path / "pipe"
    pipeline.save_pretrained(folder)
    tag = "unconditional-image-generation"
    write_model_card(str(folder), family="flow", pipeline_class="FlowPipeline", pipeline_tag=tag, dataset="digits",
                     settings={})  # fmt: skip
    repo_id = f"{HUB_USER}/remote-flow"
    push_to_hub(str(folder), repo_id, token=HUB_TOKEN)

    env = hub_subprocess_env(hub, tmp_path / "hf_home")
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps({repo_id: call})],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    loaded = json.loads(line.removeprefix("RESULT "))
    assert loaded["hfgen_modules"] == []
    assert loaded[repo_id]["classes"]["flow"].startswith("diffusers_modules.")
    expected = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()
    assert loaded[repo_id]["images"] == expected
    # hfgen loads the same repo with its own classes.
    reloaded = hfgen.load_pipeline(repo_id)
    assert type(reloaded.flow) is hfgen.FlowModel
    np.testing.assert_array_equal(reloaded(**call, generator=torch.manual_seed(0), output_type="np").images, images)
