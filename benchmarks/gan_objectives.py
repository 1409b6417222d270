"""Each GAN objective trained on the embedded digits with the same budget and seed, as a table.

    python benchmarks/gan_objectives.py                                # 1500 steps each, batch 64, seed 0
    python benchmarks/gan_objectives.py --steps 300 --json gan_objectives.json

Every objective runs its recipe (`training/recipes/gan_*_digits.yaml`: its learning rates, betas, n_critic and
discriminator normalisation, as its paper sets them) through the shared trainer, with the same number of steps (one
discriminator update each; the generator updates every n_critic-th step), batch size, seed, network widths and data.
The script prints, per objective: wall time of `trainer.train()` (the final save and evaluation included), the last
logging window's mean discriminator and generator losses and D(real)/D(fake) scores, the mode-collapse number (the
entropy of hfgen's digit classifier's predicted classes over 256 samples: log 10 = 2.30 when all digits are drawn
equally often, 0 for a single digit) and the FID between the held-out digits and as many samples in that
classifier's features. A first row gives the same two numbers for held-out real digits, against training digits:
the floor that this number of samples allows.

Losses are not comparable across objectives (cross-entropy, Wasserstein estimate, hinge): compare the last two
columns.
"""

import argparse
import datetime
import json
import math
import os
import platform
import tempfile
import time

import torch
from hfgen.training.train import parse_config

from hfgen.data import load_image_dataset
from hfgen.metrics import class_histogram_entropy
from hfgen.metrics.features import load_feature_extractor

RECIPES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "recipes")
OBJECTIVES = {
    "non-saturating (DCGAN)": "gan_dcgan_digits.yaml",
    "minimax": "gan_minimax_digits.yaml",
    "WGAN, weight clipping": "gan_wgan_digits.yaml",
    "WGAN-GP": "gan_wgan_gp_digits.yaml",
    "hinge + spectral norm": "gan_sngan_digits.yaml",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="Training steps (discriminator updates) each.")
    parser.add_argument("--batch_size", type=int, default=64, help="Batch size of every run.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of every run.")
    parser.add_argument("--num_threads", type=int, default=1, help="torch.set_num_threads.")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVES), help="Which rows to run.")
    parser.add_argument("--json", metavar="PATH", help="Also write the results to this JSON file.")
    return parser.parse_args(argv)


def train_objective(recipe: str, args: argparse.Namespace, output_dir: str) -> dict:
    trainer_class, config = parse_config(
        [
            *("--recipe", os.path.join(RECIPES_DIR, recipe), "--output_dir", output_dir),
            *("--max_train_steps", str(args.steps), "--train_batch_size", str(args.batch_size)),
            *("--seed", str(args.seed), "--report_to", "none", "--logging_steps", str(max(1, args.steps // 10))),
            *("--checkpointing_steps", str(args.steps), "--validation_steps", "0"),
        ]
    )
    trainer = trainer_class(config)
    start = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - start
    metrics = summary["metrics"]
    fid_key = next((k for k in metrics if k.startswith("fid")), None)
    return {
        "recipe": recipe,
        "seconds": seconds,
        "generator_steps": args.steps // config.n_critic,
        "d_loss": metrics["train_d_loss"],
        "g_loss": metrics["train_g_loss"],
        "d_real": metrics["train_d_real"],
        "d_fake": metrics["train_d_fake"],
        "class_entropy": metrics.get("sample_class_entropy"),
        "fid": metrics.get(fid_key) if fid_key else None,
        "fid_samples": int(fid_key[3:].split("_")[0]) if fid_key else None,
    }


@torch.no_grad()
def real_reference(seed: int) -> dict:
    """The entropy and FID of held-out digits against as many training digits: what a perfect generator would get."""
    classifier = load_feature_extractor("digits")
    splits = load_image_dataset("digits", caption_column="text", label_column="label", seed=seed)
    test = torch.stack([example["pixel_values"] for example in splits["test"]])
    train = torch.stack([splits["train"][i]["pixel_values"] for i in range(len(test))])
    reference = {"class_entropy": class_histogram_entropy(classifier.class_probabilities(test[:256]))}
    try:
        from hfgen.metrics.sample_quality import fid
    except ImportError:
        return reference
    reference["fid"] = fid(classifier.features(test).numpy(), classifier.features(train).numpy())
    return reference


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    results = {"settings": vars(args), "load_average": os.getloadavg(), "rows": {}}
    reference = real_reference(args.seed)
    with tempfile.TemporaryDirectory() as root:
        for name in args.objectives:
            print(f"--- {name}: {OBJECTIVES[name]}, {args.steps} steps", flush=True)
            results["rows"][name] = train_objective(
                OBJECTIVES[name], args, os.path.join(root, str(len(results["rows"])))
            )

    rows = results["rows"]
    samples = next((row["fid_samples"] for row in rows.values() if row["fid_samples"]), None)
    print(
        f"\n{args.steps} steps, batch {args.batch_size}, seed {args.seed}, {args.num_threads} thread(s), "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, load average at the start "
        f"{results['load_average'][0]:.2f}\n"
    )
    print(
        "| objective | recipe | G steps | wall s | D loss | G loss | D(real) | D(fake) | class entropy (max 2.30) "
        f"| FID ({samples or '?'} vs {samples or '?'}) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if reference:
        entropy, fid = fmt(reference.get("class_entropy")), fmt(reference.get("fid"))
        print(f"| real held-out digits | - | - | - | - | - | - | - | {entropy} | {fid} |")
    for name, row in rows.items():
        print(
            f"| {name} | `{row['recipe']}` | {row['generator_steps']} | {row['seconds']:.1f} | {fmt(row['d_loss'])} "
            f"| {fmt(row['g_loss'])} | {fmt(row['d_real'])} | {fmt(row['d_fake'])} | {fmt(row['class_entropy'])} "
            f"| {fmt(row['fid'])} |"
        )
    results["reference"] = reference
    results["max_class_entropy"] = math.log(10)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
