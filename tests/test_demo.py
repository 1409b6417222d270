"""`hfgen.demo.build_tab`: the tab of a model follows what its pipeline declares (capabilities, sampling_controls,
num_classes), with nothing family-specific in the Space code. Built, not served (the Space tests serve them)."""

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import make_tiny_text_components

import hfgen
from hfgen import demo

VAE_KWARGS = dict(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8,), norm_num_groups=4, num_bins=17)
GAN_KWARGS = dict(sample_size=8, out_channels=1, noise_dim=4, block_out_channels=(8, 16))


class StepsVAEPipeline(hfgen.VAEPipeline):
    """A VAE that declares what no landed family has yet: sampling steps (with a default) and inpainting."""

    family_capabilities = hfgen.VAEPipeline.family_capabilities | {"steps", "inpainting"}
    default_sampling_kwargs = {"num_inference_steps": 7}

    def __call__(self, *args, num_inference_steps: int = 50, **kwargs):
        self.steps_seen = num_inference_steps
        return super().__call__(*args, **kwargs)

    def inpaint(self, image, mask, prompt=None, class_labels=None, generator=None, output_type="pil"):
        noise = self(batch_size=1, class_labels=class_labels, generator=generator, output_type="pt").images * 2 - 1
        keep = torch.from_numpy(np.asarray(mask) == 0)  # (h, w)
        return self.postprocess(torch.where(keep, image, noise), output_type)


def make(kind: str):
    if kind == "text vae":
        tokenizer, text_encoder = make_tiny_text_components(["a handwritten digit seven", "a handwritten digit one"])
        vae = hfgen.VAEModel(condition_type="text", text_embed_dim=32, **VAE_KWARGS)
        return hfgen.VAEPipeline(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder)
    if kind == "class vae":
        return hfgen.VAEPipeline(vae=hfgen.VAEModel(condition_type="class", num_classes=10, **VAE_KWARGS))
    if kind == "class steps vae":
        return StepsVAEPipeline(vae=hfgen.VAEModel(condition_type="class", num_classes=3, **VAE_KWARGS))
    if kind == "class gan":
        return hfgen.GANPipeline(generator=hfgen.GANGenerator(condition_type="class", num_classes=4, **GAN_KWARGS))
    return hfgen.GANPipeline(generator=hfgen.GANGenerator(**GAN_KWARGS))


def tab(pipeline, family: str | None = None):
    """({api name: [parameter names]}, {label: component config}, the Blocks) of a tab built for `pipeline`."""
    with gr.Blocks() as blocks:
        demo.build_tab(pipeline, family=family)
    endpoints = {
        name: [p["parameter_name"] for p in info["parameters"]]
        for name, info in blocks.get_api_info()["named_endpoints"].items()
    }
    widgets = {c["props"]["label"]: c for c in blocks.config["components"] if c.get("props", {}).get("label")}
    return endpoints, widgets, blocks


def test_class_vae_gets_a_class_dropdown_and_no_prompt():
    endpoints, widgets, _ = tab(make("class vae"))
    assert "Prompt" not in widgets and "Negative prompt" not in widgets
    dropdown = widgets["Class"]["props"]
    assert tuple(dropdown["choices"][0]) == ("0", 0) and tuple(dropdown["choices"][-1]) == ("none (unconditional)", 10)
    assert dropdown["value"] == 10  # the null class
    assert endpoints["/generate"] == ["class_label", "seed", "num_images", "guidance_scale", "temperature"]
    assert endpoints["/interpolate"] == ["class_label", "start_seed", "end_seed", "num_steps"]
    assert endpoints["/likelihood"] == ["image", "class_label"]
    assert "/inpaint" not in endpoints
    assert widgets["Temperature (prior standard deviation)"]["props"]["maximum"] == 1.5


def test_unconditional_gan_gets_no_condition_no_guidance_and_no_likelihood():
    endpoints, widgets, _ = tab(make("gan"))
    assert not {"Prompt", "Class", "Guidance scale", "Negative prompt", "Sampling steps"} & set(widgets)
    assert endpoints == {
        "/generate": ["seed", "num_images", "truncation_psi"],
        "/interpolate": ["start_seed", "end_seed", "num_steps", "truncation_psi"],
    }


