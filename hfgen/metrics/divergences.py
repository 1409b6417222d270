"""Distances between distributions, from the course notes: for discrete distributions, for known densities, and for
samples.

- Total variation, Kullback-Leibler and Jensen-Shannon: Cover & Thomas, "Elements of Information Theory" (2006),
  ch. 2 and 11; JS as in Lin 1991, "Divergence Measures Based on the Shannon Entropy".
- Wasserstein distances and optimal transport: Villani 2009, "Optimal Transport: Old and New"; Peyré & Cuturi 2019,
  "Computational Optimal Transport" (https://arxiv.org/abs/1803.00567). Sliced Wasserstein: Bonneel et al. 2015,
  "Sliced and Radon Wasserstein Barycenters of Measures".
- The closed-form W2 between Gaussians: Dowson & Landau 1982; Givens & Shortt 1984.
- MMD with the median heuristic: Gretton et al. 2012, "A Kernel Two-Sample Test"
  (https://jmlr.org/papers/v13/gretton12a.html).

Sample arrays are (n, d) or, for one-dimensional data, (n,); torch tensors and numpy arrays are both accepted.
"""

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.spatial.distance
import scipy.special
import scipy.stats

from hfgen.metrics.sample_quality import as_features, frechet_distance, to_numpy, unbiased_mmd2

# exact_wasserstein solves an n x n assignment in O(n^3): 2048 points take a few seconds and 32 MiB.
MAX_EXACT_OT_POINTS = 2048


# ----- discrete distributions ----------------------------------------------------------------------------------------
def _as_distribution(p, name: str) -> np.ndarray:
    p = to_numpy(p)
    if p.size == 0:
        raise ValueError(f"{name} is empty.")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must be finite and non-negative.")
    total = p.sum()
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} sums to {total:.6g}, not 1: normalise it first (divide a histogram by its sum).")
    return p


def _as_distributions(p, q) -> tuple[np.ndarray, np.ndarray]:
    p, q = _as_distribution(p, "p"), _as_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape (the same outcomes), got {p.shape} and {q.shape}.")
    return p, q


def total_variation(p, q) -> float:
    r"""TV(p, q) = 1/2 sum |p - q| = the largest difference in probability that p and q give one event; in [0, 1].

    Args:
        p, q (`np.ndarray` or `torch.Tensor`): probability vectors (or normalised histograms of any shape) over the
            same outcomes.
    """
    p, q = _as_distributions(p, q)
    return float(0.5 * np.abs(p - q).sum())


def kl_divergence(p, q) -> float:
    r"""KL(p || q) = sum p log(p / q) in nats, with 0 log(0 / q) = 0; `inf` where q = 0 but p > 0.

    KL is not symmetric: swap the arguments for the other direction. With p the data and q the model, KL(p || q) is
    the mass-covering one that maximum likelihood minimises, KL(q || p) the mode-seeking one; [`symmetric_kl`] is
    their sum.
    """
    p, q = _as_distributions(p, q)
    return float(scipy.special.rel_entr(p, q).sum())


def symmetric_kl(p, q) -> float:
    r"""Jeffreys divergence KL(p || q) + KL(q || p), in nats."""
    return kl_divergence(p, q) + kl_divergence(q, p)


def js_divergence(p, q) -> float:
    r"""JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m) with m = (p + q) / 2, in nats: symmetric, always finite, and at
    most log 2, reached when p and q have disjoint supports. The divergence the original GAN minimises."""
    p, q = _as_distributions(p, q)
    m = (p + q) / 2
    return float(0.5 * scipy.special.rel_entr(p, m).sum() + 0.5 * scipy.special.rel_entr(q, m).sum())


def histogram_divergences(x, y, bins: int = 20) -> dict[str, float]:
    r"""TV, KL(x || y) and JS between histograms of two sample sets on shared bins spanning both.

    A plug-in estimate, biased by the binning (KL is `inf` as soon as a bin holds x samples and no y sample), meant
    for low-dimensional toy data.

    Args:
        x, y (`np.ndarray` or `torch.Tensor`): (n,) or (n, d) samples, d small (there are bins**d cells).
        bins (`int`, *optional*, defaults to 20): bins per dimension.

    Returns:
        `dict[str, float]`: "total_variation", "kl_divergence" and "js_divergence".
    """
    x, y = _as_samples(x, y)
    low, high = np.minimum(x.min(0), y.min(0)), np.maximum(x.max(0), y.max(0))
    bin_range = list(zip(low, np.where(high > low, high, low + 1)))  # a constant coordinate gets a unit range
    p = np.histogramdd(x, bins=bins, range=bin_range)[0]
    q = np.histogramdd(y, bins=bins, range=bin_range)[0]
    p, q = p / p.sum(), q / q.sum()
    return {
        "total_variation": total_variation(p, q),
        "kl_divergence": kl_divergence(p, q),
        "js_divergence": js_divergence(p, q),
    }


