"""The VAE Space (spaces/vae/app.py) served locally and driven through gradio_client, on tiny untrained pipelines:
unconditional, text-conditioned and class-conditioned. Its page is `hfgen.demo.build_demo`, so the API follows the
pipeline's capabilities; the calls name their parameters (the pipeline's argument names).

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
from hfgen.data import make_digits_dataset
from hfgen.text import build_clip_text_encoder, build_word_tokenizer

gradio_client = pytest.importorskip("gradio_client")

APP_PATH = Path(__file__).resolve().parents[1] / "spaces" / "vae" / "app.py"
VAE_KWARGS = dict(
    sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4, num_bins=17
)


def save_pipeline(path: Path, kind: str) -> str:
    torch.manual_seed(0)
    if kind == "text":
        tokenizer = build_word_tokenizer(["a handwritten digit seven", "a handwritten digit one"], max_length=8)
        text_encoder = build_clip_text_encoder(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
        vae = hfgen.VAEModel(condition_type="text", text_embed_dim=32, **VAE_KWARGS)
        pipeline = hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)
    elif kind == "class":
        pipeline = hfgen.VAEPipeline(vae=hfgen.VAEModel(condition_type="class", num_classes=10, **VAE_KWARGS))
    else:
        pipeline = hfgen.VAEPipeline(vae=hfgen.VAEModel(**VAE_KWARGS))
    pipeline.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def app():
    return load_app(APP_PATH, "hfgen_space_vae_app")


@pytest.fixture(scope="module")
def served(app, tmp_path_factory):
    """Serves the app's demo for `kind` ("unconditional", "text" or "class"); yields a client; closes the servers."""
    servers = []

    def serve(kind: str):
        path = save_pipeline(tmp_path_factory.mktemp(kind), kind)
        blocks = app.build_demo(hfgen.load_pipeline(path), model_name=path)
        servers.append(blocks)
        return gradio_client.Client(serve_demo(blocks), verbose=False)

    yield serve
    for blocks in servers:
        blocks.close()


def image_bytes(gallery) -> list[bytes]:
    """Gallery output as the client returns it ([{"image": path, ...}, ...]) -> the bytes of each image file."""
    return [Path(item["image"] if isinstance(item, dict) else item[0]).read_bytes() for item in gallery]


def figure(likelihood_text: str) -> str:
    """The bits/dim and nats of the likelihood endpoint's text, without its timing."""
    return likelihood_text.split(" Lower means")[0]


def parameters(client, api_name: str) -> list[str]:
    return [
        p["parameter_name"] for p in client.view_api(return_format="dict")["named_endpoints"][api_name]["parameters"]
    ]


def test_unconditional_space(served, tmp_path):
    client = served("unconditional")
    assert parameters(client, "/generate") == ["seed", "num_images", "temperature"]  # no prompt, class or guidance

    gallery, timing = client.predict(seed=3, num_images=5, api_name="/generate")
    samples = image_bytes(gallery)
    assert len(samples) == 5 and timing.startswith("5 image(s) in") and "ms per image" in timing
    assert samples == image_bytes(client.predict(seed=3, num_images=5, api_name="/generate")[0])
    assert samples != image_bytes(client.predict(seed=4, num_images=5, api_name="/generate")[0])
    colder = image_bytes(client.predict(seed=3, num_images=5, temperature=0.5, api_name="/generate")[0])
    assert colder != samples  # the family's slider reaches __call__
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (128, 128)  # 8x8 shown with nearest-neighbour upscaling

    strip, timing = client.predict(start_seed=0, end_seed=1, num_steps=6, api_name="/interpolate")
    assert len(image_bytes(strip)) == 6 and "ms per image" in timing

    make_digits_dataset()[0]["image"].convert("RGB").resize((64, 64)).save(tmp_path / "digit.png")
    score = client.predict(image=gradio_client.handle_file(str(tmp_path / "digit.png")), api_name="/likelihood")
    assert "bits/dim" in score and "lower bound (IWAE, K=50)" in score and "resized to 8x8" in score
    again = client.predict(image=gradio_client.handle_file(str(tmp_path / "digit.png")), api_name="/likelihood")
    assert figure(again) == figure(score)  # a fixed generator for the importance samples

    # Limits are enforced by the server, whatever the caller sends, and the errors name the range.
    with pytest.raises(Exception, match="16"):
        client.predict(seed=0, num_images=100, api_name="/generate")
    with pytest.raises(Exception, match="1.5"):
        client.predict(seed=0, num_images=2, temperature=3.0, api_name="/generate")
    with pytest.raises(Exception, match="12"):
        client.predict(start_seed=0, end_seed=1, num_steps=50, api_name="/interpolate")
    with pytest.raises(Exception, match="Upload an image"):
        client.predict(image=None, api_name="/likelihood")


