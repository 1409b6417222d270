"""The autoregressive family on the 8x8 digits, one run: per architecture, training time and test bits/dim, the
classifier's accuracy on test digits completed from their top half, and the time to draw one 28x28 image naively (a
full forward pass per pixel) and with the cache.

    python benchmarks/autoregressive.py --json autoregressive.json            # all three parts, five architectures
    python benchmarks/autoregressive.py --steps 200 --architectures pixelcnn gated_pixelcnn
    python benchmarks/autoregressive.py --parts completion                    # the models trained by an earlier run
    python benchmarks/autoregressive.py --parts sampling --repeats 3          # the sampling times alone, no training

1. Training (`--parts train`): each architecture trains through the shared trainer (`--family autoregressive
   --conditioning none`, the split of every hfgen trainer: `test_size=0.1, split_seed=0`) for `--steps` steps at batch
   64 into `--output_dir/<architecture>`; its test bits/dim is exact (the sum of the log-probabilities of the 17-level
   pixels). Seconds per step are the training loop's (the trainer's `finish`, which saves the pipeline, draws a sample
   grid and scores the test split, is timed apart and left out); seconds per epoch are seconds per step times the steps
   of one pass over the training split. `--train_args` adds trainer flags after these, which win (e.g.
   `--train_args="--use_ema --hidden_channels 64"`; with the `=`, as its value starts with `--`). A class-conditional
   model (`--train_args="--conditioning class"`) is also scored as p(x) = mean over the classes of p(x | class) (no
   label needed: the same table as the unconditional models), beside p(x | its class) and its accuracy as a
   classifier, argmax p(class | x) (`class_marginal`).
2. Completion (`--parts completion`): the pipeline saved in `--output_dir/<architecture>` (by this run or an earlier
   one) completes each test digit from its top half (`pipe.complete`, seed 0, at each of `--temperatures`), and
   `hfgen.metrics.completion.completion_accuracy` reports the shipped classifier's accuracy on the originals, on the
   top halves alone and on the completions.
3. Sampling (`--parts sampling`): an untrained model of the same size on a 28x28 grid (speed does not depend on the
   weights), one image, one thread: naive, then cached (the transformer's key/value cache; for the other models
   every layer's activations at the pixels drawn so far, `init_cache` / `cached_logits`), each the fastest of
   `--repeats` runs in the same process, with a check that both draw the same image.
"""

import argparse
import datetime
import json
import math
import os
import shlex
import sys
import time

import torch
from hfgen.training.train import parse_config

import hfgen
from hfgen.metrics.completion import DATASETS, completion_accuracy, labelled_test_images
from hfgen.metrics.evaluate import format_table
from hfgen.metrics.marginal import marginal_log_likelihood
from hfgen.models.modeling_autoregressive import ARCHITECTURES, MODEL_CLASSES, build_transformer_prior

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainer_overhead import with_timed_finish  # noqa: E402  (the trainer's time less its `finish`)

PARTS = ("train", "completion", "sampling")
TRAIN_COLUMNS = [
    ("architecture", "architecture"), ("parameters", "parameters"), ("steps", "steps"), ("seconds_per_step", "s/step"),
    ("steps_per_epoch", "steps/epoch"), ("seconds_per_epoch", "s/epoch"), ("test_bits_per_dim", "test bits/dim"),
    ("test_nats_per_image", "test NLL, nats/image"), ("test_bits_per_dim_class_marginal", "class-conditional: p(x)"),
    ("test_bits_per_dim_true_class", "p(x | its class)"), ("likelihood_classifier_accuracy", "likelihood classifier"),
]  # fmt: skip
COMPLETION_COLUMNS = [
    ("architecture", "architecture"), ("temperature", "temperature"), ("num_images", "images"),
    ("original", "original"), ("masked", "top half only"), ("completed", "completed"), ("seconds", "seconds"),
]  # fmt: skip
SAMPLING_COLUMNS = [
    ("architecture", "architecture"), ("parameters", "parameters"), ("naive", "naive s/image"),
    ("cached", "cached s/image"), ("speedup", "speed-up"), ("naive_cpu", "CPU s naive"),
    ("cached_cpu", "CPU s cached"), ("speedup_cpu", "CPU speed-up"), ("same_image", "same image"),
]  # fmt: skip
SIZES = {
    "pixelcnn": ["--hidden_channels", "64", "--num_layers", "5"],
    "gated_pixelcnn": ["--hidden_channels", "64", "--num_layers", "5"],
    "row_lstm": ["--hidden_channels", "32", "--num_layers", "2"],
    "diagonal_bilstm": ["--hidden_channels", "32", "--num_layers", "2"],
    "transformer": ["--num_layers", "4", "--n_embd", "64", "--n_head", "4"],
}


