"""The `hfgen` command: train, generate, datasets export, info."""

import argparse
import json
import os
import sys


def cmd_train(args, rest: list[str]):
    from hfgen.training.train import main

    main(rest)


def cmd_generate(args, rest: list[str]):
    import torch

    from hfgen import load_pipeline
    from hfgen.pipelines.pipeline_utils import image_grid

    if args.num_images < 1:
        raise SystemExit("-n/--num_images must be at least 1.")
    pipeline = load_pipeline(args.path)
    generator = torch.Generator().manual_seed(args.seed)
    if args.prompt is None:
        images = pipeline(batch_size=args.num_images, generator=generator).images
    else:
        images = pipeline(prompt=args.prompt, num_images_per_prompt=args.num_images, generator=generator).images
    image_grid(images).save(args.output)
    print(f"Wrote {len(images)} images as a grid to {args.output}")


def cmd_datasets_export(args, rest: list[str]):
    from hfgen.data import export_dataset

    path = export_dataset(args.name, args.path)
    print(f"Saved the {args.name} data set to {path} (load it with datasets.load_from_disk or --dataset_name {path})")


def cmd_info(args, rest: list[str]):
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(args.path)
    print(f"{args.path}: {index['_class_name']} (saved with diffusers {index.get('_diffusers_version')})")
    for name, value in sorted(index.items()):
        if not name.startswith("_"):
            library, class_name = value
            print(f"  {name:<13} {class_name or '-'} ({library or 'not saved'})")
    summary_path = os.path.join(args.path, "train_summary.json")
    if os.path.isfile(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        print(f"  trained {summary['steps']} steps on {summary['world_size']} process(es)")
        for key, value in summary.get("metrics", {}).items():
            print(f"  {key:<28} {value:.4g}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfgen", description="Generative models the Hugging Face way.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="Train a model (all flags of training/train.py; see `hfgen train --help`).",
        add_help=False,
    )
    train.set_defaults(func=cmd_train)

    generate = commands.add_parser("generate", help="Sample a grid of images from a saved pipeline.")
    generate.add_argument("path", help="Folder or Hub id of a saved hfgen pipeline.")
    generate.add_argument("--prompt", default=None, help="Text prompt (text-conditioned models only).")
    generate.add_argument("-n", "--num_images", type=int, default=16, help="Number of images.")
    generate.add_argument("--seed", type=int, default=0, help="Seed of the sampling noise.")
    generate.add_argument("-o", "--output", default="grid.png", help="Where to write the grid PNG.")
    generate.set_defaults(func=cmd_generate)

    data = commands.add_parser("datasets", help="Embedded data sets.").add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="Save an embedded data set (digits, shapes) with save_to_disk.")
    export.add_argument("name", help="digits or shapes")
    export.add_argument("path", help="Target folder.")
    export.set_defaults(func=cmd_datasets_export)

    info = commands.add_parser("info", help="Say what a saved pipeline is.")
    info.add_argument("path", help="Folder or Hub id of a saved pipeline.")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.func(args, rest)


if __name__ == "__main__":
    main()