def test_text_vae_gets_prompt_guidance_and_negative_prompt():
    endpoints, widgets, blocks = tab(make("text vae"), family="vae")
    assert {"Prompt", "Guidance scale", "Negative prompt"} <= set(widgets) and "Class" not in widgets
    assert endpoints["/generate_vae"][:5] == ["prompt", "seed", "num_images", "guidance_scale", "negative_prompt"]
    assert set(endpoints) == {"/generate_vae", "/interpolate_vae", "/likelihood_vae"}
    elem_ids = {c["props"].get("elem_id") for c in blocks.config["components"]}
    assert {"generate-vae", "gallery-vae", "timing-vae"} <= elem_ids  # what the browser test clicks and reads


def test_class_gan_guides_by_the_null_class():
    endpoints, widgets, _ = tab(make("class gan"))
    assert endpoints["/generate"] == ["class_label", "seed", "num_images", "guidance_scale", "truncation_psi"]
    assert len(widgets["Class"]["props"]["choices"]) == 5


def test_declared_steps_and_inpainting_get_their_sections():
    pipeline = make("class steps vae")
    endpoints, widgets, blocks = tab(pipeline)
    assert widgets["Sampling steps"]["props"]["value"] == 7  # the pipeline's default_sampling_kwargs
    assert endpoints["/generate"] == [
        "class_label", "seed", "num_images", "guidance_scale", "num_inference_steps", "temperature"
    ]  # fmt: skip
    assert endpoints["/inpaint"] == ["image", "mask", "class_label", "seed"]

    handlers = {fn.api_name: fn.fn for fn in blocks.fns.values()}
    images, timing = handlers["generate"](
        class_label=1, seed=0, num_images=2, guidance_scale=1.0, num_inference_steps=3, temperature=1.0
    )
    assert len(images) == 2 and pipeline.steps_seen == 3 and "ms per image" in timing
    with pytest.raises(gr.Error, match="Sampling steps must be from 1 to 1000"):
        handlers["generate"](
            class_label=1, seed=0, num_images=1, guidance_scale=1.0, num_inference_steps=0, temperature=1.0
        )

    from PIL import Image

    image, mask = Image.new("RGB", (32, 32), "white"), Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 16))
    inpainted, _ = handlers["inpaint"](image=image, mask=mask, class_label=3, seed=0)
    assert len(inpainted) == 1
    pixels = inpainted[0].convert("L").resize((8, 8), Image.NEAREST)
    assert pixels.getpixel((7, 7)) == 255 and pixels.getpixel((0, 0)) != 255  # kept outside the mask only
    with pytest.raises(gr.Error, match="mask"):
        handlers["inpaint"](image=image, mask=None, class_label=3, seed=0)

    # Painted in the browser: the ImageEditor's strokes over the uploaded image are the mask.
    strokes = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (0, 0, 16, 16))
    editor = {"background": image.convert("RGBA"), "layers": [strokes], "composite": None}
    painted, _ = handlers["inpaint"](image=editor, mask=None, class_label=3, seed=0)
    assert np.array_equal(np.asarray(painted[0]), np.asarray(inpainted[0]))  # the same as the uploaded mask
    with pytest.raises(gr.Error, match="Paint over the part"):
        handlers["inpaint"](image={**editor, "layers": []}, mask=None, class_label=3, seed=0)


def test_diffusion_tab_swaps_samplers_per_request_and_shows_the_trajectory():
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
    from test_diffusion import tiny_pipeline

    pipeline = tiny_pipeline("class")
    endpoints, widgets, blocks = tab(pipeline)
    labels = [c["props"]["label"] for c in blocks.config["components"] if c.get("props", {}).get("label")]
    assert labels.count("Sampling steps") == 1  # one slider, the one that reaches the pipeline
    # At most the 20 timesteps the tiny model was trained with (the pipeline refuses more), its default 50 cut to 20.
    assert (widgets["Sampling steps"]["props"]["maximum"], widgets["Sampling steps"]["props"]["value"]) == (20, 20)
    assert widgets["Sampler"]["props"]["value"] == "DDPM"  # the saved scheduler's
    assert [choice[0] for choice in widgets["Sampler"]["props"]["choices"]] == ["DDPM", "DDIM", "DPM-Solver++"]
    assert "sampler" in endpoints["/generate"] and "sampler" in endpoints["/trajectory"]
    handlers = {fn.api_name: fn.fn for fn in blocks.fns.values()}
    settings = dict(class_label=2, seed=3, guidance_scale=1.0, num_inference_steps=4, eta=0.0)

    images, _ = handlers["generate"](num_images=1, sampler="DPM-Solver++", **settings)
    # Each request samples with a scheduler of its own: the shared pipeline's was never set up or swapped.
    assert type(pipeline.scheduler) is DDPMScheduler and pipeline.scheduler.num_inference_steps is None
    swapped = hfgen.DiffusionImagePipeline(unet=pipeline.unet, scheduler=DPMSolverMultistepScheduler.from_config(
        pipeline.scheduler.config), num_bins=17)  # fmt: skip
    expected = swapped.generate(1, class_labels=2, seed=3, num_inference_steps=4, output_type="pil")
    assert np.array_equal(np.asarray(images[0]), np.asarray(demo.enlarge(expected)[0]))

    strip, timing = handlers["trajectory"](sampler="DPM-Solver++", **settings)
    assert len(strip) == min(demo.TRAJECTORY_STEPS, 4 + 1) and "1 image(s)" in timing  # x_T, then after each step
    assert np.array_equal(np.asarray(strip[-1]), np.asarray(images[0]))  # it ends at the sample
    assert not np.array_equal(np.asarray(strip[0]), np.asarray(strip[-1]))  # and starts from noise
    with pytest.raises(gr.Error, match="Sampler must be one of DDPM, DDIM, DPM-Solver"):
        handlers["generate"](num_images=1, sampler="Euler", **settings)


