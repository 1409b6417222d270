"""Sample-quality metrics over features: FID, KID, Inception Score, and precision / recall.

Every function takes features of shape (n, d), as torch tensors or numpy arrays, and computes in float64 numpy; which
network produced the features is the caller's choice (see `hfgen.metrics.features`).

- FID: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"
  (https://arxiv.org/abs/1706.08500). The Fréchet distance itself: Dowson & Landau 1982.
- KID: Bińkowski et al. 2018, "Demystifying MMD GANs" (https://arxiv.org/abs/1801.01401).
- Inception Score: Salimans et al. 2016, "Improved Techniques for Training GANs" (https://arxiv.org/abs/1606.03498).
- Precision and recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
  Models" (https://arxiv.org/abs/1904.06991).
"""

import warnings

import numpy as np
import scipy.linalg
import scipy.special
import torch

# Distance matrices are computed this many entries at a time (64 MiB of float64), so that precision / recall stay
# memory-bounded for tens of thousands of points.
_MAX_DISTANCE_ENTRIES = 2**23


def to_numpy(values) -> np.ndarray:
    """A torch tensor (on any device, with or without grad) or array-like -> a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def as_features(features, name: str = "features", ndim: int = 2) -> np.ndarray:
    """A torch tensor or array-like -> a finite float64 numpy array with `ndim` dimensions, or a `ValueError`."""
    features = to_numpy(features)
    if features.ndim != ndim:
        expected = "(n, d)" if ndim == 2 else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {expected}, got shape {features.shape}.")
    if features.size == 0:
        raise ValueError(f"{name} is empty (shape {features.shape}).")
    if not np.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return features


def _check_same_dim(x: np.ndarray, y: np.ndarray, names: str = "real and fake") -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names} features must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")


class GaussianStatistics:
    r"""Streaming mean and covariance of features, the statistics FID compares.

    Call `update` batch by batch; `mean` and `covariance` are then those of all the features seen. The covariance is
    the unbiased one (divided by n - 1), as pytorch-fid and torchmetrics use.

    Batches are merged with the pairwise update of (count, mean, sum of squared deviations) of Chan, Golub & LeVeque
    1979, in float64: the textbook `sum(x x^T) - n mean mean^T` loses digits to cancellation when the features sit far
    from the origin compared to their spread.

    Examples:
        ```py
        >>> stats = GaussianStatistics()
        >>> for batch in torch.randn(10, 64, 8).unbind():
        ...     stats = stats.update(batch)
        >>> stats.count, stats.mean.shape, stats.covariance.shape
        (640, (8,), (8, 8))
        ```
    """

    def __init__(self):
        self.count = 0
        self._mean: np.ndarray | None = None
        self._squared_deviations: np.ndarray | None = None  # (d, d) sum of (x - mean)(x - mean)^T

    def update(self, features) -> "GaussianStatistics":
        """Adds a batch of features (b, d); returns `self`."""
        features = as_features(features)
        count, dim = features.shape
        batch_mean = features.mean(axis=0)
        centred = features - batch_mean
        batch_squared_deviations = centred.T @ centred
        if self._mean is None:
            self.count, self._mean, self._squared_deviations = count, batch_mean, batch_squared_deviations
            return self
        if dim != self._mean.shape[0]:
            raise ValueError(
                f"Features of dimension {dim} cannot be added to statistics of dimension {len(self._mean)}."
            )
        total = self.count + count
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._squared_deviations = (
            self._squared_deviations + batch_squared_deviations + np.outer(delta, delta) * (self.count * count / total)
        )
        self.count = total
        return self

    @property
    def mean(self) -> np.ndarray:
        """(d,) mean of the features seen."""
        if self._mean is None:
            raise ValueError("GaussianStatistics has seen no features yet: call `update` first.")
        return self._mean

    @property
    def covariance(self) -> np.ndarray:
        """(d, d) unbiased covariance of the features seen."""
        if self.count < 2:
            raise ValueError(f"The covariance needs at least 2 samples, got {self.count}.")
        return self._squared_deviations / (self.count - 1)

    @classmethod
    def from_features(cls, features) -> "GaussianStatistics":
        """The statistics of one (n, d) array of features."""
        return cls().update(features)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    r"""Squared 2-Wasserstein (Fréchet) distance between N(mu1, sigma1) and N(mu2, sigma2):

    ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    Args:
        mu1, mu2 (`np.ndarray`): (d,) means.
        sigma1, sigma2 (`np.ndarray`): (d, d) covariances.
        eps (`float`, *optional*, defaults to 1e-6):
            When scipy finds sigma1 sigma2 singular (constant features, or fewer samples than dimensions) or its
            square root is not finite, `eps * I` is added to both covariances, as pytorch-fid does, with a warning.

    Returns:
        `float`: the distance (FID when the statistics are those of Inception features).
    """
    mu1, mu2 = as_features(np.atleast_1d(to_numpy(mu1)), "mu1", 1), as_features(np.atleast_1d(to_numpy(mu2)), "mu2", 1)
    sigma1 = as_features(np.atleast_2d(to_numpy(sigma1)), "sigma1")
    sigma2 = as_features(np.atleast_2d(to_numpy(sigma2)), "sigma2")
    dim = mu1.shape[0]
    for name, value, shape in (("mu2", mu2, (dim,)), ("sigma1", sigma1, (dim, dim)), ("sigma2", sigma2, (dim, dim))):
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match mu1 of shape {mu1.shape}, got {value.shape}.")

    covmean = _sqrtm_or_none(sigma1 @ sigma2)
    if covmean is None:
        warnings.warn(
            f"The product of the covariances is singular (fewer samples than the {dim} feature dimensions, or "
            f"constant features?): adding {eps} * I to both covariances.",
            stacklevel=2,
        )
        # Both covariances, traces included, so that the result is the exact distance between the regularised
        # Gaussians (pytorch-fid adds eps inside the square root only, which lowers the result by 2 * d * eps).
        sigma1, sigma2 = sigma1 + eps * np.eye(dim), sigma2 + eps * np.eye(dim)
        covmean = _sqrtm_or_none(sigma1 @ sigma2)
        if covmean is None:
            raise ValueError(f"The Fréchet distance is not finite even with eps={eps}: try a larger eps.")
    if np.iscomplexobj(covmean):
        # sigma1 sigma2 has real non-negative eigenvalues, so a large imaginary part means a numerical failure.
        largest_imaginary = np.abs(covmean.imag).max()
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"The matrix square root has an imaginary component of {largest_imaginary:.3g}.")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _sqrtm_or_none(matrix: np.ndarray) -> np.ndarray | None:
    """scipy's matrix square root, or None where it is not finite or scipy warns that the matrix is singular."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        try:
            root = scipy.linalg.sqrtm(matrix)
        except scipy.linalg.LinAlgWarning:
            return None
    return root if np.isfinite(root).all() else None


