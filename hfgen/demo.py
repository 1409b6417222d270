"""What every hfgen Gradio Space shares: the tab of a model, built from what its pipeline declares, server-side input
checks, image display, timing, and the command line.

[`build_tab`] reads only `pipeline.capabilities`, `pipeline.sampling_controls`, `pipeline.default_sampling_kwargs` and
`pipeline.num_classes`, and samples only through `pipeline.generate`, so a new family gets its tab (in its own Space
and in the gallery) by declaring those, with no Space code of its own:

- "prompt": a prompt box; "class": a class dropdown (its last entry is the null class, "none"); neither: no condition.
- "guidance": a guidance scale slider (and a negative prompt for text models); "steps": a sampling steps slider.
- `sampling_controls`: one slider per family knob (VAE temperature, GAN truncation psi), passed to `__call__`.
- "interpolation": two seeds and a number of steps, through `pipeline.interpolate(start_seed, end_seed, num_steps)`.
- "likelihood": an uploaded image's bits/dim, through `pipeline.log_likelihood`.
- "inpainting": an image and a mask, through `pipeline.inpaint(image, mask)`.
- `samplers` ({label: scheduler class}, diffusion): a sampler dropdown, the scheduler swapped the diffusers way.
- "trajectory": one sample's denoising trajectory, through `pipeline(..., return_trajectory=True)`.
- "completion": an uploaded or drawn image and a number of top rows to keep, through `pipeline.complete(image, mask)`
  (the mask keeps those rows; the rest is drawn).

A pipeline with a scheduler samples each request on a copy of itself with a scheduler of its own (`own_scheduler`):
schedulers keep state between steps, and a Space runs two requests at once.

Every endpoint's API parameters are named like the pipeline's arguments (`prompt`, `class_label`, `seed`,
`num_images`, `guidance_scale`, `negative_prompt`, `num_inference_steps`, `temperature`, ...), so `gradio_client` can
call them by keyword. The limits are checked here, on the server, because a Space's API can be called without its
widgets (and their `minimum`/`maximum`) by `gradio_client` or plain HTTP. Each check raises `gr.Error`, which Gradio
shows to the user and returns to API callers as an error naming the allowed range.
"""

import argparse
import copy
import functools
import inspect
import math
import os
import re
import time
from collections.abc import Callable

import gradio as gr
import numpy as np
import PIL.Image
import torch

import hfgen
from hfgen.layers import quantize
from hfgen.metrics.anomaly import input_complexity
from hfgen.metrics.completion import keep_top_rows

MAX_IMAGES = 16
MAX_SEED = 2**31 - 1
MIN_STEPS, MAX_STEPS = 2, 12  # interpolation steps
MAX_INFERENCE_STEPS = 1000  # sampling steps of an iterative sampler
MAX_GUIDANCE_SCALE = 20.0
MAX_PROMPT_CHARS = 200
DISPLAY_SIZE = 128  # pixels of the longer side shown in galleries
TRAJECTORY_STEPS = 8  # snapshots in a denoising trajectory strip

# What a capability adds to a model's description.
CAPABILITY_NAMES = {
    "guidance": "classifier-free guidance",
    "steps": "a number of sampling steps",
    "interpolation": "interpolation between two seeds",
    "likelihood": "the likelihood of an uploaded image",
    "inpainting": "inpainting",
    "trajectory": "the denoising trajectory",
    "completion": "completion of an image from its top rows",
}


