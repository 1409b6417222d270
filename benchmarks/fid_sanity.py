"""Does hfgen's FID behave? Real-vs-real should be small, real-vs-noise large, real-vs-one-class in between.

    python benchmarks/fid_sanity.py                  # digits (the shipped extractor)
    python benchmarks/fid_sanity.py --dataset shapes
    python benchmarks/fid_sanity.py --dataset mnist

The reference set is the training split (as `hfgen evaluate` uses it); each other set is compared with it in the
features of the data set's shipped domain classifier, with KID and precision/recall beside FID:

- real test: the held-out split (what a perfect model would score, up to sample size);
- one class: training images of the single class `--one_class` (a fully mode-collapsed model with perfect samples);
- shapes (grey) / noise: out-of-distribution images on the same grey levels (digits: 17, mnist: 256), or noise (for
  shapes).
"""

import argparse
import json

import torch

from hfgen.data import grey_levels
from hfgen.metrics.anomaly import out_of_distribution_images
from hfgen.metrics.evaluate import format_table, real_images, sample_quality
from hfgen.metrics.features import load_feature_extractor


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="digits", help="digits, mnist or shapes (a data set with a shipped extractor)."
    )
    parser.add_argument("--one_class", type=int, default=0, help="The class of the mode-collapsed set.")
    parser.add_argument("--json", default=None, help="Also write the rows here.")
    args = parser.parse_args(argv)

    extractor = load_feature_extractor(args.dataset)
    train, test = real_images(args.dataset, "train"), real_images(args.dataset, "test")
    predicted = extractor.class_probabilities(train).argmax(-1)
    sets = {"real test": test, "one class": train[predicted == args.one_class][: len(test)]}
    generator = torch.Generator().manual_seed(0)
    if args.dataset in ("digits", "mnist"):
        grey = dict(sample_size=test.shape[-1], num_levels=grey_levels(args.dataset))
        sets["shapes (grey)"] = out_of_distribution_images("shapes", len(test), **grey)
        sets["noise"] = out_of_distribution_images("noise", len(test), **grey)
    else:
        sets["noise"] = torch.rand(len(test), *test.shape[1:], generator=generator) * 2 - 1

    rows = []
    for name, images in sets.items():
        row = {"set": name, "images": len(images)}
        row.update(sample_quality(extractor, train, images, metrics=("fid", "kid", "pr")))
        rows.append(row)
    columns = [("set", "compared with train"), ("images", "images"), ("fid", "FID"), ("kid", "KID")]
    columns += [("precision", "precision"), ("recall", "recall")]
    print(f"{args.dataset}: {len(train)} training images as the reference, shipped `{args.dataset}` features")
    print(format_table(rows, columns))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
