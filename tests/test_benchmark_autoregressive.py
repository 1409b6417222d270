"""benchmarks/autoregressive.py keeps the pipelines it trains, so its completion part runs again on them without
training, with the same figures; it refuses to complete with a model it has not got; --train_args reach the trainer."""

import math

import pytest
import torch
from conftest import REPO_ROOT
from testing_utils import load_app

import hfgen
from hfgen.models.modeling_autoregressive import RowLSTMModel


def test_completion_reuses_the_trained_pipeline(tmp_path):
    bench = load_app(REPO_ROOT / "benchmarks" / "autoregressive.py", "benchmark_autoregressive")
    common = ["--architectures", "row_lstm", "--output_dir", str(tmp_path), "--num_images", "8", "--temperatures", "1"]
    with pytest.raises(SystemExit, match="No trained pipeline"):
        bench.main(["--parts", "completion", *common])

    train = ["--parts", "train,completion", "--steps", "2", "--train_args=--hidden_channels 8 --use_ema"]
    trained = bench.main([*train, *common])["architectures"]["row_lstm"]
    assert trained["train"]["parameters"] < 10_000  # --train_args override the benchmark's size (32 wide: 75,617)
    assert trained["train"]["steps_per_epoch"] == 1617 // 64  # full batches of the 1,617 training digits
    assert trained["train"]["seconds_per_epoch"] == pytest.approx(trained["train"]["seconds_per_step"] * 25, abs=0.1)
    nats = trained["train"]["test_bits_per_dim"] * 64 * math.log(2)  # 64 pixels of one channel
    assert trained["train"]["test_nats_per_image"] == pytest.approx(nats, abs=0.1)
    completion = trained["completion"]["1.0"]
    assert completion["num_images"] == 8 and completion["known_pixels_changed"] < 1 / 255

    again = bench.main(["--parts", "completion", *common])["architectures"]["row_lstm"]
    assert "train" not in again and again["completion"]["1.0"]["completed"] == completion["completed"]

    with pytest.raises(SystemExit, match="needs a classifier of mnist_binarized"):
        bench.main(["--parts", "completion", "--dataset_name", "mnist_binarized", *common])


def test_a_class_conditional_model_is_also_scored_with_its_class_summed_out(tmp_path):
    """`--train_args="--conditioning class"`: beside the trainer's p(x | null class), p(x) = mean_y p(x | y) and
    p(x | its class) on the test digits, and the model's accuracy as a classifier; an unconditional run has none."""
    bench = load_app(REPO_ROOT / "benchmarks" / "autoregressive.py", "benchmark_autoregressive")
    common = ["--parts", "train", "--architectures", "row_lstm", "--steps", "2"]
    conditional = ["--output_dir", str(tmp_path / "class"), "--train_args=--hidden_channels 8 --conditioning class"]
    row = bench.main([*common, *conditional])["architectures"]["row_lstm"]
    figures = row["train"]
    # p(x) >= p(x | y*) / 10 for the true class y*, so the marginal costs at most log2(10) / 64 bits/dim more.
    assert figures["test_bits_per_dim_class_marginal"] <= figures["test_bits_per_dim_true_class"] + math.log2(10) / 64
    assert 0 <= figures["likelihood_classifier_accuracy"] <= 1

    unconditional = ["--output_dir", str(tmp_path / "none"), "--train_args=--hidden_channels 8"]
    plain = bench.main([*common, *unconditional])["architectures"]["row_lstm"]["train"]
    assert "test_bits_per_dim_class_marginal" not in plain


def test_ensembles_are_exact_and_no_worse_than_their_members(tmp_path):
    """benchmarks/autoregressive_ensemble.py: a model ensembled with itself is itself; two models together (the
    mixture of joints and the average of conditionals) beat their members' mean (Jensen), and the mixture loses at
    most log2(2) / 64 bits/dim to its best member."""
    bench = load_app(REPO_ROOT / "benchmarks" / "autoregressive_ensemble.py", "benchmark_autoregressive_ensemble")
    paths = []
    for seed, favourite_level in ((0, 0), (1, 16)):  # two models that disagree: one expects background, one ink
        torch.manual_seed(seed)
        prior = RowLSTMModel(sample_size=8, num_levels=17, hidden_channels=8, num_layers=1)
        with torch.no_grad():
            prior.to_logits[0][1].bias[favourite_level] += 3
        paths.append(str(tmp_path / f"seed-{seed}"))
        hfgen.AutoregressivePipeline(prior=prior).save_pretrained(paths[-1])

    itself = bench.main([paths[0], paths[0]])["rows"]
    assert itself[2]["mixture_bits_per_dim"] == pytest.approx(itself[0]["bits_per_dim"], abs=1e-4)
    assert itself[2]["conditional_average_bits_per_dim"] == pytest.approx(itself[0]["bits_per_dim"], abs=1e-4)

    alone_0, alone_1, together = bench.main(paths)["rows"]
    members = (alone_0["bits_per_dim"], alone_1["bits_per_dim"])
    assert together["members_mean"] == pytest.approx(sum(members) / 2, abs=1e-4)
    for key in ("mixture_bits_per_dim", "conditional_average_bits_per_dim"):
        assert together[key] < together["members_mean"] - 0.05
    assert together["mixture_bits_per_dim"] <= min(members) + 1 / 64 + 1e-4
    assert 0 < together["standard_error"] < 1

    # --compare_to: the same images scored by both recipes, the difference paired image by image.
    same = bench.main([*paths, "--compare_to", ",".join(paths)])["paired_difference"]
    assert same == {"compare_to_bits_per_dim": together["conditional_average_bits_per_dim"], "bits_per_dim": 0.0,
                    "standard_error": 0.0}  # fmt: skip
    against_one = bench.main([*paths, "--compare_to", paths[0]])["paired_difference"]
    assert against_one["compare_to_bits_per_dim"] == alone_0["bits_per_dim"]
    expected = together["conditional_average_bits_per_dim"] - alone_0["bits_per_dim"]
    assert against_one["bits_per_dim"] == pytest.approx(expected, abs=2e-4)
    assert against_one["standard_error"] > 0


