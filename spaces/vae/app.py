"""Gradio Space for a trained hfgen VAE pipeline: sample from the prior (with a prompt or a class when the model takes
one), score an uploaded image's likelihood, and walk the latent space between two seeds. The page is built by
`hfgen.demo.build_demo` from what the pipeline declares.

Run locally:

    python spaces/vae/app.py --model out/vae-digits

On Hugging Face Spaces the model (a Hub id or a path) comes from the Space variable `HFGEN_MODEL`.
"""

from hfgen.demo import build_demo, launch_model_space


def main(argv: list[str] | None = None) -> None:
    launch_model_space(build_demo, "Gradio demo for a trained hfgen VAE pipeline.", argv)


if __name__ == "__main__":
    main()
