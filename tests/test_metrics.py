"""hfgen.metrics on real images and pipelines: the shipped domain extractors, FID through them (cross-checked with
torchmetrics), `hfgen evaluate` / `hfgen compare`, the scikit-learn baselines, out-of-distribution sets, and FID during
training. The pure maths is in test_metrics_math.py."""

import json
import math
import os

import numpy as np
import pytest
import torch
from hfgen.training.train import parse_config
from huggingface_hub import ModelCard

import hfgen
from hfgen.cli import main as hfgen_main
from hfgen.data import collate_fn, load_image_dataset
from hfgen.metrics import (
    DomainClassifier,
    class_histogram_entropy,
    fid,
    load_feature_extractor,
    modes_covered,
    sklearn_baselines,
)
from hfgen.metrics.anomaly import out_of_distribution_images
from hfgen.metrics.evaluate import evaluate_pipeline, features_and_probabilities, real_images
from hfgen.metrics.features import EXTRACTORS_DIR, shipped_extractors

TINY_VAE = dict(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8,), norm_num_groups=4, num_bins=17)


@pytest.fixture(scope="module")
def digits_extractor() -> DomainClassifier:
    return load_feature_extractor("digits")


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory) -> str:
    """A saved (untrained) VAE pipeline with a model card, as a training run leaves it."""
    path = str(tmp_path_factory.mktemp("metrics") / "tiny-vae")
    torch.manual_seed(0)
    hfgen.VAEPipeline(vae=hfgen.VAEModel(**TINY_VAE)).save_pretrained(path)
    hfgen.hub.write_model_card(
        path, family="vae", pipeline_class="VAEPipeline", pipeline_tag="unconditional-image-generation",
        dataset="digits", settings={},
    )  # fmt: skip
    return path


@pytest.mark.parametrize("name", ["digits", "shapes", "mnist"])
def test_shipped_extractor_reaches_its_stated_test_accuracy(name):
    assert name in shipped_extractors()
    folder = os.path.join(EXTRACTORS_DIR, name)
    assert os.path.getsize(os.path.join(folder, "diffusion_pytorch_model.safetensors")) < 1_000_000
    with open(os.path.join(folder, "results.json")) as f:
        stated = json.load(f)
    assert f"{stated['test_accuracy']:.4f}" in open(os.path.join(folder, "README.md")).read()  # the card says it

    extractor = load_feature_extractor(name)
    test = hfgen.data.load_image_dataset(name, label_column="label", test_size=0.1, seed=0)["test"]
    batch = collate_fn([test[i] for i in range(len(test))])
    predictions = extractor.class_probabilities(batch["pixel_values"]).argmax(-1)
    accuracy = (predictions == batch["labels"]).float().mean().item()
    assert accuracy == pytest.approx(stated["test_accuracy"], abs=1e-6)
    assert accuracy >= {"mnist": 0.985}.get(name, 0.95)  # issue 9 aims at 98.5% on mnist


def test_extractor_options_two_convolutions_per_block_and_batch_norm(tmp_path):
    torch.manual_seed(0)
    model = DomainClassifier(sample_size=28, block_out_channels=(8, 16, 24), layers_per_block=2, batch_norm=True)
    convs = [m for m in model.conv if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 24, 24]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1]  # 28 -> 14 -> 7, the first conv of a block strides
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.conv) == 6
    model.train()
    model(torch.rand(16, 1, 28, 28) * 2 - 1)  # one step of batch statistics
    model.eval()
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    assert model.features(images).shape == (4, 24)
    model.save_pretrained(tmp_path)
    loaded = DomainClassifier.from_pretrained(tmp_path)
    assert torch.equal(loaded.class_probabilities(images), model.class_probabilities(images))
    # The defaults are the shipped digits/shapes architecture: one conv per block, no batch norm.
    assert [type(m).__name__ for m in DomainClassifier().conv] == ["Conv2d", "SiLU", "Conv2d", "SiLU"]
    with pytest.raises(ValueError, match="layers_per_block must be at least 1"):
        DomainClassifier(layers_per_block=0)


