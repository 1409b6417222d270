"""Where a text-to-image model of the shapes puts a shape, for each position its prompt names: the same prompt but
for the position words, the same seed, so the only thing that may move the shape is the prompt.

    OMP_NUM_THREADS=1 python benchmarks/shapes_positions.py out/diffusion-text-shapes --num_images 30

Prints, for each prompted position, how many of `--num_images` images the shapes' attribute reader
(`hfgen.metrics.adherence.predict_attributes`: the foreground centroid's nearest position) puts at each position.
A model that follows the position words puts them on the diagonal; one that ignores them prints one row five
times.

`--first_step` looks at where the layout should come from, for a diffusion model: its x0 prediction at the first
sampling step (t = T - 1, pure noise in, the conditional model alone, no guidance), averaged over `--num_images`
noises. The best such prediction is the mean of the training images with that caption, so its foreground (the mean
over channels, on black) should sit at the prompted position; the script prints the nearest position of the averaged
prediction's foreground centroid and the fraction of the foreground in the prompted quadrant or centre.

`--word_swap` asks whether the model reads the corner words at all, where the layout is decided: the x0 prediction's
error on training shapes noised to t >= `--probe_timestep`, with their captions as written and with each corner
swapped for another corner. A model that reads the corners is worse with the swapped captions; beside them, the error
of the best predictions from pure noise (each image's caption mean, and the same mean blind to which corner).
"""

import argparse
import collections
import json

import numpy as np
import torch
from hfgen.pipelines.pipeline_diffusion import predicted_original_and_noise, unet_forward

import hfgen
from hfgen.data import COLORS, POSITIONS, SHAPES, SIZES, make_shapes_dataset
from hfgen.metrics.adherence import nearest_position, predict_attributes, template_prompt


@torch.no_grad()
def first_step_mean_prediction(pipeline, prompt: str, num_noises: int, seed: int) -> torch.Tensor:
    """(h, w) foreground in [0, 1] of the x0 prediction at t = T - 1 from pure noise, averaged over `num_noises`."""
    scheduler, unet = pipeline.scheduler, pipeline.unet
    noise = torch.randn(pipeline.latent_shape(num_noises), generator=torch.Generator().manual_seed(seed))
    condition = pipeline.encode_prompt([prompt] * num_noises)[0]
    timesteps = torch.full((num_noises,), scheduler.config.num_train_timesteps - 1)
    output = unet_forward(unet, noise, timesteps, condition)
    x0, _ = predicted_original_and_noise(scheduler, output, noise, timesteps)
    return ((x0.clamp(-1, 1) + 1) / 2).mean(dim=(0, 1))  # black background: foreground = mean over channels


