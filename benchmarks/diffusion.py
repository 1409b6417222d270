"""The diffusion family's figures in one run: training throughput against diffusers' own loop, FID against sampling
steps for DDPM / DDIM / DPM-Solver++, the variational bound in bits/dim, and prompt adherence against guidance.

    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --json diffusion.json            # trains the digits recipe first
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --model out/diffusion-digits      # a model trained already
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --parts throughput --steps 300 --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/diffusion.py --dataset mnist --parts fid,latent --output_dir out/bench-mnist

`--dataset` (digits, mnist) picks the recipes (`diffusion_<dataset>.yaml`, `vae_spatial_<dataset>.yaml`,
`diffusion_latent_<dataset>.yaml`), the test split, the shipped feature extractor and the classifier of every part but
the throughput, which is measured on the digits. `--output_dir` keeps the models the run trains.

1. Throughput (`--parts throughput`): hfgen's `DiffusionTrainer` against the inner loop of diffusers'
   `examples/unconditional_image_generation/train_unconditional.py` (noise, a random timestep per image,
   `noise_scheduler.add_noise`, `model(noisy, timesteps).sample`, `F.mse_loss` against the noise, backward,
   `clip_grad_norm_(1.0)`, `optimizer.step()`, `lr_scheduler.step()`, gradients to None, `loss.item()` for its log),
   on the same `UNet2DModel` config (the one the trainer builds, rebuilt with `from_config`), the same cosine noise
   schedule, the embedded digits through the same `DataLoader` settings, batch size, AdamW and learning-rate schedule.
   Unconditional epsilon prediction, no Min-SNR, no EMA on either side. Both loops load their data inside the timed
   loop; the trainer also runs its tqdm bar, its NaN check and its every-`logging_steps` averaged log. The time of
   `Trainer.finish` (pipeline save, sample grid, model card) is measured and subtracted, as in `trainer_overhead.py`.
   After an untimed warm-up of each, the two loops run `--repeats` times in turns in this one process, and the
   fastest run of each is compared: other processes on a shared machine only ever slow a run down. The ratio of the
   medians and the ratio within each turn are reported too (one lucky run can decide the best-of ratio).
2. FID against sampling steps (`--parts fid`): `--num_samples` unconditional samples (the null class of the
   class-conditional digits model, guidance 1, seed `--seed`, one batch) per setting, the scheduler swapped the
   diffusers way (`Scheduler.from_config(pipe.scheduler.config)`, which inherits the trained scheduler's `clip_sample`;
   "ddim-clip" and "ddpm-clip" force `clip_sample=True`, diffusers' default and hfgen's before the trainer's
   `--clip_sample` option), FID in the features of the shipped digits
   extractor against the training split (as `hfgen evaluate`) and against the test split (180 images), with the
   sampling wall time per image; `--reseeded_settings` are sampled again with seed + 1, to show how far FID moves
   with the samples alone.
3. The bound (`--parts bound`): the pipeline's `log_likelihood` (the DDPM L_vlb, "lower bound") on the test split.
4. Guidance (`--parts guidance`): prompt adherence (`hfgen.metrics.adherence.prompt_adherence` on images with their
   prompts) of `--guidance_samples` images per template prompt of `--dataset` (a class-conditional model gets the
   class labels, a text-conditioned one the prompts' text), sampled with `--guidance_sampler` (DDIM) in
   `--guidance_steps` steps at each `--guidance_scales` value, with the two digits (shapes) the classifier sees most
   often. The shapes: `--model out/diffusion-text-shapes --dataset shapes --parts guidance --guidance_samples 2`.
   `--guidance_prompts paraphrase`: the paraphrases instead, wordings never used in training (a text model only).
5. Inpainting (`--parts inpainting`): `hfgen.metrics.completion.completion_accuracy` on the test digits: the top half
   kept, the bottom half filled by the pipeline's RePaint `inpaint` (the null class, `--inpaint_steps`, jump length 10,
   `jump_n_sample` 10 and 1, i.e. with and without resampling), and the shipped classifier's accuracy on the originals,
   on the top halves alone and on the completions.
6. Pixel against latent diffusion (`--parts latent`): an hfgen VAE with a spatial latent (`vae_spatial_digits.yaml`
   and `--latent_vae_args`: 2 x 4 x 4 numbers for the 8x8 digits) trains first, then `diffusion_latent_digits.yaml`
   (the pixel recipe on its latents, the same steps as the pixel model); for each, the training loop's seconds per
   step (its `finish` timed apart and left out, as for the throughput; the pixel model's only when this run trained
   it), and FID and sampling time per image for `--latent_settings` (`--latent_seeds` sample seeds each), as in part
   2. The FID of the VAE's reconstructions of the 180 test digits, beside that of the test digits themselves, shows
   what the first stage loses.
"""

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from hfgen.training.train import parse_config
from torch.utils.data import DataLoader

