"""Throughput of the shared hfgen trainer against a plain PyTorch loop on the same model and data: the VAE (one
optimizer) and the GAN (two optimizers, alternating).

    python benchmarks/trainer_overhead.py                      # both families, 300 steps, batch 64, 3 runs each
    python benchmarks/trainer_overhead.py --families gan --steps 600 --num_threads 2 --json trainer_overhead.json

Both loops train the same models (the configs the trainer builds, rebuilt with `from_config`) on the embedded digits
with `--conditioning none`, the same batch size, number of steps and optimizers (AdamW, gradient clipping), in one CPU
process with the same `torch.set_num_threads`. The plain GAN loop does what `GANTrainer` does with `--n_critic 1`: a
discriminator step on real and generated images, then a generator step through the frozen discriminator
(non-saturating loss). Only the step loops are timed: the
set-up of either loop is not, and for the trainer the time spent in `Trainer.finish` (final checkpoint, pipeline save,
sample grid, IWAE evaluation, model card) is measured separately and subtracted from `trainer.train()`.

After a short untimed warm-up of each, the two loops run `--repeats` times in turns and the fastest run of each is
compared: other processes on a shared machine can only slow a run down, never speed it up.
"""

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

import torch
from hfgen.training.train import parse_config
from torch.utils.data import DataLoader

from hfgen.data import collate_fn, load_image_dataset
from hfgen.models.modeling_gan import GANDiscriminator, GANGenerator, discriminator_loss, generator_loss
from hfgen.models.modeling_vae import VAEModel

FAMILY_ARGS = {
    "vae": ["--family", "vae"],
    # No per-log sampling (mode-collapse number) and no divergence stop: only the two optimizers' steps are timed.
    "gan": ["--family", "gan", "--mode_collapse_samples", "0", "--divergence_patience", "0"],
}

