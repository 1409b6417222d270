"""The gallery Space (spaces/gallery/app.py) against models pushed to the local Hub, driven by gradio_client and by a
real headless Chromium; plus `hfgen push`, `hfgen datasets push` and `hfgen space deploy` through that Hub.

Everything stays on 127.0.0.1 (the conftest network guard fails any other connection made by this process; Chromium
is started with its background networking off).
"""

import os
import re
import resource
import shutil
import threading
from concurrent.futures import wait
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
from conftest import HUB_USER as USER
from conftest import make_tiny_text_components
from huggingface_hub import HfApi, SpaceCard
from PIL import Image
from testing_utils import load_app, serve

import hfgen
from hfgen.cli import main as hfgen_main
from hfgen.data import make_digits_dataset

gradio_client = pytest.importorskip("gradio_client")

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VAE_KWARGS = dict(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8,), norm_num_groups=4, num_bins=17)
GAN_KWARGS = dict(sample_size=8, out_channels=1, noise_dim=4, block_out_channels=(8, 16))


def image_files(gallery) -> list[str]:
    return [item["image"] if isinstance(item, dict) else item[0] for item in gallery]


@pytest.fixture(scope="module")
def model_ids(hub, tmp_path_factory) -> dict[str, str]:
    """A text-conditioned VAE and an unconditional GAN, saved and pushed with `hfgen push`."""
    tokenizer, text_encoder = make_tiny_text_components(["a handwritten digit seven", "a handwritten digit one"])
    vae = hfgen.VAEModel(condition_type="text", text_embed_dim=32, **VAE_KWARGS)
    pipelines = {
        "vae": hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder),
        "gan": hfgen.GANPipeline(generator=hfgen.GANGenerator(**GAN_KWARGS)),
    }
    ids = {}
    for family, pipeline in pipelines.items():
        folder = tmp_path_factory.mktemp(family)
        pipeline.save_pretrained(folder)
        ids[family] = f"{USER}/{family}-tiny"
        hfgen_main(["push", str(folder), ids[family]])
    return ids


@pytest.fixture(scope="module")
def app():
    return load_app(REPO / "spaces" / "gallery" / "app.py", "hfgen_space_gallery_app")


@pytest.fixture(scope="module")
def served(app, model_ids):
    """(gradio_client, local url, loaded models) of the gallery serving the pushed models."""
    models = app.load_models(model_ids)
    demo = app.build_demo(models)
    url = serve(demo)
    yield gradio_client.Client(url, verbose=False), url, models
    demo.close()


def test_models_load_from_the_hub(served, model_ids):
    _, _, models = served
    assert isinstance(models["vae"], hfgen.VAEPipeline) and isinstance(models["gan"], hfgen.GANPipeline)


def test_each_family_tab_generates_deterministically_with_timing(served):
    client, _, _ = served
    gallery, timing = client.predict("a handwritten digit seven", 7, 3, api_name="/generate_vae")
    again, _ = client.predict("a handwritten digit seven", 7, 3, api_name="/generate_vae")
    assert len(image_files(gallery)) == 3
    assert [Path(p).read_bytes() for p in image_files(gallery)] == [Path(p).read_bytes() for p in image_files(again)]
    assert timing.startswith("VAE: 3 image(s) in") and "ms per image" in timing

    # The unconditional GAN's tab has no prompt: seed, number of images, truncation psi.
    gallery, timing = client.predict(seed=1, num_images=2, truncation_psi=0.5, api_name="/generate_gan")
    assert len(image_files(gallery)) == 2 and timing.startswith("GAN: 2 image(s)")
    guided, _ = client.predict(
        prompt="a handwritten digit seven", seed=7, num_images=3, guidance_scale=3.0, api_name="/generate_vae"
    )
    assert [Path(p).read_bytes() for p in image_files(guided)] != [Path(p).read_bytes() for p in image_files(again)]


def test_family_extras(served, tmp_path):
    client, _, _ = served
    strip, timing = client.predict("", 0, 1, 5, api_name="/interpolate_vae")
    assert len(image_files(strip)) == 5 and "ms per image" in timing
    strip, _ = client.predict(start_seed=0, end_seed=1, num_steps=4, truncation_psi=0.7, api_name="/interpolate_gan")
    assert len(image_files(strip)) == 4

    digit = make_digits_dataset()[0]["image"].convert("RGB").resize((64, 64))
    digit.save(tmp_path / "digit.png")
    result = client.predict(gradio_client.handle_file(str(tmp_path / "digit.png")), api_name="/likelihood_vae")
    assert "bits/dim" in result and "lower bound (IWAE" in result
    # The score that corrects for simple images (hfgen.metrics.anomaly): bits/dim minus the PNG encoding's bits/dim.
    bits = float(re.search(r"\*\*(-?[\d.]+) bits/dim\*\*", result).group(1))
    png_bits = float(re.search(r"PNG encoding takes (-?[\d.]+) bits/dim", result).group(1))
    assert float(re.search(r"minus that: \*\*(-?[\d.]+)\*\*", result).group(1)) == pytest.approx(
        bits - png_bits, abs=2e-3
    )
    assert "/likelihood_gan" not in client.view_api(return_format="dict")["named_endpoints"]


