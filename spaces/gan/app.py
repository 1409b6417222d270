"""Gradio Space for a trained hfgen GAN pipeline: sample images (with a prompt or a class when the model takes one),
trade variety for fidelity with the truncation trick, and walk the great circle between the noise of two seeds. The
page is built by `hfgen.demo.build_demo` from what the pipeline declares.

Run locally:

    python spaces/gan/app.py --model out/gan-wgan-gp-digits

On Hugging Face Spaces the model (a Hub id or a path) comes from the Space variable `HFGEN_MODEL`.
"""

from hfgen.demo import build_demo, launch_model_space


def main(argv: list[str] | None = None) -> None:
    launch_model_space(build_demo, "Gradio demo for a trained hfgen GAN pipeline.", argv)


if __name__ == "__main__":
    main()
