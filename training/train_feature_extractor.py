"""Trains the domain classifier whose features hfgen's FID, KID, IS and precision/recall use (`hfgen.metrics`).

    python training/train_feature_extractor.py --dataset_name digits --output_dir hfgen/metrics/extractors/digits
    python training/train_feature_extractor.py --dataset_name shapes --epochs 20 --block_out_channels 32 64 128 \
        --output_dir hfgen/metrics/extractors/shapes
    python training/train_feature_extractor.py --dataset_name mnist --epochs 6 --learning_rate 3e-3 \
        --block_out_channels 16 32 64 96 --layers_per_block 2 --batch_norm --max_shift 2 \
        --output_dir hfgen/metrics/extractors/mnist

The shipped extractors were made with exactly these commands (seed 0, defaults below) on the CPU. The split is the one
every hfgen trainer uses (`load_image_dataset(..., test_size=0.1, split_seed=0)`, `EVALUATION_SPLIT`, which keeps a
data set's own test split: for mnist the fixed stratified 8,000 / 2,000), so the test accuracy in the written model
card is measured on images that neither the classifier nor hfgen's generative models trained on.

This is a plain supervised loop, not the shared generative trainer: a classifier has no pipeline, samples or Hub card
of a generative model, and it trains in seconds on one process.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch.utils.data import DataLoader

from hfgen.data import collate_fn, load_image_dataset
from hfgen.metrics.evaluate import EVALUATION_SPLIT
from hfgen.metrics.features import DomainClassifier

CARD = """---
library_name: hfgen
tags: [hfgen, feature-extractor, image-classification]
---

# hfgen domain feature extractor: {dataset}

A small convolutional classifier trained on the `{dataset}` data set ({num_classes} classes: {class_names}).
hfgen uses its penultimate layer ({feature_dim} globally pooled conv features) for FID, KID and precision/recall
and its softmax for the Inception Score (`hfgen.metrics.load_feature_extractor("{dataset}")`).

| | |
|---|---|
| test accuracy | **{test_accuracy:.4f}** ({num_test} held-out images: {split}) |
| train accuracy | {train_accuracy:.4f} |
| parameters | {num_parameters:,} |
| blocks, convolutions per block, batch norm | {block_out_channels}, {layers_per_block}, {batch_norm} |
| augmentation | {augmentation} |
| epochs, batch size, learning rate, seed | {epochs}, {batch_size}, {learning_rate}, {seed} |

Reproduce with:

```bash
{command}
```
"""


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """(b, c, s, s) images in [-1, 1] -> each moved by its own integer (dx, dy) in [-max_shift, max_shift]."""
    if max_shift == 0:
        return images
    b, _, s, _ = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)  # (b, c, s + 2m, s + 2m), background is -1
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, y : y + s, x : x + s] for i, (x, y) in enumerate(offsets.tolist())])


@torch.no_grad()
def accuracy(model: DomainClassifier, dataset) -> float:
    loader = DataLoader(dataset, batch_size=256, collate_fn=collate_fn)
    correct = total = 0
    for batch in loader:
        correct += (model(batch["pixel_values"]).logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return correct / total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset_name", default="digits", help="An embedded data set, a save_to_disk folder or Hub id."
    )
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--layers_per_block", type=int, default=1, help="3x3 convolutions per block.")
    parser.add_argument("--batch_norm", action="store_true", help="Batch normalization after each convolution.")
    parser.add_argument(
        "--max_shift",
        type=int,
        default=0,
        help="Augmentation: shift each training image by up to this many pixels in x and y (zero padding at the "
        "edge value -1); 0 turns it off.",
    )
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.max_shift < 0:
        parser.error(f"--max_shift must be >= 0, got {args.max_shift}.")

    torch.manual_seed(args.seed)
    splits = load_image_dataset(args.dataset_name, label_column=args.label_column, **EVALUATION_SPLIT)
    train, test = splits["train"], splits["test"]
    class_names = train.features[args.label_column].names
    channels, size, _ = train[0]["pixel_values"].shape
    model = DomainClassifier(
        sample_size=size,
        in_channels=channels,
        num_classes=len(class_names),
        block_out_channels=tuple(args.block_out_channels),
        class_names=class_names,
        dataset=args.dataset_name,
        layers_per_block=args.layers_per_block,
        batch_norm=args.batch_norm,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )
    shift_generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        for batch in loader:
            images = random_shift(batch["pixel_values"], args.max_shift, shift_generator)
            loss = F.cross_entropy(model(images).logits, batch["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        print(f"epoch {epoch + 1}/{args.epochs}: last batch loss {loss.item():.4f}", flush=True)
    model.eval()
    results = {
        "dataset": args.dataset_name,
        "test_accuracy": accuracy(model, test),
        "train_accuracy": accuracy(model, train),
        "num_test": len(test),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    model.save_pretrained(args.output_dir)
    command = "python training/train_feature_extractor.py " + " ".join(argv if argv is not None else sys.argv[1:])
    card = CARD.format(
        **results,
        **{k: v for k, v in vars(args).items() if k != "dataset_name"},
        num_classes=len(class_names),
        feature_dim=args.block_out_channels[-1],
        split=f"{len(train):,} train / {len(test):,} test from `load_image_dataset(name, test_size=0.1, seed=0)`, "
        "which keeps a data set's own test split",
        class_names=", ".join(class_names),
        augmentation=f"random shifts of up to {args.max_shift} pixels" if args.max_shift else "none",
        command=command,
    )
    ModelCard(card).save(os.path.join(args.output_dir, "README.md"))
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
