import json
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hfgen.data import (
    COLORS,
    DIGIT_CAPTION_TEMPLATES,
    DIGIT_NAMES,
    EMBEDDED_DATASETS,
    collate_fn,
    digit_captions,
    export_dataset,
    load_image_dataset,
    make_digits_dataset,
    make_shapes_dataset,
)


@pytest.fixture(scope="module")
def digits():
    return make_digits_dataset()


@pytest.fixture
def image_folder(tmp_path):
    """Four PNGs of mixed modes and sizes with captions in metadata.jsonl."""
    images = {
        "rgb.png": Image.new("RGB", (8, 8), (255, 0, 0)),
        "rgba.png": Image.new("RGBA", (8, 8), (0, 255, 0, 128)),
        "grey.png": Image.new("L", (8, 8), 200),
        "wide.png": Image.new("RGB", (12, 8), (0, 0, 255)),
    }
    with open(tmp_path / "metadata.jsonl", "w") as f:
        for name, image in images.items():
            image.save(tmp_path / name)
            f.write(json.dumps({"file_name": name, "caption": f"a {name[:-4]} image"}) + "\n")
    return tmp_path


def test_embedded_registry():
    assert set(EMBEDDED_DATASETS) == {"digits", "shapes", "mnist", "mnist_binarized"}


def test_digits(digits):
    assert len(digits) == 1797
    assert digits.features["label"].names == DIGIT_NAMES
    pixels = np.stack([np.asarray(image) for image in digits[:50]["image"]]).astype(np.int64)
    assert digits[0]["image"].mode == "L" and digits[0]["image"].size == (8, 8)
    all_pixels = np.stack([np.asarray(image) for image in digits["image"]])
    assert len(np.unique(all_pixels)) == 17
    # The 17 grey levels map back to the integers 0..16 and forth to the same uint8 values.
    levels = np.round(pixels * 16 / 255)
    np.testing.assert_array_equal(np.round(levels * 255 / 16), pixels)
    assert levels.min() == 0 and levels.max() == 16
    for example in digits.select(range(20)):
        assert example["text"] == f"a handwritten digit {DIGIT_NAMES[example['label']]}"


def test_shapes_deterministic_and_captions_match():
    a, b = make_shapes_dataset(20, seed=3), make_shapes_dataset(20, seed=3)
    other = make_shapes_dataset(20, seed=4)
    assert [im.tobytes() for im in a["image"]] == [im.tobytes() for im in b["image"]]
    assert [im.tobytes() for im in a["image"]] != [im.tobytes() for im in other["image"]]
    assert a[0]["image"].mode == "RGB" and a[0]["image"].size == (32, 32)
    names = a.features["label"].names
    for example in a:
        words = example["text"]
        assert names[example["label"]] in words
        pixels = np.asarray(example["image"]).reshape(-1, 3)
        foreground = Counter(map(tuple, pixels[pixels.any(axis=1)])).most_common(1)[0][0]
        assert f" {[c for c, rgb in COLORS.items() if rgb == foreground][0]} " in words
        # The shape's centre of mass lies in the quadrant the caption names.
        ys, xs = np.nonzero(np.asarray(example["image"]).any(axis=2))
        if "center" not in words:
            assert ("top" in words) == (ys.mean() < 16) and ("left" in words) == (xs.mean() < 16)


def test_load_digits_splits():
    splits = load_image_dataset("digits", caption_column="text", label_column="label", test_size=0.1)
    assert len(splits["train"]) + len(splits["test"]) == 1797
    example = splits["train"][0]
    assert example["pixel_values"].shape == (1, 8, 8) and example["pixel_values"].dtype == torch.float32
    assert example["pixel_values"].min() >= -1 and example["pixel_values"].max() <= 1
    assert example["captions"] == f"a handwritten digit {DIGIT_NAMES[example['labels']]}"
    assert load_image_dataset("digits", max_train_samples=10)["train"].num_rows == 10


def test_several_captions_per_image_are_picked_per_image_and_epoch():
    """A caption column holding several wordings (`text_variants`): training picks one per image, the same for the
    same epoch (so resume is exact), others in other epochs; the test split and the vocabulary see them all."""
    splits = load_image_dataset("digits", caption_column="text_variants", label_column="label", test_size=0.1)

    def captions(split, num=200):
        batch = splits[split][:num]  # through the transform: "captions" and "labels"
        return batch["captions"], batch["labels"]

    first, labels = captions("train")
    assert (first, labels) == captions("train")  # deterministic for the epoch
    assert all(caption in digit_captions(label) for caption, label in zip(first, labels))
    wordings = Counter(digit_captions(label).index(caption) for caption, label in zip(first, labels))
    assert len(wordings) == len(DIGIT_CAPTION_TEMPLATES) and max(wordings.values()) < len(first) // 3  # all used
    splits.set_epoch(1)
    assert captions("train")[0] != first and captions("train")[1] == labels
    # The test split takes each image's first (canonical) caption, whatever the epoch.
    test_captions, test_labels = captions("test", 20)
    assert test_captions == [digit_captions(label)[0] for label in test_labels]
    vocabulary = splits.every_caption("train")
    assert len(vocabulary) == len(DIGIT_CAPTION_TEMPLATES) * len(splits["train"])
    assert {"7", "seven", "number", "digit"} <= {word for caption in vocabulary for word in caption.split()}