def fid(real, fake, eps: float = 1e-6) -> float:
    r"""Fréchet Inception Distance between two sets of features.

    Args:
        real, fake (`np.ndarray`, `torch.Tensor` or [`GaussianStatistics`]):
            (n, d) features, or statistics streamed over batches.
        eps (`float`, *optional*, defaults to 1e-6): see [`frechet_distance`].

    Returns:
        `float`: the FID; 0 for identical statistics, symmetric in its arguments.
    """
    real = real if isinstance(real, GaussianStatistics) else GaussianStatistics.from_features(real)
    fake = fake if isinstance(fake, GaussianStatistics) else GaussianStatistics.from_features(fake)
    if real.mean.shape != fake.mean.shape:
        raise ValueError(
            f"real and fake features must have the same dimension, got {real.mean.shape[0]} and {fake.mean.shape[0]}."
        )
    return frechet_distance(real.mean, real.covariance, fake.mean, fake.covariance, eps=eps)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (x @ y.T) + coef0) ** degree


def unbiased_mmd2(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    r"""The unbiased estimate of MMD^2 from kernel matrices (Gretton et al. 2012, eq. 3): the within-set means leave
    out the diagonal k(x_i, x_i), which is what makes it unbiased (and able to go slightly below 0)."""
    m, n = k_xx.shape[0], k_yy.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"The unbiased MMD needs at least 2 samples per set, got {m} and {n}.")
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kid(
    real,
    fake,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    r"""Kernel Inception Distance: the unbiased MMD^2 with the kernel k(x, y) = (gamma x.y + coef0)^degree, averaged
    over random subsets (Bińkowski et al. 2018). Unlike FID it has an unbiased estimator, so values from sets of
    different sizes compare.

    Args:
        real, fake (`np.ndarray` or `torch.Tensor`): (n, d) and (m, d) features.
        num_subsets (`int`, *optional*, defaults to 100): number of random subset pairs.
        subset_size (`int`, *optional*, defaults to 1000): samples per subset, capped at min(n, m).
        degree (`int`, *optional*, defaults to 3): degree of the polynomial kernel.
        gamma (`float`, *optional*): kernel scale, defaults to 1 / d.
        coef0 (`float`, *optional*, defaults to 1.0): the kernel's constant term.
        seed (`int`, *optional*, defaults to 0): seeds a private numpy `Generator` that draws the subsets.

    Returns:
        `tuple[float, float]`: mean and standard deviation (ddof=0, as torchmetrics) over the subsets. The mean is
        about 0 for one distribution, and may be slightly negative.
    """
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    _check_same_dim(real, fake)
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1, got {num_subsets}.")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set and subset_size >= 2, got a subset size of {size}.")
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), size, replace=False)]  # (size, d)
        y = fake[rng.choice(len(fake), size, replace=False)]
        scores.append(
            unbiased_mmd2(
                _polynomial_kernel(x, x, degree, gamma, coef0),
                _polynomial_kernel(y, y, degree, gamma, coef0),
                _polynomial_kernel(x, y, degree, gamma, coef0),
            )
        )
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
    r"""Inception Score exp(E_x KL(p(y | x) || p(y))), computed on each of `splits` contiguous chunks of the
    predictions (Salimans et al. 2016). It is 1 when every prediction is the same and the number of classes when
    predictions are confident and the classes balanced.

    Args:
        probabilities (`np.ndarray` or `torch.Tensor`): (n, num_classes) class probabilities p(y | x), rows summing
            to 1 (apply a softmax to logits first).
        splits (`int`, *optional*, defaults to 10): number of chunks, in the given order (no shuffling).

    Returns:
        `tuple[float, float]`: mean and standard deviation (ddof=0, as the original code) over the chunks.
    """
    probabilities = as_features(probabilities, "probabilities")
    if (probabilities < 0).any() or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probabilities must be non-negative with rows summing to 1: apply a softmax to logits first.")
    if not 1 <= splits <= len(probabilities):
        raise ValueError(f"splits must be between 1 and the number of samples ({len(probabilities)}), got {splits}.")
    scores = []
    for chunk in np.array_split(probabilities, splits):
        marginal = chunk.mean(axis=0, keepdims=True)  # p(y) over the chunk, (1, num_classes)
        # rel_entr is p log(p / q) with 0 log 0 = 0, so one-hot predictions give no NaN.
        kl = scipy.special.rel_entr(chunk, marginal).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_distances(x: torch.Tensor, y: torch.Tensor, rows: int):
    """Yields (start, (rows, len(y)) distances) over chunks of x."""
    for start in range(0, len(x), rows):
        # The explicit difference, not the ||x||^2 - 2x.y + ||y||^2 expansion: exact zeros for duplicates.
        yield start, torch.cdist(x[start : start + rows], y, compute_mode="donot_use_mm_for_euclid_dist")


