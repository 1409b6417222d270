"""Score models on 2-D toys: a noise-conditional MLP trained by denoising score matching, its score field against the
true one, and annealed Langevin samples.

    OMP_NUM_THREADS=1 python benchmarks/score_toys.py --figure benchmarks/score_toys.png   # ~1 min on one core

For each toy (eight Gaussians, two moons; the data of `benchmarks/flows.py`) a `ScoreMLPModel` is trained with the
family's loss (`denoising_score_matching_loss`, lambda(sigma) = sigma^2) over the geometric levels of an
`AnnealedLangevinScheduler`, then compared at one level with the true score of the data smoothed by N(0, sigma^2 I):
in closed form for the eight Gaussians (a mixture of N(c_k, (0.2^2 + sigma^2) I)), and for the two moons as the score
of 5,000 data points smoothed by sigma, (E[x_0 | x] - x) / sigma^2 with the posterior over those points. The figure
is the cosine similarity of the two fields averaged over points of the smoothed data (where sampling goes), and
samples by annealed Langevin dynamics (`hfgen.pipelines.pipeline_score.annealed_langevin`, the pipeline's loop).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
from hfgen.pipelines.pipeline_score import annealed_langevin, score_forward
from hfgen.training.trainer_score import denoising_score_matching_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flows import toy_data  # noqa: E402  (the same toy data as the flows' figure)

import hfgen  # noqa: E402

TOYS = ("eight Gaussians", "two moons")
EIGHT_GAUSSIANS_STD = 0.2  # flows.toy_data: centres 3 (cos, sin)(k pi / 4), k = 0..7, plus 0.2 N(0, I)


def eight_gaussians_centres() -> torch.Tensor:
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return 3 * torch.stack([angles.cos(), angles.sin()], 1)  # (8, 2)


def mixture_score(x: torch.Tensor, centres: torch.Tensor, variance: float, weights=None) -> torch.Tensor:
    """grad log sum_k w_k N(x; c_k, variance I) at x (n, d): sum_k r_k(x) (c_k - x) / variance, with the posterior
    r_k(x). With one equal-weight component per data point this is the score of the data smoothed by sigma."""
    x, centres = x.double(), centres.double()
    log_weights = torch.zeros(len(centres), dtype=torch.float64) if weights is None else torch.as_tensor(weights).log()
    logits = log_weights - torch.cdist(x, centres) ** 2 / (2 * variance)  # (n, k)
    posterior = torch.softmax(logits, dim=1)
    return ((posterior @ centres) - x) / variance


def true_score(name: str, x: torch.Tensor, sigma: float, reference: torch.Tensor | None = None) -> torch.Tensor:
    """The score of the toy's data smoothed by N(0, sigma^2 I) at x (n, 2)."""
    if name == "eight Gaussians":
        return mixture_score(x, eight_gaussians_centres(), EIGHT_GAUSSIANS_STD**2 + sigma**2)
    reference = toy_data(name, 5000, 123) if reference is None else reference
    return mixture_score(x, reference, sigma**2)


def toy_scheduler(**overrides) -> hfgen.AnnealedLangevinScheduler:
    """10 levels from 6 (about the largest distance between two points of either toy) to 0.01."""
    return hfgen.AnnealedLangevinScheduler(
        **{"num_train_timesteps": 10, "sigma_min": 0.01, "sigma_max": 6.0, "steps_per_level": 100, **overrides}
    )


