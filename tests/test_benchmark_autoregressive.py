"""benchmarks/autoregressive.py keeps the pipelines it trains, so its completion part runs again on them without
training, with the same figures; it refuses to complete with a model it has not got; --train_args reach the trainer."""

import math

import pytest
from conftest import REPO_ROOT
from testing_utils import load_app


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