def test_text_space_with_guidance(served):
    client = served("text")
    assert parameters(client, "/generate") == [
        "prompt", "seed", "num_images", "guidance_scale", "negative_prompt", "temperature"
    ]  # fmt: skip

    seven = image_bytes(
        client.predict(prompt="a handwritten digit seven", seed=7, num_images=4, api_name="/generate")[0]
    )
    assert len(seven) == 4
    assert seven == image_bytes(client.predict("a handwritten digit seven", 7, 4, api_name="/generate")[0])
    guided = image_bytes(
        client.predict(
            prompt="a handwritten digit seven", seed=7, num_images=4, guidance_scale=3.0, api_name="/generate"
        )[0]
    )
    assert guided != seven
    negative = client.predict(
        prompt="a handwritten digit seven",
        seed=7,
        num_images=4,
        guidance_scale=3.0,
        negative_prompt="a handwritten digit one",
        api_name="/generate",
    )[0]
    assert image_bytes(negative) != guided
    assert len(image_bytes(client.predict(prompt="", seed=7, num_images=2, api_name="/generate")[0])) == 2
    strip, _ = client.predict(
        prompt="a handwritten digit one", start_seed=0, end_seed=9, num_steps=3, api_name="/interpolate"
    )
    assert len(image_bytes(strip)) == 3

    with pytest.raises(Exception, match="200"):
        client.predict(prompt="seven " * 83 + "xx", seed=0, num_images=1, api_name="/generate")  # 500 characters
    with pytest.raises(Exception, match="20"):
        client.predict(
            prompt="a handwritten digit one", seed=0, num_images=1, guidance_scale=25.0, api_name="/generate"
        )
    with pytest.raises(Exception, match="negative prompt needs a prompt and a guidance scale above 1"):
        client.predict(prompt="", seed=0, num_images=1, negative_prompt="one", api_name="/generate")


def test_class_space(served, tmp_path):
    client = served("class")
    assert parameters(client, "/generate") == ["class_label", "seed", "num_images", "guidance_scale", "temperature"]

    three = image_bytes(client.predict(class_label=3, seed=0, num_images=3, api_name="/generate")[0])
    assert len(three) == 3
    assert three != image_bytes(client.predict(class_label=5, seed=0, num_images=3, api_name="/generate")[0])
    none = image_bytes(client.predict(class_label=10, seed=0, num_images=3, api_name="/generate")[0])  # the null class
    assert none == image_bytes(client.predict(seed=0, num_images=3, api_name="/generate")[0])  # the default: none
    guided = client.predict(class_label=3, seed=0, num_images=3, guidance_scale=4.0, api_name="/generate")[0]
    assert image_bytes(guided) != three
    strip, _ = client.predict(class_label=3, start_seed=0, end_seed=1, num_steps=4, api_name="/interpolate")
    assert len(image_bytes(strip)) == 4

    make_digits_dataset()[3]["image"].save(tmp_path / "three.png")
    image = gradio_client.handle_file(str(tmp_path / "three.png"))
    three_score = figure(client.predict(image=image, class_label=3, api_name="/likelihood"))
    assert three_score != figure(client.predict(image=image, class_label=5, api_name="/likelihood"))  # p(x | class)

    with pytest.raises(Exception, match=r"choices: \[0, 1, .* 10\]"):
        client.predict(class_label=11, seed=0, num_images=1, api_name="/generate")


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
    with pytest.raises(demo.gr.Error, match="text"):
        demo.check_prompt_length(["a list"])
    assert demo.check_float(0.5, "Truncation", 0.0, 1.0) == 0.5
    for bad in (-0.1, 1.5, "0.5", None):
        with pytest.raises(demo.gr.Error, match="Truncation"):
            demo.check_float(bad, "Truncation", 0.0, 1.0)


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
