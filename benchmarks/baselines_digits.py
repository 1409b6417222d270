"""Test bits/dim on the 8x8 digits, in one run: scikit-learn's density estimators and hfgen's VAE, same split.

    python benchmarks/baselines_digits.py                          # trains the VAE recipe (about 2 min on 2 cores)
    python benchmarks/baselines_digits.py --vae out/vae-digits      # or measures a VAE you trained

All models see the same train/test split (`test_size=0.1, split_seed=0`, as every hfgen trainer). The scikit-learn
models fit uniformly dequantised pixels (`hfgen.metrics.baselines`), so their figures bound the discrete code length
from above; the VAE reports the IWAE lower bound on log P(x) with a discretized-logistic decoder over the 17 grey
levels (exact probabilities of discrete images), K = `--num_samples`. Lower is better for all. The VAE's anomaly AUROC
(-log p(x) separating test digits from grey shapes and from noise) is printed below the table.
"""

import argparse
import json

import torch

import hfgen
from hfgen.metrics.anomaly import anomaly_auroc, out_of_distribution_images
from hfgen.metrics.baselines import sklearn_baselines
from hfgen.metrics.evaluate import format_table, real_images


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", default=None, help="A trained VAE pipeline; default: train the vae_digits recipe.")
    parser.add_argument("--output_dir", default="out/benchmark-vae-digits", help="Where the VAE is trained.")
    parser.add_argument("--num_samples", type=int, default=50, help="K of the VAE's IWAE bound.")
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args(argv)

    results = {"baselines": sklearn_baselines("digits")}
    if args.vae is None:
        from hfgen.training.train import main as train

        recipe = "training/recipes/vae_digits.yaml"
        # beta 1: the likelihood table compares ELBO-trained models (the recipe's beta 2 buys prompt adherence).
        train(["--recipe", recipe, "--output_dir", args.output_dir, "--report_to", "none", "--beta", "1"])
        args.vae = args.output_dir
    pipeline = hfgen.load_pipeline(args.vae)
    test = (real_images("digits", "test") + 1) / 2  # pipelines take images in [0, 1], as they return them
    generator = torch.Generator().manual_seed(0)
    likelihood = pipeline.log_likelihood(test, num_samples=args.num_samples, generator=generator)
    results["vae"] = {"path": args.vae, "bits_per_dim": likelihood.bits_per_dim.mean().item(), "kind": likelihood.kind}
    results["vae_anomaly"] = {
        kind: anomaly_auroc(
            pipeline, test, (out_of_distribution_images(kind, len(test)) + 1) / 2, num_samples=args.num_samples,
            generator=torch.Generator().manual_seed(0),
        )["auroc"]
        for kind in ("shapes", "noise")
    }  # fmt: skip

    base = results["baselines"]
    rows = [
        {"model": "uniform over 17 levels", "bpd": base["uniform_bits_per_dim"], "how": "log2(17)"},
        {
            "model": "KernelDensity",
            "bpd": base["kde_bits_per_dim"],
            "how": f"bandwidth {base['kde_bandwidth']:.3g} (5-fold CV)",
        },
        {
            "model": "GaussianMixture (EM)",
            "bpd": base["gmm_bits_per_dim"],
            "how": f"{base['gmm_components']} {base['gmm_covariance_type']} components (BIC)",
        },
        {"model": "hfgen VAE", "bpd": results["vae"]["bits_per_dim"], "how": likelihood.kind},
    ]
    print(f"digits test split ({base['num_test']} images), trained on {base['num_train']}")
    print(format_table(rows, [("model", "model"), ("bpd", "test bits/dim"), ("how", "how")]))
    print(
        "VAE anomaly AUROC (-log p(x), test digits vs ...): "
        + ", ".join(f"{k} {v:.3f}" for k, v in results["vae_anomaly"].items())
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