def test_side_by_side_runs_every_family(served):
    client, _, _ = served
    vae_gallery, gan_gallery, table = client.predict("a handwritten digit one", 3, 2, api_name="/side_by_side")
    assert len(image_files(vae_gallery)) == 2 and len(image_files(gan_gallery)) == 2
    assert "| VAE | a handwritten digit one |" in table
    assert "| GAN | none (unconditional model) |" in table


@pytest.mark.parametrize(
    "api_name, arguments, message",
    [
        # Gradio 6 checks a Slider's or Number's bounds on the server too ("greater than maximum value 16"); the
        # handlers check again (hfgen.demo), for the inputs that have no bounded widget (prompt length, text).
        ("/generate_vae", dict(prompt="", seed=0, num_images=17), r"(Number of images|maximum value) .*16"),
        ("/generate_vae", dict(prompt="", seed=-1, num_images=2), r"(Seed|minimum value)"),
        ("/generate_vae", dict(prompt="x" * 201, seed=0, num_images=2), "the limit is 200"),
        (
            "/generate_vae",
            dict(prompt="a digit", seed=0, num_images=2, guidance_scale=0.5),
            r"(Guidance|minimum value)",
        ),
        ("/generate_gan", dict(seed=0, num_images=2, truncation_psi=1.5), r"(Truncation|maximum value 1)"),
        ("/interpolate_vae", dict(prompt="", start_seed=0, end_seed=1, num_steps=13), r"(Steps|maximum value) .*12"),
        ("/side_by_side", ("", 0, 100), r"(Images per family|maximum value) .*16"),
        ("/side_by_side", ("x" * 201, 0, 2), "the limit is 200"),
    ],
)
def test_limits_are_enforced_on_the_server(served, api_name, arguments, message):
    client, _, _ = served
    with pytest.raises(Exception, match=message):
        if isinstance(arguments, dict):
            client.predict(**arguments, api_name=api_name)
        else:
            client.predict(*arguments, api_name=api_name)


def test_missing_models_get_a_tab_that_says_so(app, hub):
    models = app.load_models({"vae": None, "gan": f"{USER}/no-such-model"})
    assert "HFGEN_MODEL_VAE" in models["vae"]
    assert "could not be loaded" in models["gan"]
    demo = app.build_demo(models)
    url = serve(demo)
    try:
        texts = [c.get("props", {}).get("value") for c in demo.config["components"]]
        assert any(isinstance(t, str) and "HFGEN_MODEL_VAE" in t for t in texts)
        assert any(isinstance(t, str) and "No family has a model yet" in t for t in texts)
        assert (
            "/side_by_side"
            not in gradio_client.Client(url, verbose=False).view_api(return_format="dict")["named_endpoints"]
        )
    finally:
        demo.close()


def test_a_new_family_is_one_entry_in_families(app, model_ids, monkeypatch):
    """A family's tab comes from its pipeline: a new family needs its Space variable in FAMILIES, and no code."""
    monkeypatch.setitem(app.FAMILIES, "diffusion", "HFGEN_MODEL_DIFFUSION")
    models = app.load_models({"diffusion": model_ids["gan"]})
    demo = app.build_demo(models)
    endpoints = demo.get_api_info()["named_endpoints"]
    assert {"/generate_diffusion", "/interpolate_diffusion", "/side_by_side"} <= set(endpoints)
    assert any(c.get("props", {}).get("label") == "Diffusion" for c in demo.config["components"])
    _, args = app.parse_args("gallery", ["--diffusion", "me/diffusion-digits"], app.FAMILIES)
    assert args.diffusion == "me/diffusion-digits"


