"""The hfgen gallery Space: one tab per model family, and a tab that runs the same prompt and seed through all of them.

Run locally:

    python spaces/gallery/app.py --vae out/vae-digits --gan out/gan-digits

On Hugging Face Spaces each family's model (a Hub id) comes from a Space variable: `HFGEN_MODEL_VAE`,
`HFGEN_MODEL_GAN`, ... (`hfgen space deploy spaces/gallery USER/hfgen-gallery --model vae=USER/vae-digits` sets them).
A family without a model, or whose model fails to load, gets a tab that says so instead of crashing the Space.

Every tab has unconditional and prompted generation with a seed, shows how long generation took, and adds what the
family is good at: latent interpolation and the likelihood of an uploaded image (VAE), truncation and spherical
interpolation between two seeds (GAN). The limits are checked on the server (`hfgen.demo`).
"""

import gradio as gr
import numpy as np
import torch

import hfgen
from hfgen.demo import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MIN_STEPS,
    check_float,
    check_int,
    check_prompt,
    check_prompt_length,
    enlarge,
    parse_args,
    sample,
    takes_text,
    timed,
    timing_text,
)

# family -> (tab title, Space variable with its model id)
FAMILIES = {
    "vae": ("VAE", "HFGEN_MODEL_VAE"),
    "gan": ("GAN", "HFGEN_MODEL_GAN"),
}


def load_models(model_ids: dict[str, str | None]) -> dict[str, object]:
    """{family: loaded pipeline, or a string saying why there is none}."""
    models = {}
    for family, model_id in model_ids.items():
        title, variable = FAMILIES[family]
        if not model_id:
            models[family] = f"No {title} model is configured: set the Space variable `{variable}` to a Hub id."
            continue
        try:
            pipeline = hfgen.load_pipeline(model_id)
        except Exception as error:  # a broken or missing repo must not take the other tabs down
            models[family] = f"The {title} model `{model_id}` could not be loaded: {error}"
            continue
        if torch.cuda.is_available():
            pipeline.to("cuda")
        models[family] = pipeline
    return models


# ----- what each family adds to its tab ------------------------------------------------------------------------------
def interpolation_section(pipeline, prompt, description: str, strip_between, api_name: str, extra_inputs=()):
    """Two seeds, a number of steps, and the strip `strip_between(prompt, seed_start, seed_end, steps, *extra)`
    returns, with its timing."""

    def interpolate(prompt_text: str, seed_start: float, seed_end: float, steps: float, *extra):
        prompt_text = check_prompt(pipeline, prompt_text)
        seeds = [check_int(seed, "Seed", 0, MAX_SEED) for seed in (seed_start, seed_end)]
        steps = check_int(steps, "Steps", MIN_STEPS, MAX_STEPS)
        images, seconds = timed(strip_between, prompt_text, *seeds, steps, *extra)
        return enlarge(images), timing_text(seconds, steps)

    gr.Markdown(f"### Interpolation\n{description}")
    with gr.Row():
        seed_start = gr.Number(label="Start seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        seed_end = gr.Number(label="End seed", value=1, precision=0, minimum=0, maximum=MAX_SEED)
        steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, label="Steps")
    button = gr.Button("Interpolate")
    strip = gr.Gallery(label="Interpolation", columns=MAX_STEPS, format="png", object_fit="contain")
    strip_time = gr.Markdown()
    inputs = [prompt, seed_start, seed_end, steps, *extra_inputs]
    button.click(interpolate, inputs, [strip, strip_time], api_name=api_name)


