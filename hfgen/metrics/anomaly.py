"""Likelihood-based anomaly detection: score each image by its bits per dimension under a model and measure, with the
AUROC, how well the score separates in-distribution from out-of-distribution images.

Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?" (https://arxiv.org/abs/1810.09136)
show that this can fail (an AUROC below 0.5): likelihood models trained on CIFAR-10 give SVHN images higher density.
The AUROC: Hanley & McNeil 1982, "The Meaning and Use of the Area under a Receiver Operating Characteristic (ROC)
Curve".

One cause of such failures is input complexity: simple images (large flat regions) get high likelihood under any
model, whatever it was trained on. Serra et al. 2020, "Input Complexity and Out-of-distribution Detection with
Likelihood-based Generative Models" (https://arxiv.org/abs/1909.11480), subtract a general-purpose compressor's code
length from the model's: `anomaly_auroc(..., complexity_correction=True)` scores bits/dim minus the PNG bits/dim.
"""

import io

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image
from sklearn.metrics import roc_auc_score

from hfgen.metrics.sample_quality import to_numpy


def auroc(scores_in, scores_out) -> float:
    r"""Area under the ROC curve of an anomaly score: the probability that a random out-of-distribution sample scores
    higher than a random in-distribution one (ties count half). 1 separates perfectly, 0.5 is chance.

    Args:
        scores_in (`np.ndarray` or `torch.Tensor`): (n,) scores of in-distribution samples.
        scores_out (`np.ndarray` or `torch.Tensor`): (m,) scores of out-of-distribution samples, the positive class.
            A higher score means more anomalous (e.g. bits per dimension, -log p(x)).
    """
    scores_in = _as_scores(scores_in, "scores_in")
    scores_out = _as_scores(scores_out, "scores_out")
    labels = np.concatenate([np.zeros(len(scores_in)), np.ones(len(scores_out))])
    return float(roc_auc_score(labels, np.concatenate([scores_in, scores_out])))


def _as_scores(scores, name: str) -> np.ndarray:
    scores = to_numpy(scores)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape {scores.shape}.")
    if np.isnan(scores).any() or np.isneginf(scores).any():
        raise ValueError(f"{name} contains NaN or -inf.")
    # +inf (an image of probability 0) is the most anomalous score there is; the AUROC only ranks scores, and
    # sklearn refuses infinities, so it becomes the largest float.
    return np.where(np.isposinf(scores), np.finfo(np.float64).max, scores)


def bits_per_dim_in_batches(pipeline, images, batch_size: int, likelihood_kwargs: dict):
    """(n,) bits/dim of `images` (a tensor or a list of images), `batch_size` at a time; and the last output."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if len(images) == 0:
        raise ValueError("Got no images to score.")
    scores, output = [], None
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        output = pipeline.log_likelihood(batch, **likelihood_kwargs)
        bits_per_dim = torch.as_tensor(output.bits_per_dim).detach().cpu().double().reshape(-1)  # (b,)
        if len(bits_per_dim) != len(batch):
            raise ValueError(f"log_likelihood returned {len(bits_per_dim)} scores for {len(batch)} images.")
        scores.append(bits_per_dim)
    return torch.cat(scores).numpy(), output


def input_complexity(images) -> np.ndarray:
    """(n,) bits per dimension of each image's lossless PNG encoding (at PIL's highest compression): the input
    complexity L(x) of Serra et al. 2020, a code length from a compressor that knows nothing of the data set.

    Args:
        images (`torch.Tensor` or `list[PIL.Image.Image]`): (n, c, h, w) in [0, 1], as pipelines return and take them,
            with 1 (grey), 3 (RGB) or 4 (RGBA) channels, encoded at 8 bits; or PIL images, encoded as they are.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
            raise ValueError(f"images must be (n, 1, 3 or 4, h, w), got shape {tuple(images.shape)}.")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or infinite values.")
        low, high = images.min().item(), images.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"images must be in [0, 1] (as pipelines return them with output_type='pt'), got values in "
                f"[{low:.3g}, {high:.3g}]: map [-1, 1] images with (x + 1) / 2."
            )
        images = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images.detach()))  # 8-bit, as saved
    if isinstance(images, Image.Image):
        images = [images]
    if not all(isinstance(image, Image.Image) for image in images):
        raise TypeError(
            "input_complexity takes a (n, c, h, w) tensor in [0, 1] or a list of PIL images; for a numpy (n, h, w, c) "
            "array in [0, 1] pass torch.from_numpy(array).permute(0, 3, 1, 2)."
        )
    bits = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", optimize=True)
        bits.append(8 * len(buffer.getvalue()) / (image.width * image.height * len(image.getbands())))
    return np.asarray(bits, dtype=np.float64)


