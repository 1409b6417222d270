"""Gradio Space for a trained hfgen GAN pipeline: sample images (with a prompt when the model takes text), trade
variety for fidelity with the truncation trick, and walk the great circle between the noise of two seeds.

Run locally:

    python spaces/gan/app.py --model out/gan-wgan-gp-digits

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
    """A whole number in [low, high] (3.0 counts), or a gr.Error that says what is allowed."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return value


def _check_truncation(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise gr.Error(f"Truncation must be a number from 0 to 1 (1 = none), got {value!r}.")
    return float(value)


def _check_prompt(pipeline, prompt) -> str | None:
    """The prompt to pass to the pipeline (None for an empty one), or a gr.Error."""
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if prompt and pipeline.text_encoder is None:
        raise gr.Error("This GAN is unconditional: it was trained without text. Leave the prompt empty.")
    return prompt or None


def _enlarge(images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
    """Nearest-neighbour scaling up to about DISPLAY_SIZE pixels, so that 8x8 digits stay crisp on screen."""
    return [
        image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST)
        for image in images
        for factor in [max(1, DISPLAY_SIZE // max(image.size))]
    ]


# ----- the demo ------------------------------------------------------------------------------------------------------
def _description(pipeline, model_name: str | None) -> str:
    config = pipeline.generator.config
    name = model_name or getattr(pipeline, "name_or_path", None) or "an in-memory pipeline"
    if pipeline.text_encoder is not None:
        conditioning = "It is **text-conditioned**: describe the image, or leave the prompt empty."
    else:
        conditioning = "It is **unconditional**: it takes no text."
    return (
        "# hfgen GAN\n"
        f"Model: `{name}` ({type(pipeline).__name__}, {config.sample_size}x{config.sample_size} images with "
        f"{config.out_channels} channel(s), {config.noise_dim}-dimensional noise). {conditioning}\n\n"
        "Each seed fixes the noise z ~ N(0, I); truncation psi < 1 pulls z towards the mean (fewer odd samples, less "
        "variety)."
    )


def build_demo(pipeline, model_name: str | None = None) -> gr.Blocks:
    """The Blocks demo for `pipeline` (a loaded `hfgen.GANPipeline`); API endpoints `/generate` and `/interpolate`."""
    takes_text = pipeline.text_encoder is not None

    def generate(prompt: str, seed: float, num_images: float, truncation: float) -> list[PIL.Image.Image]:
        """`num_images` samples for `seed`, with truncation psi `truncation`, conditioned on `prompt` if given."""
        prompt = _check_prompt(pipeline, prompt)
        seed = _check_int(seed, "Seed", 0, MAX_SEED)
        num_images = _check_int(num_images, "Number of images", 1, MAX_IMAGES)
        truncation = _check_truncation(truncation)
        images = pipeline(
            prompt=prompt,
            batch_size=num_images if prompt is None else 1,
            num_images_per_prompt=1 if prompt is None else num_images,
            truncation_psi=truncation,
            generator=torch.Generator().manual_seed(seed),
        ).images
        return _enlarge(images)

    def interpolate(prompt: str, seed_start: float, seed_end: float, steps: float, truncation: float):
        """`steps` images on the great circle (slerp) between the noise of two seeds."""
        prompt = _check_prompt(pipeline, prompt)
        seed_start = _check_int(seed_start, "Start seed", 0, MAX_SEED)
        seed_end = _check_int(seed_end, "End seed", 0, MAX_SEED)
        steps = _check_int(steps, "Steps", MIN_STEPS, MAX_STEPS)
        truncation = _check_truncation(truncation)
        return _enlarge(
            pipeline.interpolate(seed_start, seed_end, num_steps=steps, prompt=prompt, truncation_psi=truncation)
        )

    with gr.Blocks(title="hfgen GAN") as demo:
        gr.Markdown(_description(pipeline, model_name))
        # Both endpoints take a prompt for every model, so the API is the same; the box shows only for text models.
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="a small red circle at the top left",
            max_length=MAX_PROMPT_CHARS,  # the browser's limit only: the handlers check again
            visible=takes_text,
            interactive=takes_text,
        )
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            num_images = gr.Slider(1, MAX_IMAGES, value=8, step=1, label="Number of images")
            truncation = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Truncation psi (1 = none)")
        generate_button = gr.Button("Generate", variant="primary")
        samples = gr.Gallery(label="Samples", columns=8, format="png", object_fit="contain")

        gr.Markdown("## Interpolation\nThe images along the great circle between the noise of two seeds.")
        with gr.Row():
            seed_start = gr.Number(label="Start seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            seed_end = gr.Number(label="End seed", value=1, precision=0, minimum=0, maximum=MAX_SEED)
            steps = gr.Slider(MIN_STEPS, MAX_STEPS, value=8, step=1, label="Steps")
        interpolate_button = gr.Button("Interpolate")
        strip = gr.Gallery(label="Interpolation", columns=MAX_STEPS, format="png", object_fit="contain")

        generate_button.click(
            generate, inputs=[prompt, seed, num_images, truncation], outputs=samples, api_name="generate"
        )
        interpolate_button.click(
            interpolate,
            inputs=[prompt, seed_start, seed_end, steps, truncation],
            outputs=strip,
            api_name="interpolate",
        )
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gradio demo for a trained hfgen GAN pipeline.")
    parser.add_argument(
        "--model",
        default=os.environ.get("HFGEN_MODEL"),
        help="Hub id or local path of a saved GAN pipeline (default: the HFGEN_MODEL environment variable).",
    )
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1", help="Address to serve on.")
    parser.add_argument("--port", type=int, default=None, help="Port to serve on (default: Gradio's, 7860).")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("no model given: pass --model PATH_OR_HUB_ID or set the HFGEN_MODEL environment variable.")
    import hfgen  # after parsing: it pulls in diffusers and is slow to import

    pipeline = hfgen.load_pipeline(args.model)
    if torch.cuda.is_available():
        pipeline.to("cuda")
    build_demo(pipeline, model_name=args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