def test_a_class_conditional_member_counts_with_its_class_summed_out(tmp_path, tiny_text_components):
    """The ensemble takes a class-conditional model as p(x) = mean_y p(x | y), token by token: alone, its figure is
    `hfgen.metrics.marginal_log_likelihood`'s exact one; a text-conditioned model (no finite set of prompts to sum
    over) is refused."""
    from hfgen.metrics.evaluate import real_images
    from hfgen.metrics.marginal import marginal_log_likelihood

    bench = load_app(REPO_ROOT / "benchmarks" / "autoregressive_ensemble.py", "benchmark_autoregressive_ensemble")
    torch.manual_seed(0)
    conditioned = RowLSTMModel(
        sample_size=8, num_levels=17, hidden_channels=8, num_layers=1, condition_type="class", num_classes=10
    )
    with torch.no_grad():
        conditioned.condition_embedding.weight.normal_(0, 3)  # classes that disagree, so the sum over them matters
    pipeline = hfgen.AutoregressivePipeline(prior=conditioned)
    pipeline.save_pretrained(tmp_path / "class")
    (alone,) = bench.main([str(tmp_path / "class")])["rows"]
    images = real_images("digits", "test") / 2 + 0.5  # the pipelines take [0, 1]
    exact = marginal_log_likelihood(pipeline, images, class_labels=range(10)).bits_per_dim.mean().item()
    assert alone["bits_per_dim"] == pytest.approx(exact, abs=1e-3)
    # Against the null class alone (what the trainer reports for a class-conditional model) it is another figure.
    null_class = bench.bits_per_dim(
        pipeline.log_likelihood(images, class_labels=[10] * len(images)).log_likelihood, 64
    )
    assert abs(null_class - exact) > 1e-2

    text_model = RowLSTMModel(
        sample_size=8, num_levels=17, hidden_channels=8, num_layers=1, condition_type="text", text_embed_dim=32
    )
    text_pipeline = hfgen.AutoregressivePipeline(
        prior=text_model, tokenizer=tiny_text_components[0], text_encoder=tiny_text_components[1]
    )
    with pytest.raises(SystemExit, match="text-conditioned"):
        bench.token_log_probs(text_pipeline, images[:2] * 2 - 1)


def test_mnist_redrawn_as_uci_digits_reads_as_digits():
    """benchmarks/mnist_as_digits.py: a sheared stroke comes out upright, every image is 8x8 on the 17 levels, and the
    shipped digits classifier (trained on UCI digits only) names the redrawn MNIST digits far above chance; an image
    without ink is refused."""
    import numpy as np
    from PIL import Image

    from hfgen.data import load_image_dataset
    from hfgen.metrics.adherence import predicted_classes
    from hfgen.metrics.features import load_feature_extractor

    module = load_app(REPO_ROOT / "benchmarks" / "mnist_as_digits.py", "mnist_as_digits")
    slanted = np.zeros((28, 28), np.float32)
    for y in range(4, 24):
        slanted[y, 8 + y // 2 : 11 + y // 2] = 255  # a stroke leaning right

    def slant(image):  # the x shift per row of the ink's least-squares line: its covariance of x and y over var(y)
        ys, xs = np.mgrid[:28, :28]
        dy, dx = ys - (ys * image).sum() / image.sum(), xs - (xs * image).sum() / image.sum()
        return (dx * dy * image).sum() / (dy * dy * image).sum()

    assert slant(slanted) == pytest.approx(0.5, abs=0.01) and abs(slant(module.deskew(slanted))) < 1e-3

    mnist = load_image_dataset("mnist", label_column="label").raw["test"].select(range(300))
    classifier, labels = load_feature_extractor("digits"), torch.tensor(mnist["label"])
    accuracy = {}
    for keep_aspect in (False, True):
        redrawn = [module.as_uci_digit(image, keep_aspect=keep_aspect) for image in mnist["image"]]
        levels = np.stack([np.asarray(image) for image in redrawn])
        assert levels.shape == (300, 8, 8) and set(np.unique(levels)) <= {round(v * 255 / 16) for v in range(17)}
        images = torch.tensor(levels, dtype=torch.float32)[:, None] / 255
        accuracy[keep_aspect] = (predicted_classes(images, classifier) == labels).float().mean().item()
        # Stretched, every digit spans all eight rows, as every UCI digit does; with its aspect kept, wide ones do not.
        assert (levels > 0).any(2).all() != keep_aspect
    # Chance is 0.1; on the first 500: 0.73 stretched, 0.56 with the aspect kept (the real test digits: 0.98).
    assert accuracy[False] > 0.6 and accuracy[False] > accuracy[True] + 0.08, accuracy
    with pytest.raises(ValueError, match="lower --threshold"):
        module.as_uci_digit(Image.fromarray(np.full((28, 28), 30, np.uint8)))
