"""Saved autoregressive pipelines (for example one architecture trained with several `--seed`s), unconditional or
class-conditional with the class summed out, scored on the test split alone and together, in exact test bits/dim:

    python benchmarks/autoregressive_ensemble.py out/seed-0/row_lstm out/seed-1/row_lstm out/seed-2/row_lstm

Two ways to put K models together, both exact likelihoods:
- the mixture of the joint densities, p(x) = (1/K) sum_k p_k(x): a model with a latent "which model" variable;
- the average of the conditionals, p(x_i | x_<i) = (1/K) sum_k p_k(x_i | x_<i) at every pixel: itself an
  autoregressive model (each factor is a distribution over the levels, so the product is normalised), sampled pixel
  by pixel like its members.
By Jensen's inequality neither is worse than the members' average, and the mixture is at most log2(K) / dims bits/dim
worse than its best member. Rows: each model alone, then the first k models together for k = 2..K, each with the
standard error of its mean over the test images (of the average of the conditionals for k >= 2).

`--compare_to A,B,...` also scores the average of those models' conditionals on the same images and reports the
paired difference, all models minus it, with its standard error: two recipes a few thousandths apart are told apart
this way where their own standard errors (about 0.016 bits/dim on the 180 test digits) overlap.
"""

import argparse
import datetime
import json
import math
import statistics

import torch

import hfgen
from hfgen.conditioning import Condition
from hfgen.metrics.evaluate import format_table, real_images
from hfgen.models.modeling_autoregressive import images_to_tokens, prior_forward


def token_log_probs(pipeline, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """log p(x_i | x_<i) of every token of `images` in [-1, 1], (n, tokens) in the models' order (raster, channels
    within a pixel). A class-conditional model is taken with its class summed out (a uniform p(y), as
    `hfgen.metrics.marginal_log_likelihood`): p(x_i | x_<i) = p(x_<=i) / p(x_<i), p(x_<=i) = mean_y p(x_<=i | y),
    itself an autoregressive model whose token log-probabilities add up to the exact log p(x)."""
    if pipeline.condition_type not in (None, "class"):
        raise SystemExit(
            f"The ensemble takes unconditional or class-conditional models; this one is {pipeline.condition_type}-"
            "conditioned."
        )
    prior = pipeline.prior
    num_levels = prior.config.num_levels
    classes = range(pipeline.num_classes) if pipeline.condition_type == "class" else [None]
    out = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            tokens = images_to_tokens(batch, num_levels)
            per_class = []  # (classes, b, tokens)
            for label in classes:
                condition = None if label is None else Condition(class_labels=torch.full((len(batch),), label))
                logits = prior_forward(prior, tokens, condition).logits.float()  # (b, levels, c, h, w)
                log_probs = logits.log_softmax(1).gather(1, tokens.unsqueeze(1)).squeeze(1)
                per_class.append(log_probs.permute(0, 2, 3, 1).flatten(1))  # in sampling order
            # log p(x_<=i) with the class summed out, then its differences: the conditionals.
            prefix = torch.logsumexp(torch.stack(per_class).cumsum(-1), 0) - math.log(len(per_class))
            out.append(torch.diff(prefix, dim=-1, prepend=torch.zeros_like(prefix[:, :1])))
    return torch.cat(out)


def bits_per_dim(log_px: torch.Tensor, dims: int) -> float:
    return round((-log_px / (dims * math.log(2))).mean().item(), 4)


def standard_error(log_px: torch.Tensor, dims: int) -> float:
    """The standard error of the mean bits/dim over the images: their standard deviation / sqrt(n)."""
    return round((-log_px / (dims * math.log(2))).std().item() / math.sqrt(len(log_px)), 4)


def conditional_average(log_probs: list[torch.Tensor]) -> torch.Tensor:
    """log p(x) per image (n,) of the average of the members' conditionals at every token."""
    return (torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))).flatten(1).sum(1)


def score(log_probs: list[torch.Tensor]) -> dict:
    """The members' and the ensembles' test bits/dim from each member's per-token log-probabilities."""
    dims = log_probs[0][0].numel()
    log_px = [lp.flatten(1).sum(1) for lp in log_probs]  # each member's log p(x) per image
    singles = [bits_per_dim(member, dims) for member in log_px]
    rows = [
        {"models": f"model {k + 1} alone", "bits_per_dim": singles[k], "standard_error": standard_error(member, dims)}
        for k, member in enumerate(log_px)
    ]
    for k in range(2, len(log_probs) + 1):
        members = torch.stack(log_probs[:k])  # (k, n, c, h, w)
        joint = torch.logsumexp(members.flatten(2).sum(2), 0) - math.log(k)
        conditionals = conditional_average(log_probs[:k])
        rows.append(
            {
                "models": f"models 1-{k}",
                "mixture_bits_per_dim": bits_per_dim(joint, dims),
                "conditional_average_bits_per_dim": bits_per_dim(conditionals, dims),
                "standard_error": standard_error(conditionals, dims),
                "members_mean": round(statistics.mean(singles[:k]), 4),
            }
        )
    spread = {"mean": round(statistics.mean(singles), 4), "min": min(singles), "max": max(singles)}
    if len(singles) > 1:
        spread["stdev"] = round(statistics.stdev(singles), 4)
    return {"rows": rows, "members": spread}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dirs", nargs="+", help="Saved autoregressive pipelines (folders or Hub ids).")
    parser.add_argument("--dataset_name", default="digits", help="Whose test split (test_size=0.1, split seed 0).")
    parser.add_argument(
        "--compare_to",
        default=None,
        help="Comma-separated model folders: the paired difference against their average.",
    )
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = real_images(args.dataset_name, "test")
    log_probs = [token_log_probs(hfgen.load_pipeline(path), images) for path in args.model_dirs]
    results = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": vars(args),
        "num_test_images": len(images),
        **score(log_probs),
    }
    columns = [
        ("models", "models"), ("bits_per_dim", "alone"), ("mixture_bits_per_dim", "mixture of joints"),
        ("conditional_average_bits_per_dim", "average of conditionals"), ("standard_error", "standard error"),
        ("members_mean", "members' mean"),
    ]  # fmt: skip
    print(format_table(results["rows"], columns))
    print(f"members: {results['members']}")
    if args.compare_to:
        baseline = [token_log_probs(hfgen.load_pipeline(path), images) for path in args.compare_to.split(",")]
        dims, baseline_log_px = log_probs[0][0].numel(), conditional_average(baseline)
        difference = baseline_log_px - conditional_average(log_probs)  # bits/dim of ours minus theirs
        results["paired_difference"] = {
            "compare_to_bits_per_dim": bits_per_dim(baseline_log_px, dims),
            "bits_per_dim": -bits_per_dim(difference, dims),
            "standard_error": standard_error(difference, dims),
        }
        print(f"all models minus --compare_to, paired over the images: {results['paired_difference']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