# ----- known densities -----------------------------------------------------------------------------------------------
def kl_divergence_monte_carlo(log_p: Callable, log_q: Callable, samples_from_p) -> float:
    r"""Monte Carlo estimate of KL(p || q) = E_{x ~ p}[log p(x) - log q(x)] from samples of p, in nats.

    Unbiased, with standard error std(log p - log q) / sqrt(n); it needs only log densities, so it also works where
    no closed form exists (mixtures, flows).

    Args:
        log_p, log_q (`Callable`): map the samples (as given) to (n,) log densities (numpy or torch).
        samples_from_p (`np.ndarray` or `torch.Tensor`): (n, ...) samples of p.
    """
    log_p_values = as_features(log_p(samples_from_p), "log_p(samples_from_p)", ndim=1)  # (n,)
    log_q_values = as_features(log_q(samples_from_p), "log_q(samples_from_p)", ndim=1)
    if log_p_values.shape != log_q_values.shape:
        raise ValueError(f"log_p and log_q returned shapes {log_p_values.shape} and {log_q_values.shape}.")
    return float(np.mean(log_p_values - log_q_values))


def _as_gaussian(mu, cov, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = as_features(np.atleast_1d(to_numpy(mu)), f"mu{name}", 1)
    cov = as_features(np.atleast_2d(to_numpy(cov)), f"cov{name}")
    if cov.shape != (len(mu), len(mu)):
        raise ValueError(f"cov{name} must have shape {(len(mu), len(mu))} to match mu{name}, got {cov.shape}.")
    return mu, cov


def gaussian_kl(mu1, cov1, mu2, cov2) -> float:
    r"""KL(N(mu1, cov1) || N(mu2, cov2)) in nats, in closed form:

    1/2 [Tr(cov2^-1 cov1) + (mu2 - mu1)^T cov2^-1 (mu2 - mu1) - d + log det cov2 - log det cov1].

    Args:
        mu1, mu2 (`np.ndarray`): (d,) means (scalars for d = 1).
        cov1, cov2 (`np.ndarray`): (d, d) positive-definite covariances.
    """
    mu1, cov1 = _as_gaussian(mu1, cov1, "1")
    mu2, cov2 = _as_gaussian(mu2, cov2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"The two Gaussians must have the same dimension, got {len(mu1)} and {len(mu2)}.")
    try:
        chol1, chol2 = np.linalg.cholesky(cov1), np.linalg.cholesky(cov2)
    except np.linalg.LinAlgError as error:
        raise ValueError("cov1 and cov2 must be symmetric positive definite.") from error
    # Through the Cholesky factors: no explicit inverse, and log det = 2 sum log diag(L).
    trace_term = np.sum(scipy.linalg.solve_triangular(chol2, chol1, lower=True) ** 2)
    mahalanobis = np.sum(scipy.linalg.solve_triangular(chol2, mu2 - mu1, lower=True) ** 2)
    log_det_ratio = 2 * (np.log(np.diag(chol2)).sum() - np.log(np.diag(chol1)).sum())
    return float(0.5 * (trace_term + mahalanobis - len(mu1) + log_det_ratio))


def gaussian_w2(mu1, cov1, mu2, cov2) -> float:
    r"""2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2) in closed form; its square is the Fréchet
    distance ([`~hfgen.metrics.sample_quality.frechet_distance`]) that FID computes."""
    mu1, cov1 = _as_gaussian(mu1, cov1, "1")
    mu2, cov2 = _as_gaussian(mu2, cov2, "2")
    # Round-off can make a zero distance come out as -1e-15.
    return math.sqrt(max(frechet_distance(mu1, cov1, mu2, cov2), 0.0))


# ----- samples -------------------------------------------------------------------------------------------------------
def _as_samples(x, y) -> tuple[np.ndarray, np.ndarray]:
    """Two sample sets -> (n, d) and (m, d) float64 arrays with the same d; (n,) is read as (n, 1)."""
    x = as_features(x, "x", ndim=1)[:, None] if np.ndim(x) == 1 else as_features(x, "x")
    y = as_features(y, "y", ndim=1)[:, None] if np.ndim(y) == 1 else as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
    return x, y


def wasserstein_1d(x, y) -> float:
    r"""Exact W1 between the empirical distributions of two 1-D sample sets (sizes may differ): the area between
    their CDFs, via `scipy.stats.wasserstein_distance`."""
    x, y = _as_samples(x, y)
    if x.shape[1] != 1:
        raise ValueError(f"wasserstein_1d takes one-dimensional samples, got dimension {x.shape[1]}.")
    return float(scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]))


