"""The VAE Space (spaces/vae/app.py) served locally and driven through gradio_client, on tiny untrained pipelines.

Everything stays on 127.0.0.1: no share links, no analytics, no Hub.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testing_utils import load_app
from testing_utils import serve as serve_demo

import hfgen
from hfgen import demo
from hfgen.text import build_clip_text_encoder, build_word_tokenizer

gradio_client = pytest.importorskip("gradio_client")

APP_PATH = Path(__file__).resolve().parents[1] / "spaces" / "vae" / "app.py"
VAE_KWARGS = dict(
    sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4, num_bins=17
)


def save_pipeline(path: Path, text: bool) -> str:
    torch.manual_seed(0)
    if text:
        tokenizer = build_word_tokenizer(["a handwritten digit seven", "a handwritten digit one"], max_length=8)
        text_encoder = build_clip_text_encoder(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
        vae = hfgen.VAEModel(condition_type="text", text_embed_dim=32, **VAE_KWARGS)
        pipeline = hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)
    else:
        pipeline = hfgen.VAEPipeline(vae=hfgen.VAEModel(**VAE_KWARGS))
    pipeline.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def app():
    return load_app(APP_PATH, "hfgen_space_vae_app")


@pytest.fixture(scope="module")
def served(app, tmp_path_factory):
    """Serves the demo for `kind` ("unconditional" or "text"); yields (client, pipeline) and closes the server."""
    servers = []

    def serve(kind: str):
        path = save_pipeline(tmp_path_factory.mktemp(kind), text=kind == "text")
        pipeline = hfgen.load_pipeline(path)
        blocks = app.build_demo(pipeline, model_name=path)
        local_url = serve_demo(blocks)
        servers.append(blocks)
        return gradio_client.Client(local_url, verbose=False), pipeline

    yield serve
    for blocks in servers:
        blocks.close()


def image_files(result) -> list[str]:
    """Gallery output as the client returns it: [{"image": path, "caption": ...}, ...] -> paths that exist."""
    paths = [item["image"] if isinstance(item, dict) else item[0] for item in result]
    assert all(Path(path).is_file() for path in paths), paths
    return paths


def test_unconditional_space(served):
    client, pipeline = served("unconditional")

    paths = image_files(client.predict("", 3, 5, api_name="/generate"))
    assert len(paths) == 5
    again = image_files(client.predict("", 3, 5, api_name="/generate"))
    assert [Path(p).read_bytes() for p in paths] == [Path(p).read_bytes() for p in again]
    other = image_files(client.predict("", 4, 5, api_name="/generate"))
    assert [Path(p).read_bytes() for p in paths] != [Path(p).read_bytes() for p in other]

    # Shown upscaled with nearest neighbour: 8x8 -> 128x128.
    from PIL import Image

    with Image.open(paths[0]) as image:
        assert image.size == (128, 128)

    strip = image_files(client.predict("", 0, 1, 6, api_name="/interpolate"))
    assert len(strip) == 6

    # Limits are enforced by the server, whatever the caller sends.
    with pytest.raises(Exception, match="16"):
        client.predict("", 0, 100, api_name="/generate")
    with pytest.raises(Exception, match="12"):
        client.predict("", 0, 1, 50, api_name="/interpolate")
    with pytest.raises(Exception, match="unconditional"):
        client.predict("a handwritten digit seven", 0, 2, api_name="/generate")


def test_text_space(served):
    client, _ = served("text")

    seven = image_files(client.predict("a handwritten digit seven", 7, 4, api_name="/generate"))
    assert len(seven) == 4
    again = image_files(client.predict("a handwritten digit seven", 7, 4, api_name="/generate"))
    assert [Path(p).read_bytes() for p in seven] == [Path(p).read_bytes() for p in again]
    assert len(image_files(client.predict("", 7, 2, api_name="/generate"))) == 2
    assert len(image_files(client.predict("a handwritten digit one", 0, 9, 3, api_name="/interpolate"))) == 3

    with pytest.raises(Exception, match="200"):
        client.predict("seven " * 83 + "xx", 0, 1, api_name="/generate")  # 500 characters


def test_handlers_validate_without_the_widgets():
    """The checks every Space shares (hfgen.demo) live in the handlers, not only in the widgets' limits."""
    assert demo.check_int(5.0, "Steps", 2, 12) == 5
    for bad in (1, 13, 2.5, "3", None, True):
        with pytest.raises(demo.gr.Error):
            demo.check_int(bad, "Steps", 2, 12)
    with pytest.raises(demo.gr.Error):
        demo.check_int(2**31, "Seed", 0, demo.MAX_SEED)
    with pytest.raises(demo.gr.Error, match="200"):
        demo.check_prompt(None, "x" * 201)
    assert demo.check_float(0.5, "Truncation", 0.0, 1.0) == 0.5
    for bad in (-0.1, 1.5, "0.5", None):
        with pytest.raises(demo.gr.Error, match="Truncation"):
            demo.check_float(bad, "Truncation", 0.0, 1.0)


def test_help_runs():
    result = subprocess.run(
        [sys.executable, str(APP_PATH), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "HFGEN_MODEL" in result.stdout
