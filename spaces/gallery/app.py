"""The hfgen gallery Space: one tab per model family, and a tab that runs the same prompt and seed through all of them.

Run locally:

    python spaces/gallery/app.py --vae out/vae-digits --gan out/gan-digits

On Hugging Face Spaces each family's model (a Hub id) comes from a Space variable: `HFGEN_MODEL_VAE`,
`HFGEN_MODEL_GAN`, ... (`hfgen space deploy spaces/gallery USER/hfgen-gallery --model vae=USER/vae-digits` sets them).
A family without a model, or whose model fails to load, gets a tab that says so instead of crashing the Space.

Each family's tab is `hfgen.demo.build_tab`, built from what the family's pipeline declares (prompt or class,
guidance, steps, its own sliders, interpolation, likelihood, inpainting), with the API names of its own Space suffixed
by the family: `/generate_vae`, `/interpolate_vae`, `/likelihood_vae`, `/generate_gan`, ... The limits are checked on
the server (`hfgen.demo`). A new family is one line in `FAMILIES`.
"""

import gradio as gr
import torch

import hfgen
from hfgen.demo import (
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    build_tab,
    check_int,
    check_prompt_length,
    describe,
    enlarge,
    parse_args,
    run,
    timing_text,
)

# family -> the Space variable with its model id (`hfgen space deploy --model FAMILY=ID` sets HFGEN_MODEL_<FAMILY>)
FAMILIES = {
    "vae": "HFGEN_MODEL_VAE",
    "gan": "HFGEN_MODEL_GAN",
    "diffusion": "HFGEN_MODEL_DIFFUSION",
    "flow": "HFGEN_MODEL_FLOW",
    "autoregressive": "HFGEN_MODEL_AUTOREGRESSIVE",
    "score": "HFGEN_MODEL_SCORE",
}


def tab_title(family: str) -> str:
    """The tab's title: "VAE", "GAN" for acronyms, "Diffusion", "Flow" for words."""
    return family.upper() if len(family) <= 3 else family.capitalize()


def load_models(model_ids: dict[str, str | None]) -> dict[str, object]:
    """{family: loaded pipeline, or a string saying why there is none}."""
    models = {}
    for family, model_id in model_ids.items():
        title, variable = tab_title(family), FAMILIES[family]
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


def side_by_side_tab(models: dict[str, object]):
    loaded = {family: pipeline for family, pipeline in models.items() if not isinstance(pipeline, str)}
    if not loaded:
        gr.Markdown("**No family has a model yet**: set the Space variables named in the other tabs.")
        return
    gr.Markdown(
        "The same prompt and seed through every loaded family, each with its own default settings. A family trained "
        "without text samples unconditionally (a class model: with no class) and says so."
    )
    prompt = gr.Textbox(label="Prompt", placeholder="a handwritten digit seven", max_length=MAX_PROMPT_CHARS)
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
        num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Images per family")
    button = gr.Button("Generate with every family", variant="primary", elem_id="generate-all")
    galleries = []
    with gr.Row():
        for family in loaded:
            galleries.append(gr.Gallery(label=tab_title(family), columns=4, format="png", object_fit="contain"))
    table = gr.Markdown(elem_id="timing-all")

    def generate_all(prompt_text, seed_value, count):
        prompt_text = check_prompt_length(prompt_text)  # used only by the families that take text
        seed_value = check_int(seed_value, "Seed", 0, MAX_SEED)
        count = check_int(count, "Images per family", 1, MAX_IMAGES)
        outputs, rows = [], ["| family | prompt used | time |", "|---|---|---|"]
        for family, pipeline in loaded.items():
            used = prompt_text if prompt_text and "prompt" in pipeline.capabilities else None
            images, seconds = run(pipeline.generate, count, prompt=used, seed=seed_value, output_type="pil")
            outputs.append(enlarge(images))
            kind = "class model, no class" if "class" in pipeline.capabilities else "unconditional model"
            note = used if used else f"none ({kind})" if prompt_text else "none"
            rows.append(f"| {tab_title(family)} | {note} | {timing_text(seconds, count)} |")
        for family, reason in models.items():
            if isinstance(reason, str):
                rows.append(f"| {tab_title(family)} | - | not available: {reason.split(':')[0]} |")
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
                with gr.Tab(tab_title(family), id=family):
                    if isinstance(pipeline, str):
                        gr.Markdown(f"**{pipeline}**", elem_id=f"missing-{family}")
                    else:
                        gr.Markdown(describe(pipeline))
                        build_tab(pipeline, title=tab_title(family), family=family)
            with gr.Tab("Side by side", id="side-by-side"):
                side_by_side_tab(models)
    # At most 2 generations run at once (2 CPU cores on a free Space); up to 64 wait in the queue, then callers are
    # told the Space is busy. This bounds both the CPU and the memory that concurrent users can take.
    demo.queue(default_concurrency_limit=2, max_size=64)
    return demo


def main(argv: list[str] | None = None) -> None:
    _, args = parse_args("The hfgen gallery: every family in one Space.", argv, FAMILIES)
    models = load_models({family: getattr(args, family) for family in FAMILIES})
    build_demo(models).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
