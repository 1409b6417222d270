"""The autoregressive family on the 8x8 digits, one run: test bits/dim and training time per architecture, and the
time to draw one 28x28 image naively (a full forward pass per pixel) and with the cache.

    python benchmarks/autoregressive.py --json autoregressive.json            # about 5 minutes on 2 cores
    python benchmarks/autoregressive.py --steps 200 --architectures pixelcnn gated_pixelcnn
    python benchmarks/autoregressive.py --sampling_only                       # the sampling times alone, no training

Each architecture trains through the shared trainer (`--family autoregressive --conditioning none`, the split of
every hfgen trainer: `test_size=0.1, seed=0`) for `--steps` steps at batch 64; its test bits/dim is exact (the sum of
the log-probabilities of the 17-level pixels). The sampling times use an untrained model of the same size on a 28x28
grid (speed does not depend on the weights), one image, one thread: naive, then cached (the transformer's key/value
cache; for the other models every layer's activations at the pixels drawn so far, `init_cache` / `cached_logits`),
each timed once in the same process, with a check that both draw the same image.
"""

import argparse
import json
import os
import time

import torch
from hfgen.training.train import parse_config

import hfgen
from hfgen.models.modeling_autoregressive import ARCHITECTURES, MODEL_CLASSES, build_transformer_prior

SIZES = {
    "pixelcnn": ["--hidden_channels", "64", "--num_layers", "5"],
    "gated_pixelcnn": ["--hidden_channels", "64", "--num_layers", "5"],
    "row_lstm": ["--hidden_channels", "32", "--num_layers", "2"],
    "diagonal_bilstm": ["--hidden_channels", "32", "--num_layers", "2"],
    "transformer": ["--num_layers", "4", "--n_embd", "64", "--n_head", "4"],
}


def train(architecture: str, steps: int, output_dir: str) -> dict:
    trainer_class, config = parse_config(
        ["--family", "autoregressive", "--architecture", architecture, "--dataset_name", "digits", "--conditioning",
         "none", "--train_batch_size", "64", "--max_train_steps", str(steps), "--learning_rate", "2e-3",
         "--lr_scheduler", "cosine", "--lr_warmup_steps", "50", "--checkpointing_steps", str(10 * steps),
         "--num_validation_images", "16", "--report_to", "none", "--output_dir", output_dir, *SIZES[architecture]]
    )  # fmt: skip
    trainer = trainer_class(config)
    start = time.perf_counter()
    summary = trainer.train()
    wall = time.perf_counter() - start
    return {
        "steps": steps,
        "train_seconds": round(wall, 1),
        "seconds_per_step": round(summary["metrics"]["train_wall_seconds"] / steps, 4),
        "test_bits_per_dim": round(summary["metrics"]["test_bits_per_dim"], 3),
        "train_bits_per_dim_last": round(summary["metrics"]["train_bits_per_dim"], 3),
    }


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
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=ARCHITECTURES)
    parser.add_argument("--steps", type=int, default=600, help="Training steps per architecture (batch 64).")
    parser.add_argument("--sample_size", type=int, default=28, help="Grid side for the sampling times.")
    parser.add_argument("--output_dir", default="out/benchmark-autoregressive")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    parser.add_argument("--sampling_only", action="store_true", help="Only the naive vs cached sampling times.")
    parser.add_argument("--repeats", type=int, default=1, help="Sampling runs per sampler; the fastest is kept.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    side = f"{args.sample_size}x{args.sample_size}"

    if args.sampling_only:
        results = {"load_average_before": os.getloadavg()[0], "sampling_seconds_per_image": {}}
        for architecture in args.architectures:
            times = sampling_times(architecture, args.sample_size, args.repeats)
            results["sampling_seconds_per_image"][architecture] = times
            print(architecture, json.dumps(times), flush=True)
        results["load_average_after"] = os.getloadavg()[0]
        print(
            f"\n| architecture | parameters | naive s/image ({side}) | cached s/image | speed-up "
            "| CPU s naive / cached | CPU speed-up | same image |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for architecture, times in results["sampling_seconds_per_image"].items():
            print(
                f"| {architecture} | {times['parameters']:,} | {times['naive']} | {times['cached']} | "
                f"{times['speedup']}x | {times['naive_cpu']} / {times['cached_cpu']} | {times['speedup_cpu']}x | "
                f"{'yes' if times['same_image'] else 'NO'} |"
            )
        print(f"load average: {results['load_average_before']:.2f} before, {results['load_average_after']:.2f} after")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return results

    results = {"load_average": os.getloadavg()[0], "architectures": {}}
    for architecture in args.architectures:
        row = train(architecture, args.steps, os.path.join(args.output_dir, architecture))
        row["sampling_seconds_per_image"] = sampling_times(architecture, args.sample_size, args.repeats)
        results["architectures"][architecture] = row
        print(architecture, json.dumps(row), flush=True)

    print(f"\n| architecture | steps | s/step | test bits/dim | naive s/image ({side}) | cached s/image | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for architecture, row in results["architectures"].items():
        times = row["sampling_seconds_per_image"]
        print(
            f"| {architecture} | {row['steps']} | {row['seconds_per_step']} | {row['test_bits_per_dim']} | "
            f"{times['naive']} | {times['cached']} | {times['speedup']}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