def train_score_mlp(
    points: torch.Tensor, scheduler, steps: int = 3000, batch_size: int = 256, lr: float = 5e-3, seed: int = 0
):
    """A `ScoreMLPModel` trained by denoising score matching (the trainer's loss) on `points` (n, 2), Adam with a
    cosine schedule (at 2e-3 the middle levels were still poor after 2000 steps; 5e-3 learns them in 1500)."""
    torch.manual_seed(seed)
    model = hfgen.ScoreMLPModel(in_features=points.shape[1], num_levels=scheduler.config.num_train_timesteps)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        clean = points[torch.randint(0, len(points), (batch_size,), generator=generator)]
        levels = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        score = score_forward(model, scheduler.add_noise(clean, noise, levels), levels, scheduler.sigmas)
        loss = denoising_score_matching_loss(score, noise, scheduler.sigmas[levels]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
    return model.eval()


@torch.no_grad()
def score_cosine(model, scheduler, name: str, level: int, num_points: int = 2000, seed: int = 1) -> float:
    """Mean cosine similarity of the learned and the true score at `level`, over points of the data smoothed by
    sigma_level."""
    sigma = scheduler.sigmas[level].item()
    generator = torch.Generator().manual_seed(seed)
    x = toy_data(name, num_points, seed) + sigma * torch.randn(num_points, 2, generator=generator)
    learned = score_forward(model, x, torch.full((num_points,), level), scheduler.sigmas).double()
    return torch.nn.functional.cosine_similarity(learned, true_score(name, x, sigma), dim=1).mean().item()


@torch.no_grad()
def langevin_samples(model, scheduler, num_samples: int = 2000, seed: int = 0) -> torch.Tensor:
    """Annealed Langevin samples of the learned score (the pipeline's loop), starting at N(0, sigma_1^2 I)."""
    generator = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps()
    x = torch.randn(num_samples, 2, generator=generator) * scheduler.init_noise_sigma
    return annealed_langevin(
        scheduler, lambda x, level: score_forward(model, x, level, scheduler.sigmas), x, generator
    )


def level_near(scheduler, sigma: float) -> int:
    return int((scheduler.sigmas.log() - math.log(sigma)).abs().argmin())


def run(figure: str | None, steps: int, sigma: float) -> list[dict]:
    rows, panels = [], []
    for name in TOYS:
        scheduler = toy_scheduler()
        start = time.perf_counter()
        model = train_score_mlp(toy_data(name, 20000, 0), scheduler, steps)
        train_seconds = time.perf_counter() - start
        level = level_near(scheduler, sigma)
        cosines = {f"{scheduler.sigmas[i].item():.3g}": score_cosine(model, scheduler, name, i) for i in range(10)}
        start = time.perf_counter()
        samples = langevin_samples(model, scheduler)
        rows.append(
            {
                "data": name,
                "steps": steps,
                "sigma": round(scheduler.sigmas[level].item(), 4),
                "cosine": cosines[f"{scheduler.sigmas[level].item():.3g}"],
                "cosine per sigma": cosines,
                "train s": round(train_seconds, 1),
                "sample s (2000 points, 1001 steps)": round(time.perf_counter() - start, 1),
            }
        )
        panels.append((name, model, scheduler, level, samples))
    if figure:
        plot(panels, figure)
    return rows


@torch.no_grad()
def plot(panels, figure: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(11, 3.8 * len(panels)))
    axis = torch.linspace(-4.5, 4.5, 21)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    for (name, model, scheduler, level, samples), row in zip(panels, axes):
        sigma = scheduler.sigmas[level].item()
        data = toy_data(name, 2000, 1).numpy()
        learned = score_forward(model, grid, torch.full((len(grid),), level), scheduler.sigmas)
        fields = (("true", true_score(name, grid, sigma)), ("learned", learned.double()))
        for ax, (label, field) in zip(row[:2], fields):
            unit = field / field.norm(dim=1, keepdim=True).clamp(min=1e-12)  # directions; length would hide them
            ax.scatter(data[:, 0], data[:, 1], s=1, color="0.7")
            ax.quiver(grid[:, 0], grid[:, 1], unit[:, 0], unit[:, 1], color="C0" if label == "true" else "C3")
            ax.set_title(f"{name}: {label} score, sigma {sigma:.2f}", fontsize=9)
        row[2].scatter(data[:, 0], data[:, 1], s=1, color="0.7", label="data")
        row[2].scatter(samples[:, 0], samples[:, 1], s=1, color="C1", label="Langevin samples")
        row[2].set_title("Langevin samples (orange), data (grey)", fontsize=9)
        row[2].legend(loc="lower right", markerscale=6, fontsize=8)
        for ax in row:
            ax.set_xlim(-4.5, 4.5)
            ax.set_ylim(-4.5, 4.5)
            ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(figure, dpi=70)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--figure", default=None, help="Where to save the figure (PNG).")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps (batch 256) per toy.")
    parser.add_argument("--sigma", type=float, default=0.5, help="Compare the fields at the level nearest this.")
    parser.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    rows = run(args.figure, args.steps, args.sigma)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