def sliced_wasserstein(x, y, num_projections: int = 128, seed: int = 0) -> float:
    r"""Sliced W1: the mean, over random directions theta uniform on the sphere, of the exact 1-D W1 between the
    projections theta.x and theta.y. A metric, cheap in any dimension; for a shift by m it is |m| E|theta_1|
    (2 |m| / pi in 2-D, |m| / 2 in 3-D), below the W1 of |m|.

    Args:
        x, y (`np.ndarray` or `torch.Tensor`): (n, d) and (m, d) samples; sizes may differ.
        num_projections (`int`, *optional*, defaults to 128): number of random directions.
        seed (`int`, *optional*, defaults to 0): seeds a private numpy `Generator` that draws the directions.
    """
    x, y = _as_samples(x, y)
    if num_projections < 1:
        raise ValueError(f"num_projections must be at least 1, got {num_projections}.")
    directions = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)  # (d, num_projections), unit columns
    x_projected, y_projected = x @ directions, y @ directions  # (n, num_projections), (m, num_projections)
    return float(_wasserstein_1d_columns(x_projected, y_projected).mean())


def _wasserstein_1d_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact W1 = integral over u in (0, 1) of |F^-1(u) - G^-1(u)| for every column of (n, k) and (m, k) at once.

    Both quantile functions are constant between the breakpoints {i / n} and {j / m}, the same for every column, so
    one set of indices serves all the projections (a loop of `scipy.stats.wasserstein_distance` is much slower).
    """
    n, m = len(x), len(y)
    breakpoints = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)  # 0, ..., 1
    widths = np.diff(breakpoints)
    # Midpoints sit at least 1 / (2 n m) from any breakpoint, so the floor below cannot round to the wrong side.
    midpoints = (breakpoints[1:] + breakpoints[:-1]) / 2
    x_quantiles = np.sort(x, axis=0)[np.floor(midpoints * n).astype(int)]  # (num_intervals, k)
    y_quantiles = np.sort(y, axis=0)[np.floor(midpoints * m).astype(int)]
    return widths @ np.abs(x_quantiles - y_quantiles)  # (k,)


def exact_wasserstein(x, y, p: int = 1) -> float:
    r"""Exact W_p between two empirical distributions of the same size n, by optimal transport.

    With equal uniform weights an optimal plan is a permutation (Birkhoff-von Neumann), so W_p^p is the minimum over
    matchings of the mean cost |x_i - y_sigma(i)|^p, which `scipy.optimize.linear_sum_assignment` finds in O(n^3).

    Args:
        x, y (`np.ndarray` or `torch.Tensor`): (n, d) samples each, at most `MAX_EXACT_OT_POINTS` (2048).
        p (`int`, *optional*, defaults to 1): the order of the distance.
    """
    x, y = _as_samples(x, y)
    if len(x) != len(y):
        raise ValueError(
            f"exact_wasserstein needs sets of the same size, got {len(x)} and {len(y)}: subsample the larger one, "
            "or use wasserstein_1d (1-D) or sliced_wasserstein."
        )
    if len(x) > MAX_EXACT_OT_POINTS:
        raise ValueError(
            f"exact_wasserstein solves an n x n assignment in O(n^3); n={len(x)} is above {MAX_EXACT_OT_POINTS}: "
            "subsample, or use sliced_wasserstein."
        )
    if p < 1:
        raise ValueError(f"p must be at least 1, got {p}.")
    cost = scipy.spatial.distance.cdist(x, y) ** p  # (n, n)
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    return float(cost[rows, cols].mean() ** (1 / p))


def median_bandwidth(x, y, max_points: int = 1000, seed: int = 0) -> float:
    r"""The median heuristic: the median distance between distinct points of the pooled sample (at most
    `max_points` of them, drawn with a private seeded generator, so that large sets cost no n^2 memory)."""
    x, y = _as_samples(x, y)
    pooled = np.concatenate([x, y])
    if len(pooled) > max_points:
        pooled = pooled[np.random.default_rng(seed).choice(len(pooled), max_points, replace=False)]
    distances = scipy.spatial.distance.pdist(pooled)
    distances = distances[distances > 0]
    if distances.size == 0:
        raise ValueError("All the samples are identical: the median heuristic has no scale; pass a bandwidth.")
    return float(np.median(distances))


def mmd(x, y, bandwidth: float | None = None) -> float:
    r"""Unbiased MMD^2 between two sample sets with the Gaussian kernel k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2)).

    0 in expectation when x and y come from one distribution (the estimate can be slightly negative), > 0 otherwise:
    the Gaussian kernel is characteristic.

    Args:
        x, y (`np.ndarray` or `torch.Tensor`): (n, d) and (m, d) samples, n, m >= 2; the kernel matrices take
            (n + m)^2 floats.
        bandwidth (`float`, *optional*): the kernel width; defaults to the median heuristic ([`median_bandwidth`]).
    """
    x, y = _as_samples(x, y)
    bandwidth = median_bandwidth(x, y) if bandwidth is None else bandwidth
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}.")

    def kernel(a, b):
        return np.exp(-scipy.spatial.distance.cdist(a, b, "sqeuclidean") / (2 * bandwidth**2))

    return unbiased_mmd2(kernel(x, x), kernel(y, y), kernel(x, y))