def test_sixteen_concurrent_calls_all_succeed_within_the_queue_limit(served):
    client, _, models = served
    pipeline = models["vae"]
    active, peak, lock = [0], [0], threading.Lock()
    call = type(pipeline).__call__

    def counting_call(self, *args, **kwargs):  # the real pipeline, with a count of calls running at once
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            return call(self, *args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    type(pipeline).__call__ = counting_call
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        jobs = [client.submit("a handwritten digit seven", seed, 16, api_name="/generate_vae") for seed in range(16)]
        wait(jobs, timeout=120)
        results = [job.result() for job in jobs]
    finally:
        type(pipeline).__call__ = call
    assert all(len(image_files(gallery)) == 16 for gallery, _ in results)
    assert 1 <= peak[0] <= 2  # demo.queue(default_concurrency_limit=2)
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert growth_mib < 300, f"peak memory grew by {growth_mib:.0f} MiB over 16 concurrent calls"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("HFGEN_REQUIRE_BROWSER"),
    reason="needs Debian's chromium (apt-get install chromium), which .ci/run installs and then requires",
)
def test_browser_types_a_prompt_clicks_generate_and_sees_the_gallery(served, tmp_path):
    from playwright import sync_api

    _, url, _ = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page()
            page.goto(url)
            page.get_by_label("Prompt").first.fill("a handwritten digit seven")
            page.locator("#generate-vae").click()
            page.locator("#gallery-vae img").first.wait_for(timeout=30_000)
            page.get_by_text("ms per image").first.wait_for(timeout=30_000)
            assert page.locator("#gallery-vae img").count() >= 1
            screenshot = tmp_path / "gallery.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("HFGEN_SCREENSHOT_DIR"):  # keep it where a developer can look at it
        shutil.copy(screenshot, os.environ["HFGEN_SCREENSHOT_DIR"])


