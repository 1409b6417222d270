"""`hfgen evaluate` and `hfgen compare`: saved pipelines of any family, measured on one data set with one extractor.

    hfgen evaluate out/vae-digits --dataset digits --metrics fid,kid,is,pr,nll --num_samples 1000
    hfgen evaluate out/vae-digits --dataset digits --metrics adherence --num_samples 200
    hfgen compare out/vae-digits out/gan-digits --dataset digits --output_dir out/compare

Sample quality (FID, KID, IS, precision/recall) compares `num_samples` generated images with the real training split in
the feature space of the data set's domain classifier ([`load_feature_extractor`]); NLL is measured on the held-out
test split through the pipeline's `log_likelihood` when the family has one. Both splits are the ones every hfgen
trainer uses by default (`test_size=0.1, split_seed=0`; a pipeline trained with others is scored with a warning).
Prompt adherence (text-conditioned pipelines on digits, mnist and shapes) samples `num_samples` images from the
training template's prompts and as many from paraphrases, and reports the two separately
([`hfgen.metrics.adherence.prompt_adherence`]).
"""

import functools
import json
import math
import os
import sys
import time

import PIL.Image
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError

from hfgen.data import load_image_dataset
from hfgen.metrics.adherence import ATTRIBUTES, prompt_adherence, summary
from hfgen.metrics.features import DomainClassifier, load_feature_extractor, shipped_extractors
from hfgen.metrics.sample_quality import fid, inception_score, kid, precision_recall

METRICS = ("fid", "kid", "is", "pr", "nll", "adherence")
SAMPLE_QUALITY_METRICS = ("fid", "kid", "is", "pr")  # the ones that need a feature extractor


EVALUATION_SPLIT = {"test_size": 0.1, "split_seed": 0}  # the trainer's defaults


@functools.lru_cache(maxsize=4)
def _split_images(dataset: str, split: str) -> torch.Tensor:
    # Cached: `hfgen compare` measures every model against the same images, loaded once.
    images = load_image_dataset(dataset, **EVALUATION_SPLIT)[split]
    return torch.stack([images[i]["pixel_values"] for i in range(len(images))])


def real_images(dataset: str, split: str = "train", max_images: int | None = None) -> torch.Tensor:
    """(n, c, h, w) images in [-1, 1] of a split, as every hfgen trainer splits the data set."""
    return _split_images(dataset, split)[:max_images].clone()  # a copy: callers may change it, the cache stays