def _knn_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) distance from each point to its k-th nearest neighbour among the other points of its own set."""
    rows = max(1, _MAX_DISTANCE_ENTRIES // len(points))
    radii = torch.empty(len(points), dtype=points.dtype)
    for start, distances in _pairwise_distances(points, points, rows):
        index = torch.arange(len(distances))
        distances[index, index + start] = float("inf")  # a point is not its own neighbour
        radii[start : start + len(distances)] = distances.kthvalue(k, dim=1).values
    return radii


def _fraction_inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `queries` within the radius of at least one of `points` (inside their k-NN manifold)."""
    rows = max(1, _MAX_DISTANCE_ENTRIES // len(points))
    inside = sum(
        int((distances <= radii).any(dim=1).sum()) for _, distances in _pairwise_distances(queries, points, rows)
    )
    return inside / len(queries)


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, of radius the distance to the point's k-th nearest
    neighbour within the set. Precision is the fraction of fake samples inside the real manifold (are the samples
    realistic?); recall the fraction of real samples inside the fake manifold (is the data covered?).

    Args:
        real, fake (`np.ndarray` or `torch.Tensor`): (n, d) and (m, d) features; both sets need more than k points.
        k (`int`, *optional*, defaults to 3): the neighbour that sets the radii (the paper's choice).

    Returns:
        `tuple[float, float]`: precision and recall, each in [0, 1].
    """
    real, fake = as_features(real, "real"), as_features(fake, "fake")
    _check_same_dim(real, fake)
    if k < 1 or k >= min(len(real), len(fake)):
        raise ValueError(f"k must be at least 1 and smaller than both set sizes ({len(real)}, {len(fake)}), got {k}.")
    real, fake = torch.from_numpy(real), torch.from_numpy(fake)
    precision = _fraction_inside(fake, real, _knn_radii(real, k))
    recall = _fraction_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


# ----- mode coverage: how many of the classes or modes the samples reach ---------------------------------------------
def class_histogram_entropy(probabilities: torch.Tensor) -> float:
    """Entropy (nats) of the histogram of predicted classes over a batch of samples, from a classifier's probabilities
    (n, k): log k when the samples spread evenly over the k classes, 0 when they all fall in one (mode collapse)."""
    counts = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).double()
    frequencies = counts[counts > 0] / counts.sum()
    return max(0.0, float(-(frequencies * frequencies.log()).sum()))  # no -0.0 for a single class


def modes_covered(points: torch.Tensor, centers: torch.Tensor, max_distance: float, min_count: int = 1) -> int:
    """How many of the modes `centers` (k, d) have at least `min_count` of the samples `points` (n, d) within
    `max_distance` (for a mixture of Gaussians, 3 standard deviations), as in VEEGAN (Srivastava et al. 2017)."""
    distances = torch.cdist(points.double(), centers.double())  # (n, k)
    nearest = distances.argmin(1)
    close = distances.gather(1, nearest[:, None]).squeeze(1) <= max_distance
    counts = torch.bincount(nearest[close], minlength=centers.shape[0])
    return int((counts >= min_count).sum())
