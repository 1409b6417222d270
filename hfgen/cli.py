"""The `hfgen` command: train, generate, evaluate, compare, push, datasets export/push, space deploy, info."""

import argparse
import json
import os
import sys


def cmd_train(args, rest: list[str]):
    from hfgen.training.train import main

    main(rest)


def cmd_generate(args, rest: list[str]):
    from hfgen import load_pipeline
    from hfgen.pipelines.pipeline_utils import image_grid

    if args.num_images < 1:
        raise SystemExit("-n/--num_images must be at least 1.")
    check_image_output(args.output)
    check_pipeline_path(args.path)
    pipeline = load_pipeline(args.path)
    sampling = {"guidance_scale": args.guidance_scale, "num_inference_steps": args.num_inference_steps}
    sampling = {name: value for name, value in sampling.items() if value is not None}
    images = pipeline.generate(
        args.num_images,
        prompt=args.prompt,
        class_labels=args.class_label,
        seed=args.seed,
        output_type="pil",
        **sampling,
    )
    image_grid(images).save(args.output)
    print(f"Wrote {len(images)} images as a grid to {args.output}")


def check_output_folder(option: str, path: str):
    """Before any work: the folder an output file goes into exists, so that a typo costs no sampling or scoring."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SystemExit(f"{option} {path}: the folder {folder} does not exist; create it first.")


def check_image_output(path: str):
    """Before any work: the grid's folder exists and its extension is an image format PIL writes."""
    from PIL import Image

    check_output_folder("-o", path)
    extension = os.path.splitext(path)[1].lower()
    formats = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}
    if extension not in formats:
        raise SystemExit(
            f"-o {path}: {extension or 'no extension'} is not an image format; use .png (lossless), .jpg or .webp."
        )


