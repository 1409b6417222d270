"""The conditioning and sampling contracts every family inherits (`hfgen.conditioning`, `HFGenPipeline`), checked
through the VAE and GAN pipelines."""

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

import hfgen
from hfgen.conditioning import Condition, ConditionEncoder

TINY_VAE = dict(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, latent_dim=4)
TINY_GAN = dict(sample_size=8, block_out_channels=(8, 16), noise_dim=8)


def vae_pipeline(tokenizer=None, text_encoder=None, **config) -> hfgen.VAEPipeline:
    torch.manual_seed(0)
    if text_encoder is not None:
        config = {"condition_type": "text", "text_embed_dim": text_encoder.config.hidden_size, **config}
    vae = hfgen.VAEModel(**TINY_VAE, **config).eval()
    return hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)


def gan_pipeline(tokenizer=None, text_encoder=None, **config) -> hfgen.GANPipeline:
    torch.manual_seed(0)
    if text_encoder is not None:
        config = {"condition_type": "text", "text_embed_dim": text_encoder.config.hidden_size, **config}
    generator = hfgen.GANGenerator(**TINY_GAN, **config).eval()
    return hfgen.GANPipeline(generator=generator, tokenizer=tokenizer, text_encoder=text_encoder)


PIPELINES = {"vae": vae_pipeline, "gan": gan_pipeline}


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ----- the Condition type and the null rule --------------------------------------------------------------------------
def test_condition_cat_pads_text_states_and_masks():
    short = Condition(text_hidden_states=torch.ones(1, 2, 3), text_attention_mask=torch.ones(1, 2, dtype=torch.long))
    long = Condition(text_hidden_states=torch.ones(2, 4, 3), text_attention_mask=torch.ones(2, 4, dtype=torch.long))

    both = Condition.cat([short, long])

    assert both.text_hidden_states.shape == (3, 4, 3)
    assert both.text_attention_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert both.text_hidden_states[0, 2:].abs().sum() == 0
    assert both.batch_size == 3
    assert both.repeat_interleave(2).batch_size == 6
    assert both.to(dtype=torch.float64).text_attention_mask.dtype == torch.long  # masks keep their dtype
    assert Condition.cat([None, None]) is None


def test_same_pairs_are_the_images_that_share_a_prompt(tiny_text_components, digit_captions):
    """A repeated prompt, and the empty prompt of caption dropout, are the same condition wherever they stand in the
    batch; prompts that differ are not (the targets of a flow's contrastive condition loss)."""
    encoder = ConditionEncoder("text", *tiny_text_components)
    prompts = [digit_captions[k] for k in (3, 7, 3)] + [""] + [digit_captions[8], ""]
    with torch.no_grad():
        same = encoder(prompts=prompts).same_pairs()

    expected = torch.tensor([[a == b for b in prompts] for a in prompts])
    assert torch.equal(same, expected)
    labels = Condition(class_labels=torch.tensor([1, 10, 1, 2]))
    assert labels.same_pairs().sum(1).tolist() == [2, 1, 2, 1]


@pytest.mark.parametrize(
    "model_class, size",
    [(hfgen.VAEModel, TINY_VAE), (hfgen.GANGenerator, TINY_GAN), (hfgen.RowLSTMModel, {}), (hfgen.FlowModel, {})],
)
def test_a_condition_setting_without_its_condition_type_is_refused(model_class, size):
    """num_classes without condition_type="class" (or text_embed_dim without "text") would build an unconditional
    model that ignores it: every family refuses, naming the setting."""
    with pytest.raises(ValueError, match="num_classes=10 is used only with condition_type='class'; got None"):
        model_class(**size, num_classes=10)
    with pytest.raises(ValueError, match="text_embed_dim=32 is used only with condition_type='text'; got 'class'"):
        model_class(**size, condition_type="class", num_classes=10, text_embed_dim=32)


