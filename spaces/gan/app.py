"""Gradio Space for a trained hfgen GAN pipeline: sample images (with a prompt when the model takes text), trade
variety for fidelity with the truncation trick, and walk the great circle between the noise of two seeds.

Run locally:

    python spaces/gan/app.py --model out/gan-wgan-gp-digits

On Hugging Face Spaces the model (a Hub id or a path) comes from the Space variable `HFGEN_MODEL`.
"""

import gradio as gr

from hfgen.demo import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MIN_STEPS,
    check_float,
    check_int,
    check_prompt,
    enlarge,
    launch_model_space,
    sample,
    takes_text,
)


def _check_truncation(value) -> float:
    return check_float(value, "Truncation", 0.0, 1.0)


# ----- the demo ------------------------------------------------------------------------------------------------------
def _description(pipeline, model_name: str | None) -> str:
    config = pipeline.generator.config
    name = model_name or getattr(pipeline, "name_or_path", None) or "an in-memory pipeline"
    if takes_text(pipeline):
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
    has_text = takes_text(pipeline)

    def generate(prompt: str, seed: float, num_images: float, truncation: float):
        """`num_images` samples for `seed`, with truncation psi `truncation`, conditioned on `prompt` if given."""
        prompt = check_prompt(pipeline, prompt)
        seed = check_int(seed, "Seed", 0, MAX_SEED)
        num_images = check_int(num_images, "Number of images", 1, MAX_IMAGES)
        truncation = _check_truncation(truncation)
        return enlarge(sample(pipeline, prompt, seed, num_images, truncation_psi=truncation))

    def interpolate(prompt: str, seed_start: float, seed_end: float, steps: float, truncation: float):
        """`steps` images on the great circle (slerp) between the noise of two seeds."""
        prompt = check_prompt(pipeline, prompt)
        seed_start = check_int(seed_start, "Start seed", 0, MAX_SEED)
        seed_end = check_int(seed_end, "End seed", 0, MAX_SEED)
        steps = check_int(steps, "Steps", MIN_STEPS, MAX_STEPS)
        truncation = _check_truncation(truncation)
        return enlarge(
            pipeline.interpolate(seed_start, seed_end, num_steps=steps, prompt=prompt, truncation_psi=truncation)
        )

    with gr.Blocks(title="hfgen GAN") as demo:
        gr.Markdown(_description(pipeline, model_name))
        # Both endpoints take a prompt for every model, so the API is the same; the box shows only for text models.
        prompt = gr.Textbox(
            label="Prompt",
            placeholder="a small red circle at the top left",
            max_length=MAX_PROMPT_CHARS,  # the browser's limit only: the handlers check again
            visible=has_text,
            interactive=has_text,
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
    launch_model_space(build_demo, "Gradio demo for a trained hfgen GAN pipeline.", argv)


if __name__ == "__main__":
    main()
