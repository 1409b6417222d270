"""The embedded MNIST (all 10,000 digits) redrawn the way the UCI digits (scikit-learn's 8x8 digits) were made, as more
data to pretrain a digits model on (issue 12's attempts at <= 1.6 bits/dim, benchmarks/README.md):

    python benchmarks/mnist_as_digits.py out/mnist-as-digits    # then train with --dataset_name out/mnist-as-digits

The UCI digits are 32x32 bitmaps of normalised handwriting whose set pixels were counted in each 4x4 block, giving an
8x8 image of levels 0-16. Each MNIST digit here is deskewed (its second moments made upright), cropped to its ink,
stretched to fill a 32-high, `--widths`-wide box in the middle of a 32x32 bitmap, thresholded at `--thresholds`, and
counted the same way (several widths or thresholds: every digit once per pair, as more varied data); level v is stored
as the grey value round(v * 255 / 16), which the trainers read back as level v of 17. The columns are `image` and
`label` (0-9). The folder is written with `Dataset.save_to_disk`.

Stretched, not scaled with its aspect kept (`--keep_aspect`, the first version): every UCI digit spans all eight rows
and about six columns, a 1 as well (5.3), so their normalisation fills a box of fixed size. Stretched into a 20-wide
box, the redrawn digits' statistics match the UCI digits' (mean level 5.0 against 4.9, ink in 6.0 of 8 columns against
5.9) and the shipped digits classifier names 0.73 of them (0.56 with the aspect kept, 0.98 for real test digits).
"""

import argparse

import datasets
import numpy as np
from PIL import Image
from scipy.ndimage import affine_transform

from hfgen.data import load_image_dataset

SIDE, BLOCK = 32, 4  # the UCI bitmaps and their counting blocks


def deskew(image: np.ndarray) -> np.ndarray:
    """The image sheared along x so that its ink's covariance of x and y is zero (an upright digit)."""
    ys, xs = np.mgrid[: image.shape[0], : image.shape[1]]
    total = image.sum()
    mean_y, mean_x = (ys * image).sum() / total, (xs * image).sum() / total
    covariance = ((xs - mean_x) * (ys - mean_y) * image).sum() / total
    variance_y = ((ys - mean_y) ** 2 * image).sum() / total
    alpha = covariance / variance_y
    # The output pixel (y, x) reads the input at (y, x + alpha * (y - mean_y)).
    return affine_transform(image, np.array([[1, 0], [alpha, 1]]), offset=[0, -alpha * mean_y], order=1)


def as_uci_digit(image: Image.Image, width: int = 20, threshold: int = 64, keep_aspect: bool = False) -> Image.Image:
    """One 28x28 MNIST digit as an 8x8 image of 4x4-block counts (levels 0-16, stored as round(v * 255 / 16)): its ink
    stretched to `width` x 32, or with `keep_aspect` scaled to fit inside that box."""
    upright = deskew(np.asarray(image, dtype=np.float32))
    ys, xs = np.nonzero(upright > threshold)
    if len(ys) == 0:
        raise ValueError(f"No pixel of the digit is above the threshold {threshold}: lower --threshold.")
    ink = upright[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if keep_aspect:
        scale = min(SIDE / ink.shape[0], width / ink.shape[1])
        height, wide = max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))
    else:
        height, wide = SIDE, width
    resized = Image.fromarray(ink.clip(0, 255).astype(np.uint8)).resize((wide, height), Image.BILINEAR)
    bitmap = np.zeros((SIDE, SIDE), np.float32)
    top, left = (SIDE - height) // 2, (SIDE - wide) // 2
    bitmap[top : top + height, left : left + wide] = np.asarray(resized, dtype=np.float32) > threshold
    counts = bitmap.reshape(SIDE // BLOCK, BLOCK, SIDE // BLOCK, BLOCK).sum((1, 3))
    return Image.fromarray(np.round(counts * 255 / BLOCK**2).astype(np.uint8), mode="L")


def mnist_as_digits(
    widths: tuple[int, ...] = (20,), thresholds: tuple[int, ...] = (64,), keep_aspect: bool = False
) -> datasets.Dataset:
    """Every embedded MNIST digit (its 8,000 training and 2,000 test images, in that order) redrawn, once per width
    and threshold (all the digits for the first pair, then for the next)."""
    splits = load_image_dataset("mnist", label_column="label").raw
    rows = {"image": [], "label": []}
    for width in widths:
        for threshold in thresholds:
            for split in ("train", "test"):
                for example in splits[split]:
                    rows["image"].append(as_uci_digit(example["image"], width, threshold, keep_aspect))
                    rows["label"].append(example["label"])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict(rows, features=features)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Where to save the data set (Dataset.save_to_disk).")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None, help="Widths of the box the digit is stretched to (of 32; 20)."
    )
    parser.add_argument(
        "--thresholds", type=int, nargs="+", default=[64], help="Grey values (0-255) above which a pixel is ink."
    )
    parser.add_argument(
        "--keep_aspect",
        action="store_true",
        help="Scale each digit to fit the box with its aspect kept (the first version; --widths 24 by default).",
    )
    args = parser.parse_args(argv)
    args.widths = args.widths or [24 if args.keep_aspect else 20]
    if not all(1 <= width <= SIDE for width in args.widths) or not all(0 <= t < 255 for t in args.thresholds):
        parser.error(f"--widths take 1-{SIDE} and --thresholds 0-254, got {args.widths} and {args.thresholds}.")
    dataset = mnist_as_digits(tuple(args.widths), tuple(args.thresholds), args.keep_aspect)
    dataset.save_to_disk(args.output_dir)
    print(f"Wrote {len(dataset):,} digits of 8x8 (levels 0-16) to {args.output_dir}")


if __name__ == "__main__":
    main()