# ----- checks --------------------------------------------------------------------------------------------------------
def check_int(value, name: str, low: int, high: int) -> int:
    """An integer in [low, high] (a float like 3.0 counts), or a gr.Error saying what is allowed."""
    if isinstance(value, bool) or value is None:
        raise gr.Error(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    if isinstance(value, float):
        if not value.is_integer():
            raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value}.")
        value = int(value)
    if not isinstance(value, int):
        raise gr.Error(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    if not low <= value <= high:
        raise gr.Error(f"{name} must be from {low} to {high}, got {value}.")
    return value


def check_float(value, name: str, low: float, high: float) -> float:
    """A number in [low, high], or a gr.Error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise gr.Error(f"{name} must be a number from {low} to {high}, got {value!r}.")
    return float(value)


def check_prompt_length(prompt) -> str:
    """The stripped prompt ("" for none), or a gr.Error if it is not text or longer than MAX_PROMPT_CHARS."""
    if prompt is not None and not isinstance(prompt, str):
        raise gr.Error(f"The prompt must be text, got {prompt!r}.")
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    return prompt


def check_prompt(pipeline, prompt) -> str | None:
    """The prompt to pass to the pipeline (None for no text), or a gr.Error."""
    prompt = check_prompt_length(prompt)
    if not prompt:
        return None
    if "prompt" not in pipeline.capabilities:
        raise gr.Error("This model was trained without text: leave the prompt empty.")
    return prompt


def check_class(pipeline, value) -> int | None:
    """A class label to pass to the pipeline (None for the null class, `num_classes`), or a gr.Error."""
    label = check_int(value, "Class", 0, pipeline.num_classes)
    return None if label == pipeline.num_classes else label


def run(function, *args, **kwargs):
    """(function's result, wall seconds); a ValueError of the pipeline becomes a gr.Error with its message."""
    start = time.perf_counter()
    try:
        result = function(*args, **kwargs)
    except ValueError as error:
        raise gr.Error(str(error)) from error
    return result, time.perf_counter() - start


# ----- display -------------------------------------------------------------------------------------------------------
def enlarge(images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
    """Nearest-neighbour upscaling, so that tiny samples (8x8 digits) stay crisp on screen."""
    enlarged = []
    for image in images:
        scale = max(1, DISPLAY_SIZE // max(image.size))
        enlarged.append(image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST))
    return enlarged


def timing_text(seconds: float, num_images: int) -> str:
    return f"{num_images} image(s) in {seconds:.3f} s ({1000 * seconds / max(1, num_images):.1f} ms per image)"


def family_title(pipeline) -> str:
    """ "VAE" for a `VAEPipeline`."""
    return type(pipeline).__name__.removesuffix("Pipeline") or type(pipeline).__name__


def describe(pipeline, model_name: str | None = None) -> str:
    """A paragraph on the model: where it comes from, what its pipeline does, how it is conditioned, and its extras."""
    name = model_name or getattr(pipeline, "name_or_path", None) or "an in-memory pipeline"
    summary = re.sub(r"\[`~?([\w.]+)`\]", r"`\1`", (type(pipeline).__doc__ or "").strip().split("\n\n")[0])
    capabilities = pipeline.capabilities
    if "prompt" in capabilities:
        condition = "It is **text-conditioned**: describe the image in the prompt, or leave it empty."
    elif "class" in capabilities:
        condition = "It is **class-conditioned**: pick a class, or none for unconditional samples."
    else:
        condition = "It is **unconditional**: it takes no text and no class."
    extras = [text for capability, text in CAPABILITY_NAMES.items() if capability in capabilities]
    return (
        f"Model: `{name}` ({type(pipeline).__name__}). {' '.join(summary.split())} {condition}"
        + (f" It offers {', '.join(extras)}." if extras else "")
        + " The same seed always gives the same images."
    )


# ----- the tab of one model ------------------------------------------------------------------------------------------
# The API parameter of each condition widget -> the pipeline's argument.
CONDITION_ARGUMENTS = {"prompt": "prompt", "class_label": "class_labels"}


def accepts(function, name: str) -> bool:
    return name in inspect.signature(function).parameters


def taken_by(function, inputs: dict) -> dict:
    """The entries of {API parameter: widget or (widget, check)} whose pipeline argument `function` takes."""
    return {k: value for k, value in inputs.items() if accepts(function, CONDITION_ARGUMENTS.get(k, k))}


def _slider_step(low: float, high: float, default: float) -> float:
    if all(isinstance(value, int) for value in (low, high, default)):  # an integer control: (1, 8, 4, "Order")
        return 1
    return 10 ** math.floor(math.log10((high - low) / 20))


def condition_input(pipeline) -> dict[str, gr.components.Component]:
    """{API parameter: widget} for what the model is conditioned on: a prompt box, a class dropdown, or nothing."""
    if "prompt" in pipeline.capabilities:
        prompt = gr.Textbox(
            value="",
            label="Prompt",
            placeholder="Describe the image (empty: unconditional)",
            max_length=MAX_PROMPT_CHARS,  # the browser's limit only: the handlers check it again
        )
        return {"prompt": prompt}
    if "class" in pipeline.capabilities:
        num_classes = pipeline.num_classes
        names = getattr(pipeline.conditioned_model.config, "class_names", None) or [str(i) for i in range(num_classes)]
        choices = [(name, label) for label, name in enumerate(names)] + [("none (unconditional)", num_classes)]
        return {"class_label": gr.Dropdown(choices=choices, value=num_classes, label="Class")}
    return {}


def sampling_inputs(pipeline) -> dict[str, tuple[gr.components.Component, Callable]]:
    """{`__call__` argument: (widget, server-side check)}: guidance, steps and the family's own controls."""
    capabilities, defaults = pipeline.capabilities, pipeline.default_sampling_kwargs
    inputs = {}
    if "guidance" in capabilities:
        scale = gr.Slider(
            1.0, MAX_GUIDANCE_SCALE, value=defaults.get("guidance_scale", 1.0), step=0.5, label="Guidance scale"
        )
        inputs["guidance_scale"] = (
            scale,
            functools.partial(check_float, name="Guidance scale", low=1.0, high=MAX_GUIDANCE_SCALE),
        )
        if "prompt" in capabilities:
            negative = gr.Textbox(
                value="", label="Negative prompt", placeholder="What to guide away from", max_length=MAX_PROMPT_CHARS
            )
            inputs["negative_prompt"] = (negative, check_prompt_length)
    if "steps" in capabilities:
        # At most the steps the model was trained with (its scheduler's num_train_timesteps): the pipeline refuses more
        scheduler_config = getattr(getattr(pipeline, "scheduler", None), "config", {})
        most = min(MAX_INFERENCE_STEPS, scheduler_config.get("num_train_timesteps", MAX_INFERENCE_STEPS))
        default = (
            defaults.get("num_inference_steps")
            or inspect.signature(pipeline.__call__).parameters["num_inference_steps"].default
        )
        steps = gr.Slider(1, most, value=min(default, most), step=1, label="Sampling steps")
        inputs["num_inference_steps"] = (
            steps,
            functools.partial(check_int, name="Sampling steps", low=1, high=most),
        )
    for argument, (low, high, default, label) in pipeline.sampling_controls.items():
        if argument in inputs:  # e.g. num_inference_steps, which the "steps" capability already shows
            raise ValueError(f"{type(pipeline).__name__}.sampling_controls repeats {argument!r}, which has a control.")
        step = _slider_step(low, high, default)
        slider = gr.Slider(low, high, value=defaults.get(argument, default), step=step, label=label)
        check = check_int if step == 1 else check_float
        inputs[argument] = (slider, functools.partial(check, name=label, low=low, high=high))
    return inputs


def sampler_input(pipeline) -> dict[str, gr.components.Component]:
    """{"sampler": dropdown} of the family's `samplers`, on the saved scheduler's by default; {} without samplers."""
    if not pipeline.samplers:
        return {}
    labels = list(pipeline.samplers)
    saved = type(pipeline.scheduler)
    default = next((label for label, cls in pipeline.samplers.items() if cls is saved), labels[0])
    return {"sampler": gr.Dropdown(choices=labels, value=default, label="Sampler")}


def own_scheduler(pipeline, sampler: str | None = None):
    """`pipeline` for one request: a shallow copy (the same models, no weights copied) with its own scheduler, built
    the diffusers way (`Scheduler.from_config(pipe.scheduler.config)`) from the `sampler` label or the saved class.
    Schedulers keep state between steps (`set_timesteps`, DPM-Solver++'s last outputs), so two requests must never
    share one. A pipeline without a scheduler is returned as it is."""
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is None:
        return pipeline
    if sampler is None:
        scheduler_class = type(scheduler)
    elif sampler in pipeline.samplers:
        scheduler_class = pipeline.samplers[sampler]
    else:
        raise gr.Error(f"Sampler must be one of {', '.join(pipeline.samplers)}; got {sampler!r}.")
    request = copy.copy(pipeline)
    request.scheduler = scheduler_class.from_config(scheduler.config)
    return request


def read_inputs(pipeline, values: dict, controls: dict) -> dict:
    """The checked keyword arguments for the pipeline from an endpoint's API values: the condition (`prompt` or
    `class_labels`) and the sampling controls present in `values`."""
    kwargs = {}
    if "prompt" in values:
        kwargs["prompt"] = check_prompt(pipeline, values["prompt"])
    if "class_label" in values:
        kwargs["class_labels"] = check_class(pipeline, values["class_label"])
    for argument, (_, check) in controls.items():
        if argument in values:
            kwargs[argument] = check(values[argument])
    if kwargs.get("negative_prompt") == "":
        del kwargs["negative_prompt"]
    elif "negative_prompt" in kwargs and (kwargs.get("prompt") is None or kwargs.get("guidance_scale", 1.0) == 1.0):
        raise gr.Error("A negative prompt needs a prompt and a guidance scale above 1.")
    return kwargs


def model_image(pipeline, image) -> torch.Tensor:
    """An uploaded image as the model takes it: resized (area average) to the model's size and channels, and, for a
    model of `num_bins` grey levels, snapped to them. (1, c, s, s) in [0, 1], as pipelines take images."""
    if image is None:
        raise gr.Error("Upload an image first.")
    channels, size = pipeline.image_format
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    images = pipeline.model_images(image.convert(mode).resize((size, size), PIL.Image.BOX))
    num_bins = getattr(pipeline.conditioned_model.config, "num_bins", None)
    images = quantize(images, num_bins) if num_bins else images  # `preprocess` gives the models' [-1, 1]
    return (images + 1) / 2


def build_tab(pipeline, title: str | None = None, family: str | None = None) -> None:
    """Builds, inside a `gr.Blocks` (or a `gr.Tab` of one), the demo of `pipeline` from what it declares (see the
    module docstring). `title` prefixes the timing text; `family` suffixes the API names (`/generate_<family>`, else
    `/generate`) and the element ids (`generate-<family>`, `gallery-<family>`, `timing-<family>`)."""
    capabilities = pipeline.capabilities

    def name(base: str, separator: str = "_") -> str:
        return f"{base}{separator}{family}" if family else base

    def timing(seconds: float, num_images: int) -> str:
        return f"{title}: {timing_text(seconds, num_images)}" if title else timing_text(seconds, num_images)

    # 1. Sampling: the condition, a seed, a number of images, and the pipeline's controls
    condition = condition_input(pipeline)
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images")
    with gr.Row():
        sampler = sampler_input(pipeline)
        controls = sampling_inputs(pipeline)
    button = gr.Button("Generate", variant="primary", elem_id=name("generate", "-"))
    samples = gr.Gallery(label="Samples", columns=8, format="png", object_fit="contain", elem_id=name("gallery", "-"))
    samples_time = gr.Markdown(elem_id=name("timing", "-"))

    def generate(**values):
        """Samples `num_images` images with `seed` through `pipeline.generate`; returns them and the time taken."""
        seed = check_int(values.pop("seed"), "Seed", 0, MAX_SEED)
        count = check_int(values.pop("num_images"), "Number of images", 1, MAX_IMAGES)
        request = own_scheduler(pipeline, values.pop("sampler", None))
        kwargs = read_inputs(pipeline, values, controls)
        images, seconds = run(request.generate, count, seed=seed, output_type="pil", **kwargs)
        return enlarge(images), timing(seconds, len(images))

    inputs = {
        **condition,
        "seed": seed,
        "num_images": num_images,
        **sampler,
        **{k: widget for k, (widget, _) in controls.items()},
    }
    button.click(generate, inputs_kwargs=inputs, outputs=[samples, samples_time], api_name=name("generate"))

    # 2. What the family adds
    if "interpolation" in capabilities:
        _interpolation_section(pipeline, condition, controls, name, timing)
    if "likelihood" in capabilities:
        _likelihood_section(pipeline, condition, name)
    if "inpainting" in capabilities:
        _inpainting_section(pipeline, condition, controls, name, timing)
    if "trajectory" in capabilities:
        _trajectory_section(pipeline, condition, seed, sampler, controls, name, timing)
    if "completion" in capabilities:
        _completion_section(pipeline, condition, controls, name, timing)


def _interpolation_section(pipeline, condition: dict, controls: dict, name, timing) -> None:
    gr.Markdown("### Interpolation\nThe images on the path the pipeline takes between the latent noise of two seeds.")
    with gr.Row():
        start_seed = gr.Number(label="Start seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        end_seed = gr.Number(label="End seed", value=1, precision=0, minimum=0, maximum=MAX_SEED)
        num_steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, label="Steps")
    button = gr.Button("Interpolate")
    strip = gr.Gallery(label="Interpolation", columns=MAX_STEPS, format="png", object_fit="contain")
    strip_time = gr.Markdown()
    # The tab's condition and controls that `interpolate` takes too (the GAN's truncation; not the VAE's temperature).
    condition, controls = taken_by(pipeline.interpolate, condition), taken_by(pipeline.interpolate, controls)

    def interpolate(**values):
        """`num_steps` images between the latent noise of `start_seed` and `end_seed`, with the time taken."""
        seeds = [
            check_int(values.pop(key), label, 0, MAX_SEED)
            for key, label in (("start_seed", "Start seed"), ("end_seed", "End seed"))
        ]
        steps = check_int(values.pop("num_steps"), "Steps", MIN_STEPS, MAX_STEPS)
        kwargs = read_inputs(pipeline, values, controls)
        images, seconds = run(pipeline.interpolate, *seeds, num_steps=steps, output_type="pil", **kwargs)
        return enlarge(images), timing(seconds, len(images))

    inputs = {**condition, "start_seed": start_seed, "end_seed": end_seed, "num_steps": num_steps}
    inputs.update({k: widget for k, (widget, _) in controls.items()})
    button.click(interpolate, inputs_kwargs=inputs, outputs=[strip, strip_time], api_name=name("interpolate"))


def _likelihood_section(pipeline, condition: dict, name) -> None:
    gr.Markdown("### Likelihood of an image\nHow typical the model finds an uploaded image, in bits per dimension.")
    image = gr.Image(label="Image", type="pil", image_mode="RGB")
    button = gr.Button("Score")
    result = gr.Markdown()
    condition = taken_by(pipeline.log_likelihood, condition)  # p(x | prompt or class) where the family gives it

    def likelihood(**values):
        """The uploaded image's bits/dim (resized to the model's size), what kind of figure it is, and the time."""
        tensor = model_image(pipeline, values.pop("image"))
        kwargs = read_inputs(pipeline, values, {})
        if accepts(pipeline.log_likelihood, "generator"):
            kwargs["generator"] = torch.Generator().manual_seed(0)  # the same image gets the same figure
        output, seconds = run(pipeline.log_likelihood, tensor, **kwargs)
        size, bits_per_dim = tensor.shape[-1], output.bits_per_dim.item()
        png_bits_per_dim = input_complexity(tensor).item()  # hfgen.metrics.anomaly: Serra et al. 2020
        return (
            f"**{bits_per_dim:.3f} bits/dim** ({-output.log_likelihood.item():.1f} nats), "
            f"{output.kind}; image resized to {size}x{size}. Lower means the model finds the image more typical. "
            f"Its PNG encoding takes {png_bits_per_dim:.3f} bits/dim: simple images (flat regions) are likely under "
            f"any model, so to tell an outlier compare bits/dim minus that: "
            f"**{bits_per_dim - png_bits_per_dim:.3f}**. "
            f"{timing_text(seconds, 1)}"
        )

    button.click(likelihood, inputs_kwargs={"image": image, **condition}, outputs=result, api_name=name("likelihood"))


# ----- gr.ImageEditor values: {"background": the upload, "layers": what is drawn, "composite": both} -----------------
def editor_upload(value) -> PIL.Image.Image | None:
    """The uploaded image of an `ImageEditor` value, or a plain image as API callers may pass it."""
    return value.get("background") if isinstance(value, dict) else value


def editor_layers(value) -> list[PIL.Image.Image]:
    """What was drawn over the upload (the brush layers), or nothing for a plain image."""
    return [layer for layer in value.get("layers") or [] if layer] if isinstance(value, dict) else []


def editor_image(value) -> PIL.Image.Image | None:
    """The image as the user sees it: the drawing over the upload ("composite"), else the upload."""
    if isinstance(value, dict) and value.get("composite") is not None:
        return value["composite"]
    return editor_upload(value)


def painted_image_and_mask(value, mask) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """The image and the inpainting mask (L, white = repaint) of the inpainting inputs: an `ImageEditor` value (what
    is painted over the upload is the mask) or a plain image, and an optional uploaded mask, which wins over the
    painting."""
    background, layers = editor_upload(value), editor_layers(value)
    if background is None:
        raise gr.Error("Upload an image first.")
    if mask is None and layers:
        painted = [np.asarray(layer.convert("RGBA"))[..., 3] > 0 for layer in layers]  # the brush strokes
        mask = PIL.Image.fromarray((np.logical_or.reduce(painted) * 255).astype(np.uint8), mode="L")
    if mask is None or not mask.convert("L").getbbox():
        raise gr.Error("Paint over the part of the image to repaint (or upload a mask: white = repaint).")
    return background.convert("RGB"), mask


def _inpainting_section(pipeline, condition: dict, controls: dict, name, timing) -> None:
    gr.Markdown(
        "### Inpainting\nUpload an image and paint over the part to repaint (or upload a mask: white = repaint); "
        "the rest of the image is kept."
    )
    with gr.Row():
        image = gr.ImageEditor(
            label="Image (paint over what to repaint)",
            type="pil",
            image_mode="RGBA",
            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
            layers=False,
        )
        mask = gr.Image(label="Mask (optional; white = repaint)", type="pil", image_mode="L")
    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
    button = gr.Button("Inpaint")
    result = gr.Gallery(label="Inpainted", columns=4, format="png", object_fit="contain")
    result_time = gr.Markdown()
    condition, controls = taken_by(pipeline.inpaint, condition), taken_by(pipeline.inpaint, controls)

    def inpaint(**values):
        """The image with the mask's white part repainted, for `seed`, with the time taken."""
        picture, mask = painted_image_and_mask(values.pop("image"), values.pop("mask"))
        image = model_image(pipeline, picture)
        mask = mask.convert("L").resize(image.shape[-2:][::-1], PIL.Image.NEAREST)
        seed = check_int(values.pop("seed"), "Seed", 0, MAX_SEED)
        kwargs = read_inputs(pipeline, values, controls)
        generator = torch.Generator().manual_seed(seed)
        output, seconds = run(pipeline.inpaint, image, mask, generator=generator, output_type="pil", **kwargs)
        images = getattr(output, "images", output)
        return enlarge(images), timing(seconds, len(images))

    inputs = {"image": image, "mask": mask, **condition, "seed": seed}
    inputs.update({k: widget for k, (widget, _) in controls.items()})
    button.click(inpaint, inputs_kwargs=inputs, outputs=[result, result_time], api_name=name("inpaint"))


def _trajectory_section(pipeline, condition: dict, seed, sampler: dict, controls: dict, name, timing) -> None:
    gr.Markdown(
        "### Denoising trajectory\nThe first sample of the settings above (seed, condition, sampler, steps), from "
        "pure noise to the image, at evenly spaced steps."
    )
    button = gr.Button("Show the trajectory")
    strip = gr.Gallery(label="Trajectory", columns=TRAJECTORY_STEPS, format="png", object_fit="contain")
    strip_time = gr.Markdown()

    def trajectory(**values):
        """`TRAJECTORY_STEPS` snapshots x_T ... x_0 of one sample for `seed`, with the time taken."""
        generator = torch.Generator().manual_seed(check_int(values.pop("seed"), "Seed", 0, MAX_SEED))
        request = own_scheduler(pipeline, values.pop("sampler", None))
        kwargs = read_inputs(pipeline, values, controls)
        if "prompt" not in kwargs and "class_labels" not in kwargs:
            kwargs["batch_size"] = 1
        output, seconds = run(
            request, generator=generator, return_trajectory=True, trajectory_steps=TRAJECTORY_STEPS, **kwargs
        )
        snapshots = [images[0] for images in output.trajectory]  # the first image at each snapshot
        return enlarge(snapshots), timing(seconds, 1)

    inputs = {**condition, "seed": seed, **sampler, **{k: widget for k, (widget, _) in controls.items()}}
    button.click(trajectory, inputs_kwargs=inputs, outputs=[strip, strip_time], api_name=name("trajectory"))


def _completion_section(pipeline, condition: dict, controls: dict, name, timing) -> None:
    gr.Markdown(
        "### Completion\nKeeps the top rows of an uploaded or drawn image (drawn white on black, like the digits; it "
        "is resized to the model's size) and draws the rest, pixel by pixel."
    )
    size = pipeline.image_format[1]
    with gr.Row():
        canvas = PIL.Image.new("RGB", (DISPLAY_SIZE, DISPLAY_SIZE), "black")
        brush = gr.Brush(colors=["#ffffff", "#808080", "#000000"], default_color="#ffffff")
        image = gr.ImageEditor(
            canvas, label="Image", type="pil", image_mode="RGB", sources=("upload", "clipboard"), brush=brush
        )
        with gr.Column():
            kept_rows = gr.Slider(1, size - 1, value=size // 2, step=1, label="Rows kept from the top")
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of completions")
    button = gr.Button("Complete")
    result = gr.Gallery(label="Completed", columns=8, format="png", object_fit="contain")
    result_time = gr.Markdown()
    condition, controls = taken_by(pipeline.complete, condition), taken_by(pipeline.complete, controls)

    def complete(progress=gr.Progress(track_tqdm=True), **values):
        """`num_images` completions of the image's rows below `kept_rows`, for `seed`, with the time taken; the
        pipeline's progress bar (pixels drawn) shows in the page meanwhile."""
        image = model_image(pipeline, editor_image(values.pop("image")))
        rows = check_int(values.pop("kept_rows"), "Rows kept from the top", 1, size - 1)
        seed = check_int(values.pop("seed"), "Seed", 0, MAX_SEED)
        count = check_int(values.pop("num_images"), "Number of completions", 1, MAX_IMAGES)
        kwargs = read_inputs(pipeline, values, controls)
        mask = keep_top_rows(size, size, rows)
        generator = torch.Generator().manual_seed(seed)
        images, seconds = run(
            pipeline.complete, image.expand(count, -1, -1, -1), mask, generator=generator, output_type="pil", **kwargs
        )
        return enlarge(images), timing(seconds, len(images))

    inputs = {"image": image, "kept_rows": kept_rows, **condition, "seed": seed, "num_images": num_images}
    inputs.update({k: widget for k, (widget, _) in controls.items()})
    button.click(complete, inputs_kwargs=inputs, outputs=[result, result_time], api_name=name("complete"))


def build_demo(pipeline, model_name: str | None = None) -> gr.Blocks:
    """The one-model Space of `pipeline`: a header, and [`build_tab`]'s controls with API names `/generate`,
    `/interpolate`, `/likelihood`, `/inpaint` and `/complete` (those the pipeline's capabilities call for)."""
    title = family_title(pipeline)
    with gr.Blocks(title=f"hfgen {title}") as demo:
        gr.Markdown(f"# hfgen {title}\n{describe(pipeline, model_name)}")
        build_tab(pipeline)
    # At most 2 generations run at once (2 CPU cores on a free Space); up to 32 wait in the queue.
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


# ----- the command line ----------------------------------------------------------------------------------------------
def parse_args(description: str, argv: list[str] | None = None, model_flags: dict[str, str] | None = None):
    """Host and port flags, plus one `--<flag>` per model (its default from an environment variable, the Space's
    variables on Hugging Face). `model_flags`: {flag: environment variable}."""
    parser = argparse.ArgumentParser(description=description)
    for flag, variable in (model_flags or {}).items():
        parser.add_argument(
            f"--{flag}",
            default=os.environ.get(variable),
            help=f"Hub id or local path of a saved hfgen pipeline (default: the {variable} environment variable).",
        )
    default_host = "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"
    parser.add_argument("--host", default=default_host, help=f"Address to serve on (default: {default_host}).")
    parser.add_argument("--port", type=int, default=None, help="Port to serve on (default: Gradio's, 7860).")
    return parser, parser.parse_args(argv)


def launch_model_space(build_demo, description: str, argv: list[str] | None = None) -> None:
    """The command line of a one-model Space: `--model` (default: the HFGEN_MODEL variable), load, serve."""
    parser, args = parse_args(description, argv, {"model": "HFGEN_MODEL"})
    if not args.model:
        parser.error("no model given: pass --model PATH_OR_HUB_ID or set the HFGEN_MODEL environment variable.")
    pipeline = hfgen.load_pipeline(args.model)
    if torch.cuda.is_available():
        pipeline.to("cuda")
    build_demo(pipeline, model_name=args.model).launch(server_name=args.host, server_port=args.port)
