"""Gradio Space for a trained hfgen VAE pipeline: sample images from the prior, and walk the latent space between
two seeds.

Run locally:

    python spaces/vae/app.py --model out/vae-digits

On Hugging Face Spaces the model (a Hub id or a path) comes from the Space variable `HFGEN_MODEL`.
"""

import gradio as gr
import torch

from hfgen.demo import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MIN_STEPS,
    check_int,
    check_prompt,
    enlarge,
    launch_model_space,
    sample,
    takes_text,
)


def _latent(pipeline, seed: int) -> torch.Tensor:
    """The prior sample z ~ N(0, I) for a seed, (latent_dim,), drawn on the CPU so seeds match across devices."""
    return torch.randn(pipeline.vae.config.latent_dim, generator=torch.Generator().manual_seed(seed))


# ----- the demo ------------------------------------------------------------------------------------------------------
def _header(pipeline, model_name: str | None) -> str:
    config = pipeline.vae.config
    name = model_name or getattr(pipeline, "name_or_path", None) or "an in-memory pipeline"
    if takes_text(pipeline):
        conditioning = "It is **text-conditioned**: describe the image in the prompt, or leave it empty."
    elif config.condition_type == "class":
        conditioning = "It is class-conditioned; this demo samples it without a class label."
    else:
        conditioning = "It is **unconditional**: it takes no text."
    return (
        "# hfgen VAE\n"
        f"Model: `{name}` ({type(pipeline).__name__}, {config.sample_size}x{config.sample_size} images with "
        f"{config.in_channels} channel(s), {config.latent_dim}-dimensional latent space). {conditioning}\n\n"
        "Samples are z ~ N(0, I) pushed through the decoder; the same seed always gives the same images."
    )


def build_demo(pipeline, model_name: str | None = None) -> gr.Blocks:
    """The Blocks demo for `pipeline` (a loaded `hfgen.VAEPipeline`). Its API endpoints are `/generate` and
    `/interpolate`."""
    has_text = takes_text(pipeline)

    def generate(prompt: str, seed: float, num_images: float):
        """Samples `num_images` images from the prior, with `seed`, optionally conditioned on `prompt`."""
        prompt = check_prompt(pipeline, prompt)
        seed = check_int(seed, "Seed", 0, MAX_SEED)
        num_images = check_int(num_images, "Number of images", 1, MAX_IMAGES)
        return enlarge(sample(pipeline, prompt, seed, num_images))

    def interpolate(prompt: str, seed_start: float, seed_end: float, steps: float):
        """Decodes `steps` evenly spaced points on the line between the latents of two seeds."""
        prompt = check_prompt(pipeline, prompt)
        seed_start = check_int(seed_start, "Start seed", 0, MAX_SEED)
        seed_end = check_int(seed_end, "End seed", 0, MAX_SEED)
        steps = check_int(steps, "Steps", MIN_STEPS, MAX_STEPS)
        start, end = _latent(pipeline, seed_start), _latent(pipeline, seed_end)
        return enlarge(pipeline.interpolate(start, end, num_steps=steps, prompt=prompt))

    with gr.Blocks(title="hfgen VAE") as demo:
        gr.Markdown(_header(pipeline, model_name))
        # The prompt is an input of both endpoints either way, so the API is the same for every model; it is only
        # shown when the model takes text.
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="a handwritten digit seven",
            max_length=MAX_PROMPT_CHARS,  # the browser's limit only: generate() checks it again
            visible=has_text,
            interactive=has_text,
        )
        if not has_text:
            gr.Markdown("*This model is unconditional: it was trained without text, so there is no prompt.*")

        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images")
        generate_button = gr.Button("Generate", variant="primary")
        samples = gr.Gallery(label="Samples", columns=8, format="png", object_fit="contain")

        gr.Markdown("## Interpolation\nThe decoded images on the straight line between the latents of two seeds.")
        with gr.Row():
            seed_start = gr.Number(label="Start seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            seed_end = gr.Number(label="End seed", value=1, precision=0, minimum=0, maximum=MAX_SEED)
            steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, label="Steps")
        interpolate_button = gr.Button("Interpolate")
        strip = gr.Gallery(label="Interpolation", columns=MAX_STEPS, format="png", object_fit="contain")

        generate_button.click(generate, inputs=[prompt, seed, num_images], outputs=samples, api_name="generate")
        interpolate_button.click(
            interpolate, inputs=[prompt, seed_start, seed_end, steps], outputs=strip, api_name="interpolate"
        )
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def main(argv: list[str] | None = None) -> None:
    launch_model_space(build_demo, "Gradio demo for a trained hfgen VAE pipeline.", argv)


if __name__ == "__main__":
    main()
