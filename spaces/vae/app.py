"""Gradio Space for a trained hfgen VAE pipeline: sample images from the prior, and walk the latent space between
two seeds.

Run locally:

    python spaces/vae/app.py --model out/vae-digits

On Hugging Face Spaces the model (a Hub id or a path) comes from the Space variable `HFGEN_MODEL`.
"""

import argparse
import os

import gradio as gr
import PIL.Image
import torch

MAX_IMAGES = 16
MAX_SEED = 2**31 - 1
MIN_STEPS, MAX_STEPS = 2, 12
MAX_PROMPT_CHARS = 200
DISPLAY_SIZE = 128  # pixels of the longer side shown in the galleries


# ----- server-side validation: the API can be called without the widgets and their limits ----------------------------
def _check_int(value, name: str, low: int, high: int) -> int:
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


def _check_prompt(pipeline, prompt) -> str | None:
    """The prompt to pass to the pipeline (None for no text), or a gr.Error."""
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if not prompt:
        return None
    if not _takes_text(pipeline):
        raise gr.Error("This model is unconditional: it was trained without text. Leave the prompt empty.")
    return prompt


def _takes_text(pipeline) -> bool:
    return getattr(pipeline, "text_encoder", None) is not None


def _upscale(images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
    """Nearest-neighbour upscaling, so that tiny samples (8x8, 28x28) stay crisp on screen."""
    upscaled = []
    for image in images:
        scale = max(1, DISPLAY_SIZE // max(image.size))
        upscaled.append(image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST))
    return upscaled


def _latent(pipeline, seed: int) -> torch.Tensor:
    """The prior sample z ~ N(0, I) for a seed, (latent_dim,), drawn on the CPU so seeds match across devices."""
    return torch.randn(pipeline.vae.config.latent_dim, generator=torch.Generator().manual_seed(seed))


# ----- the demo ------------------------------------------------------------------------------------------------------
def _header(pipeline, model_name: str | None) -> str:
    config = pipeline.vae.config
    name = model_name or getattr(pipeline, "name_or_path", None) or "an in-memory pipeline"
    if _takes_text(pipeline):
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
    takes_text = _takes_text(pipeline)

    def generate(prompt: str, seed: float, num_images: float) -> list[PIL.Image.Image]:
        """Samples `num_images` images from the prior, with `seed`, optionally conditioned on `prompt`."""
        prompt = _check_prompt(pipeline, prompt)
        seed = _check_int(seed, "Seed", 0, MAX_SEED)
        num_images = _check_int(num_images, "Number of images", 1, MAX_IMAGES)
        generator = torch.Generator().manual_seed(seed)
        if prompt is None:
            images = pipeline(batch_size=num_images, generator=generator).images
        else:
            images = pipeline(prompt=prompt, num_images_per_prompt=num_images, generator=generator).images
        return _upscale(images)

    def interpolate(prompt: str, seed_start: float, seed_end: float, steps: float) -> list[PIL.Image.Image]:
        """Decodes `steps` evenly spaced points on the line between the latents of two seeds."""
        prompt = _check_prompt(pipeline, prompt)
        seed_start = _check_int(seed_start, "Start seed", 0, MAX_SEED)
        seed_end = _check_int(seed_end, "End seed", 0, MAX_SEED)
        steps = _check_int(steps, "Steps", MIN_STEPS, MAX_STEPS)
        start, end = _latent(pipeline, seed_start), _latent(pipeline, seed_end)
        return _upscale(pipeline.interpolate(start, end, num_steps=steps, prompt=prompt))

    with gr.Blocks(title="hfgen VAE") as demo:
        gr.Markdown(_header(pipeline, model_name))
        # The prompt is an input of both endpoints either way, so the API is the same for every model; it is only
        # shown when the model takes text.
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="a handwritten digit seven",
            max_length=MAX_PROMPT_CHARS,  # the browser's limit only: generate() checks it again
            visible=takes_text,
            interactive=takes_text,
        )
        if not takes_text:
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gradio demo for a trained hfgen VAE pipeline.")
    parser.add_argument(
        "--model",
        default=os.environ.get("HFGEN_MODEL"),
        help="Hub id or local path of a saved VAE pipeline (default: the HFGEN_MODEL environment variable).",
    )
    default_host = "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"
    parser.add_argument("--host", default=default_host, help=f"Address to serve on (default: {default_host}).")
    parser.add_argument("--port", type=int, default=None, help="Port to serve on (default: Gradio's, 7860).")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model given: pass --model PATH_OR_HUB_ID or set the HFGEN_MODEL environment variable.")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import hfgen  # imported here, after the arguments are parsed: it pulls in diffusers and is slow to import

    pipeline = hfgen.load_pipeline(args.model)
    if torch.cuda.is_available():
        pipeline.to("cuda")
    build_demo(pipeline, model_name=args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