def test_labels_become_captions():
    example = load_image_dataset("digits", label_column="label")["train"][0]
    assert example["captions"] == DIGIT_NAMES[example["labels"]]
    example = load_image_dataset("digits")["train"][0]
    assert example["captions"] == "" and example["labels"] == -1


def test_export_round_trip(tmp_path, digits):
    path = export_dataset("digits", str(tmp_path / "digits"))
    assert datasets.load_from_disk(path)["text"] == digits["text"]
    splits = load_image_dataset(path, label_column="label", resolution=16)
    assert len(splits["train"]) + len(splits["test"]) == 1797
    assert splits["test"][0]["pixel_values"].shape == (1, 16, 16)
    with pytest.raises(ValueError, match="Unknown embedded"):
        export_dataset("cifar10", str(tmp_path / "cifar10"))


def test_image_folder_with_captions(image_folder):
    splits = load_image_dataset(
        train_data_dir=str(image_folder), caption_column="caption", image_mode="RGB", resolution=8, test_size=1
    )
    examples = list(splits["train"]) + list(splits["test"])
    assert sorted(e["captions"] for e in examples) == ["a grey image", "a rgb image", "a rgba image", "a wide image"]
    assert all(e["pixel_values"].shape == (3, 8, 8) and e["labels"] == -1 for e in examples)
    grey = next(e["pixel_values"] for e in examples if e["captions"] == "a grey image")
    assert torch.allclose(grey[0], grey[1])  # grey converted to RGB has equal channels


def test_image_mode_default_keeps_grey():
    splits = load_image_dataset("digits", random_flip=True, resolution=6)
    assert splits["train"][0]["pixel_values"].shape == (1, 6, 6)
    # Crop and flip are derived from the image and the seed, so reading twice gives the same pixels.
    assert torch.equal(splits["train"][5]["pixel_values"], splits["train"][5]["pixel_values"])


def test_the_test_split_is_not_augmented():
    """Random crops and flips are for training: held-out images (what test bits/dim, FID and adherence score) are
    centre-cropped and never flipped, the same in every epoch."""
    augmented = load_image_dataset("shapes", resolution=24, random_flip=True, test_size=16)
    plain = load_image_dataset("shapes", resolution=24, center_crop=True, test_size=16)
    for epoch in (0, 1):
        augmented.set_epoch(epoch)
        for i in range(16):
            assert torch.equal(augmented["test"][i]["pixel_values"], plain["test"][i]["pixel_values"])
    train = [augmented["train"][i]["pixel_values"] for i in range(16)]
    assert any(not torch.equal(a, plain["train"][i]["pixel_values"]) for i, a in enumerate(train))


def test_missing_column_error(digits):
    with pytest.raises(ValueError, match="--image_column") as error:
        load_image_dataset("digits", image_column="img")
    assert "'img'" in str(error.value) and "['image', 'label', 'text', 'text_variants']" in str(error.value)
    with pytest.raises(ValueError, match="--caption_column"):
        load_image_dataset("digits", caption_column="caption")
    with pytest.raises(ValueError, match="--label_column"):
        load_image_dataset("digits", label_column="class")
    with pytest.raises(ValueError, match="exactly one"):
        load_image_dataset()


@pytest.mark.parametrize("source", ["imagefolder", "parquet"])
def test_streaming(tmp_path, image_folder, source):
    if source == "imagefolder":
        splits = load_image_dataset(
            train_data_dir=str(image_folder), caption_column="caption", test_size=1, resolution=8, streaming=True
        )
    else:
        (tmp_path / "parquet").mkdir()
        make_digits_dataset().select(range(30)).to_parquet(str(tmp_path / "parquet" / "digits.parquet"))
        splits = load_image_dataset(str(tmp_path / "parquet"), label_column="label", test_size=5, streaming=True)
    assert isinstance(splits["train"], datasets.IterableDataset)
    train, test = list(splits["train"]), list(splits["test"])
    assert len(test) == (1 if source == "imagefolder" else 5)
    assert len(train) == (3 if source == "imagefolder" else 25)
    assert set(train[0]) == {"pixel_values", "captions", "labels"}
    assert isinstance(train[0]["pixel_values"], torch.Tensor) and train[0]["pixel_values"].shape[1:] == (8, 8)
    if source == "parquet":
        assert train[0]["captions"] == DIGIT_NAMES[train[0]["labels"]]


def test_transform_leaves_global_rng_alone():
    splits = load_image_dataset("shapes", caption_column="text", resolution=24, random_flip=True)
    state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    [splits["train"][i] for i in range(10)]
    assert torch.equal(state, torch.random.get_rng_state())
    np.testing.assert_array_equal(numpy_state, np.random.get_state()[1])


def test_collate_fn():
    splits = load_image_dataset("shapes", caption_column="text", label_column="label")
    batch = collate_fn([splits["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert len(batch["captions"]) == 4 and all(isinstance(c, str) for c in batch["captions"])
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (4,)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=8, collate_fn=collate_fn)
    assert next(iter(loader))["pixel_values"].shape == (8, 3, 32, 32)
