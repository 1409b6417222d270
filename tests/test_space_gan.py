"""The GAN Space (spaces/gan/app.py) served locally and driven through gradio_client, on tiny untrained pipelines.

Everything stays on 127.0.0.1: no share links, no analytics, no Hub.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from testing_utils import load_app
from testing_utils import serve as serve_demo

import hfgen
from hfgen import demo
from hfgen.text import build_clip_text_encoder, build_word_tokenizer

gradio_client = pytest.importorskip("gradio_client")

APP_PATH = Path(__file__).resolve().parents[1] / "spaces" / "gan" / "app.py"
GENERATOR_KWARGS = dict(sample_size=8, out_channels=1, noise_dim=4, block_out_channels=(8, 16))


def save_pipeline(path: Path, text: bool) -> str:
    torch.manual_seed(0)
    if text:
        tokenizer = build_word_tokenizer(["a small red circle", "a large blue square"], max_length=8)
        text_encoder = build_clip_text_encoder(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
        generator = hfgen.GANGenerator(condition_type="text", text_embed_dim=32, **GENERATOR_KWARGS)
        pipeline = hfgen.GANPipeline(generator=generator, tokenizer=tokenizer, text_encoder=text_encoder)
    else:
        pipeline = hfgen.GANPipeline(generator=hfgen.GANGenerator(**GENERATOR_KWARGS))
    pipeline.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def app():
    return load_app(APP_PATH, "hfgen_space_gan_app")


@pytest.fixture(scope="module")
def served(app, tmp_path_factory):
    """Serves the demo for `kind` ("unconditional" or "text") and yields a client; closes the servers at the end."""
    servers = []

    def serve(kind: str):
        path = save_pipeline(tmp_path_factory.mktemp(kind), text=kind == "text")
        blocks = app.build_demo(hfgen.load_pipeline(path), model_name=path)
        servers.append(blocks)
        return gradio_client.Client(serve_demo(blocks), verbose=False)

    yield serve
    for blocks in servers:
        blocks.close()


def image_bytes(result) -> list[bytes]:
    """Gallery output as the client returns it ([{"image": path, ...}, ...]) -> the bytes of each image file."""
    paths = [item["image"] if isinstance(item, dict) else item[0] for item in result]
    return [Path(path).read_bytes() for path in paths]


def test_unconditional_space(served):
    client = served("unconditional")

    samples = image_bytes(client.predict("", 3, 5, 1.0, api_name="/generate"))
    assert len(samples) == 5
    assert samples == image_bytes(client.predict("", 3, 5, 1.0, api_name="/generate"))  # the seed fixes the images
    assert samples != image_bytes(client.predict("", 4, 5, 1.0, api_name="/generate"))
    # psi = 0: every seed gives the mean image
    mean = image_bytes(client.predict("", 3, 2, 0.0, api_name="/generate"))
    assert mean[0] == mean[1] == image_bytes(client.predict("", 9, 1, 0.0, api_name="/generate"))[0]

    result = client.predict("", 0, 1, 1.0, api_name="/generate")
    path = result[0]["image"] if isinstance(result[0], dict) else result[0][0]
    with Image.open(path) as image:
        assert image.size == (128, 128)  # 8x8 shown with nearest-neighbour upscaling

    strip = image_bytes(client.predict("", 0, 1, 6, 1.0, api_name="/interpolate"))
    assert len(strip) == 6
    assert strip[0] == Path(path).read_bytes()  # the strip starts at seed 0's image

    # Limits are enforced by the server, whatever the caller sends.
    with pytest.raises(Exception, match="16"):
        client.predict("", 0, 100, 1.0, api_name="/generate")
    with pytest.raises(Exception, match="Truncation|maximum value 1"):
        client.predict("", 0, 2, 1.5, api_name="/generate")
    with pytest.raises(Exception, match="12"):
        client.predict("", 0, 1, 50, 1.0, api_name="/interpolate")
    with pytest.raises(Exception, match="unconditional"):
        client.predict("a small red circle", 0, 2, 1.0, api_name="/generate")


def test_text_space(served):
    client = served("text")

    circles = image_bytes(client.predict("a small red circle", 7, 4, 1.0, api_name="/generate"))
    assert len(circles) == 4
    assert circles != image_bytes(client.predict("a large blue square", 7, 4, 1.0, api_name="/generate"))
    assert len(image_bytes(client.predict("", 7, 2, 1.0, api_name="/generate"))) == 2  # empty prompt: unconditional
    assert len(image_bytes(client.predict("a large blue square", 0, 9, 3, 0.7, api_name="/interpolate"))) == 3
    with pytest.raises(Exception, match="200"):
        client.predict("circle " * 40, 0, 1, 1.0, api_name="/generate")


def test_truncation_is_checked_without_the_widgets(app):
    for bad in (-0.1, 1.01, "1", None, True):
        with pytest.raises(demo.gr.Error, match="Truncation"):
            app._check_truncation(bad)
    assert app._check_truncation(0) == 0.0


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