def vae_extras(pipeline, prompt: gr.Textbox):
    def latent_of(seed: int) -> torch.Tensor:
        """z ~ N(0, I) of a seed, drawn on the CPU so that a seed means the same on any device."""
        return torch.randn(pipeline.vae.config.latent_dim, generator=torch.Generator().manual_seed(seed))

    def line_between(prompt_text, seed_start: int, seed_end: int, steps: int):
        return pipeline.interpolate(latent_of(seed_start), latent_of(seed_end), num_steps=steps, prompt=prompt_text)

    def likelihood(image: np.ndarray | None):
        if image is None:
            raise gr.Error("Upload an image first.")
        config = pipeline.vae.config
        grey = image.mean(axis=-1, keepdims=True) if config.in_channels == 1 and image.shape[-1] != 1 else image
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(grey)).float().permute(2, 0, 1)[None] / 127.5 - 1,
            size=(config.sample_size, config.sample_size),
            mode="area",
        )  # (1, c, s, s) in [-1, 1]
        levels = config.num_bins - 1  # the likelihood is of images on the model's grey levels
        resized = torch.round((resized + 1) / 2 * levels) / levels * 2 - 1
        output, seconds = timed(pipeline.log_likelihood, resized, generator=torch.Generator().manual_seed(0))
        return (
            f"**{output.bits_per_dim.item():.3f} bits/dim** ({-output.log_likelihood.item():.1f} nats), "
            f"{output.kind}; image resized to {config.sample_size}x{config.sample_size}. "
            f"Lower means the model finds the image more typical. {timing_text(seconds, 1)}"
        )

    interpolation_section(
        pipeline,
        prompt,
        "Decoded images on the straight line between the latents of two seeds.",
        line_between,
        "interpolate_vae",
    )
    gr.Markdown("### Likelihood of an image\nThe IWAE lower bound on log p(x) of an uploaded image.")
    upload = gr.Image(label="Image", type="numpy", image_mode="RGB")
    score = gr.Button("Score")
    result = gr.Markdown()
    score.click(likelihood, [upload], [result], api_name="likelihood_vae")
    return {}


def gan_extras(pipeline, prompt: gr.Textbox):
    truncation = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation psi (1 = none, lower = more typical)")

    def check_truncation(psi) -> float:
        return check_float(psi, "Truncation", 0.0, 1.0)

    def slerp_between(prompt_text, seed_start: int, seed_end: int, steps: int, psi: float):
        psi = check_truncation(psi)
        return pipeline.interpolate(seed_start, seed_end, num_steps=steps, prompt=prompt_text, truncation_psi=psi)

    interpolation_section(
        pipeline,
        prompt,
        "Images along the great circle (slerp) between the noise of two seeds.",
        slerp_between,
        "interpolate_gan",
        extra_inputs=[truncation],
    )
    # The truncation slider is also an input of the tab's Generate button.
    return {"truncation_psi": (truncation, check_truncation)}


EXTRAS = {"vae": vae_extras, "gan": gan_extras}


# ----- the app -------------------------------------------------------------------------------------------------------
def family_tab(family: str, pipeline):
    """Prompt, seed, number of images and Generate (api `/generate_<family>`), then the family's extras."""
    title, _ = FAMILIES[family]
    has_text = takes_text(pipeline)
    gr.Markdown(
        f"Model: `{getattr(pipeline, 'name_or_path', '') or 'in memory'}` ({type(pipeline).__name__}), "
        + ("text-conditioned: type a prompt or leave it empty." if has_text else "unconditional: it takes no text.")
    )
    prompt = gr.Textbox(
        label="Prompt", placeholder="a handwritten digit seven", max_length=MAX_PROMPT_CHARS, interactive=has_text
    )
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images")
    generate_button = gr.Button("Generate", variant="primary", elem_id=f"generate-{family}")
    gallery = gr.Gallery(label="Samples", columns=8, format="png", object_fit="contain", elem_id=f"gallery-{family}")
    timing = gr.Markdown(elem_id=f"timing-{family}")
    options = EXTRAS[family](pipeline, prompt)  # {pipeline keyword: (widget, server-side check)}

    def generate(prompt_text, seed_value, count, *option_values):
        prompt_text = check_prompt(pipeline, prompt_text)
        seed_value = check_int(seed_value, "Seed", 0, MAX_SEED)
        count = check_int(count, "Number of images", 1, MAX_IMAGES)
        kwargs = {name: check(value) for (name, (_, check)), value in zip(options.items(), option_values)}
        images, seconds = timed(sample, pipeline, prompt_text, seed_value, count, **kwargs)
        return enlarge(images), f"{title}: {timing_text(seconds, count)}"

    inputs = [prompt, seed, num_images, *(widget for widget, _ in options.values())]
    generate_button.click(generate, inputs, [gallery, timing], api_name=f"generate_{family}")