def test_autoregressive_completion_keeps_the_top_rows_and_draws_the_rest():
    from PIL import Image
    from test_autoregressive import tiny_pipeline

    endpoints, widgets, blocks = tab(tiny_pipeline("pixelcnn", sample_size=4, num_levels=5), family="autoregressive")
    assert endpoints["/complete_autoregressive"] == ["image", "kept_rows", "seed", "num_images", "temperature"]
    assert widgets["Rows kept from the top"]["props"]["maximum"] == 3  # at least one row to draw
    complete = {fn.api_name: fn.fn for fn in blocks.fns.values()}["complete_autoregressive"]

    # What the editor passes: the upload as background, with the drawing over it as composite (white here).
    black, white = Image.new("RGB", (32, 32), "black"), Image.new("RGB", (32, 32), "white")
    drawn = {"background": black, "layers": [], "composite": white}
    images, timing = complete(image=drawn, kept_rows=2, seed=0, num_images=3, temperature=1.0)
    pixels = np.stack([np.asarray(image.convert("L").resize((4, 4), Image.NEAREST)) for image in images])
    assert pixels.shape == (3, 4, 4) and "3 image(s)" in timing
    assert (pixels[:, :2] == 255).all()  # the kept rows, from the composite
    assert (pixels[:, 2:] != 255).any() and not (pixels[0] == pixels[1:]).all()  # drawn, differently per image
    again, _ = complete(image=drawn, kept_rows=2, seed=0, num_images=3, temperature=1.0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, images, strict=True))
    with pytest.raises(gr.Error, match="Rows kept from the top must be from 1 to 3"):
        complete(image=drawn, kept_rows=4, seed=0, num_images=1, temperature=1.0)
    with pytest.raises(gr.Error, match="Upload an image"):
        complete(image=None, kept_rows=2, seed=0, num_images=1, temperature=1.0)

    # A class model: the class (and guidance) apply to every completion.
    class_pipeline = tiny_pipeline("pixelcnn", sample_size=4, num_levels=5, condition_type="class", num_classes=3)
    endpoints, _, blocks = tab(class_pipeline)
    assert endpoints["/complete"] == [
        "image", "kept_rows", "class_label", "seed", "num_images", "guidance_scale", "temperature"
    ]  # fmt: skip
    complete = {fn.api_name: fn.fn for fn in blocks.fns.values()}["complete"]
    images, _ = complete(
        image=white, kept_rows=1, class_label=2, seed=0, num_images=2, guidance_scale=2.0, temperature=1.0
    )
    assert len(images) == 2


def test_class_flow_gets_guidance_and_it_runs():
    """A conditional flow declares guidance (by resampling), so its tab gets the slider and the handler guides."""
    flow = hfgen.FlowModel(sample_size=8, num_bins=17, hidden_channels=8, steps_per_scale=2, condition_type="class",
                           num_classes=10)  # fmt: skip
    endpoints, widgets, blocks = tab(hfgen.FlowPipeline(flow=flow.eval()), family="flow")
    assert endpoints["/generate_flow"] == ["class_label", "seed", "num_images", "guidance_scale", "temperature"]
    handlers = {fn.api_name: fn.fn for fn in blocks.fns.values()}
    images, _ = handlers["generate_flow"](class_label=3, seed=0, num_images=2, guidance_scale=3.0, temperature=0.7)
    assert len(images) == 2
