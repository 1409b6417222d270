"""hfgen.metrics.adherence: real test images with their own captions score near 1, shuffled captions near chance,
paraphrases parse to the training template's targets, unknown words warn, and images in [-1, 1] are refused."""

import json
import os
import random
import warnings

import numpy as np
import pytest
import torch
from conftest import make_tiny_text_components
from diffusers import ImagePipelineOutput

import hfgen
from hfgen.data import (
    COLORS,
    DIGIT_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    digit_captions,
    load_image_dataset,
    make_shapes_dataset,
    shape_captions,
)
from hfgen.metrics.adherence import (
    ATTRIBUTES,
    CHANCE,
    default_prompts,
    format_adherence,
    is_seen,
    parse_prompt,
    prompt_adherence,
    summary,
    template_prompt,
)
from hfgen.metrics.features import EXTRACTORS_DIR


@pytest.fixture(scope="module", params=["digits", "mnist", "shapes"])
def real_test(request) -> tuple[str, torch.Tensor, list[str]]:
    """(data set, its test images in [0, 1] as a pipeline returns them, their own captions)."""
    test = load_image_dataset(request.param, caption_column="text", label_column="label")["test"]
    examples = [test[i] for i in range(len(test))]
    images = torch.stack([e["pixel_values"] for e in examples]) / 2 + 0.5
    return request.param, images, [e["captions"] for e in examples]


def test_real_images_with_their_own_captions_score_near_one(real_test):
    dataset, images, captions = real_test
    results = prompt_adherence(images, dataset, prompts=captions)
    assert set(results) == {"dataset", "chance", "seen"}  # training captions are all "seen"
    seen = results["seen"]
    assert seen["num_images"] == len(images)
    # Measured: digits 0.983, mnist 0.9915, shapes: shape 0.995, colour, size and position 1.000. On real test
    # images a classifier-judged attribute scores exactly the classifier's stated test accuracy.
    with open(os.path.join(EXTRACTORS_DIR, "shapes" if dataset == "shapes" else dataset, "results.json")) as f:
        classifier_accuracy = json.load(f)["test_accuracy"]
    if dataset != "shapes":
        assert seen["digit"] == pytest.approx(classifier_accuracy, abs=1e-9)
    for attribute in ("all", *ATTRIBUTES[dataset]):
        assert seen[attribute] >= min(0.98, classifier_accuracy), (attribute, seen[attribute])
    assert set(seen["per_class"][ATTRIBUTES[dataset][0]]) == set(
        DIGIT_NAMES if dataset != "shapes" else ["circle", "square", "triangle"]
    )
    table = format_adherence(results)
    assert "| seen |" in table and "| chance |" in table
    assert summary(results)["adherence_seen"] == seen["all"]


def test_shuffled_captions_score_near_chance(real_test):
    dataset, images, captions = real_test
    shuffled = captions.copy()
    random.Random(0).shuffle(shuffled)
    seen = prompt_adherence(images, dataset, prompts=shuffled)["seen"]
    for attribute in ATTRIBUTES[dataset]:
        # 180 to 2,000 images: chance +- 0.1 is several standard errors wide.
        assert abs(seen[attribute] - CHANCE[attribute]) < 0.1, (attribute, seen[attribute])


def test_paraphrased_captions_score_like_the_template(real_test):
    dataset, images, captions = real_test
    paraphrase = {"digits": "the number {i}", "mnist": "{name}", "shapes": "a {color} {shape}"}[dataset]
    prompts = []
    for caption in captions:
        targets = parse_prompt(caption, dataset)
        name = targets.get("digit", "")
        prompts.append(paraphrase.format(i=DIGIT_NAMES.index(name) if name else "", name=name, **targets))
    results = prompt_adherence(images, dataset, prompts=prompts)
    assert "seen" not in results and results["paraphrase"]["num_images"] == len(images)
    if dataset == "shapes":
        assert results["paraphrase"]["all"] >= 0.98
    else:  # the same targets as the captions: the same figure as with the template
        assert results["paraphrase"]["all"] == prompt_adherence(images, dataset, prompts=captions)["seen"]["all"]
    if dataset == "shapes":  # only the attributes the prompt names are scored
        assert "size" not in results["paraphrase"] and results["paraphrase"]["chance_all"] == pytest.approx(1 / 15)