def anomaly_auroc(
    pipeline,
    in_distribution_images,
    out_of_distribution_images,
    batch_size: int = 64,
    complexity_correction: bool = False,
    **likelihood_kwargs,
) -> dict:
    r"""Scores every image by its bits per dimension under `pipeline` (-log2 p(x) per dimension, so a higher score
    is more anomalous) and returns the AUROC of in- vs out-of-distribution.

    Args:
        pipeline ([`~hfgen.HFGenPipeline`]): any pipeline with a `log_likelihood(images, **kwargs)` method returning
            a [`~hfgen.LikelihoodOutput`].
        in_distribution_images, out_of_distribution_images (`torch.Tensor` or `list[PIL.Image.Image]`):
            images in any form the pipeline's `log_likelihood` accepts.
        batch_size (`int`, *optional*, defaults to 64): images per `log_likelihood` call.
        complexity_correction (`bool`, *optional*, defaults to `False`): score bits/dim minus each image's PNG bits/dim
            ([`input_complexity`], Serra et al. 2020) instead of bits/dim alone: simple out-of-distribution images
            (flat shapes) that a model finds likely are no longer taken for in-distribution.
        likelihood_kwargs: passed to `log_likelihood` (e.g. `num_samples`, `generator`).

    Returns:
        `dict`: "auroc", the mean "in_bits_per_dim" and "out_bits_per_dim", the likelihood's "kind" (exact, lower
        bound or estimate) and "dequantization", which a report should quote next to the numbers, and the "score"
        ranked (with `complexity_correction`, also the mean "in_png_bits_per_dim" and "out_png_bits_per_dim", and
        "bits_per_dim_auroc", the AUROC of bits/dim alone from the same likelihoods).

    Examples:
        ```py
        >>> import hfgen
        >>> from hfgen.metrics.anomaly import anomaly_auroc

        >>> pipeline = hfgen.load_pipeline("path/to/a/saved/vae")
        >>> anomaly_auroc(pipeline, digits, noise_images, num_samples=10)["auroc"]
        ```
    """
    in_bits, output = bits_per_dim_in_batches(pipeline, in_distribution_images, batch_size, likelihood_kwargs)
    out_bits, _ = bits_per_dim_in_batches(pipeline, out_of_distribution_images, batch_size, likelihood_kwargs)
    result = {
        "in_bits_per_dim": float(in_bits.mean()),
        "out_bits_per_dim": float(out_bits.mean()),
        "kind": output.kind,
        "dequantization": output.dequantization,
        "score": "bits/dim",
    }
    if complexity_correction:
        in_png, out_png = input_complexity(in_distribution_images), input_complexity(out_of_distribution_images)
        result.update(
            score="bits/dim - PNG bits/dim",
            in_png_bits_per_dim=float(in_png.mean()),
            out_png_bits_per_dim=float(out_png.mean()),
            bits_per_dim_auroc=auroc(in_bits, out_bits),  # uncorrected, from the same likelihoods, for comparison
        )
        in_bits, out_bits = in_bits - in_png, out_bits - out_png
    return {"auroc": auroc(in_bits, out_bits), **result}


def out_of_distribution_images(
    kind: str, num_images: int, sample_size: int = 8, num_levels: int = 17, seed: int = 0
) -> torch.Tensor:
    """Greyscale (n, 1, s, s) images in [-1, 1] on the same `num_levels` grey levels as the in-distribution data:

    - "shapes": hfgen's drawn shapes converted to grey and resized to `sample_size` (structured, but not digits);
    - "noise": every pixel an independent uniformly random level.
    """
    if kind == "noise":
        levels = torch.randint(
            0, num_levels, (num_images, 1, sample_size, sample_size), generator=torch.Generator().manual_seed(seed)
        )
    elif kind == "shapes":
        from PIL import Image

        from hfgen.data import make_shapes_dataset

        shapes = make_shapes_dataset(num_samples=num_images, seed=seed)
        grey = [
            np.asarray(image.convert("L").resize((sample_size, sample_size), Image.BILINEAR), dtype=np.float64)
            for image in shapes["image"]
        ]
        levels = torch.from_numpy(np.rint(np.stack(grey) / 255 * (num_levels - 1))).unsqueeze(1)
    else:
        raise ValueError(f"kind must be 'shapes' or 'noise', got {kind!r}.")
    return levels.float() / (num_levels - 1) * 2 - 1