def check_pipeline_path(path: str):
    """A local folder must hold a saved pipeline; anything else that is not a folder is taken as a Hub id."""
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
        raise SystemExit(f"{path} is not a saved pipeline (no model_index.json): give a training --output_dir.")
    if not os.path.isdir(path) and (os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise SystemExit(f"{path} is not a saved pipeline folder (nor a Hub id, namespace/name).")


def _metric_list(text: str) -> tuple[str, ...]:
    from hfgen.metrics.evaluate import METRICS

    metrics = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = set(metrics) - set(METRICS)
    if not metrics or unknown:
        raise SystemExit(f"--metrics takes a comma-separated list of {','.join(METRICS)}; got {text!r}.")
    return metrics


def cmd_evaluate(args, rest: list[str]):
    from hfgen import hub, load_pipeline
    from hfgen.metrics.adherence import format_adherence
    from hfgen.metrics.evaluate import evaluate_pipeline, format_table, held_out_warning

    metrics = _metric_list(args.metrics)
    if set(metrics) - {"nll"} and args.num_samples < 10:
        raise SystemExit(
            f"--num_samples must be at least 10 (the Inception Score's 10 splits), got {args.num_samples}."
        )
    check_pipeline_path(args.path)
    if args.output:
        check_output_folder("-o", args.output)
    if args.write_model_card and not os.path.isdir(args.path):
        raise SystemExit("--write_model_card needs a local pipeline folder; download the repo first.")
    pipeline = load_pipeline(args.path)
    if "nll" in metrics and not hasattr(pipeline, "log_likelihood"):
        print(
            f"nll skipped: a {type(pipeline).__name__} defines no likelihood (it samples without a density), so only "
            "the sample-quality metrics apply.",
            file=sys.stderr,
        )
        metrics = tuple(m for m in metrics if m != "nll")
        if not metrics:
            raise SystemExit("Nothing to evaluate: ask for fid, kid, is or pr with --metrics.")
    if "nll" in metrics and (warning := held_out_warning(args.path, args.dataset)):
        print(warning, file=sys.stderr)
    try:
        results = evaluate_pipeline(
            pipeline, args.dataset, metrics, args.num_samples, seed=args.seed, extractor=args.feature_extractor
        )
    except ValueError as error:  # what cannot be measured, and how to make it measurable
        raise SystemExit(str(error)) from None
    rows = [{"metric": k, "value": v} for k, v in results.items() if not isinstance(v, dict)]
    print(format_table(rows, columns=[("metric", "metric"), ("value", "value")]))
    if "adherence" in results:
        print(f"\nPrompt adherence on {args.dataset} (fraction of samples showing what the prompt asks for):")
        print(format_adherence(results["adherence"]))
    output = args.output
    if output is None and os.path.isdir(args.path):  # a Hub id has no local folder to write into
        output = os.path.join(args.path, "eval_results.json")
    if output:
        with open(output, "w") as f:
            json.dump(results, f, indent=2)
        print(f"Wrote {output}")
    if args.write_model_card:
        hub.add_eval_results(args.path, results, args.dataset)
        print(f"Added the results to the model-index of {args.path}/README.md")


def cmd_compare(args, rest: list[str]):
    from hfgen.metrics.evaluate import compare_pipelines, format_table

    try:
        rows = compare_pipelines(
            args.paths, args.dataset, _metric_list(args.metrics), args.num_samples, args.seed, args.output_dir
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    print(format_table(rows))
    print(f"Wrote {args.output_dir}/compare.json, compare.md and compare.png")


def cmd_datasets_export(args, rest: list[str]):
    from hfgen.data import export_dataset

    path = export_dataset(args.name, args.path)
    print(f"Saved the {args.name} data set to {path} (load it with datasets.load_from_disk or --dataset_name {path})")


def cmd_push(args, rest: list[str]):
    from hfgen import hub

    if not os.path.isfile(os.path.join(args.path, "model_index.json")):
        raise SystemExit(f"{args.path} is not a saved pipeline (no model_index.json): train or save_pretrained first.")
    print(f"Pushed {args.path}: {hub.push_to_hub(args.path, args.repo_id, token=args.token, private=args.private)}")


def cmd_datasets_push(args, rest: list[str]):
    from hfgen.data import EMBEDDED_DATASETS
    from hfgen.hub import check_repo_id

    if args.name not in EMBEDDED_DATASETS:
        raise SystemExit(f"Unknown embedded data set {args.name!r}; choose one of {sorted(EMBEDDED_DATASETS)}.")
    # datasets' own push_to_hub: parquet shards, the dataset card and its features metadata.
    EMBEDDED_DATASETS[args.name]().push_to_hub(check_repo_id(args.repo_id), token=args.token, private=args.private)
    print(f"Pushed the {args.name} data set to the dataset repo {args.repo_id}")


def cmd_space_deploy(args, rest: list[str]):
    from hfgen import hub

    variables = {}
    for assignment in args.model:
        family, _, model_id = assignment.partition("=")
        if not family or not model_id:
            raise SystemExit(f"--model takes FAMILY=REPO_ID (for example vae=user/vae-digits), got {assignment!r}.")
        variables[f"HFGEN_MODEL_{family.upper()}"] = model_id
    for assignment in args.variable:
        key, _, value = assignment.partition("=")
        if not key or not value:
            raise SystemExit(f"--variable takes KEY=VALUE, got {assignment!r}.")
        variables[key] = value
    url = hub.deploy_space(args.folder, args.repo_id, variables=variables, token=args.token)
    print(f"Deployed {args.folder} to the Space {args.repo_id}: {url}")
    for key, value in variables.items():
        print(f"  {key}={value}")


def cmd_info(args, rest: list[str]):
    from diffusers import DiffusionPipeline

    check_pipeline_path(args.path)
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
    generate.add_argument("--class_label", type=int, default=None, help="Class (class-conditioned models only).")
    generate.add_argument("-n", "--num_images", type=int, default=16, help="Number of images.")
    generate.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="Classifier-free guidance scale (1: none; default: the pipeline's).",
    )
    generate.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="Sampling steps of an iterative sampler (default: the pipeline's).",
    )
    generate.add_argument("--seed", type=int, default=0, help="Seed of the sampling noise.")
    generate.add_argument("-o", "--output", default="grid.png", help="Where to write the grid PNG.")
    generate.set_defaults(func=cmd_generate)

    evaluate = commands.add_parser(
        "evaluate", help="FID, KID, IS, precision/recall, NLL and prompt adherence of a saved pipeline."
    )
    evaluate.add_argument("path", help="Folder or Hub id of a saved hfgen pipeline.")
    evaluate.add_argument(
        "--dataset", default="digits", help="The data set it models (embedded name, folder, Hub id)."
    )
    evaluate.add_argument(
        "--metrics", default="fid,kid,is,pr,nll", help="Comma-separated: fid,kid,is,pr,nll,adherence."
    )
    evaluate.add_argument(
        "--num_samples", type=int, default=1000, help="Generated images for FID/KID/IS/PR (and per adherence set)."
    )
    evaluate.add_argument("--seed", type=int, default=0, help="Seed of the generated images.")
    evaluate.add_argument(
        "--feature_extractor",
        default=None,
        help="Extractor folder, e.g. from training/train_feature_extractor.py (default: shipped for --dataset).",
    )
    evaluate.add_argument("-o", "--output", default=None, help="JSON file (default: PATH/eval_results.json).")
    evaluate.add_argument(
        "--write_model_card", action="store_true", help="Also write the results into PATH/README.md's model-index."
    )
    evaluate.set_defaults(func=cmd_evaluate)

    compare = commands.add_parser("compare", help="Evaluate several saved pipelines of any families side by side.")
    compare.add_argument("paths", nargs="+", help="Folders or Hub ids of saved hfgen pipelines.")
    compare.add_argument("--dataset", default="digits", help="The data set they model.")
    compare.add_argument(
        "--metrics", default="fid,kid,is,pr,nll", help="Comma-separated: fid,kid,is,pr,nll,adherence."
    )
    compare.add_argument("--num_samples", type=int, default=1000, help="Generated images per model.")
    compare.add_argument("--seed", type=int, default=0, help="Seed of the generated images.")
    compare.add_argument("--output_dir", default="out/compare", help="Where compare.json/.md/.png go.")
    compare.set_defaults(func=cmd_compare)

    push = commands.add_parser("push", help="Push a saved pipeline folder (with its model card) to the Hub.")
    push.add_argument("path", help="Folder of a saved hfgen pipeline (a training --output_dir).")
    push.add_argument("repo_id", help="Target model repo, namespace/name.")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / hf auth login).")
    push.add_argument("--private", action="store_true", help="Create the repo as private.")
    push.set_defaults(func=cmd_push)

    space = commands.add_parser("space", help="Gradio Spaces.").add_subparsers(dest="action", required=True)
    deploy = space.add_parser("deploy", help="Create or update a Space from a folder, with its model ids set.")
    deploy.add_argument("folder", help="A Space folder, e.g. spaces/gallery.")
    deploy.add_argument("repo_id", help="Target Space repo, namespace/name.")
    deploy.add_argument(
        "--model", action="append", default=[], help="FAMILY=REPO_ID: sets the Space variable HFGEN_MODEL_<FAMILY>."
    )
    deploy.add_argument("--variable", action="append", default=[], help="KEY=VALUE: any other Space variable.")
    deploy.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / hf auth login).")
    deploy.set_defaults(func=cmd_space_deploy)

    data = commands.add_parser("datasets", help="Embedded data sets.").add_subparsers(dest="action", required=True)
    export = data.add_parser("export", help="Save an embedded data set with save_to_disk.")
    export.add_argument("name", help="digits, shapes, mnist or mnist_binarized")
    export.add_argument("path", help="Target folder.")
    export.set_defaults(func=cmd_datasets_export)
    data_push = data.add_parser("push", help="Push an embedded data set to a Hub dataset repo.")
    data_push.add_argument("name", help="digits, shapes, mnist or mnist_binarized")
    data_push.add_argument("repo_id", help="Target dataset repo, namespace/name.")
    data_push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / hf auth login).")
    data_push.add_argument("--private", action="store_true", help="Create the repo as private.")
    data_push.set_defaults(func=cmd_datasets_push)

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
    try:
        args.func(args, rest)
    except KeyboardInterrupt as error:  # a training run's says which checkpoint holds it
        print(f"hfgen {args.command}: {error or 'interrupted'}", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError, FloatingPointError) as error:  # hfgen's errors say what to do: no traceback
        if os.environ.get("HFGEN_TRACEBACK"):
            raise
        raise SystemExit(f"hfgen {args.command}: error: {error}") from None


if __name__ == "__main__":
    main()