@pytest.mark.parametrize("digit", range(10))
def test_digit_paraphrases_parse_to_the_template_targets(digit):
    name = DIGIT_NAMES[digit]
    template = f"a handwritten digit {name}"
    for prompt in (template, f"the number {digit}", f"a {digit}", f"digit {name}", name, f"A {digit}."):
        assert parse_prompt(prompt, "mnist") == {"digit": name}, prompt
    assert is_seen(template, "digits") and not is_seen(f"digit {name}", "digits")
    assert template_prompt({"digit": name}, "mnist") == template


def test_digit_paraphrases_are_never_training_captions():
    """The recipes train on every wording of `text_variants`; the paraphrases must stay outside them, or the
    "never seen in training" figure would measure memory."""
    trained = {caption.lower() for digit in range(10) for caption in digit_captions(digit)}
    paraphrases = {prompt.lower() for prompt in default_prompts("digits")["paraphrase"]}
    assert len(paraphrases) == 40 and not paraphrases & trained
    assert default_prompts("digits")["seen"] == [digit_captions(digit)[0] for digit in range(10)]


def test_shape_paraphrases_are_never_training_captions_and_every_wording_says_what_the_image_shows():
    """The shapes' `text_variants` teach rewordings (synonyms, word orders, an open size or position); the paraphrases
    stay outside them, and each wording names only attributes the image has (parsed without unknown words)."""
    trained = {
        caption.lower()
        for shape in SHAPES for color in COLORS for size in SIZES for position in POSITIONS
        for caption in shape_captions(shape, color, size, position)
    }  # fmt: skip
    paraphrases = {prompt.lower() for prompt in default_prompts("shapes")["paraphrase"]}
    # four full wordings of each of the 150 combinations, 75 without the size, 30 without the position
    assert len(trained) == 4 * 150 + 75 + 30 and paraphrases and not paraphrases & trained
    shapes = make_shapes_dataset(60)
    for caption, wordings in zip(shapes["text"], shapes["text_variants"]):
        full = parse_prompt(caption, "shapes")
        assert wordings[0] == caption and len(full) == 4
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unknown word warns
            for wording in wordings:
                targets = parse_prompt(wording, "shapes")
                assert targets and all(full[name] == value for name, value in targets.items()), wording


def test_shape_paraphrases_parse_to_the_template_targets():
    full = {"shape": "square", "color": "blue", "size": "large", "position": "top left"}
    assert parse_prompt("a large blue square at the top left", "shapes") == full
    assert is_seen("a large blue square at the top left", "shapes")
    for prompt in ("a big blue square in the upper left corner", "the square is blue and big, in the top left"):
        assert parse_prompt(prompt, "shapes") == full and not is_seen(prompt, "shapes")
    assert parse_prompt("a red circle", "shapes") == {"shape": "circle", "color": "red"}
    assert parse_prompt("a tiny white triangle in the middle", "shapes") == {
        "shape": "triangle", "color": "white", "size": "small", "position": "center"
    }  # fmt: skip
    prompts = default_prompts("shapes")
    assert len(prompts["seen"]) == 150 and all(is_seen(p, "shapes") for p in prompts["seen"])
    assert not any(is_seen(p, "shapes") for p in prompts["paraphrase"])
    digit_prompts = default_prompts("digits")
    assert {parse_prompt(p, "digits")["digit"] for p in digit_prompts["paraphrase"]} == set(DIGIT_NAMES)


