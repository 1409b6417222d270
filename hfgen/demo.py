"""What every hfgen Gradio Space shares: server-side input checks, image display, timing, and the command line.

The limits are checked here, on the server, because a Space's API can be called without its widgets (and their
`minimum`/`maximum`) by `gradio_client` or plain HTTP. Each check raises `gr.Error`, which Gradio shows to the user
and returns to API callers as an error naming the allowed range.
"""

import argparse
import os
import time

import gradio as gr
import PIL.Image
import torch

MAX_IMAGES = 16
MAX_SEED = 2**31 - 1
MIN_STEPS, MAX_STEPS = 2, 12
MAX_PROMPT_CHARS = 200
DISPLAY_SIZE = 128  # pixels of the longer side shown in galleries


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


def takes_text(pipeline) -> bool:
    return getattr(pipeline, "text_encoder", None) is not None


def check_prompt_length(prompt) -> str:
    """The stripped prompt ("" for none), or a gr.Error if it is longer than MAX_PROMPT_CHARS."""
    prompt = (prompt or "").strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise gr.Error(f"The prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    return prompt


def check_prompt(pipeline, prompt) -> str | None:
    """The prompt to pass to the pipeline (None for no text), or a gr.Error."""
    prompt = check_prompt_length(prompt)
    if not prompt:
        return None
    if not takes_text(pipeline):
        raise gr.Error("This model is unconditional: it was trained without text. Leave the prompt empty.")
    return prompt


def enlarge(images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
    """Nearest-neighbour upscaling, so that tiny samples (8x8 digits) stay crisp on screen."""
    enlarged = []
    for image in images:
        scale = max(1, DISPLAY_SIZE // max(image.size))
        enlarged.append(image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST))
    return enlarged


def sample(pipeline, prompt: str | None, seed: int, num_images: int, **family_kwargs) -> list[PIL.Image.Image]:
    """`num_images` samples of any hfgen pipeline for a seed, prompted or not, through the pipeline's `generate`."""
    return pipeline.generate(num_images, prompt=prompt, seed=seed, output_type="pil", **family_kwargs)


def timed(function, *args, **kwargs):
    """(function's result, wall seconds)."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def timing_text(seconds: float, num_images: int) -> str:
    return f"{num_images} image(s) in {seconds:.3f} s ({1000 * seconds / max(1, num_images):.1f} ms per image)"


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
    import hfgen  # here, not at the top: hfgen imports diffusers, and this module is part of hfgen

    parser, args = parse_args(description, argv, {"model": "HFGEN_MODEL"})
    if not args.model:
        parser.error("no model given: pass --model PATH_OR_HUB_ID or set the HFGEN_MODEL environment variable.")
    pipeline = hfgen.load_pipeline(args.model)
    if torch.cuda.is_available():
        pipeline.to("cuda")
    build_demo(pipeline, model_name=args.model).launch(server_name=args.host, server_port=args.port)