@pytest.mark.parametrize("space", ["gallery", "vae", "gan"])
def test_space_cards_are_deployable(space):
    card = SpaceCard.load(REPO / "spaces" / space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.sdk_version
    assert card.data.models and card.data.title
    assert (REPO / "spaces" / space / "requirements.txt").read_text().strip()


def test_space_deploy_then_run_the_deployed_app(hub, model_ids, tmp_path):
    hfgen_main(
        ["space", "deploy", str(REPO / "spaces" / "gallery"), f"{USER}/gallery", "--model", "vae=" + model_ids["vae"]]
    )
    api = HfApi()
    variables = {key: v.value for key, v in api.get_space_variables(f"{USER}/gallery").items()}
    assert variables == {"HFGEN_MODEL_VAE": model_ids["vae"]}
    local = Path(api.snapshot_download(f"{USER}/gallery", repo_type="space", local_dir=tmp_path / "space"))
    assert {"app.py", "README.md", "requirements.txt"} <= {p.name for p in local.iterdir()}

    deployed = load_app(local / "app.py", "hfgen_deployed_gallery_app")  # as the Space would run it
    models = deployed.load_models({"vae": variables.get("HFGEN_MODEL_VAE"), "gan": variables.get("HFGEN_MODEL_GAN")})
    assert isinstance(models["vae"], hfgen.VAEPipeline) and "HFGEN_MODEL_GAN" in models["gan"]

    with pytest.raises(SystemExit, match="FAMILY=REPO_ID"):
        hfgen_main(["space", "deploy", str(REPO / "spaces" / "gallery"), f"{USER}/gallery", "--model", "vae"])
    with pytest.raises(SystemExit, match="app.py"):  # the CLI says it without a traceback
        hfgen_main(["space", "deploy", str(tmp_path), f"{USER}/empty"])
    with pytest.raises(RuntimeError, match=r"deploying the Space .* was refused \(401\).*HF_TOKEN"):
        hfgen_main(["space", "deploy", str(REPO / "spaces" / "gallery"), f"{USER}/gallery", "--token", "bad"])


def test_push_cli_refuses_a_folder_without_a_pipeline(hub, tmp_path):
    with pytest.raises(SystemExit, match="model_index.json"):
        hfgen_main(["push", str(tmp_path), f"{USER}/nothing"])


def test_datasets_push_goes_through_datasets_push_to_hub(hub):
    hfgen_main(["datasets", "push", "digits", f"{USER}/digits"])
    repo = hub.get_repo(f"{USER}/digits", "dataset")
    assert any(path.endswith(".parquet") for path in repo.commits[repo.branches["main"]].files)
    # Read the pushed shards back (load_dataset(repo_id) would also ask the Hub's dataset viewer, a separate
    # service at datasets-server.<endpoint> that the local Hub does not run).
    local_dir = HfApi().snapshot_download(f"{USER}/digits", repo_type="dataset")
    loaded = datasets.load_dataset("parquet", data_dir=os.path.join(local_dir, "data"), split="train")
    local = make_digits_dataset()
    assert loaded.num_rows == local.num_rows == 1797
    assert loaded.features["label"].names == local.features["label"].names
    assert loaded[5]["text"] == local[5]["text"]
    assert np.array_equal(np.asarray(loaded[5]["image"]), np.asarray(local[5]["image"]))


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_family_space_serves_a_model_pulled_from_the_hub(model_ids, family):
    """spaces/<family>/app.py, as its Space runs it: the model id (HFGEN_MODEL) is a Hub repo."""
    app = load_app(REPO / "spaces" / family / "app.py", f"hfgen_space_{family}_from_hub")
    demo = app.build_demo(hfgen.load_pipeline(model_ids[family]), model_name=model_ids[family])
    client = gradio_client.Client(serve(demo), verbose=False)
    try:
        arguments = dict(prompt="", seed=3, num_images=2) if family == "vae" else dict(seed=3, num_images=2)
        first, second = (
            [Path(p).read_bytes() for p in image_files(client.predict(**arguments, api_name="/generate")[0])]
            for _ in range(2)
        )
        assert len(first) == 2 and first == second
    finally:
        demo.close()


def test_diffusion_flow_and_autoregressive_tabs_generate(app, tmp_path):
    """The families added after the gallery get their tabs from their pipelines' capabilities alone: each generates
    through gradio_client, the diffusion tab with its steps and class, the flow tab with its temperature, and the
    autoregressive tab completes an image from its top rows."""
    from test_autoregressive import tiny_pipeline as tiny_autoregressive
    from test_diffusion import tiny_pipeline as tiny_diffusion
    from test_flow import tiny_flow

    models = {
        "diffusion": tiny_diffusion("class"),
        "flow": hfgen.FlowPipeline(flow=tiny_flow()),
        "autoregressive": tiny_autoregressive("pixelcnn", sample_size=4, in_channels=1, num_levels=5),
    }
    demo = app.build_demo(models)
    url = serve(demo)
    try:
        client = gradio_client.Client(url, verbose=False)
        endpoints = client.view_api(return_format="dict")["named_endpoints"]
        assert {"/generate_diffusion", "/generate_flow", "/generate_autoregressive"} <= set(endpoints)
        gallery, timing = client.predict(
            class_label=3, seed=0, num_images=2, num_inference_steps=3, api_name="/generate_diffusion"
        )
        assert len(image_files(gallery)) == 2 and timing.startswith("Diffusion: 2 image(s)")
        # The diffusion extras over the API: a sampler, the trajectory strip, inpainting with a painted mask.
        gallery, _ = client.predict(
            class_label=3, seed=0, num_images=1, num_inference_steps=3, sampler="DDIM", api_name="/generate_diffusion"
        )
        strip, _ = client.predict(
            class_label=3, seed=0, num_inference_steps=3, sampler="DDIM", api_name="/trajectory_diffusion"
        )
        assert (
            len(image_files(strip)) == 4
            and Path(image_files(strip)[-1]).read_bytes() == Path(image_files(gallery)[0]).read_bytes()
        )  # x_T and 3 steps, ending at the sample
        PIL.Image.new("RGB", (16, 16), "white").save(tmp_path / "image.png")
        strokes = PIL.Image.new("RGBA", (16, 16), (0, 0, 0, 0))
        strokes.paste((255, 255, 255, 255), (0, 8, 16, 16))
        strokes.save(tmp_path / "strokes.png")
        editor = {
            "background": gradio_client.handle_file(str(tmp_path / "image.png")),
            "layers": [gradio_client.handle_file(str(tmp_path / "strokes.png"))],
            "composite": None,
        }
        inpainted, _ = client.predict(
            image=editor, mask=None, class_label=3, seed=0, num_inference_steps=3, api_name="/inpaint_diffusion"
        )
        repainted = np.asarray(PIL.Image.open(image_files(inpainted)[0]).convert("L"))
        assert (repainted[: len(repainted) // 2] == 255).all() and (repainted[len(repainted) // 2 :] != 255).any()
        gallery, _ = client.predict(seed=0, num_images=2, temperature=0.5, api_name="/generate_flow")
        assert len(image_files(gallery)) == 2
        strip, _ = client.predict(start_seed=0, end_seed=1, num_steps=4, api_name="/interpolate_flow")
        assert len(image_files(strip)) == 4
        score = client.predict(gradio_client.handle_file(str(tmp_path / "image.png")), api_name="/likelihood_flow")
        assert "bits/dim" in score and "exact" in score  # a flow's likelihood is exact
        gallery, _ = client.predict(seed=0, num_images=2, api_name="/generate_autoregressive")
        assert len(image_files(gallery)) == 2

        white = tmp_path / "white.png"
        Image.new("RGB", (16, 16), "white").save(white)
        upload = {"background": gradio_client.handle_file(str(white)), "layers": [], "composite": None}
        gallery, timing = client.predict(
            image=upload, kept_rows=2, seed=0, num_images=2, temperature=0.5, api_name="/complete_autoregressive"
        )
        files = image_files(gallery)
        completed = np.stack([np.asarray(Image.open(f).convert("L").resize((4, 4), Image.NEAREST)) for f in files])
        assert completed.shape == (2, 4, 4) and timing.startswith("Autoregressive: 2 image(s)")
        assert (completed[:, :2] == 255).all() and (completed[:, 2:] != 255).any()  # top rows kept, the rest drawn
    finally:
        demo.close()