def side_by_side_tab(models: dict[str, object]):
    loaded = {family: pipeline for family, pipeline in models.items() if not isinstance(pipeline, str)}
    if not loaded:
        gr.Markdown("**No family has a model yet**: set the Space variables named in the other tabs.")
        return
    gr.Markdown(
        "The same prompt and seed through every loaded family. A family trained without text samples "
        "unconditionally and says so."
    )
    prompt = gr.Textbox(label="Prompt", placeholder="a handwritten digit seven", max_length=MAX_PROMPT_CHARS)
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images per family")
    button = gr.Button("Generate with every family", variant="primary", elem_id="generate-all")
    galleries = []
    with gr.Row():
        for family in loaded:
            galleries.append(gr.Gallery(label=FAMILIES[family][0], columns=4, format="png", object_fit="contain"))
    table = gr.Markdown(elem_id="timing-all")

    def generate_all(prompt_text, seed_value, count):
        prompt_text = check_prompt_length(prompt_text)  # used only by the families that take text
        seed_value = check_int(seed_value, "Seed", 0, MAX_SEED)
        count = check_int(count, "Images per family", 1, MAX_IMAGES)
        outputs, rows = [], ["| family | prompt used | time |", "|---|---|---|"]
        for family, pipeline in loaded.items():
            used = prompt_text if prompt_text and takes_text(pipeline) else None
            images, seconds = timed(sample, pipeline, used, seed_value, count)
            outputs.append(enlarge(images))
            note = used if used else "none (unconditional model)" if prompt_text else "none"
            rows.append(f"| {FAMILIES[family][0]} | {note} | {timing_text(seconds, count)} |")
        for family, reason in models.items():
            if isinstance(reason, str):
                rows.append(f"| {FAMILIES[family][0]} | - | not available: {reason.split(':')[0]} |")
        return *outputs, "\n".join(rows)

    button.click(generate_all, [prompt, seed, num_images], [*galleries, table], api_name="side_by_side")


def build_demo(models: dict[str, object]) -> gr.Blocks:
    """The gallery for {family: a loaded pipeline, or the reason it is missing} (see `load_models`)."""
    with gr.Blocks(title="hfgen gallery") as demo:
        gr.Markdown(
            "# hfgen gallery\nGenerative model families packaged the Hugging Face way "
            "([hfgen](https://pypi.org/project/hfgen/)). Same seed, same images."
        )
        with gr.Tabs():
            for family, pipeline in models.items():
                with gr.Tab(FAMILIES[family][0], id=family):
                    if isinstance(pipeline, str):
                        gr.Markdown(f"**{pipeline}**", elem_id=f"missing-{family}")
                    else:
                        family_tab(family, pipeline)
            with gr.Tab("Side by side", id="side-by-side"):
                side_by_side_tab(models)
    # At most 2 generations run at once (2 CPU cores on a free Space); up to 64 wait in the queue, then callers are
    # told the Space is busy. This bounds both the CPU and the memory that concurrent users can take.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def main(argv: list[str] | None = None) -> None:
    flags = {family: variable for family, (_, variable) in FAMILIES.items()}
    _, args = parse_args("The hfgen gallery: every family in one Space.", argv, flags)
    models = load_models({family: getattr(args, family) for family in FAMILIES})
    build_demo(models).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