def test_null_rule_is_the_same_for_caption_dropout_and_sampling(tiny_text_components):
    tokenizer, text_encoder = tiny_text_components
    encoder = ConditionEncoder("text", tokenizer, text_encoder)
    captions = ["a handwritten digit seven", "a handwritten digit one"]
    with torch.no_grad():
        dropped = encoder(prompts=captions, drop=torch.tensor([True, False]))
        null = vae_pipeline(tokenizer, text_encoder).condition_encoder.null(1)
        kept = encoder(prompts=captions[1:])
    # Equal up to float rounding (the prompts are encoded in batches of other sizes).
    torch.testing.assert_close(dropped.text_embeds[0], null.text_embeds[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(dropped.text_embeds[1], kept.text_embeds[0], rtol=0, atol=1e-5)
    assert not torch.allclose(dropped.text_embeds[0], kept.text_embeds[0], atol=1e-2)

    classes = ConditionEncoder("class", num_classes=10)
    labels = classes(class_labels=torch.tensor([3, 7]), drop=torch.tensor([False, True])).class_labels
    assert labels.tolist() == [3, 10]  # the null class is the extra index, never -1
    with pytest.raises(ValueError, match=r"\[0, 9\].*no class_labels"):
        classes(class_labels=torch.tensor([-1]))


def test_encode_prompt_gives_per_token_states_mask_and_pooled(tiny_text_components):
    pipeline = vae_pipeline(*tiny_text_components)
    condition, negative = pipeline.encode_prompt(
        ["a handwritten digit seven", "a handwritten digit one"], num_images_per_prompt=3,
        do_classifier_free_guidance=True, negative_prompt="a handwritten digit eight",
    )  # fmt: skip

    hidden_size = pipeline.text_encoder.config.hidden_size
    assert condition.text_embeds.shape == (6, hidden_size)
    tokens = condition.text_hidden_states.shape[1]
    assert condition.text_hidden_states.shape == (6, tokens, hidden_size)
    assert condition.text_attention_mask.shape == (6, tokens)
    assert torch.equal(condition.text_embeds[0], condition.text_embeds[2])  # repeated per image
    assert not torch.equal(condition.text_embeds[0], condition.text_embeds[3])
    assert negative.text_embeds.shape == (6, hidden_size)
    assert not torch.equal(negative.text_embeds[0], condition.text_embeds[0])
    with pytest.raises(ValueError, match="list of 2 strings"):
        pipeline.encode_prompt(["a", "b"], do_classifier_free_guidance=True, negative_prompt=["c"])


# ----- capabilities --------------------------------------------------------------------------------------------------
def test_capabilities_follow_the_loaded_model(tiny_text_components):
    assert vae_pipeline(*tiny_text_components).capabilities == {
        "prompt", "guidance", "interpolation", "likelihood", "encode",
    }  # fmt: skip
    assert gan_pipeline().capabilities == {"interpolation"}  # unconditional: nothing to guide by
    assert gan_pipeline(condition_type="class", num_classes=10).capabilities == {"class", "guidance", "interpolation"}


# ----- classifier-free guidance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(PIPELINES))
def test_guidance_scale_one_is_the_conditional_output(family, tiny_text_components):
    pipeline = PIPELINES[family](*tiny_text_components)
    prompt = ["a handwritten digit seven", "a handwritten digit one"]

    plain = pipeline(prompt=prompt, generator=seeded(), output_type="np").images
    scale_one = pipeline(prompt=prompt, guidance_scale=1.0, generator=seeded(), output_type="np").images
    guided = pipeline(prompt=prompt, guidance_scale=3.0, generator=seeded(), output_type="np").images
    negative = pipeline(
        prompt=prompt, guidance_scale=3.0, negative_prompt="a handwritten digit eight", generator=seeded(),
        output_type="np",
    ).images  # fmt: skip

    np.testing.assert_array_equal(plain, scale_one)
    assert not np.array_equal(plain, guided)
    assert not np.array_equal(guided, negative)


def test_guidance_extrapolates_from_the_null_condition(tiny_text_components):
    """VAE: the decoder's parameters are null + s * (conditional - null), for the same z."""
    pipeline = vae_pipeline(*tiny_text_components, likelihood="gaussian")
    latents = torch.randn(2, 4, generator=seeded())
    prompt = "a handwritten digit seven"

    guided = pipeline(prompt=prompt, num_images_per_prompt=2, guidance_scale=2.5, latents=latents, output_type="pt")
    with torch.no_grad():
        conditional = pipeline.vae.decode(latents, pipeline.condition_encoder(prompts=[prompt] * 2)).params
        null = pipeline.vae.decode(latents, pipeline.condition_encoder.null(2)).params
    expected = pipeline.postprocess(pipeline.vae.mean_image(null + 2.5 * (conditional - null)), "pt")
    torch.testing.assert_close(guided.images, expected, rtol=0, atol=1e-5)  # one batch of 4 against two of 2


def test_guidance_with_classes_and_refusals():
    classes = gan_pipeline(condition_type="class", num_classes=10)
    plain = classes(class_labels=[3, 7], generator=seeded(), output_type="np").images
    guided = classes(class_labels=[3, 7], guidance_scale=2.0, generator=seeded(), output_type="np").images
    assert not np.array_equal(plain, guided)
    with pytest.raises(ValueError, match="guidance_scale"):
        gan_pipeline()(batch_size=2, guidance_scale=2.0)  # unconditional: nothing to guide by
    with pytest.raises(ValueError, match=">= 1"):
        classes(class_labels=[3], guidance_scale=0.5)
    with pytest.raises(ValueError, match="negative_prompt needs a text-conditioned"):
        classes(class_labels=[3], guidance_scale=2.0, negative_prompt="a three")


# ----- latents, generators, callbacks --------------------------------------------------------------------------------
def test_prepare_latents_follows_diffusers():
    pipeline = vae_pipeline()
    shape = (3, 4)
    noise = pipeline.prepare_latents(shape, torch.float32, pipeline.device, seeded())
    torch.testing.assert_close(noise, torch.randn(shape, generator=seeded()), rtol=0, atol=0)

    given = torch.randn(shape)
    assert torch.equal(pipeline.prepare_latents(shape, torch.float32, pipeline.device, None, given), given)
    with pytest.raises(ValueError, match="list of 2 generators for 3 images"):
        pipeline.prepare_latents(shape, torch.float32, pipeline.device, [seeded(), seeded()])
    with pytest.raises(ValueError, match="shape"):
        pipeline.prepare_latents(shape, torch.float32, pipeline.device, None, torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        pipeline.prepare_latents(shape, torch.float32, pipeline.device, None, torch.full(shape, float("nan")))

    pipeline.scheduler = EulerDiscreteScheduler()  # a pipeline with a scheduler starts from its noise level
    scaled = pipeline.prepare_latents(shape, torch.float32, pipeline.device, seeded())
    torch.testing.assert_close(scaled, noise * pipeline.scheduler.init_noise_sigma)


@pytest.mark.parametrize("family", list(PIPELINES))
def test_callback_on_step_end_sees_the_latents(family):
    pipeline = PIPELINES[family]()
    seen = []

    def callback(pipe, step, timestep, tensors):
        seen.append((pipe, step, tensors["latents"].clone()))
        return tensors

    pipeline(batch_size=2, generator=seeded(), callback_on_step_end=callback)

    assert len(seen) == 1 and seen[0][0] is pipeline and seen[0][1] == 0
    torch.testing.assert_close(seen[0][2], torch.randn(pipeline.latent_shape(2), generator=seeded()))
    with pytest.raises(ValueError, match="not available"):
        pipeline(batch_size=2, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["images"])


# ----- the one sampling path -----------------------------------------------------------------------------------------
def test_generate_is_the_shared_sampling_path(tiny_text_components):
    pipeline = vae_pipeline(*tiny_text_components)
    prompts = ["a handwritten digit seven", "a handwritten digit one"]

    images = pipeline.generate(3, prompt=prompts, seed=5)
    again = pipeline.generate(3, prompt=prompts, seed=5)
    direct = pipeline(prompt=prompts, num_images_per_prompt=3, generator=seeded(5), output_type="pt").images

    assert images.shape == (6, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, again)
    assert torch.equal(images, direct)  # one batch: exactly what `__call__` gives for the same generator
    assert len(pipeline.generate(5, seed=0, max_batch_size=2, output_type="pil")) == 5

    # The family's sampling defaults apply unless the caller overrides them: temperature 0 is the prior's mean.
    pipeline.default_sampling_kwargs = {"temperature": 0.0}
    mean_images = pipeline.generate(4, seed=0)
    assert torch.equal(mean_images[0], mean_images[3])
    assert not torch.equal(*pipeline.generate(2, seed=0, temperature=1.0))

    classes = vae_pipeline(condition_type="class", num_classes=10)
    rows = classes.generate(2, class_labels=[3, 7], seed=0)
    torch.testing.assert_close(
        rows, classes(class_labels=[3, 7], num_images_per_prompt=2, generator=seeded(), output_type="pt").images
    )
    with pytest.raises(ValueError, match="num_images"):
        pipeline.generate(0)


# ----- what pipelines are given (diffusers' image convention) --------------------------------------------------------
def test_pipelines_take_back_what_they_return():
    """`output_type="pt"` images (in [0, 1]) go straight back into encode / log_likelihood, and mean what the same
    images as PIL or numpy mean."""
    pipeline = vae_pipeline()
    tensors = pipeline(batch_size=3, generator=seeded(), output_type="pt").images
    arrays = pipeline(batch_size=3, generator=seeded(), output_type="np").images
    pil = pipeline(batch_size=3, generator=seeded(), output_type="pil").images

    scores = [pipeline.log_likelihood(images, num_samples=2, generator=seeded()) for images in (tensors, arrays, pil)]
    for other in scores[1:]:
        torch.testing.assert_close(other.bits_per_dim, scores[0].bits_per_dim, rtol=0, atol=1e-4)
    torch.testing.assert_close(pipeline.encode(tensors), pipeline.encode(pil), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(2, 1, 8, 8) * 2 - 1, r"in \[0, 1\].*\(images \+ 1\) / 2"),
        (torch.rand(2, 1, 8, 8) * 255, r"images / 255"),
        (torch.randint(0, 255, (2, 1, 8, 8), dtype=torch.uint8), "floating point"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 3, 8, 8), "1 channel"),
        (torch.rand(2, 1, 16, 16), "8x8"),
        (np.zeros((2, 8, 8, 1), dtype=np.int64), "uint8 in 0..255"),
        ([], "no images"),
    ],
    ids=["minus-one-to-one", "0-255-floats", "uint8-tensor", "nan", "channels", "size", "int64-numpy", "empty"],
)
def test_bad_images_are_refused_with_the_expected_form(images, message):
    with pytest.raises(ValueError, match=message):
        vae_pipeline().log_likelihood(images, num_samples=1)


