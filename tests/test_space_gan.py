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


def image_bytes(gallery) -> list[bytes]:
    """Gallery output as the client returns it ([{"image": path, ...}, ...]) -> the bytes of each image file."""
    return [Path(item["image"] if isinstance(item, dict) else item[0]).read_bytes() for item in gallery]


def generate(client, **kwargs) -> list[bytes]:
    gallery, timing = client.predict(**kwargs, api_name="/generate")
    assert "ms per image" in timing
    return image_bytes(gallery)


def test_unconditional_space(served):
    client = served("unconditional")
    endpoints = client.view_api(return_format="dict")["named_endpoints"]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [
        "seed",
        "num_images",
        "truncation_psi",
    ]
    assert "/likelihood" not in endpoints  # a GAN declares no likelihood

    samples = generate(client, seed=3, num_images=5)
    assert len(samples) == 5
    assert samples == generate(client, seed=3, num_images=5, truncation_psi=1.0)  # the seed fixes the images
    assert samples != generate(client, seed=4, num_images=5)
    # psi = 0: every seed gives the mean image
    mean = generate(client, seed=3, num_images=2, truncation_psi=0.0)
    assert mean[0] == mean[1] == generate(client, seed=9, num_images=1, truncation_psi=0.0)[0]

    gallery, _ = client.predict(seed=0, num_images=1, api_name="/generate")
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (128, 128)  # 8x8 shown with nearest-neighbour upscaling

    strip, _ = client.predict(start_seed=0, end_seed=1, num_steps=6, api_name="/interpolate")
    assert len(image_bytes(strip)) == 6
    assert image_bytes(strip)[0] == image_bytes(gallery)[0]  # the strip starts at seed 0's image
    truncated, _ = client.predict(start_seed=0, end_seed=1, num_steps=6, truncation_psi=0.5, api_name="/interpolate")
    assert image_bytes(truncated) != image_bytes(strip)  # the truncation slider reaches interpolate too

    # Limits are enforced by the server, whatever the caller sends, and the errors name the range.
    with pytest.raises(Exception, match="16"):
        client.predict(seed=0, num_images=100, api_name="/generate")
    with pytest.raises(Exception, match="Truncation|maximum value 1"):
        client.predict(seed=0, num_images=2, truncation_psi=1.5, api_name="/generate")
    with pytest.raises(Exception, match="12"):
        client.predict(start_seed=0, end_seed=1, num_steps=50, api_name="/interpolate")


def test_text_space_with_guidance(served):
    client = served("text")

    circles = generate(client, prompt="a small red circle", seed=7, num_images=4)
    assert len(circles) == 4
    assert circles != generate(client, prompt="a large blue square", seed=7, num_images=4)
    guided = generate(client, prompt="a small red circle", seed=7, num_images=4, guidance_scale=2.0)
    assert guided != circles
    assert len(generate(client, prompt="", seed=7, num_images=2)) == 2  # empty prompt: the null condition
    strip, _ = client.predict(
        prompt="a large blue square",
        start_seed=0,
        end_seed=9,
        num_steps=3,
        truncation_psi=0.7,
        api_name="/interpolate",
    )
    assert len(image_bytes(strip)) == 3
    with pytest.raises(Exception, match="200"):
        client.predict(prompt="circle " * 40, seed=0, num_images=1, api_name="/generate")


def test_controls_are_checked_without_the_widgets(app, tmp_path):
    """The handler checks every value itself: called directly, bypassing Gradio's own check of the slider bounds."""
    blocks = app.build_demo(hfgen.load_pipeline(save_pipeline(tmp_path, text=False)))
    handler = next(fn.fn for fn in blocks.fns.values() if fn.api_name == "generate")
    for bad in (-0.1, 1.01, "1", None, True):
        with pytest.raises(demo.gr.Error, match=r"Truncation psi .* from 0.0 to 1.0"):
            handler(seed=0, num_images=1, truncation_psi=bad)
    for bad in (-1, 2**31, 0.5, "0"):
        with pytest.raises(demo.gr.Error, match="Seed"):
            handler(seed=bad, num_images=1, truncation_psi=1.0)
    images, _ = handler(seed=0, num_images=2, truncation_psi=0)
    assert len(images) == 2


def test_help_runs():
    result = subprocess.run(
        [sys.executable, str(APP_PATH), "--help"],
        capture_output=True,
        text=True,
        timeout=180,  # importing torch and gradio on a busy shared machine
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "HFGEN_MODEL" in result.stdout