TARGET_RATIO = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="vae,gan", help="Comma-separated: vae, gan.")
    parser.add_argument("--steps", type=int, default=300, help="Timed optimizer steps per loop.")
    parser.add_argument("--warmup_steps", type=int, default=20, help="Untimed steps each loop runs first.")
    parser.add_argument("--batch_size", type=int, default=64, help="Batch size of both loops.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate of both loops.")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm of both loops.")
    parser.add_argument(
        "--num_threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads for both loops."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each loop, in turns; the best counts.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of weights and data order.")
    parser.add_argument("--json", metavar="PATH", help="Also write the results to this JSON file.")
    return parser.parse_args(argv)


# ----- the hfgen trainer ---------------------------------------------------------------------------------------------
def build_trainer(args: argparse.Namespace, family: str, steps: int, output_dir: str):
    """A trainer of `family` on the digits, unconditional, with no checkpoint before the end and no tracker."""
    trainer_class, config = parse_config(
        [
            *FAMILY_ARGS[family],
            "--dataset_name", "digits",
            "--conditioning", "none",
            "--output_dir", output_dir,
            "--seed", str(args.seed),
            "--train_batch_size", str(args.batch_size),
            "--max_train_steps", str(steps),
            "--learning_rate", str(args.learning_rate),
            "--max_grad_norm", str(args.max_grad_norm),
            "--checkpointing_steps", str(steps + 1),
            "--logging_steps", "50",
            "--report_to", "none",
        ]
    )  # fmt: skip
    return with_timed_finish(trainer_class(config))


def with_timed_finish(trainer):
    """Times `trainer.finish` into `trainer.finish_seconds` (and skips it when `trainer.run_finish` is False, for a
    warm-up): it is the end of the run, not the step loop, so the benchmarks subtract it."""
    finish = trainer.finish
    trainer.finish_seconds = 0.0
    trainer.run_finish = True

    def timed_finish(global_step: int, logged: dict) -> dict:
        start = time.perf_counter()
        try:
            return finish(global_step, logged) if trainer.run_finish else {}
        finally:
            trainer.finish_seconds = time.perf_counter() - start

    trainer.finish = timed_finish
    return trainer


def time_trainer(trainer, num_threads: int) -> dict:
    """`trainer.train()`, less the time its `finish` took."""
    torch.set_num_threads(num_threads)
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    finish = trainer.finish_seconds
    return {"seconds": total - finish, "train_seconds": total, "finish_seconds": finish}


# ----- the plain PyTorch loop ----------------------------------------------------------------------------------------
def build_plain_loop(args: argparse.Namespace, trainer):
    """The trainer's model config(s) and data with bare models, optimizers and a DataLoader: (step function,
    DataLoader). The step function runs one optimizer step (both networks' for the GAN) on a batch."""
    config = trainer.config
    torch.manual_seed(args.seed)

    def adamw(parameters, learning_rate):
        betas = (config.adam_beta1, config.adam_beta2)
        return torch.optim.AdamW(parameters, lr=learning_rate, betas=betas, weight_decay=config.adam_weight_decay)

    def update(loss, parameters, optimizer):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if config.family == "vae":
        model = VAEModel.from_config(trainer.accelerator.unwrap_model(trainer.model).config).train()
        optimizer = adamw(model.parameters(), args.learning_rate)

        def step(batch):
            update(model(batch["pixel_values"]).loss, list(model.parameters()), optimizer)

    else:
        generator = GANGenerator.from_config(trainer.accelerator.unwrap_model(trainer.model).config).train()
        discriminator = GANDiscriminator.from_config(
            trainer.accelerator.unwrap_model(trainer.discriminator).config
        ).train()
        g_optimizer = adamw(generator.parameters(), args.learning_rate)
        d_optimizer = adamw(discriminator.parameters(), args.learning_rate)

        def step(batch):
            real = batch["pixel_values"]
            noise = torch.randn(len(real), config.noise_dim)
            with torch.no_grad():
                fakes = generator(noise).sample
            scores = discriminator(torch.cat([real, fakes])).scores
            d_loss = discriminator_loss(scores[: len(real)], scores[len(real) :], config.gan_loss)
            update(d_loss, list(discriminator.parameters()), d_optimizer)
            discriminator.requires_grad_(False)
            noise = torch.randn(len(real), config.noise_dim)
            g_loss = generator_loss(discriminator(generator(noise).sample).scores, config.gan_loss)
            update(g_loss, list(generator.parameters()), g_optimizer)
            discriminator.requires_grad_(True)

    splits = load_image_dataset(
        "digits",
        caption_column=config.caption_column,
        label_column=config.label_column,
        test_size=config.test_size,
        seed=config.seed,
    )
    dataloader = DataLoader(
        splits["train"],
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return step, dataloader


def run_plain_loop(step, dataloader, steps: int):
    done = 0
    while done < steps:
        for batch in dataloader:
            step(batch)
            done += 1
            if done >= steps:
                break


def time_plain_loop(step, dataloader, steps: int, num_threads: int) -> dict:
    torch.set_num_threads(num_threads)
    start = time.perf_counter()
    run_plain_loop(step, dataloader, steps)
    return {"seconds": time.perf_counter() - start}


# ----- the benchmark -------------------------------------------------------------------------------------------------
def summarize(runs: list[dict], samples: int) -> dict:
    """Every run, and the best one: on a shared machine other processes only ever slow a run down."""
    for run in runs:
        run["samples_per_second"] = samples / run["seconds"]
    best = max(runs, key=lambda run: run["samples_per_second"])
    return {**best, "runs": runs}


def compare(args: argparse.Namespace, family: str, tmp: str) -> dict:
    """The trainer against the plain loop for one family: the best of `repeats` runs each, in turns."""
    plain_runs, trainer_runs = [], []
    # Warm-up: a throw-away trainer (no final save) and a throw-away plain loop.
    if args.warmup_steps > 0:
        warmup_trainer = build_trainer(args, family, args.warmup_steps, os.path.join(tmp, f"{family}-warmup"))
        warmup_trainer.run_finish = False
        time_trainer(warmup_trainer, args.num_threads)
        run_plain_loop(*build_plain_loop(args, warmup_trainer), args.warmup_steps)
        del warmup_trainer
    # The two loops take turns, so a burst of load from elsewhere does not hit only one of them.
    for repeat in range(args.repeats):
        trainer = build_trainer(args, family, args.steps, os.path.join(tmp, f"{family}-trainer-{repeat}"))
        step, dataloader = build_plain_loop(args, trainer)
        plain_runs.append(time_plain_loop(step, dataloader, args.steps, args.num_threads))
        trainer_runs.append(time_trainer(trainer, args.num_threads))
        del trainer, step, dataloader
    samples = args.steps * args.batch_size
    plain, hfgen = summarize(plain_runs, samples), summarize(trainer_runs, samples)
    ratio = hfgen["samples_per_second"] / plain["samples_per_second"]
    return {"plain": plain, "trainer": hfgen, "ratio": ratio, "passed": ratio >= TARGET_RATIO}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    families = [family.strip() for family in args.families.split(",") if family.strip()]
    unknown = set(families) - set(FAMILY_ARGS)
    if not families or unknown:
        raise SystemExit(f"--families takes a list of {', '.join(FAMILY_ARGS)}, got {args.families!r}.")
    with tempfile.TemporaryDirectory(prefix="hfgen-bench-") as tmp:
        per_family = {family: compare(args, family, tmp) for family in families}
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {
            "families": families,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "max_grad_norm": args.max_grad_norm,
            "num_threads": args.num_threads,
            "seed": args.seed,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
        "families": per_family,
        "target": TARGET_RATIO,
        "passed": all(result["passed"] for result in per_family.values()),
    }

    print(f"\n{'family':<7} {'loop':<8} {'steps':>6} {'seconds':>8} {'samples/s':>10}   all runs (samples/s)")
    for family, result in per_family.items():
        for name in ("plain", "trainer"):
            runs = ", ".join(f"{run['samples_per_second']:.1f}" for run in result[name]["runs"])
            best = result[name]
            print(
                f"{family:<7} {name:<8} {args.steps:>6} {best['seconds']:>8.2f} {best['samples_per_second']:>10.1f}"
                f"   {runs}"
            )
        print(
            f"{family}: trainer.train() {result['trainer']['train_seconds']:.2f} s, of which finish() "
            f"{result['trainer']['finish_seconds']:.2f} s (excluded above); ratio trainer/plain (best runs): "
            f"{result['ratio']:.3f} -> {'PASS' if result['passed'] else 'FAIL'} (target >= {TARGET_RATIO})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
