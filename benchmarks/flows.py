"""Normalizing flows, measured: the course notes' problems, 2-D toy densities, and trained flows on the digits.

    python benchmarks/flows.py --problems                                  # reconstruction error vs depth, ReLU
    python benchmarks/flows.py --toys --figure benchmarks/flows_toys.png   # two moons, eight Gaussians (~1 min)
    python benchmarks/flows.py --flow out/flow-glow-digits --flow out/flow-realnvp-digits  # trained recipes
    python benchmarks/flows.py --flow out/flow-glow-digits --temperatures 0.5 0.7 1.0     # and samples per T
    python benchmarks/flows.py --dataset mnist --flow out/glow-class --temperatures 0.7 --guidance_scales 1 3  # guided
    python benchmarks/flows.py --dataset mnist --flow out/flow-glow-mnist --flow out/vae-mnist  # beside a VAE

- Reconstruction error: |y - f^-1(f(y))| for 64 dequantised test digits through Glow stacks of growing depth with
  perturbed random weights (each coupling far from the identity), in float32 and float64: invertible on paper,
  rounding errors in practice, growing with depth.
- A ReLU-like step: what relu(s) on the logit-transformed digits throws away (every negative value becomes 0, so the
  inverse cannot tell them apart and log|det| is -inf), against LeakyReLU(0.1), which inverts.
- Toys: a 2-D flow ([`PointFlow`], 8 Glow steps) trained on two moons and eight Gaussians; held-out NLL in nats and
  the learned density plotted beside the data.
- Digits or mnist (`--dataset`): test bits/dim with one dequantisation per image (uniform: the exact density;
  variational: the bound), the importance-weighted bound with S=16, and the anomaly AUROC of -log p(x) (test images vs
  grey shapes and vs noise), plain and complexity-corrected, for flows trained by the recipes; another family's
  likelihood pipeline passed with `--flow` (a VAE) is scored the same way, for comparison. A text-conditioned model
  also gets what its likelihood makes of the prompt: the accuracy of classifying each test image by the seen caption
  with the highest log p(x | caption), and the condition's worth in nats (ln 10 = 2.30 at most; 0: ignored).
- Temperature: for each T, `--num_images` samples z ~ N(0, T^2 I) (the empty prompt for a text-conditioned flow):
  FID against the training digits in the shipped digit classifier's features, the entropy of its predicted classes,
  the wall time per image (the fastest of three runs); for a text-conditioned flow also prompt adherence,
  `--num_images` images from the training captions and as many from paraphrases, judged by the same classifier (a
  class-conditional flow: each class asked for in turn), those images' FID and wall time per image (sampling and
  scoring, one run), at each `--guidance_scales` (the pipeline's guidance by resampling among `--num_candidates`
  samples per image).
"""

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn

import hfgen
from hfgen.data import grey_levels
from hfgen.metrics import class_histogram_entropy
from hfgen.metrics.adherence import adherence, default_prompts
from hfgen.metrics.anomaly import anomaly_auroc, out_of_distribution_images
from hfgen.metrics.completion import labelled_test_images
from hfgen.metrics.evaluate import features_and_probabilities, format_table, real_images
from hfgen.metrics.features import load_feature_extractor
from hfgen.metrics.marginal import marginal_log_likelihood
from hfgen.metrics.sample_quality import fid
from hfgen.models.modeling_flow import PointFlow