@torch.no_grad()
def generate_images(pipeline, num_samples: int, batch_size: int = 250, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Unconditional samples (an empty prompt for text-conditioned models) as (n, c, h, w) in [-1, 1], and the wall
    time per image in seconds, through the pipeline's `generate` (its sampling defaults, one seeded generator)."""
    start = time.perf_counter()
    images = pipeline.generate(num_samples, seed=seed, max_batch_size=batch_size) * 2 - 1
    return images, (time.perf_counter() - start) / num_samples


@torch.no_grad()
def features_and_probabilities(extractor: DomainClassifier, images: torch.Tensor, batch_size: int = 500):
    """The extractor's (n, d) features and (n, classes) probabilities, batch by batch."""
    features, probabilities = [], []
    for batch in images.split(batch_size):
        output = extractor(extractor._check(batch))
        features.append(output.features.double().cpu())
        probabilities.append(output.logits.softmax(-1).double().cpu())
    return torch.cat(features), torch.cat(probabilities)


def sample_quality(extractor: DomainClassifier, real: torch.Tensor, fake: torch.Tensor, metrics=METRICS, seed=0):
    """FID, KID, IS and precision/recall of `fake` against `real` (both (n, c, h, w) in [-1, 1])."""
    real_features, _ = features_and_probabilities(extractor, real)
    fake_features, fake_probabilities = features_and_probabilities(extractor, fake)
    results = {}
    if "fid" in metrics:
        results["fid"] = fid(real_features, fake_features)
    if "kid" in metrics:
        results["kid"], results["kid_std"] = kid(real_features, fake_features, seed=seed)
    if "is" in metrics:
        results["is"], results["is_std"] = inception_score(fake_probabilities)
    if "pr" in metrics:
        results["precision"], results["recall"] = precision_recall(real_features, fake_features)
    return results


@torch.no_grad()
def likelihood(pipeline, images: torch.Tensor, batch_size: int = 100, seed: int = 0) -> dict:
    """Mean test log-likelihood through the family's `log_likelihood(images, generator=...)` contract."""
    generator = torch.Generator().manual_seed(seed)
    # `images` are in [-1, 1]; pipelines take images as they return them, in [0, 1].
    outputs = [pipeline.log_likelihood((batch + 1) / 2, generator=generator) for batch in images.split(batch_size)]
    return {
        "nll_nats": -torch.cat([o.log_likelihood for o in outputs]).mean().item(),
        "nll_bits_per_dim": torch.cat([o.bits_per_dim for o in outputs]).mean().item(),
        "nll_kind": outputs[0].kind,
        "nll_dequantization": outputs[0].dequantization,
    }


def count_parameters(pipeline) -> int:
    """Parameters of every torch module in the pipeline (the generative model and its text encoder)."""
    return sum(
        p.numel() for c in pipeline.components.values() if isinstance(c, torch.nn.Module) for p in c.parameters()
    )


def evaluate_pipeline(
    pipeline,
    dataset: str = "digits",
    metrics: tuple[str, ...] = METRICS[:5],
    num_samples: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    extractor: DomainClassifier | str | None = None,
) -> dict:
    """Every requested metric of one pipeline on `dataset`, as a flat dict (what `hfgen evaluate` prints).

    Args:
        pipeline ([`HFGenPipeline`]): A loaded pipeline of any family.
        dataset (`str`, *optional*, defaults to "digits"): The data set it models (embedded, folder, Hub id).
        metrics (`tuple[str]`, *optional*): Any of "fid", "kid", "is", "pr", "nll", "adherence" (default: all but
            adherence).
        num_samples (`int`, *optional*, defaults to 1000): Generated images for the sample-quality metrics.
        batch_size (`int`, *optional*, defaults to 250): Images generated per pipeline call.
        seed (`int`, *optional*, defaults to 0): Seed of the generated set, KID subsets and likelihood estimates.
        extractor ([`DomainClassifier`] or `str`, *optional*): Features to use; default: the one shipped for `dataset`.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}.")
    if "adherence" in metrics and dataset not in ATTRIBUTES:
        raise ValueError(f"Prompt adherence is measured on {sorted(ATTRIBUTES)}, not {dataset!r}.")
    results = {"dataset": dataset, "parameters": count_parameters(pipeline)}
    quality = [m for m in metrics if m in SAMPLE_QUALITY_METRICS]
    if quality:
        if not isinstance(extractor, DomainClassifier):
            extractor = quality_extractor(extractor, dataset)
        fake, results["seconds_per_image"] = generate_images(pipeline, num_samples, batch_size, seed)
        results["num_samples"] = num_samples
        results.update(sample_quality(extractor, real_images(dataset, "train"), fake, quality, seed))
    if "nll" in metrics and hasattr(pipeline, "log_likelihood"):
        results.update(likelihood(pipeline, real_images(dataset, "test"), seed=seed))
    if "adherence" in metrics:
        adherence = prompt_adherence(pipeline, dataset, num_samples=num_samples, seed=seed, batch_size=batch_size)
        results.update(summary(adherence))
        results["adherence"] = adherence
    return results


def quality_extractor(extractor: str | None, dataset: str) -> DomainClassifier:
    """The extractor for FID, KID, IS and precision/recall, or an error that says what can be measured without one."""
    try:
        return load_feature_extractor(extractor or dataset)
    except ValueError as error:
        raise ValueError(
            f"{error}\nWithout a feature extractor, `hfgen evaluate` can still compute nll (`--metrics nll`, for "
            f"families with a likelihood){' and adherence' if dataset in ATTRIBUTES else ''}. For fid, kid, is and "
            f"pr, train an extractor on labelled images of the data set: `python training/train_feature_extractor.py "
            f"--dataset_name {dataset} --label_column <column> --output_dir <dir>`, then pass `--feature_extractor "
            f"<dir>`. hfgen ships extractors for {', '.join(shipped_extractors())}."
        ) from None


def training_summary(path: str) -> dict:
    """The `train_summary.json` that the trainer wrote beside a saved pipeline (a folder or a Hub repo), or {} for a
    pipeline saved without the trainer."""
    summary = os.path.join(path, "train_summary.json")
    if not os.path.isdir(path):
        try:
            summary = hf_hub_download(path, "train_summary.json")
        except (EntryNotFoundError, HFValidationError):
            return {}
    if not os.path.isfile(summary):
        return {}
    with open(summary) as f:
        return json.load(f)


def training_seconds(path: str) -> float | None:
    """Training wall time recorded in `train_summary.json` (the model card shows the same figure), or None."""
    return training_summary(path).get("metrics", {}).get("train_wall_seconds")


def held_out_split(path: str, dataset: str) -> dict | None:
    """The split ({"test_size", "split_seed"}) that the pipeline at `path` held out of `dataset` when it trained, or
    None when its summary does not say (another data set, the data set's own test split, a pipeline saved without the
    trainer)."""
    held_out = training_summary(path).get("held_out") or {}
    if held_out.get("dataset") != dataset or "split_seed" not in held_out:
        return None
    return {key: held_out[key] for key in EVALUATION_SPLIT}


def held_out_warning(path: str, dataset: str) -> str | None:
    """A warning when the pipeline at `path` was trained on `dataset` holding out another split than the one its
    likelihood is scored on here (`EVALUATION_SPLIT`): then some of those test images were training images, and the
    figure is optimistic. None when the splits agree, or when `held_out_split` does not know."""
    trained = held_out_split(path, dataset)
    if trained is None or trained == EVALUATION_SPLIT:
        return None

    def listed(split: dict) -> str:
        return ", ".join(f"{key}={value}" for key, value in split.items())

    flags = " ".join(f"--{key} {value}" for key, value in EVALUATION_SPLIT.items())
    return (
        f"{path} was trained on {dataset} holding out the split of {listed(trained)}, but its nll is scored on the "
        f"split of {listed(EVALUATION_SPLIT)}, which it partly trained on: the figure is optimistic. Retrain with the "
        f"defaults ({flags}) to compare it with other models."
    )


COMPARE_COLUMNS = [
    ("name", "model"),
    ("family", "family"),
    ("fid", "FID"),
    ("kid", "KID"),
    ("is", "IS"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("nll_bits_per_dim", "NLL bits/dim"),
    ("seconds_per_image", "s/image"),
    ("parameters", "params"),
    ("train_wall_seconds", "train s"),
    ("adherence_seen", "adherence"),
    ("adherence_paraphrase", "adherence (paraphrases)"),
]


def format_table(rows: list[dict], columns=COMPARE_COLUMNS) -> str:
    """A markdown table of result rows; missing values show as "-"."""

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def compare_figure(rows: list[dict], grids: list[PIL.Image.Image], path: str):
    """One PNG: each model's sample grid side by side, above bar charts of FID, precision/recall and NLL."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    names = [row["name"] for row in rows]
    charts = [(key, title) for key, title in COMPARE_COLUMNS[2:8] if any(row.get(key) is not None for row in rows)]
    figure = plt.figure(figsize=(max(3.2 * len(rows), 2.6 * len(charts)), 6.5), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.3, 1])
    for axis, grid, name in zip(top.subplots(1, len(rows), squeeze=False)[0], grids, names):
        axis.imshow(grid, cmap="gray" if grid.mode == "L" else None)
        axis.set_title(name, fontsize=9)
        axis.axis("off")
    for axis, (key, title) in zip(bottom.subplots(1, max(1, len(charts)), squeeze=False)[0], charts):
        values = [row.get(key) if row.get(key) is not None else math.nan for row in rows]
        axis.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        axis.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        axis.set_title(title + (" (lower is better)" if key in ("fid", "kid", "nll_bits_per_dim") else ""), fontsize=9)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def compare_pipelines(
    paths: list[str],
    dataset: str = "digits",
    metrics: tuple[str, ...] = METRICS[:5],
    num_samples: int = 1000,
    seed: int = 0,
    output_dir: str | None = None,
) -> list[dict]:
    """Evaluates saved pipelines of any families on the same data, features and seed; with `output_dir`, writes
    `compare.json`, `compare.md` (the table) and `compare.png` (sample grids and bar charts)."""
    from hfgen.pipelines.pipeline_utils import HFGenPipeline, image_grid

    extractor = quality_extractor(None, dataset) if set(metrics) & set(SAMPLE_QUALITY_METRICS) else None
    rows, grids = [], []
    for path in paths:
        pipeline = HFGenPipeline.from_pretrained(path)
        row = {"name": os.path.basename(os.path.normpath(path)), "path": path, "pipeline": type(pipeline).__name__}
        row["family"] = row["pipeline"].removesuffix("Pipeline").lower()
        if "nll" in metrics and (warning := held_out_warning(path, dataset)):
            print(warning, file=sys.stderr)
        row.update(evaluate_pipeline(pipeline, dataset, metrics, num_samples, seed=seed, extractor=extractor))
        row["train_wall_seconds"] = training_seconds(path)
        rows.append(row)
        grids.append(image_grid(pipeline(batch_size=16, generator=torch.Generator().manual_seed(seed)).images))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "compare.json"), "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(output_dir, "compare.md"), "w") as f:
            f.write(format_table(rows) + "\n")
        compare_figure(rows, grids, os.path.join(output_dir, "compare.png"))
    return rows
