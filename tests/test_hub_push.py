"""Push to and load from a local Hub (tests/hub_server.py): hfgen.hub.push_to_hub, hfgen.load_pipeline, revisions,
model cards, auth errors and diffusers' ModelMixin.push_to_hub, with every connection kept on 127.0.0.1."""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import HUB_TOKEN, HUB_USER, LOOPBACK_ONLY_SCRIPT, hub_subprocess_env
from huggingface_hub import HfApi, ModelCard

import hfgen
from hfgen.hub import push_to_hub, write_model_card

TOKEN, USER = HUB_TOKEN, HUB_USER  # the local Hub (the `hub` fixture in conftest.py)

# Run in a fresh interpreter: refuses any connection off the loopback, loads the pipeline from HF_ENDPOINT and
# prints a hash of 4 sampled images.
SUBPROCESS_SCRIPT = LOOPBACK_ONLY_SCRIPT + textwrap.dedent(
    """
    import hashlib, sys

    import numpy as np
    import torch

    import hfgen

    pipe = hfgen.load_pipeline(sys.argv[1])
    images = pipe(batch_size=4, generator=torch.manual_seed(0), output_type="np").images
    print("IMAGES", hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest())
    """
)


def load_from_hub(repo_id: str, revision: str | None = None) -> hfgen.HFGenPipeline:
    return hfgen.load_pipeline(repo_id, revision=revision)


def tiny_pipeline(seed: int) -> hfgen.VAEPipeline:
    torch.manual_seed(seed)
    vae = hfgen.VAEModel(
        sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4, num_bins=17
    )
    return hfgen.VAEPipeline(vae=vae)


def sample(pipe) -> np.ndarray:
    return pipe(batch_size=4, generator=torch.manual_seed(0), output_type="np").images


def images_hash(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def save_with_card(pipe, folder) -> str:
    pipe.save_pretrained(folder)
    write_model_card(
        str(folder),
        family="vae",
        pipeline_class="VAEPipeline",
        pipeline_tag="unconditional-image-generation",
        dataset="digits",
        settings={"lr": 1e-3},
    )
    return str(folder)


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """`tester/vae-tiny` pushed once with hfgen.hub.push_to_hub: (local pipeline, commit url, local images)."""
    pipe = tiny_pipeline(seed=0)
    folder = save_with_card(pipe, tmp_path_factory.mktemp("vae-tiny"))
    # A training leftover that push_to_hub must leave out.
    os.makedirs(os.path.join(folder, "checkpoint-10"))
    with open(os.path.join(folder, "checkpoint-10", "state.bin"), "wb") as f:
        f.write(b"not for the hub")
    commit_url = push_to_hub(folder, f"{USER}/vae-tiny", token=TOKEN)
    return pipe, commit_url, sample(pipe)


def test_push_then_load_same_process(hub, pushed, fresh_cache):
    _, commit_url, local_images = pushed
    repo = hub.get_repo(f"{USER}/vae-tiny")
    head = repo.commits[repo.branches["main"]]
    assert commit_url == f"{hub.url}/{USER}/vae-tiny/commit/{head.sha}"
    assert {"model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "README.md"} <= set(
        head.files
    )
    assert not any(path.startswith("checkpoint-") for path in head.files)

    pipe = load_from_hub(f"{USER}/vae-tiny")
    assert isinstance(pipe, hfgen.VAEPipeline)
    np.testing.assert_array_equal(sample(pipe), local_images)
    # Downloaded into the (patched) default cache, from the local server only.
    assert (fresh_cache / "models--tester--vae-tiny" / "snapshots" / head.sha / "model_index.json").is_file()
    assert any(
        method == "GET" and path.startswith("/tester/vae-tiny/resolve/") and path.endswith("/model_index.json")
        for method, path in hub.requests
    )


def test_load_in_fresh_subprocess(hub, pushed, tmp_path):
    _, _, local_images = pushed
    hf_home = tmp_path / "hf_home"
    env = hub_subprocess_env(hub, hf_home)
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, f"{USER}/vae-tiny"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("IMAGES ")]
    assert lines == [f"IMAGES {images_hash(local_images)}"], result.stdout[-3000:]
    assert (hf_home / "hub" / "models--tester--vae-tiny").is_dir()