import hfgen
from hfgen.data import collate_fn
from hfgen.metrics.adherence import ATTRIBUTES, default_prompts, predict_attributes, prompt_adherence, summary
from hfgen.metrics.completion import completion_accuracy
from hfgen.metrics.evaluate import features_and_probabilities, likelihood, real_images
from hfgen.metrics.features import load_feature_extractor
from hfgen.metrics.sample_quality import fid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_overhead import with_timed_finish  # noqa: E402  (the same timing of the trainer as its overhead figure)

PARTS = ("throughput", "fid", "bound", "guidance", "inpainting", "latent")
RECIPES = os.path.join(os.path.dirname(__file__), "..", "training", "recipes")
# Per --dataset: the pixel recipe trained when no --model is given, the first stage of --parts latent, and the pixel
# recipe's UNet on that first stage's latents.
RECIPE_DATASETS = ("digits", "mnist")
RECIPE = {name: os.path.join(RECIPES, f"diffusion_{name}.yaml") for name in RECIPE_DATASETS}
LATENT_VAE_RECIPE = {name: os.path.join(RECIPES, f"vae_spatial_{name}.yaml") for name in RECIPE_DATASETS}
LATENT_RECIPE = {name: os.path.join(RECIPES, f"diffusion_latent_{name}.yaml") for name in RECIPE_DATASETS}
# name: (scheduler class, overrides of the pipeline's scheduler config, `__call__` arguments). The "-clip" samplers
# clamp every x0 prediction to [-1, 1], as diffusers' default `clip_sample=True` does (what hfgen's trainer saved
# before its `--clip_sample` option, default off); DPM-Solver++ has no such clamp (its `thresholding` is off).
# "ddim-eta1" is DDIM with eta 1 (stochastic, DDPM's variance on DDIM's skipped steps), the DDIM paper's comparison.
SAMPLERS = {
    "ddpm": (DDPMScheduler, {}, {}),
    "ddpm-clip": (DDPMScheduler, {"clip_sample": True}, {}),
    "ddim": (DDIMScheduler, {}, {}),
    "ddim-eta1": (DDIMScheduler, {}, {"eta": 1.0}),
    "ddim-clip": (DDIMScheduler, {"clip_sample": True}, {}),
    "dpm++": (DPMSolverMultistepScheduler, {}, {}),
}


def swap_scheduler(pipeline, original, sampler: str) -> dict:
    """Swaps the diffusers way, `Scheduler.from_config(pipe.scheduler.config)`; returns the `__call__` arguments."""
    scheduler_class, overrides, call_kwargs = SAMPLERS[sampler]
    pipeline.scheduler = scheduler_class.from_config(original.config, **overrides)
    return call_kwargs


