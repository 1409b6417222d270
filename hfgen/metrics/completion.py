"""Completion accuracy: hide part of each held-out digit, let a model fill it in, and ask the data set's shipped
classifier which digit the result shows. Families that complete images use it (autoregressive `complete`, diffusion
`inpaint`), so their figures are comparable.

    from hfgen.metrics.completion import completion_accuracy
    mask_keep_top = ...  # the family's own call, wrapped to take (images in [0, 1], keep mask) -> images in [0, 1]
    completion_accuracy(lambda images, keep: pipe.complete(images, keep, output_type="pt"), "digits")

Three accuracies on the same images: the originals (the classifier's own ceiling), the masked images (the hidden part
set to the background, 0: what is left to go on) and the completed ones. A model that understands digits lifts the
third above the second, towards the first.
"""

from collections.abc import Callable

import torch

from hfgen.data import load_image_dataset
from hfgen.metrics.adherence import predicted_classes, to_unit_images
from hfgen.metrics.evaluate import EVALUATION_SPLIT
from hfgen.metrics.features import DomainClassifier, load_feature_extractor

DATASETS = ("digits", "mnist")


def labelled_test_images(dataset: str, num_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `num_images` test images of `dataset` (the split every hfgen trainer uses) as (n, c, h, w) in [0, 1],
    and their labels (n,)."""
    if dataset not in DATASETS:
        raise ValueError(f"Completion accuracy needs a labelled digit data set: one of {DATASETS}, got {dataset!r}.")
    split = load_image_dataset(dataset, label_column="label", **EVALUATION_SPLIT)["test"]
    count = len(split) if num_images is None else min(num_images, len(split))
    examples = [split[i] for i in range(count)]
    images = torch.stack([example["pixel_values"] for example in examples]) / 2 + 0.5
    labels = torch.tensor([example["labels"] for example in examples])
    assert (labels >= 0).all(), "the embedded digit sets are fully labelled"
    return images, labels


def keep_top_rows(height: int, width: int, rows: int | None = None) -> torch.Tensor:
    """A (h, w) mask that keeps the top `rows` rows (default: the top half), 1 = known."""
    rows = height // 2 if rows is None else rows
    if not 0 < rows < height:
        raise ValueError(f"rows must keep between 1 and {height - 1} of the {height} rows, got {rows}.")
    keep = torch.zeros(height, width)
    keep[:rows] = 1
    return keep


def completion_accuracy(
    complete: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    dataset: str = "digits",
    keep: torch.Tensor | None = None,
    num_images: int | None = None,
    batch_size: int = 100,
    extractor: DomainClassifier | str | None = None,
) -> dict:
    """How often completed test digits show their true digit.

    Args:
        complete: `complete(images, keep)` -> completed images, all in [0, 1] as (b, c, h, w); `keep` is (h, w), 1
            where pixels are known. Wrap the family's own call (and seed it) so it fits.
        dataset: "digits" or "mnist".
        keep: The known region (default: the top half, `keep_top_rows`).
        num_images: The first test images to use (default: all).
        batch_size: Images per `complete` call.
        extractor: The classifier (default: the shipped one for `dataset`).

    Returns:
        {"num_images", "original", "masked", "completed", "known_pixels_changed"}: the three accuracies, and the
        largest change the completion made to a known pixel (0 for a completion that keeps them).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    images, labels = labelled_test_images(dataset, num_images)
    keep = keep_top_rows(*images.shape[-2:]) if keep is None else torch.as_tensor(keep, dtype=torch.float32)
    if keep.shape != images.shape[-2:]:
        raise ValueError(f"keep must be (h, w) = {tuple(images.shape[-2:])}, got {tuple(keep.shape)}.")
    completed = []
    for batch in images.split(batch_size):
        output = to_unit_images(complete(batch.clone(), keep.clone()))
        if output.shape != batch.shape:
            raise ValueError(f"complete returned {tuple(output.shape)} for images of shape {tuple(batch.shape)}.")
        completed.append(output)
    completed = torch.cat(completed)
    classifier = extractor if isinstance(extractor, DomainClassifier) else load_feature_extractor(extractor or dataset)

    def accuracy(candidates: torch.Tensor) -> float:
        return (predicted_classes(candidates, classifier) == labels).float().mean().item()

    return {
        "num_images": len(images),
        "original": accuracy(images),
        "masked": accuracy(images * keep),
        "completed": accuracy(completed),
        "known_pixels_changed": ((completed - images).abs() * keep).amax().item(),
    }