def test_second_push_keeps_first_revision(hub, tmp_path, fresh_cache):
    repo_id = f"{USER}/vae-revisions"
    first, second = tiny_pipeline(seed=0), tiny_pipeline(seed=1)
    first_url = push_to_hub(save_with_card(first, tmp_path / "first"), repo_id, token=TOKEN)
    second_url = push_to_hub(
        save_with_card(second, tmp_path / "second"), repo_id, token=TOKEN, commit_message="Re-init"
    )
    first_sha, second_sha = first_url.rsplit("/", 1)[-1], second_url.rsplit("/", 1)[-1]
    assert first_sha != second_sha

    commits = HfApi().list_repo_commits(repo_id)
    assert [c.commit_id for c in commits[:2]] == [second_sha, first_sha]
    assert commits[0].title == "Re-init" and commits[-1].title == "initial commit"

    np.testing.assert_array_equal(sample(load_from_hub(repo_id)), sample(second))
    np.testing.assert_array_equal(sample(load_from_hub(repo_id, revision=first_sha)), sample(first))
    old_vae = hfgen.VAEModel.from_pretrained(repo_id, subfolder="vae", revision=first_sha)
    for name, tensor in first.vae.state_dict().items():
        torch.testing.assert_close(old_vae.state_dict()[name], tensor, rtol=0, atol=0)
    assert not np.array_equal(sample(first), sample(second))


def test_model_card_round_trip(hub, pushed, fresh_cache):
    card = ModelCard.load(f"{USER}/vae-tiny")
    assert card.data.library_name == "hfgen"
    assert card.data.pipeline_tag == "unconditional-image-generation"
    assert "hfgen.VAEPipeline" in card.text and "| lr | 0.001 |" in card.text


@pytest.mark.parametrize(
    "token, repo_id, status",
    [
        ("bad", f"{USER}/vae-bad-token", 401),  # a token the Hub knows to be invalid
        ("hf_unknown", f"{USER}/vae-unknown-token", 401),  # a token the Hub never issued
        (TOKEN, "someone-else/vae-tiny", 403),  # a valid token, but not for that namespace
    ],
)
def test_push_refused_raises_runtime_error(hub, tmp_path, token, repo_id, status):
    folder = save_with_card(tiny_pipeline(seed=0), tmp_path / "pipe")
    with pytest.raises(RuntimeError, match=rf"refused \({status}\).*HF_TOKEN"):
        push_to_hub(folder, repo_id, token=token)
    assert ("model", repo_id) not in hub.repos


def test_model_mixin_push_to_hub_round_trip(hub, fresh_cache):
    model = tiny_pipeline(seed=2).vae
    commit_url = model.push_to_hub(f"{USER}/vae-model", token=TOKEN)
    assert commit_url.startswith(f"{hub.url}/{USER}/vae-model/commit/")
    files = hub.get_repo(f"{USER}/vae-model").commits[commit_url.rsplit("/", 1)[-1]].files
    assert {"config.json", "diffusion_pytorch_model.safetensors", "README.md"} <= set(files)

    loaded = hfgen.VAEModel.from_pretrained(f"{USER}/vae-model")
    assert loaded.config.latent_dim == 4 and loaded.config.num_bins == 17
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_local_hub_serves_datasets_and_spaces(hub, tmp_path, fresh_cache):
    api = HfApi(token=TOKEN)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv").write_text("x,y\n1,2\n")
    (tmp_path / "app.py").write_text("print('hi')\n")
    for repo_type, repo_id, folder in [
        ("dataset", f"{USER}/digits", tmp_path / "data"),
        ("space", f"{USER}/demo", None),
    ]:
        api.create_repo(repo_id, repo_type=repo_type, space_sdk="gradio" if repo_type == "space" else None)
        if folder is not None:
            api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, path_in_repo="data")
        else:
            api.upload_file(
                repo_id=repo_id, repo_type=repo_type, path_or_fileobj=tmp_path / "app.py", path_in_repo="app.py"
            )

    local = api.snapshot_download(f"{USER}/digits", repo_type="dataset")
    assert open(os.path.join(local, "data", "train.csv")).read() == "x,y\n1,2\n"
    assert api.space_info(f"{USER}/demo").sha == hub.get_repo(f"{USER}/demo", "space").branches["main"]
    path = api.hf_hub_download(f"{USER}/demo", "app.py", repo_type="space")
    assert open(path).read() == "print('hi')\n"
    assert [f.path for f in api.list_repo_tree(f"{USER}/digits", repo_type="dataset")] == [".gitattributes", "data"]