def test_feature_extractor_training_shifts_images_by_at_most_max_shift():
    from hfgen.training.train_feature_extractor import random_shift

    images = torch.full((64, 1, 28, 28), -1.0)
    images[:, :, 14, 14] = 1.0  # one bright pixel in the middle of a black background
    generator = torch.Generator().manual_seed(0)
    assert random_shift(images, 0, generator) is images
    shifted = random_shift(images, 2, generator)
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum((1, 2, 3)), images.sum((1, 2, 3)))  # moved, not cropped or blurred
    positions = {tuple((image[0] == 1).nonzero()[0].tolist()) for image in shifted}
    assert positions <= {(14 + dy, 14 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert len(positions) > 10  # each image gets its own shift


def test_extractor_errors_name_the_fix(digits_extractor):
    with pytest.raises(ValueError, match="train_feature_extractor"):
        load_feature_extractor("cifar10")
    with pytest.raises(ValueError, match=r"\(b, \*\(1, 8, 8\)\)"):
        digits_extractor.features(torch.zeros(2, 3, 32, 32))


def test_fid_through_the_extractor_matches_torchmetrics(digits_extractor):
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")

    class ExtractorFeatures(torch.nn.Module):  # torchmetrics calls the module on images and wants features back
        num_features = digits_extractor.config.block_out_channels[-1]

        def forward(self, images):
            return digits_extractor.features(images)

    train, test = real_images("digits", "train", max_images=600), real_images("digits", "test")
    metric = torchmetrics_fid.FrechetInceptionDistance(feature=ExtractorFeatures())
    for batch in train.split(200):  # both stream over batches
        metric.update(batch, real=True)
    metric.update(test, real=False)
    ours = fid(features_and_probabilities(digits_extractor, train)[0], digits_extractor.features(test))
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)


def test_fid_orders_real_one_class_and_noise(digits_extractor):
    train, test = real_images("digits", "train"), real_images("digits", "test")
    labels = digits_extractor.class_probabilities(train).argmax(-1)
    features = {
        "test": digits_extractor.features(test),
        "one class": digits_extractor.features(train[labels == 0][:150]),
        "noise": digits_extractor.features(out_of_distribution_images("noise", 180)),
    }
    reference = digits_extractor.features(train)
    distances = {name: fid(reference, f) for name, f in features.items()}
    assert distances["test"] < distances["one class"] < distances["noise"]


def test_evaluate_pipeline_reports_every_metric_deterministically(tiny_vae_dir):
    pipeline = hfgen.load_pipeline(tiny_vae_dir)
    first = evaluate_pipeline(pipeline, "digits", num_samples=64, batch_size=32)
    for key in ("fid", "kid", "is", "precision", "recall", "nll_bits_per_dim", "seconds_per_image", "parameters"):
        assert math.isfinite(first[key]), key
    assert first["nll_kind"].startswith("lower bound (IWAE")
    assert 1.0 <= first["is"] <= 10.0
    second = evaluate_pipeline(pipeline, "digits", metrics=("fid", "nll"), num_samples=64, batch_size=32)
    assert second["fid"] == first["fid"] and second["nll_bits_per_dim"] == first["nll_bits_per_dim"]
    with pytest.raises(ValueError, match="Unknown metrics"):
        evaluate_pipeline(pipeline, metrics=("fid", "bleu"))


def test_evaluate_command_writes_json_and_model_index(tiny_vae_dir, tmp_path, capsys):
    output = tmp_path / "results.json"
    hfgen_main(["evaluate", tiny_vae_dir, "--num_samples", "32", "-o", str(output), "--write_model_card"])
    assert "| fid |" in capsys.readouterr().out
    results = json.loads(output.read_text())
    card = ModelCard.load(os.path.join(tiny_vae_dir, "README.md"))
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["fid"] == pytest.approx(results["fid"], rel=1e-5)
    assert metrics["nll_bits_per_dim"] == pytest.approx(results["nll_bits_per_dim"], rel=1e-5)
    assert "## How to use" in card.content  # the rest of the card is kept
    with pytest.raises(SystemExit, match="--metrics"):
        hfgen_main(["evaluate", tiny_vae_dir, "--metrics", "bleu"])


def test_compare_command_writes_table_and_figure(tiny_vae_dir, tmp_path, capsys):
    other = str(tmp_path / "other-vae")
    torch.manual_seed(1)
    hfgen.VAEPipeline(vae=hfgen.VAEModel(**{**TINY_VAE, "latent_dim": 2})).save_pretrained(other)
    output_dir = tmp_path / "compare"
    hfgen_main(["compare", tiny_vae_dir, other, "--num_samples", "32", "--output_dir", str(output_dir)])
    assert "| tiny-vae | vae |" in capsys.readouterr().out
    rows = json.loads((output_dir / "compare.json").read_text())
    assert [row["name"] for row in rows] == ["tiny-vae", "other-vae"]
    assert rows[0]["parameters"] != rows[1]["parameters"]
    assert (output_dir / "compare.png").stat().st_size > 10_000
    assert "NLL bits/dim" in (output_dir / "compare.md").read_text()


def test_sklearn_baselines_beat_the_uniform_model():
    results = sklearn_baselines("digits", bandwidths=[1.0, 1.6], gmm_components=(1, 5), gmm_covariance_types=("diag",))
    assert results["uniform_bits_per_dim"] == pytest.approx(math.log2(17))
    assert results["num_train"] + results["num_test"] == 1797
    assert results["gmm_bits_per_dim"] < results["kde_bits_per_dim"] < results["uniform_bits_per_dim"]
    assert results["gmm_components"] == 5  # BIC prefers 5 diagonal components to 1 on digits


@pytest.mark.parametrize("kind", ["shapes", "noise"])
def test_out_of_distribution_images_sit_on_the_digit_grey_levels(kind):
    images = out_of_distribution_images(kind, 20)
    assert images.shape == (20, 1, 8, 8)
    levels = (images + 1) / 2 * 16
    assert torch.allclose(levels, levels.round(), atol=1e-5) and levels.min() >= 0 and levels.max() <= 16
    assert images.std() > 0.1
    with pytest.raises(ValueError, match="shapes' or 'noise"):
        out_of_distribution_images("cifar", 2)


def test_validation_fid_needs_validation_steps_and_an_extractor():
    with pytest.raises(ValueError, match="--validation_steps"):
        parse_config(["--family", "vae", "--validation_fid"])
    with pytest.raises(ValueError, match="shipped feature extractor"):
        parse_config(
            ["--family", "vae", "--validation_fid", "--validation_steps", "5", "--dataset_name", "/data/cats"]
        )


# ----- mode coverage -------------------------------------------------------------------------------------------------
def test_class_histogram_entropy_and_modes_covered():
    spread = torch.eye(10).repeat(5, 1)  # 50 samples, 5 per class
    assert class_histogram_entropy(spread) == pytest.approx(np.log(10))
    collapsed = class_histogram_entropy(torch.eye(10)[[4] * 50])
    assert collapsed == 0.0 and math.copysign(1, collapsed) == 1  # printed as 0.00, not -0.00

    angles = torch.arange(8) * (2 * torch.pi / 8)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * 2  # the 8-Gaussian ring of radius 2
    generator = torch.Generator().manual_seed(0)
    mixture = centers.repeat(50, 1) + 0.02 * torch.randn(400, 2, generator=generator)
    assert modes_covered(mixture, centers, max_distance=0.06) == 8
    collapsed = centers[[2]] + 0.02 * torch.randn(400, 2, generator=generator)
    assert modes_covered(collapsed, centers, max_distance=0.06) == 1
    assert modes_covered(torch.zeros(10, 2), centers, max_distance=0.06) == 0  # far from every mode


def test_digit_classifier_entropy_sees_collapse():
    classifier = load_feature_extractor("digits")
    test = load_image_dataset("digits", caption_column="text", label_column="label")["test"]
    images = torch.stack([test[i]["pixel_values"] for i in range(len(test))])
    assert class_histogram_entropy(classifier.class_probabilities(images)) > 0.95 * np.log(10)
    one_digit = images[[0] * len(images)]
    assert class_histogram_entropy(classifier.class_probabilities(one_digit)) == 0.0


# ----- completion accuracy ------------------------------------------------------------------------------------------
def test_completion_accuracy_separates_oracle_masked_and_wrong_completions():
    from hfgen.metrics.completion import completion_accuracy, labelled_test_images

    images, labels = labelled_test_images("digits")
    assert images.min() >= 0 and images.max() <= 1 and len(images) == len(labels) == 180
    assert sorted(set(labels.tolist())) == list(range(10))

    oracle = completion_accuracy(lambda batch, keep: batch, "digits")
    assert oracle["completed"] == oracle["original"] >= 0.95 and oracle["known_pixels_changed"] == 0
    masked = completion_accuracy(lambda batch, keep: batch * keep, "digits")
    assert masked["completed"] == masked["masked"] < oracle["original"] - 0.2

    # Another image's bottom half under this image's top: the classifier no longer agrees, and the known pixels of a
    # completion that overwrites them are reported.
    def swap_bottoms(batch, keep):
        return batch * keep + batch.roll(1, 0) * (1 - keep)

    swapped = completion_accuracy(swap_bottoms, "digits")
    assert swapped["completed"] < oracle["original"] - 0.2 and swapped["known_pixels_changed"] == 0
    overwrite = completion_accuracy(lambda batch, keep: batch.roll(1, 0), "digits", num_images=20)
    assert overwrite["known_pixels_changed"] > 0.5


def test_completion_accuracy_refuses_unlabelled_data_and_bad_masks():
    from hfgen.metrics.completion import completion_accuracy

    with pytest.raises(ValueError, match="labelled digit data set"):
        completion_accuracy(lambda batch, keep: batch, "shapes")
    with pytest.raises(ValueError, match=r"keep must be \(h, w\)"):
        completion_accuracy(lambda batch, keep: batch, "digits", keep=torch.ones(4, 4))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        completion_accuracy(lambda batch, keep: batch * 2 - 1, "digits", num_images=4)
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):  # failed inside torch's split
        completion_accuracy(lambda batch, keep: batch, "digits", num_images=4, batch_size=0)