def train(architecture: str, steps: int, dataset: str, output_dir: str, extra: list[str]) -> dict:
    trainer_class, config = parse_config(
        ["--family", "autoregressive", "--architecture", architecture, "--dataset_name", dataset, "--conditioning",
         "none", "--train_batch_size", "64", "--max_train_steps", str(steps), "--learning_rate", "2e-3",
         "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--checkpointing_steps", str(10 * steps),
         "--num_validation_images", "16", "--report_to", "none", "--output_dir", output_dir, *SIZES[architecture],
         *extra]  # later flags win: `extra` overrides the defaults above
    )  # fmt: skip
    trainer = with_timed_finish(trainer_class(config))
    start = time.perf_counter()
    summary = trainer.train()
    loop = time.perf_counter() - start - trainer.finish_seconds
    steps_per_epoch = len(trainer.train_dataloader)  # full batches of the training split (the last one is dropped)
    return {
        "steps": steps,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_seconds": round(loop, 1),
        "finish_seconds": round(trainer.finish_seconds, 1),
        "seconds_per_step": round(loop / steps, 4),
        "steps_per_epoch": steps_per_epoch,
        "seconds_per_epoch": round(loop / steps * steps_per_epoch, 1),
        "test_bits_per_dim": round(summary["metrics"]["test_bits_per_dim"], 3),
        # The papers' unit for binarized MNIST: bits/dim x dimensions x ln 2 (PixelCNN 81.30, Diagonal BiLSTM 79.20).
        "test_nats_per_image": round(
            summary["metrics"]["test_bits_per_dim"] * math.prod(trainer.image_shape) * math.log(2), 2
        ),
        "train_bits_per_dim_last": round(summary["metrics"]["train_bits_per_dim"], 3),
        **(class_marginal(output_dir, dataset) if config.conditioning == "class" and dataset in DATASETS else {}),
    }


def class_marginal(model_dir: str, dataset: str) -> dict:
    """A class-conditional model (`--train_args="--conditioning class"`; its "test bits/dim" is then p(x | null
    class)) scored as p(x) = mean_y p(x | y) over the classes, which needs no label and so stands in the same table as
    the unconditional models; beside it p(x | the true class), and the accuracy of argmax_y p(y | x), the model as a
    classifier (`hfgen.metrics.marginal`)."""
    pipeline = hfgen.load_pipeline(model_dir)
    images, labels = labelled_test_images(dataset)
    output = marginal_log_likelihood(pipeline, images, class_labels=range(pipeline.num_classes))
    return {
        "test_bits_per_dim_class_marginal": round(output.bits_per_dim.mean().item(), 3),
        "test_bits_per_dim_true_class": round(output.true_condition_bits_per_dim(labels).mean().item(), 3),
        "likelihood_classifier_accuracy": round(output.classifier_accuracy(labels), 3),
    }


