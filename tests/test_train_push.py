"""Every landed family, end to end through the local Hub: `accelerate launch training/train.py ... --push_to_hub`
pushes the pipeline, its model card and sample grid; a fresh process with an empty cache loads the repo id and
generates exactly the images the trained folder generates for the same seed."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HUB_USER, hub_subprocess_env
from huggingface_hub import ModelCard

import hfgen
from hfgen.metrics.evaluate import training_seconds

REPO = Path(__file__).resolve().parents[1]
FAMILY_ARGS = {
    "vae": "--family vae --block_out_channels 8 16 --latent_dim 4 --norm_num_groups 4 --eval_num_samples 2 "
    "--eval_max_images 16",
    "gan": "--family gan --block_out_channels 8 16 --noise_dim 8 --n_critic 1 --mode_collapse_samples 32",
}
COMMON_ARGS = (
    "--dataset_name digits --train_batch_size 16 --max_train_steps 2 --report_to none --text_hidden_size 32 "
    "--text_num_layers 1 --num_validation_images 4"
)
# A fresh interpreter with an empty cache: loads the repo id from HF_ENDPOINT, prints a hash of 4 seeded images.
LOAD_AND_SAMPLE = (
    "import hashlib, sys, numpy as np, torch, hfgen; "
    "p = hfgen.load_pipeline(sys.argv[1]); "
    "x = p(prompt='a handwritten digit seven', num_images_per_prompt=4, generator=torch.manual_seed(0), "
    "output_type='np').images; "
    "print('IMAGES', hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest())"
)


def images_hash(pipeline) -> str:
    images = pipeline(
        prompt="a handwritten digit seven", num_images_per_prompt=4, generator=torch.manual_seed(0), output_type="np"
    ).images
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


@pytest.mark.parametrize("family", sorted(FAMILY_ARGS))
def test_accelerate_launch_push_to_hub_then_load_in_a_fresh_process(hub, family, tmp_path):
    output_dir, repo_id = tmp_path / f"{family}-digits", f"{HUB_USER}/{family}-digits"
    env = hub_subprocess_env(hub, tmp_path / "train-hf-home")
    launch = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--num_processes", "1"]
    args = [*FAMILY_ARGS[family].split(), *COMMON_ARGS.split(), "--output_dir", str(output_dir)]
    args += ["--push_to_hub", "--hub_model_id", repo_id]
    result = subprocess.run(
        [*launch, "training/train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]

    # The repo holds the pipeline, its card and the sample grid, and no training leftovers.
    repo = hub.get_repo(repo_id)
    files = set(repo.commits[repo.branches["main"]].files)
    assert {"model_index.json", "README.md", "samples/final.png"} <= files
    assert not any(path.startswith(("checkpoint-", "logs/")) for path in files)
    card = ModelCard(repo.commits[repo.branches["main"]].files["README.md"].decode())
    assert card.data.library_name == "hfgen" and card.data.pipeline_tag == "text-to-image"
    assert family in card.data.tags and "samples/final.png" in card.content

    # A fresh process with an empty cache generates what the trained folder generates.
    fresh_env = {**hub_subprocess_env(hub, tmp_path / "empty-hf-home"), "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SAMPLE, repo_id], env=fresh_env, capture_output=True, text=True, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert f"IMAGES {images_hash(hfgen.load_pipeline(str(output_dir)))}" in loaded.stdout
    assert os.listdir(tmp_path / "empty-cache")  # it really downloaded

    # `hfgen compare` reads the training time of a Hub repo as of a local folder.
    assert training_seconds(repo_id) == training_seconds(str(output_dir)) > 0
