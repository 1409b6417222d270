"""Offline tests for hfgen.hub: model cards render locally, bad repo ids fail before any network."""

import socket

import pytest
from huggingface_hub import ModelCard

from hfgen.hub import push_to_hub, repo_id_for, write_model_card


@pytest.fixture
def no_network(monkeypatch):
    """Offline mode plus a hard guard: any socket connect fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected network access: {args[1:]}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_write_model_card_round_trip(tmp_path, no_network):
    settings = {"learning_rate": 1e-4, "train_batch_size": 64, "command": ["hfgen", "train", "ddpm", "--lr", "1e-4"]}
    card = write_model_card(
        str(tmp_path),
        family="ddpm",
        pipeline_class="DDPMPipeline",
        pipeline_tag="unconditional-image-generation",
        dataset="uoft-cs/cifar10",
        settings=settings,
        metrics={"fid": 12.345678, "steps": 1000},
        sample_grid="samples/final.png",
        repo_id="user/ddpm-cifar10",
        tags=["cifar10"],
    )

    path = tmp_path / "README.md"
    assert path.is_file()
    loaded = ModelCard.load(path)
    assert loaded.data.library_name == "hfgen"
    assert loaded.data.license == "apache-2.0"
    assert loaded.data.pipeline_tag == "unconditional-image-generation"
    assert loaded.data.datasets == ["uoft-cs/cifar10"]
    assert loaded.data.tags == ["hfgen", "ddpm", "unconditional-image-generation", "cifar10"]
    assert loaded.text == card.text

    text = loaded.text
    assert 'hfgen.DDPMPipeline.from_pretrained("user/ddpm-cifar10")' in text
    assert 'hfgen.load_pipeline("user/ddpm-cifar10")' in text
    assert "![samples](samples/final.png)" in text
    # Settings sorted, command moved to its own section, floats to 4 significant digits.
    assert "| learning_rate | 0.0001 |" in text
    assert text.index("| learning_rate |") < text.index("| train_batch_size | 64 |")
    assert "| fid | 12.35 |" in text and "| steps | 1000 |" in text
    assert "## Training command" in text and "hfgen train ddpm --lr 1e-4" in text


def test_write_model_card_minimal_local_dataset(tmp_path, no_network):
    # A local dataset folder is not a Hub id: it stays out of the metadata.
    write_model_card(
        str(tmp_path),
        family="vae",
        pipeline_class="VAEPipeline",
        pipeline_tag="text-to-image",
        dataset=str(tmp_path),
        settings={"epochs": 3},
    )
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.pipeline_tag == "text-to-image"
    assert loaded.data.datasets is None
    assert "vae" in loaded.data.tags
    assert f'from_pretrained("{tmp_path}")' in loaded.text
    assert "## Results" not in loaded.text and "## Training command" not in loaded.text
    assert "![" not in loaded.text


def test_push_to_hub_rejects_invalid_repo_id(tmp_path, no_network):
    with pytest.raises(ValueError, match="namespace/name"):
        push_to_hub(str(tmp_path), "not a/valid//id")


def test_repo_id_for():
    assert repo_id_for("runs/ddpm-mnist/", None) == "ddpm-mnist"
    assert repo_id_for("runs/ddpm-mnist", "me/custom") == "me/custom"


@pytest.mark.parametrize("status", [401, 403])
def test_push_to_hub_refusal_becomes_clear_error(tmp_path, no_network, monkeypatch, status):
    import httpx2
    from huggingface_hub.utils import HfHubHTTPError

    def refuse(*args, **kwargs):
        response = httpx2.Response(status, request=httpx2.Request("POST", "https://hub.invalid/api/repos/create"))
        raise HfHubHTTPError("denied", response=response)

    monkeypatch.setattr("hfgen.hub.create_repo", refuse)
    with pytest.raises(RuntimeError, match=f"refused \\({status}\\).*hf auth login") as info:
        push_to_hub(str(tmp_path), "me/model")
    assert isinstance(info.value.__cause__, HfHubHTTPError)
