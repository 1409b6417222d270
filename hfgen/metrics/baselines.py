"""Likelihood floors from scikit-learn: what every hfgen family's bits/dim has to beat.

On the same data set and split as hfgen's trainers (`test_size=0.1, split_seed=0`), pixels become integer levels
(`hfgen.data.grey_levels`: 17 for the digits, 2 binarized, else 256) and are dequantised by adding uniform noise
u ~ U[0, 1): a continuous density p on the dequantised data gives a lower bound E_u[log p(x + u)] <= log P(x) on the
probability of the discrete image (Theis et al. 2016, "A note on the evaluation of generative models"), so the
bits/dim below are upper bounds on the models' true discrete code lengths, directly comparable with the discrete
bits/dim that hfgen pipelines report.

- uniform: every level equally likely, log2(levels) bits/dim (the worst any sane model should do);
- KernelDensity: Gaussian kernels on the training pixels, bandwidth by 5-fold cross-validated likelihood;
- GaussianMixture: fitted by EM, number of components and covariance type chosen by BIC.
"""

import math
import time

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity

from hfgen.data import grey_levels, load_image_dataset
from hfgen.metrics.evaluate import EVALUATION_SPLIT


def pixel_levels(dataset: str = "digits", split: str = "train", num_levels: int | None = None) -> np.ndarray:
    """(n, c * h * w) integer levels 0..num_levels-1 of a split, from the [-1, 1] pixels hfgen trains on."""
    num_levels = num_levels or grey_levels(dataset)
    images = load_image_dataset(dataset, **EVALUATION_SPLIT)[split]
    pixels = np.stack([images[i]["pixel_values"].numpy().reshape(-1) for i in range(len(images))])
    return np.rint((pixels + 1) / 2 * (num_levels - 1)).astype(np.int64)


def dequantize(levels: np.ndarray, seed: int = 0) -> np.ndarray:
    """levels + u, u ~ U[0, 1): continuous data whose density bounds the discrete probability from below."""
    return levels + np.random.default_rng(seed).random(levels.shape)


def bits_per_dim(log_density: np.ndarray, num_dims: int) -> float:
    """Mean -log2 p / D of per-example log densities (nats) on the level scale."""
    return float(-np.mean(log_density) / (num_dims * math.log(2)))


def sklearn_baselines(
    dataset: str = "digits",
    num_levels: int | None = None,
    seed: int = 0,
    bandwidths: np.ndarray | None = None,
    gmm_components: tuple[int, ...] = (1, 2, 5, 10, 20, 40),
    gmm_covariance_types: tuple[str, ...] = ("diag", "full"),
) -> dict:
    """Test bits/dim of the uniform model, a cross-validated KernelDensity and a BIC-selected GaussianMixture.

    Returns a dict with `<model>_bits_per_dim`, the chosen hyperparameters and fit times (seconds).
    """
    num_levels = num_levels or grey_levels(dataset)
    train = dequantize(pixel_levels(dataset, "train", num_levels), seed)
    test = dequantize(pixel_levels(dataset, "test", num_levels), seed + 1)
    num_dims = train.shape[1]
    results = {"dataset": dataset, "num_levels": num_levels, "num_train": len(train), "num_test": len(test)}
    results["uniform_bits_per_dim"] = math.log2(num_levels)

    # KernelDensity: the bandwidth (in grey levels) that maximises held-out likelihood over 5 folds.
    start = time.perf_counter()
    bandwidths = np.logspace(-0.5, 1.0, 16) if bandwidths is None else bandwidths
    search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": bandwidths}, cv=5)
    search.fit(train)
    kde = search.best_estimator_
    results["kde_bandwidth"] = float(kde.bandwidth)
    results["kde_bits_per_dim"] = bits_per_dim(kde.score_samples(test), num_dims)
    results["kde_seconds"] = time.perf_counter() - start

    # GaussianMixture by EM: components and covariance type by the Bayesian information criterion on train.
    start = time.perf_counter()
    best, best_bic = None, math.inf
    for covariance_type in gmm_covariance_types:
        for components in gmm_components:
            gmm = GaussianMixture(components, covariance_type=covariance_type, random_state=seed, max_iter=200)
            bic = gmm.fit(train).bic(train)
            if bic < best_bic:
                best, best_bic = gmm, bic
    results["gmm_components"] = int(best.n_components)
    results["gmm_covariance_type"] = best.covariance_type
    results["gmm_bits_per_dim"] = bits_per_dim(best.score_samples(test), num_dims)
    results["gmm_seconds"] = time.perf_counter() - start
    return results