def test_unknown_words_warn_and_no_target_is_an_error():
    with pytest.warns(UserWarning, match=r"\['in', 'blue', 'ink'\]"):
        assert parse_prompt("a handwritten digit 7 in blue ink", "digits") == {"digit": "seven"}
    with pytest.warns(UserWarning, match=r"\['fluffy'\]"):
        assert parse_prompt("a fluffy red circle", "shapes") == {"shape": "circle", "color": "red"}
    with pytest.warns(UserWarning, match="position words"):  # "left" alone names no one position
        assert parse_prompt("a circle on the left", "shapes") == {"shape": "circle"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known words of every default prompt raise nothing
        for dataset in ATTRIBUTES:
            for prompts in default_prompts(dataset).values():
                [parse_prompt(p, dataset) for p in prompts]
    with pytest.raises(ValueError, match="'a photo of a cat'.*'cat'"):
        parse_prompt("a photo of a cat", "digits")
    with pytest.raises(ValueError, match="two values of digit"):
        parse_prompt("a 3 or a 5", "digits")
    with pytest.raises(ValueError, match="knows the data sets"):
        parse_prompt("a 3", "cifar10")


def test_images_outside_zero_one_are_refused():
    images = load_image_dataset("digits")["test"]
    minus_one_to_one = torch.stack([images[i]["pixel_values"] for i in range(20)])  # the classifiers' convention
    prompts = ["a handwritten digit zero"] * 20
    with pytest.raises(ValueError, match=r"in \[0, 1\].*\[-1, 1\].*\(images \+ 1\) / 2"):
        prompt_adherence(minus_one_to_one, "digits", prompts=prompts)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prompt_adherence(minus_one_to_one.permute(0, 2, 3, 1).numpy(), "digits", prompts=prompts)
    with pytest.raises(ValueError, match="divide by 255"):
        prompt_adherence((minus_one_to_one + 1) * 127.5, "digits", prompts=prompts)
    with pytest.raises(ValueError, match="floats"):
        prompt_adherence(((minus_one_to_one + 1) * 127.5).to(torch.uint8), "digits", prompts=prompts)
    # The same images in [0, 1] as a tensor, as numpy (b, h, w, c) and as PIL images give the same figure.
    unit = minus_one_to_one / 2 + 0.5
    pil = hfgen.VAEPipeline.postprocess(minus_one_to_one, "pil")
    figures = [
        prompt_adherence(x, "digits", prompts=prompts)["seen"]["all"]
        for x in (unit, unit.permute(0, 2, 3, 1).numpy(), pil)
    ]
    assert figures[0] == figures[1] == figures[2]
    with pytest.raises(ValueError, match="one prompt per image"):
        prompt_adherence(unit, "digits", prompts=prompts[:3])


class ReplayPipeline:
    """Stands in for a text-conditioned pipeline that draws exactly what it is asked: a real test image of the
    prompted digit, returned as `output_type` asks (scaled by `scale` to fake a wrong convention). It samples
    through the base's `generate`, so its `default_sampling_kwargs` reach `__call__` (recorded in `steps`)."""

    components = {}
    tokenizer = text_encoder = object()
    default_sampling_kwargs = {"num_inference_steps": 3}
    generate = hfgen.HFGenPipeline.generate

    def __init__(self, scale=lambda x: x):
        test = load_image_dataset("digits", label_column="label")["test"]
        self.by_digit = {}
        for i in range(len(test)):
            self.by_digit.setdefault(test[i]["labels"], test[i]["pixel_values"])
        self.scale, self.prompts, self.steps = scale, [], []

    def __call__(self, prompt, generator, output_type, num_inference_steps=1000):
        assert output_type == "pt"
        self.prompts += prompt
        self.steps.append(num_inference_steps)
        images = [self.by_digit[DIGIT_NAMES.index(parse_prompt(p, "digits")["digit"])] for p in prompt]
        return ImagePipelineOutput(images=self.scale(torch.stack(images) / 2 + 0.5))


def test_a_pipeline_is_sampled_on_the_template_and_the_paraphrases():
    pipeline = ReplayPipeline()
    results = prompt_adherence(pipeline, "digits", num_samples=40, batch_size=16)
    assert results["seen"]["num_images"] == results["paraphrase"]["num_images"] == 40
    assert results["seen"]["all"] == results["paraphrase"]["all"] == 1.0
    assert pipeline.prompts[:10] == default_prompts("digits")["seen"]
    assert len(set(pipeline.prompts[40:])) == 40  # every paraphrase once
    assert pipeline.steps == [3] * 5  # 80 images in batches of 16, each with the pipeline's sampling defaults
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        prompt_adherence(ReplayPipeline(scale=lambda x: x * 2 - 1), "digits", num_samples=10)


def test_a_real_pipeline_is_seeded_and_an_unconditional_one_refused(digit_captions):
    tokenizer, text_encoder = make_tiny_text_components(digit_captions)
    torch.manual_seed(0)
    vae = hfgen.VAEModel(
        sample_size=8, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4, num_bins=17,
        condition_type="text", text_embed_dim=32,
    )  # fmt: skip
    pipeline = hfgen.VAEPipeline(vae=vae.eval(), tokenizer=tokenizer, text_encoder=text_encoder)
    first = prompt_adherence(pipeline, "digits", prompts=["seven", "a handwritten digit one"], num_samples=10)
    assert first["seen"]["num_images"] == first["paraphrase"]["num_images"] == 5
    assert first == prompt_adherence(pipeline, "digits", prompts=["seven", "a handwritten digit one"], num_samples=10)
    with pytest.raises(ValueError, match="text-conditioned"):
        prompt_adherence(hfgen.VAEPipeline(vae=hfgen.VAEModel(sample_size=8, block_out_channels=(8,))), "digits")
    assert np.isfinite(first["seen"]["all"])


def test_evaluate_and_compare_commands_report_adherence(digit_captions, tmp_path, capsys):
    from hfgen.cli import main as hfgen_main

    tokenizer, text_encoder = make_tiny_text_components(digit_captions)
    torch.manual_seed(0)
    vae = hfgen.VAEModel(
        sample_size=8, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4, num_bins=17,
        condition_type="text", text_embed_dim=32,
    )  # fmt: skip
    path = str(tmp_path / "text-vae")
    hfgen.VAEPipeline(vae=vae.eval(), tokenizer=tokenizer, text_encoder=text_encoder).save_pretrained(path)
    output = tmp_path / "results.json"
    hfgen_main(["evaluate", path, "--metrics", "adherence", "--num_samples", "40", "-o", str(output)])
    printed = capsys.readouterr().out
    assert "| seen | 40 |" in printed and "| paraphrase | 40 |" in printed and "| adherence_seen |" in printed
    results = json.loads(output.read_text())
    assert results["adherence_seen"] == results["adherence"]["seen"]["all"]
    assert set(results["adherence"]["paraphrase"]["per_class"]["digit"]) == set(DIGIT_NAMES)
    hfgen_main(["compare", path, "--metrics", "adherence", "--num_samples", "20", "--output_dir", str(tmp_path / "c")])
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert 0 <= rows[0]["adherence_paraphrase"] <= 1 and "adherence (paraphrases)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="adherence is measured on"):
        hfgen_main(["evaluate", path, "--metrics", "adherence", "--dataset", "cifar10"])


@pytest.mark.parametrize(
    "recipe", ["vae_digits", "gan_text_digits", "vae_text_mnist", "gan_text_mnist", "diffusion_text_shapes"]
)
def test_text_recipes_train_on_every_wording(recipe, tmp_path):
    """The text recipes of the adherence tables read `text_variants`, so their tokenizer knows numerals and names (the
    shapes: the synonyms)."""
    from accelerate.state import AcceleratorState, GradientState
    from hfgen.training.train import parse_config

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    path = os.path.join(os.path.dirname(__file__), "..", "training", "recipes", f"{recipe}.yaml")
    trainer_class, config = parse_config(
        ["--recipe", path, "--output_dir", str(tmp_path), "--report_to", "none", "--max_train_samples", "200"]
    )
    assert config.caption_column == "text_variants" and config.conditioning == "text"
    vocabulary = set(trainer_class(config).tokenizer.get_vocab())
    if config.dataset_name == "shapes":
        assert {"tiny", "big", "upper", "corner", "middle", "small", "center"} <= vocabulary
    else:
        assert {"7", "seven", "number", "digit", "handwritten"} <= vocabulary