def completion(model_dir: str, dataset: str, temperature: float, num_images: int | None) -> dict:
    """The classifier's accuracy on test images completed from their top half by the pipeline in `model_dir`."""
    if not os.path.isfile(os.path.join(model_dir, "model_index.json")):
        raise SystemExit(f"No trained pipeline in {model_dir}: run the benchmark with --parts train first.")
    pipe = hfgen.AutoregressivePipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)

    def complete(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return pipe.complete(images, keep, generator=generator, temperature=temperature, output_type="pt")

    start = time.perf_counter()
    accuracy = completion_accuracy(complete, dataset, num_images=num_images)
    return {**accuracy, "seconds": round(time.perf_counter() - start, 1)}


def sampling_times(architecture: str, sample_size: int, repeats: int = 1) -> dict:
    torch.manual_seed(0)
    if architecture == "transformer":
        prior = build_transformer_prior(sample_size=sample_size, num_levels=17, n_embd=64, n_layer=4, n_head=4)
    else:
        width, layers = (64, 5) if "pixelcnn" in architecture else (32, 2)
        prior = MODEL_CLASSES[architecture](
            sample_size=sample_size, num_levels=17, hidden_channels=width, num_layers=layers
        )
    pipe = hfgen.AutoregressivePipeline(prior=prior.eval())
    pipe.set_progress_bar_config(disable=True)
    times, images = {"parameters": sum(p.numel() for p in prior.parameters())}, {}
    for use_cache in (False, True):
        name, walls, cpus = "cached" if use_cache else "naive", [], []
        for _ in range(repeats):  # the fastest of `repeats`, for both samplers alike: the least disturbed run
            start, start_cpu = time.perf_counter(), time.process_time()
            images[use_cache] = pipe(generator=torch.manual_seed(0), use_cache=use_cache, output_type="np").images
            walls.append(time.perf_counter() - start)
            # This process's CPU time too: on a shared machine the wall time includes waiting for a core.
            cpus.append(time.process_time() - start_cpu)
        times[name], times[f"{name}_cpu"] = round(min(walls), 3), round(min(cpus), 3)
    times["same_image"] = bool((images[False] == images[True]).all())
    times["speedup"] = round(times["naive"] / times["cached"], 1)
    times["speedup_cpu"] = round(times["naive_cpu"] / times["cached_cpu"], 1)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"Comma-separated: {', '.join(PARTS)}.")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--steps", type=int, default=600, help="Training steps per architecture (batch 64).")
    parser.add_argument(
        "--train_args",
        default="",
        help='More trainer flags, after the defaults: --train_args="--use_ema --hidden_channels 64".',
    )
    parser.add_argument(
        "--dataset_name",
        default="digits",
        choices=[*DATASETS, "mnist_binarized"],
        help="Training and completion data (mnist_binarized: training only, 2 levels, the NLL in nats of the papers).",
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.1], help="Of the completions.")
    parser.add_argument("--num_images", type=int, default=None, help="Test images to complete (default: all).")
    parser.add_argument("--sample_size", type=int, default=28, help="Grid side for the sampling times.")
    parser.add_argument(
        "--output_dir", default="out/benchmark-autoregressive", help="Holds one model per architecture."
    )
    parser.add_argument("--json", default=None, help="Also write the results here.")
    parser.add_argument("--repeats", type=int, default=1, help="Sampling runs per sampler; the fastest is kept.")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts takes a list of {', '.join(PARTS)}, got {args.parts!r}.")
    if "completion" in parts and args.dataset_name not in DATASETS:
        raise SystemExit(f"--parts completion needs a classifier of {args.dataset_name}'s images; there is none.")
    torch.set_num_threads(1)
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": vars(args),
        "load_average_start": os.getloadavg(),
        "architectures": {},
    }
    for architecture in args.architectures:
        row = results["architectures"][architecture] = {}
        model_dir = os.path.join(args.output_dir, architecture)
        if "train" in parts:
            row["train"] = train(architecture, args.steps, args.dataset_name, model_dir, shlex.split(args.train_args))
        if "completion" in parts:
            row["completion"] = {
                str(t): completion(model_dir, args.dataset_name, t, args.num_images) for t in args.temperatures
            }
        if "sampling" in parts:
            row["sampling_seconds_per_image"] = sampling_times(architecture, args.sample_size, args.repeats)
        print(architecture, json.dumps(row), flush=True)
    results["load_average_end"] = os.getloadavg()
    print_tables(results, parts)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def print_tables(results: dict, parts: list[str]) -> None:
    rows = results["architectures"]
    if "train" in parts:
        print("\n" + format_table([{"architecture": a, **row["train"]} for a, row in rows.items()], TRAIN_COLUMNS))
    if "completion" in parts:
        completions = [
            {"architecture": a, "temperature": t, **figures}
            for a, row in rows.items()
            for t, figures in row["completion"].items()
        ]
        print("\n" + format_table(completions, COMPLETION_COLUMNS))
    if "sampling" in parts:
        times = [{"architecture": a, **row["sampling_seconds_per_image"]} for a, row in rows.items()]
        print("\n" + format_table(times, SAMPLING_COLUMNS))
    start, end = results["load_average_start"][0], results["load_average_end"][0]
    print(f"{results['date']}; load average (1 min): {start:.2f} at the start, {end:.2f} at the end")


if __name__ == "__main__":
    main()