TARGET_RATIO = 1.0
# The throughput comparison: the recipe's UNet and schedule, unconditional epsilon prediction, plain MSE, no EMA.
THROUGHPUT_ARGS = [
    "--family", "diffusion",
    "--dataset_name", "digits",
    "--conditioning", "none",
    "--prediction_type", "epsilon",
    "--beta_schedule", "squaredcos_cap_v2",
    "--lr_scheduler", "cosine",
    "--lr_warmup_steps", "100",
    "--max_grad_norm", "1.0",
    "--validation_steps", "0",
    "--eval_likelihood_images", "0",
    "--logging_steps", "50",
    "--report_to", "none",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated: {PARTS}.")
    parser.add_argument(
        "--model",
        help="A trained diffusion pipeline (of --dataset); default: train the dataset's class-conditional recipe.",
    )
    parser.add_argument(
        "--output_dir",
        help="Keep the models this run trains here (default: a temporary folder, deleted at the end).",
    )
    parser.add_argument("--max_train_steps", type=int, help="Steps of that training run (default: the recipe's).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of weights, data order and samples.")
    # 1. throughput
    parser.add_argument("--steps", type=int, default=300, help="Timed optimizer steps per throughput run.")
    parser.add_argument("--warmup_steps", type=int, default=20, help="Untimed steps each loop runs first.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each loop, in turns; the best counts.")
    parser.add_argument("--batch_size", type=int, default=64, help="Training batch size of both loops.")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate of both loops.")
    parser.add_argument(
        "--plain_fused_adamw",
        action="store_true",
        help="Give the plain loop torch's fused AdamW, as the trainer has (diffusers' example keeps torch's default, "
        "a loop over the parameters on CPU): compares the two loops' other per-step work alone.",
    )
    # 2. FID
    parser.add_argument("--num_samples", type=int, default=500, help="Samples per FID setting (one batch).")
    parser.add_argument(
        "--settings",
        default="ddpm:1000,ddpm:250,ddpm:100,ddim:10,ddim:25,ddim:50,ddim:100,dpm++:5,dpm++:10,dpm++:20,dpm++:25",
        help=f"sampler:steps pairs; samplers: {', '.join(SAMPLERS)}. ddpm:1000 is the reference.",
    )
    parser.add_argument(
        "--reference_fid", type=float, help="DDPM-1000's FID (vs train) from an earlier run, when it is not sampled."
    )
    parser.add_argument(
        "--reseeded_settings",
        default="ddim:50,dpm++:20",
        help="Settings sampled again with seed + 1: how far FID moves with the samples alone.",
    )
    # 4. guidance
    parser.add_argument("--guidance_scales", default="1,2,4,7.5", help="Classifier-free guidance scales.")
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=list(ATTRIBUTES),
        help="The data of every part (its recipes, test split, feature extractor and classifier); shapes: "
        "--parts guidance of a trained text-conditioned --model only.",
    )
    parser.add_argument(
        "--guidance_samples",
        type=int,
        default=50,
        help="Images per template prompt and scale (10 digit prompts; 150 shapes prompts, so 1 or 2 there).",
    )
    parser.add_argument(
        "--guidance_prompts",
        default="seen",
        choices=["seen", "paraphrase"],
        help="The training captions' template, or paraphrases never used in training (text-conditioned models).",
    )
    parser.add_argument(
        "--guidance_sampler", default="ddim", choices=list(SAMPLERS), help="Guidance samples' sampler."
    )
    parser.add_argument("--guidance_steps", type=int, default=50, help="Sampling steps of the guidance samples.")
    # 5. inpainting
    parser.add_argument("--inpaint_steps", type=int, default=100, help="RePaint's num_inference_steps.")
    # 6. pixel against latent
    parser.add_argument(
        "--latent_vae_args",
        default="",
        help='Flags after the first stage\'s recipe, vae_spatial_digits.yaml: --latent_vae_args="--beta 0.01".',
    )
    parser.add_argument(
        "--latent_settings", default="ddim-eta1:50,dpm++:20", help="sampler:steps pairs of the pixel/latent FID."
    )
    parser.add_argument("--latent_seeds", type=int, default=3, help="Sample seeds per setting (FID moves by seed).")
    parser.add_argument("--json", metavar="PATH", help="Also write the results to this JSON file.")
    return parser.parse_args(argv)


# ----- 1. throughput: the hfgen trainer ------------------------------------------------------------------------------
def build_trainer(args: argparse.Namespace, steps: int, output_dir: str):
    """An unconditional epsilon `DiffusionTrainer` on the digits whose `finish` is timed (and skippable)."""
    trainer_class, config = parse_config(
        [
            *THROUGHPUT_ARGS,
            "--output_dir", output_dir,
            "--seed", str(args.seed),
            "--train_batch_size", str(args.batch_size),
            "--learning_rate", str(args.learning_rate),
            "--max_train_steps", str(steps),
            "--checkpointing_steps", str(steps + 1),
        ]
    )  # fmt: skip
    return with_timed_finish(trainer_class(config))


