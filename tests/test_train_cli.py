"""Training on an image folder as the README documents it (`--train_data_dir DIR` alone, metadata.jsonl captions
without flags), through `accelerate launch` and `hfgen train`; `hfgen evaluate` on data without a shipped extractor;
the trainers' --help."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hfgen.training.train import parse_config
from PIL import Image

import hfgen
from hfgen.cli import main as hfgen_main
from hfgen.data import load_image_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = (
    "--max_train_steps 2 --train_batch_size 4 --block_out_channels 8 16 --latent_dim 4 --norm_num_groups 4 "
    "--report_to none --eval_num_samples 2 --eval_max_images 4 --text_hidden_size 32 --text_num_layers 1"
).split()
COLOURS = {"crimson": (220, 20, 60), "teal": (0, 128, 128), "gold": (255, 215, 0)}


@pytest.fixture(scope="module")
def my_images(tmp_path_factory) -> Path:
    """12 PNGs of 32x32 coloured squares, captioned in metadata.jsonl's "text" column, as a user's folder would be."""
    folder = tmp_path_factory.mktemp("my_images")
    rng = np.random.default_rng(0)
    with open(folder / "metadata.jsonl", "w") as f:
        for i in range(12):
            name = list(COLOURS)[i % 3]
            pixels = rng.integers(0, 40, size=(32, 32, 3), dtype=np.uint8)
            pixels[8:24, 8:24] = COLOURS[name]
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
            f.write(json.dumps({"file_name": f"{i:02d}.png", "text": f"a {name} square"}) + "\n")
    return folder


def readme_imagefolder_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if "--train_data_dir my_images/" in line)
    return shlex.split(line.split("#")[0])


def test_train_data_dir_alone_replaces_the_default_data_set(my_images):
    config = parse_config(["--family", "vae", "--train_data_dir", str(my_images)])[1]
    assert config.dataset_name is None and config.train_data_dir == str(my_images)
    with pytest.raises(ValueError, match="exactly one"):  # both given to the data layer: an error, not a silent pick
        load_image_dataset("shapes", train_data_dir=str(my_images))
    # metadata.jsonl's "text" column gives the captions without --caption_column.
    splits = load_image_dataset(train_data_dir=str(my_images), test_size=2)
    assert sorted({e["captions"] for e in splits["train"]}) == ["a crimson square", "a gold square", "a teal square"]


def test_readme_imagefolder_command_through_accelerate_launch(my_images, tmp_path):
    args = readme_imagefolder_command()
    assert args[:3] == ["accelerate", "launch", "training/train.py"] and "--dataset_name" not in args
    args = [str(my_images) if a == "my_images/" else a for a in args]
    output_dir = tmp_path / "vae-folder"
    # `accelerate launch` of this environment (its console script, or the same module where the venv has no script).
    script = os.path.join(os.path.dirname(sys.executable), "accelerate")
    launch = [script, "launch"] if os.path.isfile(script) else [sys.executable, "-m", "accelerate.commands.launch"]
    result = subprocess.run(
        [*launch, *args[2:], *TINY, "--output_dir", str(output_dir)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Saved the vae pipeline to {output_dir}" in result.stdout
    pipeline = hfgen.load_pipeline(str(output_dir))
    assert pipeline(prompt="a teal square", output_type="pt").images.shape == (1, 3, 32, 32)


@pytest.fixture(scope="module")
def trained_by_cli(my_images, tmp_path_factory) -> Path:
    """`hfgen train --family vae --train_data_dir DIR --resolution 32`: no data set, no caption flag."""
    output_dir = tmp_path_factory.mktemp("cli") / "vae-folder"
    hfgen_main(["train", "--family", "vae", "--train_data_dir", str(my_images), "--resolution", "32", *TINY,
                "--output_dir", str(output_dir)])  # fmt: skip
    return output_dir


def test_hfgen_train_on_a_folder_uses_its_captions(trained_by_cli, my_images):
    pipeline = hfgen.load_pipeline(str(trained_by_cli))
    vocabulary = pipeline.tokenizer.get_vocab()
    assert {"crimson", "teal", "gold", "square"} <= set(vocabulary)  # the text encoder learned the folder's captions
    assert pipeline(prompt="a gold square", output_type="pt").images.shape == (1, 3, 32, 32)
    assert str(my_images) in (trained_by_cli / "README.md").read_text()


def test_evaluate_without_an_extractor_says_what_it_can_measure(trained_by_cli, my_images, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        hfgen_main(["evaluate", str(trained_by_cli), "--dataset", str(my_images), "--num_samples", "16"])
    message = str(error.value)
    assert "config.json" not in message.replace("a folder without config.json", "")
    assert "--metrics nll" in message and "train_feature_extractor.py" in message and "--feature_extractor" in message
    # What it says can be computed, can.
    output = tmp_path / "nll.json"
    hfgen_main(["evaluate", str(trained_by_cli), "--dataset", str(my_images), "--metrics", "nll", "-o", str(output)])
    assert np.isfinite(json.loads(output.read_text())["nll_bits_per_dim"])


def test_gan_help_prints_the_percent_sign(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--family", "gan", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Stop when D is 100% accurate this many steps in a row" in help_text


RECIPES = sorted((REPO / "training" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[recipe.stem for recipe in RECIPES])
def test_every_recipe_is_a_valid_configuration(recipe):
    """Every shipped recipe parses into its family's config and passes its checks (`__post_init__`)."""
    trainer_class, config = parse_config(["--recipe", str(recipe)])
    assert trainer_class.family == config.family
    assert config.output_dir.startswith("out/") and config.hub_model_id


@pytest.mark.parametrize(
    "family, attribute",
    [("vae", "num_bins"), ("flow", "num_bins"), ("diffusion", "num_bins"), ("autoregressive", "num_levels")],
)
def test_the_discrete_scale_defaults_to_the_data_sets_grey_levels(family, attribute, tmp_path):
    """Likelihoods are on the data's own scale: 17 levels for the digits, 2 for the binarized MNIST (a 256-level
    default there would score binary pixels on an 8-bit scale), 256 for 8-bit data; an explicit value wins."""
    for dataset, levels in [("digits", 17), ("mnist_binarized", 2), ("mnist", 256), ("shapes", 256)]:
        _, config = parse_config(["--family", family, "--dataset_name", dataset, "--output_dir", str(tmp_path)])
        assert getattr(config, attribute) == levels, dataset
    argv = [
        "--family",
        family,
        "--dataset_name",
        "mnist_binarized",
        "--output_dir",
        str(tmp_path),
        f"--{attribute}",
        "4",
    ]
    assert getattr(parse_config(argv)[1], attribute) == 4