def perturbed_flow(steps_per_scale: int, dtype: torch.dtype, seed: int = 0) -> hfgen.FlowModel:
    torch.manual_seed(seed)
    flow = hfgen.FlowModel(sample_size=8, num_bins=17, steps_per_scale=steps_per_scale, hidden_channels=32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return flow.to(dtype).eval()


@torch.no_grad()
def reconstruction_errors(depths=(1, 4, 16, 64)) -> list[dict]:
    digits = real_images("digits", "test", max_images=64)
    noise = torch.rand(digits.shape, generator=torch.Generator().manual_seed(0))
    rows = []
    for depth in depths:
        row = {"steps": 2 * depth}  # two scales
        for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
            flow = perturbed_flow(depth, dtype)
            y = flow.dequantize(digits.to(dtype), noise.to(dtype))
            latents, _ = flow.transform(y)
            row[f"{name} max error"] = (flow.inverse_transform(latents) - y).abs().max().item()
            row[f"{name} pixels wrong"] = int(
                (flow.quantize(flow.inverse_transform(latents)) != flow.quantize(y)).sum()
            )
        rows.append(row)
    return rows


@torch.no_grad()
def relu_loss() -> dict:
    digits = real_images("digits", "test")
    flow = perturbed_flow(1, torch.float64)
    y = flow.dequantize(digits.double(), torch.rand(digits.shape, generator=torch.Generator().manual_seed(0)).double())
    s, _ = flow.logit(y)
    relu, leaky = torch.relu(s), nn.functional.leaky_relu(s, 0.1)
    # The best inverse of relu: identity where the output is positive; every 0 could have been any negative value.
    relu_back = relu
    leaky_back = torch.where(leaky >= 0, leaky, leaky / 0.1)
    return {
        "pixels": s.numel(),
        "relu fraction of values lost (mapped to 0)": (s < 0).double().mean().item(),
        "relu mean |s - inverse|": (relu_back - s).abs().mean().item(),
        "relu images with log|det| = -inf": int((s < 0).flatten(1).any(1).sum()),
        "leaky_relu max |s - inverse|": (leaky_back - s).abs().max().item(),
        "leaky_relu mean log|det| per image": ((s < 0).double().flatten(1).sum(1) * math.log(0.1)).mean().item(),
    }


def toy_data(name: str, num_points: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if name == "two moons":
        from sklearn.datasets import make_moons

        points = make_moons(num_points, noise=0.05, random_state=seed)[0]
        points = (points - [0.5, 0.25]) * 2
    else:
        angles = rng.integers(0, 8, num_points) * math.pi / 4
        points = 3 * np.stack([np.cos(angles), np.sin(angles)], 1) + 0.2 * rng.standard_normal((num_points, 2))
    return torch.tensor(points, dtype=torch.float32)


def train_toy(name: str, steps: int = 1500, seed: int = 0):
    torch.manual_seed(seed)
    flow = PointFlow(num_steps=8, hidden_channels=64)
    train = toy_data(name, 20000, seed)
    flow.train()
    flow.log_prob(train[:1000])  # ActNorm's data-dependent initialisation
    optimizer = torch.optim.Adam(flow.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (256,), generator=generator)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    flow.eval()
    with torch.no_grad():
        test_nll = -flow.log_prob(toy_data(name, 5000, seed + 1)).mean().item()
    return flow, {"data": name, "steps": steps, "test NLL (nats)": test_nll, "wall s": time.perf_counter() - start}


def toys(figure: str | None, steps: int = 1500) -> list[dict]:
    rows, panels = [], []
    for name in ("two moons", "eight Gaussians"):
        flow, row = train_toy(name, steps)
        rows.append(row)
        panels.append((name, flow))
    if figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
        for (name, flow), row_axes in zip(panels, axes):
            data = toy_data(name, 2000, 1).numpy()
            axis = torch.linspace(-4.5, 4.5, 200)
            xx, yy = torch.meshgrid(axis, axis, indexing="xy")
            with torch.no_grad():
                density = flow.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(200, 200)
            samples = flow.sample(2000, torch.Generator().manual_seed(0)).numpy()
            row_axes[0].scatter(data[:, 0], data[:, 1], s=1)
            row_axes[0].set_title(f"{name}: data")
            row_axes[1].imshow(density.numpy(), extent=(-4.5, 4.5, -4.5, 4.5), origin="lower")
            row_axes[1].set_title("learned density")
            row_axes[2].scatter(samples[:, 0], samples[:, 1], s=1, color="C1")
            row_axes[2].set_title("samples")
            for ax in row_axes:
                ax.set_xlim(-4.5, 4.5)
                ax.set_ylim(-4.5, 4.5)
                ax.set_aspect("equal")
        fig.tight_layout()
        fig.savefig(figure, dpi=80)
    return rows


def trained_flows(
    paths: list[str], dataset: str = "digits", anomaly_samples: int = 1, max_images: int | None = None
) -> list[dict]:
    """One row per trained pipeline (a flow, or any model with `log_likelihood`, e.g. a VAE to compare with) on the
    test split of `dataset`: bits/dim with one sample (a flow's dequantisation u; a VAE's ELBO), the
    importance-weighted bound with S=16, the anomaly AUROC of the bits/dim with S=`anomaly_samples` against grey
    shapes and noise of the same size and grey levels, plain and minus each image's PNG bits/dim (Serra et al.
    2020's input complexity), and the sampling time. `max_images`: the first test images
    only (and as many outliers)."""
    test = (real_images(dataset, "test", max_images) + 1) / 2  # pipelines take images in [0, 1]
    size, levels = test.shape[-1], grey_levels(dataset)
    rows = []
    for path in paths:
        pipeline = hfgen.load_pipeline(path)
        one = pipeline.log_likelihood(test, num_samples=1, generator=torch.Generator().manual_seed(0))
        bound = pipeline.log_likelihood(test, num_samples=16, generator=torch.Generator().manual_seed(0))
        row = {
            "model": path,
            "architecture": pipeline.flow.config.architecture
            if hasattr(pipeline, "flow")
            else type(pipeline).__name__,
            "kind (S=1)": one.kind,  # a flow with uniform u: the exact density; variational u or a VAE: a bound
            "bits/dim (S=1)": one.bits_per_dim.mean().item(),
            "bound bits/dim (S=16)": bound.bits_per_dim.mean().item(),
        }
        for kind in ("shapes", "noise"):
            outliers = out_of_distribution_images(kind, len(test), sample_size=size, num_levels=levels)
            scores = anomaly_auroc(
                pipeline,
                test,
                (outliers + 1) / 2,
                complexity_correction=True,  # bits/dim minus PNG bits/dim (Serra et al. 2020), and bits/dim alone
                num_samples=anomaly_samples,
                generator=torch.Generator().manual_seed(0),
            )
            row[f"AUROC vs {kind}"] = scores["bits_per_dim_auroc"]
            row[f"AUROC vs {kind} - PNG"] = scores["auroc"]
        if getattr(pipeline, "tokenizer", None) is not None:
            row.update(condition_use(pipeline, test, dataset))
        if pipeline.condition_type == "class":
            row.update(class_marginal(pipeline, test, dataset))
        start = time.perf_counter()
        pipeline.generate(256, seed=0)
        row["ms per sample"] = 1000 * (time.perf_counter() - start) / 256
        rows.append(row)
    return rows


@torch.no_grad()
def condition_use(pipeline, test: torch.Tensor, dataset: str) -> dict:
    """How much a text-conditioned likelihood model uses the prompt, read from its likelihood alone: the test images
    classified by the caption that gives them the highest log p(x | caption) among the ten seen ones (uniform prior),
    and the condition's worth in nats, E[log p(x | its caption) - log mean_c p(x | c)] = E[log (10 p(caption | x))]
    under the model's own posterior: ln 10 = 2.30 when the likelihood names every digit, 0 when it ignores the
    prompt. The same dequantisation noise for every caption (`hfgen.metrics.marginal`)."""
    _, labels = labelled_test_images(dataset, len(test))  # the labels of real_images' first test images
    captions = default_prompts(dataset)["seen"]  # one per class, in class order
    output = marginal_log_likelihood(pipeline, test, prompts=captions, batch_size=len(test))
    worth = (len(captions) * output.posterior[torch.arange(len(test)), labels]).log()
    return {
        "likelihood classifier accuracy": output.classifier_accuracy(labels),
        "condition worth, nats": worth.double().mean().item(),
    }


@torch.no_grad()
def class_marginal(pipeline, test: torch.Tensor, dataset: str) -> dict:
    """A class-conditional flow scored without labels, so it stands in the same table as the unconditional ones (its
    other columns are the null class's): p(x) = mean_y p(x | y) over the classes, with one dequantisation (the same u
    for every class, so with uniform u still an exact density, of the mixture) and as the S=16 bound; beside them
    p(x | the true class), and argmax_y p(y | x) as a classifier (`hfgen.metrics.marginal`)."""
    _, labels = labelled_test_images(dataset, len(test))
    classes = range(pipeline.num_classes)
    one = marginal_log_likelihood(pipeline, test, class_labels=classes, num_samples=1)
    bound = marginal_log_likelihood(pipeline, test, class_labels=classes, num_samples=16)
    return {
        "class summed out: bits/dim (S=1)": one.bits_per_dim.mean().item(),
        "class summed out: bound (S=16)": bound.bits_per_dim.mean().item(),
        "true class: bits/dim (S=1)": one.true_condition_bits_per_dim(labels).mean().item(),
        "likelihood classifier accuracy": one.classifier_accuracy(labels),
    }


@torch.no_grad()
def temperature_sweep(
    paths: list[str],
    temperatures: list[float],
    num_samples: int,
    seed: int = 0,
    dataset: str = "digits",
    guidance_scales: tuple[float, ...] = (1.0,),
    num_candidates: int = 16,
) -> list[dict]:
    """One row per flow and temperature: FID (training digits vs `num_samples` samples), class entropy, ms per image,
    and for a conditional flow, at each guidance scale, the fraction of samples showing the asked-for digit and their
    FID: for a text-conditioned flow per prompt group (seen captions, paraphrases), for a class-conditioned one with
    the classes asked for in turn; first a reference row, the held-out test images."""
    extractor = load_feature_extractor(dataset)
    real_features, _ = features_and_probabilities(extractor, real_images(dataset, "train"))
    prompt_sets = default_prompts(dataset)  # {"seen": ..., "paraphrase": ...}
    prompts = [group[i % len(group)] for group in prompt_sets.values() for i in range(num_samples)]
    test = real_images(dataset, "test")  # the reference: held-out digits, FID's floor at their (smaller) number
    features, probabilities = features_and_probabilities(extractor, test)
    rows = [{"flow": f"held-out test {dataset}", "temperature": None, "samples": len(test)}]
    rows[0]["FID"] = fid(real_features, features)
    rows[0]["class entropy"] = class_histogram_entropy(probabilities)
    for path in paths:
        pipeline = hfgen.load_pipeline(path)
        for temperature in temperatures:
            seconds = []  # the fastest of three runs: load from other processes only ever slows one down
            for _ in range(3):
                start = time.perf_counter()
                images = pipeline.generate(num_samples, seed=seed, temperature=temperature) * 2 - 1  # to [-1, 1]
                seconds.append((time.perf_counter() - start) / num_samples)
            features, probabilities = features_and_probabilities(extractor, images)
            row = {"flow": path, "temperature": temperature, "samples": num_samples}
            row["FID"] = fid(real_features, features)
            row["class entropy"] = class_histogram_entropy(probabilities)
            row["ms per image"] = 1000 * min(seconds)
            for scale in guidance_scales if pipeline.condition_type else ():
                guided = {} if scale == 1 else {"guidance_scale": scale, "num_candidates": num_candidates}
                suffix = "" if scale == 1 else f", guidance {scale:g}"
                start = time.perf_counter()
                if pipeline.tokenizer is not None:
                    asked_for = prompts
                    asked = pipeline.generate(1, prompt=prompts, seed=seed, temperature=temperature, **guided)
                else:  # each class asked for in turn, judged alike (the seen captions are in class order)
                    labels = [i % pipeline.num_classes for i in range(num_samples)]
                    asked_for = [prompt_sets["seen"][label] for label in labels]
                    asked = pipeline.generate(1, class_labels=labels, seed=seed, temperature=temperature, **guided)
                row[f"ms per asked image{suffix}"] = 1000 * (time.perf_counter() - start) / len(asked)  # one run
                scores = adherence(asked, asked_for, dataset, extractor)
                if pipeline.tokenizer is not None:
                    row[f"adherence seen{suffix}"] = scores["seen"]["all"]
                    row[f"adherence paraphrase{suffix}"] = scores["paraphrase"]["all"]
                else:
                    row[f"adherence class{suffix}"] = scores["seen"]["all"]
                row[f"FID asked{suffix}"] = fid(real_features, features_and_probabilities(extractor, asked * 2 - 1)[0])
            rows.append(row)
    return rows


def show(rows: list[dict]):
    keys = dict.fromkeys(key for row in rows for key in row)  # every row's columns, in order of appearance
    print(format_table(rows, [(key, key) for key in keys]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", action="store_true", help="Reconstruction error vs depth; ReLU's loss.")
    parser.add_argument("--toys", action="store_true", help="Train the 2-D toy flows.")
    parser.add_argument("--figure", default=None, help="Where to save the toys' figure (PNG).")
    parser.add_argument("--toy_steps", type=int, default=1500, help="Adam steps (batch 256) per toy density.")
    parser.add_argument(
        "--flow",
        action="append",
        default=[],
        help="A trained flow pipeline folder (repeatable); any pipeline with log_likelihood (a VAE) is scored too.",
    )
    parser.add_argument(
        "--dataset", default="digits", choices=["digits", "mnist"], help="Whose test split and classifier to use."
    )
    parser.add_argument(
        "--anomaly_samples", type=int, default=1, help="Samples per image in the AUROC's bits/dim (S; a flow's u)."
    )
    parser.add_argument(
        "--temperatures", type=float, nargs="+", default=None, help="Also sample each --flow at these temperatures."
    )
    parser.add_argument("--num_images", type=int, default=1000, help="Samples per temperature (and per prompt group).")
    parser.add_argument(
        "--guidance_scales",
        type=float,
        nargs="+",
        default=[1.0],
        help="A conditional flow's adherence at each of these guidance scales (1: none).",
    )
    parser.add_argument("--num_candidates", type=int, default=16, help="Candidates per image that guidance resamples.")
    parser.add_argument(
        "--max_images", type=int, default=None, help="Score the first test images only (and as many outliers)."
    )
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    results = {}
    if args.problems:
        results["reconstruction"] = reconstruction_errors()
        show(results["reconstruction"])
        results["relu"] = relu_loss()
        show([results["relu"]])
    if args.toys:
        results["toys"] = toys(args.figure, args.toy_steps)
        show(results["toys"])
    if args.flow:
        results[args.dataset] = trained_flows(args.flow, args.dataset, args.anomaly_samples, args.max_images)
        show(results[args.dataset])
    if args.temperatures:
        if not args.flow:
            parser.error("--temperatures samples the flows given with --flow: pass at least one.")
        results["temperatures"] = temperature_sweep(
            args.flow,
            args.temperatures,
            args.num_images,
            dataset=args.dataset,
            guidance_scales=args.guidance_scales,
            num_candidates=args.num_candidates,
        )
        show(results["temperatures"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