def test_bad_sampling_arguments_are_refused():
    pipeline = vae_pipeline()
    for kwargs, message in [
        ({"batch_size": 2.0}, "batch_size must be an int"),
        ({"batch_size": True}, "batch_size must be an int"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an int >= 1"),
        ({"batch_size": 5000}, "more than the 4096"),
        ({"temperature": float("nan")}, "temperature"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"latents": torch.full((1, 4), float("nan"))}, "NaN"),
        ({"latents": [[0.0] * 4]}, "latents must be a tensor"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"generator": 0}, r"generator must be a torch.Generator.*manual_seed"),
        ({"generator": [seeded(), 0]}, "generator must be a torch.Generator"),
        ({"prompt": 3}, "prompt must be a string or a list of strings, got int"),
    ]:
        with pytest.raises(ValueError, match=message):
            pipeline(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": ["a"]}, "class_labels must be an int, a list of ints or a 1-D integer tensor, got"),
        ({"class_labels": torch.tensor([[1, 2]])}, r"1-D integer tensor.*shape \(1, 2\)"),
        ({"class_labels": torch.tensor([1.0])}, r"dtype torch.float32"),
        ({"class_labels": True}, r"dtype torch.bool"),
        ({"class_labels": [3], "guidance_scale": float("inf")}, "guidance_scale must be a finite number >= 1"),
    ],
    ids=["strings", "2-d", "floats", "bool", "infinite-guidance"],
)
def test_bad_class_labels_and_guidance_are_refused_before_sampling(kwargs, message):
    """A 2-D label tensor used to be flattened into one image per entry, and an infinite guidance scale sampled NaN
    images without a word."""
    with pytest.raises(ValueError, match=message):
        gan_pipeline(condition_type="class", num_classes=10)(**kwargs)


def test_a_prompt_longer_than_the_text_encoder_reads_is_named(tiny_text_components, caplog):
    """diffusers warns when a prompt is cut off: the image then ignores the end of what was asked."""
    pipeline = vae_pipeline(*tiny_text_components)
    max_length = tiny_text_components[0].model_max_length
    with caplog.at_level("WARNING"):
        pipeline(prompt="a handwritten digit seven", generator=seeded())
    assert "tokens long" not in caplog.text
    with caplog.at_level("WARNING"):
        pipeline(prompt="a handwritten digit " + "seven " * max_length, generator=seeded())
    assert f"tokens long and the text encoder reads the first {max_length}" in caplog.text
    assert "is ignored: 'seven seven" in caplog.text


def test_an_empty_tensor_or_none_is_no_images():
    for images in (torch.zeros(0, 1, 8, 8), None):
        with pytest.raises(ValueError, match="Got no images"):
            vae_pipeline().log_likelihood(images, num_samples=1)