def time_trainer(trainer) -> float:
    """Seconds of `trainer.train()` less its `finish`."""
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start - trainer.finish_seconds


# ----- 1. throughput: diffusers' train_unconditional.py inner loop ---------------------------------------------------
def diffusers_loss(model, noise_scheduler, clean_images: torch.Tensor) -> torch.Tensor:
    """train_unconditional.py's loss on a batch (b, c, h, w): epsilon prediction, plain MSE."""
    # Sample noise and a random timestep per image, and noise the images (the forward process)
    noise = torch.randn(clean_images.shape).to(clean_images.device)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (len(clean_images),), device=clean_images.device
    ).long()
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
    # Predict the noise residual
    noise_pred = model(noisy_images, timesteps).sample
    return F.mse_loss(noise_pred.float(), noise.float())


def build_plain_loop(args: argparse.Namespace, trainer, steps: int):
    """The trainer's UNet config, noise schedule and training split, in diffusers' example loop: a function that runs
    `steps` optimizer steps."""
    config = trainer.config
    torch.manual_seed(args.seed)
    model = UNet2DModel.from_config(trainer.accelerator.unwrap_model(trainer.model).config).train()
    noise_scheduler = DDPMScheduler.from_config(trainer.noise_scheduler.config)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=args.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        fused=args.plain_fused_adamw or None,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=steps
    )
    dataloader = DataLoader(
        trainer.splits["train"],
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )

    def run():
        done = 0
        while done < steps:
            for batch in dataloader:
                loss = diffusers_loss(model, noise_scheduler, batch["pixel_values"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss.detach().item()  # the script's per-step log
                done += 1
                if done >= steps:
                    break

    return run, model, noise_scheduler


def time_plain_loop(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def throughput(args: argparse.Namespace, tmp: str) -> dict:
    if args.warmup_steps > 0:
        warmup = build_trainer(args, args.warmup_steps, os.path.join(tmp, "warmup"))
        warmup.run_finish = False
        time_trainer(warmup)
        build_plain_loop(args, warmup, args.warmup_steps)[0]()
        del warmup
    plain_runs, trainer_runs = [], []
    for repeat in range(args.repeats):  # in turns: a burst of load from elsewhere does not hit only one loop
        trainer = build_trainer(args, args.steps, os.path.join(tmp, f"trainer-{repeat}"))
        run, _, _ = build_plain_loop(args, trainer, args.steps)
        plain_runs.append(time_plain_loop(run))
        trainer_runs.append(time_trainer(trainer))
        del trainer, run
    images = args.steps * args.batch_size
    plain = [images / seconds for seconds in plain_runs]
    hfgen_ = [images / seconds for seconds in trainer_runs]
    ratio = max(hfgen_) / max(plain)
    return {
        # On a loaded machine one lucky run decides the best-of ratio; the medians and the per-turn ratios show it.
        "median_ratio": statistics.median(hfgen_) / statistics.median(plain),
        "turn_ratios": [t / p for t, p in zip(hfgen_, plain)],
        "plain_images_per_second": max(plain),
        "trainer_images_per_second": max(hfgen_),
        "plain_runs": plain,
        "trainer_runs": hfgen_,
        "ratio": ratio,
        "plain_fused_adamw": args.plain_fused_adamw,
        "passed": ratio >= TARGET_RATIO,
    }


# ----- 2. FID against sampling steps ---------------------------------------------------------------------------------
def parse_settings(text: str) -> list[tuple[str, int]]:
    settings = []
    for item in text.split(","):
        sampler, _, steps = item.strip().partition(":")
        if sampler not in SAMPLERS or not steps.isdigit():
            raise SystemExit(f"--settings takes sampler:steps pairs with a sampler of {list(SAMPLERS)}, got {item!r}.")
        settings.append((sampler, int(steps)))
    return settings


def real_features(extractor, dataset: str) -> dict:
    return {
        split: features_and_probabilities(extractor, real_images(dataset, split))[0] for split in ("train", "test")
    }


@torch.no_grad()
def fid_row(pipeline, original, extractor, real: dict, sampler: str, steps: int, seed: int, num_samples: int) -> dict:
    """FID (against the train and the test split) and seconds per image of `num_samples` unconditional samples."""
    call_kwargs = swap_scheduler(pipeline, original, sampler)
    start = time.perf_counter()
    images = pipeline.generate(
        num_samples, seed=seed, max_batch_size=num_samples, num_inference_steps=steps, **call_kwargs
    )
    seconds = (time.perf_counter() - start) / num_samples
    features = features_and_probabilities(extractor, images * 2 - 1)[0]
    row = {"sampler": sampler, "steps": steps, "seed": seed, "seconds_per_image": seconds}
    row.update({f"fid_{split}": fid(real[split], features) for split in real})
    print(
        f"{sampler:>6} {steps:>5} steps, seed {seed}: FID train {row['fid_train']:.3f}, test "
        f"{row['fid_test']:.3f}, {seconds * 1000:.1f} ms/image",
        flush=True,
    )
    return row


@torch.no_grad()
def fid_against_steps(args: argparse.Namespace, pipeline) -> list[dict]:
    extractor = load_feature_extractor(args.dataset)
    real = real_features(extractor, args.dataset)
    original = pipeline.scheduler
    rows = []
    settings = [(*setting, args.seed) for setting in parse_settings(args.settings)]
    if args.reseeded_settings:  # "" for none
        settings += [(*setting, args.seed + 1) for setting in parse_settings(args.reseeded_settings)]
    for sampler, steps, seed in settings:
        rows.append(fid_row(pipeline, original, extractor, real, sampler, steps, seed, args.num_samples))
    pipeline.scheduler = original
    reference = next(
        (row for row in rows if (row["sampler"], row["steps"], row["seed"]) == ("ddpm", 1000, args.seed)), None
    )
    reference_fid = reference["fid_train"] if reference is not None else args.reference_fid
    if reference_fid is not None:
        for row in rows:
            row["within_10_percent"] = row["fid_train"] <= 1.1 * reference_fid
    return rows


def fewest_steps(rows: list[dict]) -> dict:
    """For each sampler, the fewest steps whose FID (train split) is within 10% of DDPM-1000's."""
    best = {}
    for row in rows:
        if (
            row.get("within_10_percent")
            and row["seed"] == rows[0]["seed"]
            and row["steps"] < best.get(row["sampler"], float("inf"))
        ):
            best[row["sampler"]] = row["steps"]
    return best


# ----- 3. the bound, 4. guidance -------------------------------------------------------------------------------------
def bound(args: argparse.Namespace, pipeline) -> dict:
    start = time.perf_counter()
    result = likelihood(pipeline, real_images(args.dataset, "test"), batch_size=500, seed=args.seed)
    return {**result, "seconds": time.perf_counter() - start}


@torch.no_grad()
def guidance(args: argparse.Namespace, pipeline) -> list[dict]:
    """Prompt adherence against the guidance scale: `--guidance_samples` images for each of the data set's template
    prompts (the ten digit classes; every shapes combination), from class labels or from the prompts' text, or for
    each of its paraphrases (`--guidance_prompts paraphrase`)."""
    class_model_on_shapes = pipeline.condition_type == "class" and args.dataset == "shapes"
    if pipeline.condition_type not in ("class", "text") or class_model_on_shapes:
        raise SystemExit(
            f"--parts guidance needs a class-conditional digits model or a text-conditioned one; this model's "
            f"condition is {pipeline.condition_type!r} and --dataset is {args.dataset!r}."
        )
    if args.guidance_prompts == "paraphrase" and pipeline.condition_type != "text":
        raise SystemExit("--guidance_prompts paraphrase needs a text-conditioned model: class labels have no wording.")
    # seen, digits: "a handwritten digit zero", ... in class order
    prompts = default_prompts(args.dataset)[args.guidance_prompts]
    condition = (
        {"class_labels": list(range(len(prompts)))} if pipeline.condition_type == "class" else {"prompt": prompts}
    )
    image_prompts = [prompt for prompt in prompts for _ in range(args.guidance_samples)]  # generate's order
    main_attribute = ATTRIBUTES[args.dataset][0]  # digit, or shape
    original = pipeline.scheduler
    call_kwargs = swap_scheduler(pipeline, original, args.guidance_sampler)
    rows = []
    for scale in [float(s) for s in args.guidance_scales.split(",")]:
        start = time.perf_counter()
        images = pipeline.generate(
            args.guidance_samples,
            **condition,
            seed=args.seed,
            num_inference_steps=args.guidance_steps,
            guidance_scale=scale,
            **call_kwargs,
        )
        seconds = (time.perf_counter() - start) / len(images)
        result = summary(prompt_adherence(images, args.dataset, prompts=image_prompts))
        predicted = collections.Counter(predict_attributes(images, args.dataset)[main_attribute]).most_common(2)
        rows.append({"guidance_scale": scale, **result, "most_predicted": predicted, "seconds_per_image": seconds})
        print(f"guidance {scale}: {result}, most predicted {predicted}", flush=True)
    pipeline.scheduler = original
    return rows


@torch.no_grad()
def inpainting(args: argparse.Namespace, pipeline) -> list[dict]:
    """Completion accuracy of the bottom halves of the test digits, with and without RePaint's resampling."""
    rows = []
    for jump_n_sample in (10, 1):

        def complete(images, keep):
            return pipeline.inpaint(
                images,
                1 - keep,  # the pipeline's mask is 1 where pixels are generated
                num_inference_steps=args.inpaint_steps,
                jump_length=10,
                jump_n_sample=jump_n_sample,
                generator=torch.Generator().manual_seed(args.seed),
                output_type="pt",
            )

        start = time.perf_counter()
        result = completion_accuracy(complete, args.dataset, batch_size=500)
        seconds = (time.perf_counter() - start) / result["num_images"]
        rows.append({"jump_n_sample": jump_n_sample, **result, "seconds_per_image": seconds})
        print(f"inpainting, jump_n_sample {jump_n_sample}: {rows[-1]}", flush=True)
    return rows


# ----- the run -------------------------------------------------------------------------------------------------------
def train_timed(argv: list[str]) -> dict:
    """Trains through the shared trainer; the loop's seconds per step, its `finish` (save, samples, card) left out."""
    trainer_class, config = parse_config(argv)
    trainer = with_timed_finish(trainer_class(config))
    start = time.perf_counter()
    trainer.train()
    loop = time.perf_counter() - start - trainer.finish_seconds
    parameters = sum(p.numel() for p in trainer.accelerator.unwrap_model(trainer.model).parameters())
    return {
        "steps": config.max_train_steps,
        "seconds_per_step": loop / config.max_train_steps,
        "parameters": parameters,
    }


def common_training_args(args: argparse.Namespace) -> list[str]:
    """Of every model the script trains: no validation samples inside the timed loop."""
    return ["--seed", str(args.seed), "--report_to", "none", "--validation_steps", "0"]


def trained_model(args: argparse.Namespace, tmp: str) -> tuple[str, dict | None]:
    """The pixel model: `--model`, or the dataset's recipe trained here (with its loop's seconds per step)."""
    if args.model:
        return args.model, None
    output_dir = os.path.join(tmp, f"diffusion-{args.dataset}")
    argv = ["--recipe", RECIPE[args.dataset], "--output_dir", output_dir, *common_training_args(args)]
    if args.max_train_steps:
        argv += ["--max_train_steps", str(args.max_train_steps)]
    return output_dir, train_timed(argv)


@torch.no_grad()
def pixel_against_latent(args: argparse.Namespace, tmp: str, pixel_path: str, pixel_training: dict | None) -> dict:
    vae_dir = os.path.join(tmp, f"vae-spatial-{args.dataset}")
    latent_dir = os.path.join(tmp, f"diffusion-latent-{args.dataset}")
    common = common_training_args(args)
    with torch.enable_grad():
        vae_recipe, latent_recipe = LATENT_VAE_RECIPE[args.dataset], LATENT_RECIPE[args.dataset]
        argv = ["--recipe", vae_recipe, *shlex.split(args.latent_vae_args), "--output_dir", vae_dir, *common]
        vae_training = train_timed(argv)
        argv = ["--recipe", latent_recipe, "--vae_name_or_path", vae_dir, "--output_dir", latent_dir, *common]
        if args.max_train_steps:
            argv += ["--max_train_steps", str(args.max_train_steps)]
        latent_training = train_timed(argv)
    extractor = load_feature_extractor(args.dataset)
    real = real_features(extractor, args.dataset)
    # What the first stage loses: FID of its reconstructions of the test digits (mean of q(z | x), decoded).
    vae = hfgen.VAEPipeline.from_pretrained(vae_dir)
    reconstructions = vae.reconstruct(real_images(args.dataset, "test") / 2 + 0.5, output_type="pt")
    reconstructed = fid(real["train"], features_and_probabilities(extractor, reconstructions * 2 - 1)[0])
    results = {
        "vae": {**vae_training, "reconstruction_fid_train": reconstructed},
        "test_digits_fid_train": fid(real["train"], real["test"]),  # the same 180 images, not reconstructed
        "models": {},
    }
    for name, path, training in [("pixel", pixel_path, pixel_training), ("latent", latent_dir, latent_training)]:
        pipeline = hfgen.DiffusionImagePipeline.from_pretrained(path)
        pipeline.set_progress_bar_config(disable=True)
        trained_scheduler = pipeline.scheduler  # every sampler is swapped in from its config
        rows = [
            fid_row(pipeline, trained_scheduler, extractor, real, sampler, steps, seed, args.num_samples)
            for sampler, steps in parse_settings(args.latent_settings)
            for seed in range(args.seed, args.seed + args.latent_seeds)
        ]
        unet = pipeline.unet.config
        results["models"][name] = {
            "training": training,
            "unet_input": [unet.in_channels, unet.sample_size],
            "fid": rows,
        }
    print(f"pixel against latent: {json.dumps(results)}", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts takes a list of {', '.join(PARTS)}, got {args.parts!r}.")
    if "throughput" in parts and args.dataset != "digits":
        raise SystemExit("--parts throughput is measured on the digits; leave it out for another --dataset.")
    if args.dataset not in RECIPE and (set(parts) - {"guidance"} or not args.model):
        raise SystemExit(
            f"--dataset {args.dataset} is for --parts guidance of a trained text-conditioned --model; the other parts "
            f"take {' or '.join(RECIPE_DATASETS)}."
        )
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": vars(args),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "load_average_start": os.getloadavg(),
        },
    }
    if args.output_dir:  # kept after the run: a later run can take the pixel model as --model
        os.makedirs(args.output_dir, exist_ok=True)
        work_dir = contextlib.nullcontext(args.output_dir)
    else:
        work_dir = tempfile.TemporaryDirectory(prefix="hfgen-diffusion-bench-")
    with work_dir as tmp:
        if "throughput" in parts:
            results["throughput"] = throughput(args, tmp)
            t = results["throughput"]
            print(
                f"throughput: plain {t['plain_images_per_second']:.1f} img/s, trainer "
                f"{t['trainer_images_per_second']:.1f} img/s, ratio {t['ratio']:.3f} "
                f"(medians {t['median_ratio']:.3f})",
                flush=True,
            )
        if {"fid", "bound", "guidance", "inpainting", "latent"} & set(parts):
            path, results["training"] = trained_model(args, tmp)
            pipeline = hfgen.DiffusionImagePipeline.from_pretrained(path)
            pipeline.set_progress_bar_config(disable=True)
            recipe = os.path.basename(RECIPE[args.dataset])
            results["model"] = args.model or f"{recipe}, {args.max_train_steps or 'recipe'} steps"
            if "fid" in parts:
                results["fid"] = fid_against_steps(args, pipeline)
                results["fewest_steps_within_10_percent"] = fewest_steps(results["fid"])
            if "bound" in parts:
                results["bound"] = bound(args, pipeline)
                print(f"bound: {results['bound']}", flush=True)
            if "guidance" in parts:
                results["guidance"] = guidance(args, pipeline)
            if "inpainting" in parts:
                results["inpainting"] = inpainting(args, pipeline)
            if "latent" in parts:
                results["pixel_against_latent"] = pixel_against_latent(args, tmp, path, results["training"])
    results["environment"]["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