def weights_and_grid(foreground: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The foreground above its minimum, and every pixel centre's x and y as fractions of the width and height."""
    height, width = foreground.shape
    y, x = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij")
    return foreground - foreground.min(), x, y


def centroid_position(foreground: torch.Tensor) -> str:
    """The position nearest the foreground's weighted centroid (a mean prediction is blurred: no threshold)."""
    weight, x, y = weights_and_grid(foreground)
    return nearest_position((weight * x).sum() / weight.sum(), (weight * y).sum() / weight.sum())


def share_near(foreground: torch.Tensor, position: str) -> float:
    """The share of the foreground (above its minimum) within a quarter of the side of `position`'s centre."""
    weight, x, y = weights_and_grid(foreground)
    px, py = POSITIONS[position]
    near = ((x - px).abs() < 0.25) & ((y - py).abs() < 0.25)
    return float(weight[near].sum() / weight.sum())


CORNERS = [position for position in POSITIONS if position != "center"]


def swap_corner(caption: str, rng: np.random.Generator) -> str:
    """The caption with its corner ("... at the top left") replaced by another corner; a centre caption unchanged."""
    for corner in CORNERS:
        if caption.endswith(corner):
            return caption[: -len(corner)] + str(rng.choice([c for c in CORNERS if c != corner]))
    return caption


def group_mean_error(images: torch.Tensor, keys: list[str]) -> float:
    """The MSE of predicting each image by the mean of the images that share its key (e.g. its caption)."""
    groups = collections.defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    means = torch.empty_like(images)
    for indices in groups.values():
        means[indices] = images[indices].mean(0)
    return float(((means - images) ** 2).mean())


@torch.no_grad()
def word_swap_errors(pipeline, images, captions, first_timestep: int, seed: int) -> dict[str, float]:
    """The x0 prediction's MSE on `images` (b, c, h, w) in [-1, 1] noised to t in [first_timestep, T), conditioned
    on `captions` as written and with their corners swapped (the same noise and timesteps for both)."""
    scheduler, unet = pipeline.scheduler, pipeline.unet
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator)
    last = scheduler.config.num_train_timesteps
    timesteps = torch.randint(first_timestep, last, (len(images),), generator=generator)
    noisy = scheduler.add_noise(images, noise, timesteps)
    rng = np.random.default_rng(seed)
    errors = {}
    for name, prompts in (("as written", captions), ("corners swapped", [swap_corner(c, rng) for c in captions])):
        total = 0.0
        for start in range(0, len(images), 64):
            part = slice(start, start + 64)
            condition = pipeline.encode_prompt(prompts[part])[0]
            output = unet_forward(unet, noisy[part], timesteps[part], condition)
            x0, _ = predicted_original_and_noise(scheduler, output, noisy[part], timesteps[part])
            total += float(((x0 - images[part]) ** 2).sum())
        errors[name] = total / images.numel()
    return errors


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="A text-conditioned pipeline trained on the shapes.")
    parser.add_argument("--num_images", type=int, default=30, help="Images per position.")
    parser.add_argument("--shape", default="square", choices=SHAPES)
    parser.add_argument("--color", default="red", choices=list(COLORS))
    parser.add_argument("--size", default="large", choices=list(SIZES))
    parser.add_argument("--guidance_scale", type=float, default=4.0)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--first_step",
        action="store_true",
        help="Also the diffusion model's x0 prediction at the first step, averaged over the noises (see above).",
    )
    parser.add_argument(
        "--word_swap",
        action="store_true",
        help="Also the x0 error at high noise with the captions as written and with the corners swapped (see above).",
    )
    parser.add_argument("--probe_timestep", type=int, default=950, help="--word_swap: the lowest timestep probed.")
    parser.add_argument("--probe_images", type=int, default=512, help="--word_swap: training shapes probed.")
    args = parser.parse_args(argv)
    pipeline = hfgen.load_pipeline(args.model)
    for flag, wanted in (("--first_step", args.first_step), ("--word_swap", args.word_swap)):
        if wanted and not hasattr(pipeline, "unet"):
            raise SystemExit(
                f"{flag} reads a diffusion model's denoising steps; {args.model} is a {type(pipeline).__name__}. "
                f"Drop {flag}, or pass a pipeline trained with --family diffusion."
            )
    if args.word_swap and getattr(pipeline, "vae", None) is not None:
        raise SystemExit(
            f"--word_swap noises the shapes' pixels; {args.model} denoises an autoencoder's latents. Drop --word_swap."
        )
    pipeline.set_progress_bar_config(disable=True)
    prompts = {  # the training captions' wording
        position: template_prompt(
            {"shape": args.shape, "color": args.color, "size": args.size, "position": position}, "shapes"
        )
        for position in POSITIONS
    }
    counts = {}
    for position in POSITIONS:
        images = pipeline.generate(
            args.num_images,
            prompt=prompts[position],
            seed=args.seed,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
        )
        found = collections.Counter(predict_attributes(images, "shapes")["position"])
        counts[position] = {p: found.get(p, 0) for p in POSITIONS}
        print(f"{position:>12}: {json.dumps(counts[position])}", flush=True)
    correct = sum(counts[p][p] for p in POSITIONS) / (len(POSITIONS) * args.num_images)
    print(f"at the prompted position: {correct:.3f} (chance {1 / len(POSITIONS):.2f})")
    results = {"counts": counts, "at_prompted_position": correct}
    if args.first_step:
        results["first_step"] = {}
        data = make_shapes_dataset()  # the embedded shapes: their mean per caption is the best first prediction
        data_images, data_texts = data["image"], data["text"]  # decoded once
        for position, prompt in prompts.items():
            foreground = first_step_mean_prediction(pipeline, prompt, args.num_images, args.seed)
            found, share = centroid_position(foreground), share_near(foreground, position)
            same_caption = [np.asarray(image) for image, text in zip(data_images, data_texts) if text == prompt]
            data_share = share_near(torch.from_numpy(np.mean(same_caption, axis=(0, 3)) / 255), position)
            results["first_step"][position] = {
                "nearest_position": found, "share_near_prompted": share, "data_share_near_prompted": data_share
            }  # fmt: skip
            print(
                f"first step, {position:>12}: the mean prediction is nearest {found!r}, {share:.2f} of it near the "
                f"prompted position (the {len(same_caption)} images with this caption: {data_share:.2f})"
            )
    if args.word_swap:
        data = make_shapes_dataset(resolution=pipeline.image_format[1])  # at the size the model was trained on
        images = torch.from_numpy(np.stack([np.asarray(image) for image in data["image"]])).float() / 127.5 - 1
        images, captions = images.permute(0, 3, 1, 2), list(data["text"])  # (n, 3, h, w) in [-1, 1]
        probed = slice(0, args.probe_images)
        errors = word_swap_errors(pipeline, images[probed], captions[probed], args.probe_timestep, args.seed)
        # The best predictions from pure noise, over every training shape (the probed ones are its first part).
        corner_blind = [next((c[: -len(k)] for k in CORNERS if c.endswith(k)), c) for c in captions]
        errors["best: caption mean"] = group_mean_error(images, captions)
        errors["best: caption mean, blind to the corner"] = group_mean_error(images, corner_blind)
        results["word_swap"] = errors
        print(f"x0 error at t >= {args.probe_timestep} on {len(images[probed])} training shapes: {json.dumps(errors)}")
    return results


if __name__ == "__main__":
    main()
