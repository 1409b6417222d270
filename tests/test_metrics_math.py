"""The maths of hfgen.metrics, against closed forms, hand computations and torchmetrics: sample-quality metrics over
features (FID, KID, IS, precision / recall), distribution distances (TV, KL, JS, Wasserstein, MMD) and the anomaly
AUROC. Every test runs on small seeded arrays in well under a second."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

import hfgen
from hfgen.metrics import divergences, sample_quality
from hfgen.metrics.anomaly import anomaly_auroc, auroc, input_complexity
from hfgen.metrics.divergences import (
    exact_wasserstein,
    gaussian_kl,
    gaussian_w2,
    histogram_divergences,
    js_divergence,
    kl_divergence,
    kl_divergence_monte_carlo,
    mmd,
    sliced_wasserstein,
    symmetric_kl,
    total_variation,
    wasserstein_1d,
)
from hfgen.metrics.sample_quality import (
    GaussianStatistics,
    fid,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# ----- FID -----------------------------------------------------------------------------------------------------------
def test_gaussian_statistics_streams_like_numpy(rng):
    # A large offset: the naive sum-of-outer-products formula would lose digits here.
    features = 1e4 + rng.normal(size=(1000, 6)) @ rng.normal(size=(6, 6))
    stats = GaussianStatistics()
    for batch in np.split(features, [1, 100, 101, 457]):  # uneven batches, one of a single row
        stats.update(torch.from_numpy(batch))
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-9)


def test_gaussian_statistics_errors(rng):
    stats = GaussianStatistics()
    with pytest.raises(ValueError, match="no features"):
        stats.mean
    stats.update(rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats.covariance
    with pytest.raises(ValueError, match="dimension 5"):
        stats.update(rng.normal(size=(3, 5)))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        stats.update(rng.normal(size=(3, 4, 1)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((3, 4), np.nan))


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric(rng):
    a, b = rng.normal(size=(500, 8)), rng.normal(0.3, 1.2, size=(400, 8))
    assert abs(fid(a, a)) < 1e-8
    assert fid(a, b) > 0.5
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)
    streamed = GaussianStatistics().update(a[:250]).update(a[250:])
    assert fid(streamed, torch.from_numpy(b)) == pytest.approx(fid(a, b), rel=1e-9)


def test_frechet_distance_matches_the_gaussian_closed_form(rng):
    # N(0, I) vs N(m, diag(s^2)): ||m||^2 + sum(1 + s^2 - 2 s).
    m, s = np.array([1.0, -1.0, 0.5, 0.0]), np.array([1.0, 2.0, 0.5, 1.5])
    analytic = m @ m + np.sum(1 + s**2 - 2 * s)  # 3.75
    assert frechet_distance(np.zeros(4), np.eye(4), m, np.diag(s**2)) == pytest.approx(analytic, rel=1e-12)
    assert gaussian_w2(np.zeros(4), np.eye(4), m, np.diag(s**2)) == pytest.approx(math.sqrt(analytic), rel=1e-12)
    real, fake = rng.normal(size=(20000, 4)), m + s * rng.normal(size=(20000, 4))
    assert fid(real, fake) == pytest.approx(analytic, abs=0.1)


def test_fid_matches_torchmetrics(rng):
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")

    class Identity(torch.nn.Module):
        num_features = 5

        def forward(self, x):
            return x

    real, fake = rng.normal(size=(300, 5)), rng.normal(0.5, 2.0, size=(200, 5))
    metric = torchmetrics_fid.FrechetInceptionDistance(feature=Identity())
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    assert fid(real, fake) == pytest.approx(float(metric.compute()), rel=1e-8)


def test_frechet_distance_eps_fallback_on_singular_covariances(rng):
    # Three constant features (a dead unit of the extractor): exactly singular covariances, whose product scipy's
    # sqrtm refuses; eps * I in both makes those dimensions contribute eps + eps - 2 eps = 0.
    real, fake = rng.normal(size=(200, 8)), rng.normal(0.5, 2.0, size=(300, 8))
    real[:, 5:], fake[:, 5:] = 1.0, [1.0, 2.0, 3.0]
    stats_real, stats_fake = GaussianStatistics().update(real), GaussianStatistics().update(fake)
    with pytest.warns(UserWarning, match="singular"):
        distance = fid(stats_real, stats_fake, eps=1e-6)
    eps_identity = 1e-6 * np.eye(8)
    regularised = frechet_distance(
        stats_real.mean, stats_real.covariance + eps_identity, stats_fake.mean, stats_fake.covariance + eps_identity
    )
    assert distance == pytest.approx(regularised, rel=1e-12)
    # = the FID of the varying features plus the squared shift of the constant ones (0 + 1 + 4)
    assert distance == pytest.approx(fid(real[:, :5], fake[:, :5]) + 5.0, abs=1e-5)


def test_fid_rejects_mismatched_shapes(rng):
    with pytest.raises(ValueError, match="same dimension"):
        fid(rng.normal(size=(10, 4)), rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ----- KID -----------------------------------------------------------------------------------------------------------
def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift(rng):
    real, same, shifted = rng.normal(size=(600, 8)), rng.normal(size=(500, 8)), rng.normal(0.5, 1, size=(500, 8))
    state = np.random.get_state()
    mean, std = kid(real, same, num_subsets=10, subset_size=200)
    assert abs(mean) < 0.01 and std > 0
    shifted_mean, shifted_std = kid(real, shifted, num_subsets=10, subset_size=200)
    assert shifted_mean > 0.1 and shifted_mean > 3 * shifted_std
    assert kid(real, shifted, num_subsets=10, subset_size=200) == (shifted_mean, shifted_std)  # seeded
    assert kid(real, shifted, num_subsets=10, subset_size=200, seed=1) != (shifted_mean, shifted_std)
    assert all(np.array_equal(a, b) for a, b in zip(state[1:], np.random.get_state()[1:]))  # global RNG untouched


def test_kid_matches_torchmetrics_on_full_sets(rng):
    torchmetrics_kid = pytest.importorskip("torchmetrics.image.kid")
    real, fake = rng.normal(size=(120, 6)), rng.normal(0.3, 1, size=(120, 6))
    # subset_size = the set size: every subset is the whole set (permuted), so the random draws do not matter.
    expected = torchmetrics_kid.poly_mmd(torch.from_numpy(real), torch.from_numpy(fake))
    mean, std = kid(real, fake, num_subsets=3, subset_size=5000)
    assert mean == pytest.approx(float(expected), rel=1e-9) and std == pytest.approx(0, abs=1e-12)


# ----- Inception Score -----------------------------------------------------------------------------------------------
def test_inception_score_extremes():
    constant = np.tile([0.2, 0.5, 0.3], (100, 1))
    assert inception_score(constant, splits=5) == pytest.approx((1.0, 0.0))
    one_hot_balanced = np.eye(10)[np.arange(100) % 10]  # every split of 10 holds each class once
    assert inception_score(torch.from_numpy(one_hot_balanced), splits=10) == pytest.approx((10.0, 0.0))


def test_inception_score_by_hand():
    # Half confident [1, 0], half unsure [0.5, 0.5]: p(y) = [0.75, 0.25].
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5]] * 4)
    kl_confident = math.log(1 / 0.75)
    kl_unsure = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    mean, std = inception_score(probabilities, splits=1)
    assert mean == pytest.approx(math.exp((kl_confident + kl_unsure) / 2)) and std == 0


def test_inception_score_rejects_bad_input():
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.ones((10, 3)))
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.eye(3), splits=4)


# ----- precision and recall ------------------------------------------------------------------------------------------
def _precision_recall_reference(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Brute force, straight from the paper's definition."""

    def radii(x):
        distances = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself

    def inside(queries, points):
        return (np.linalg.norm(queries[:, None] - points[None], axis=-1) <= radii(points)).any(axis=1).mean()

    return inside(fake, real), inside(real, fake)


def test_precision_recall_matches_brute_force_and_chunking(rng, monkeypatch):
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.5, 1.5, size=(45, 3))
    expected = _precision_recall_reference(real, fake, k=3)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected)
    monkeypatch.setattr(sample_quality, "_MAX_DISTANCE_ENTRIES", 100)  # chunks of one or two rows
    assert precision_recall(torch.from_numpy(real), fake, k=3) == pytest.approx(expected)


def test_precision_recall_same_disjoint_and_collapsed(rng):
    real = rng.normal(size=(1000, 2))
    assert precision_recall(real, real) == (1.0, 1.0)
    precision, recall = precision_recall(real, rng.normal(size=(1000, 2)))
    assert precision > 0.9 and recall > 0.9
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    # Mode collapse: realistic samples (high precision) that cover a small part of the data (low recall).
    precision, recall = precision_recall(real, 0.1 * rng.normal(size=(1000, 2)))
    assert precision > 0.95 and recall < 0.3


def test_precision_recall_rejects_bad_k(rng):
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(rng.normal(size=(3, 2)), rng.normal(size=(10, 2)), k=3)


# ----- discrete divergences ------------------------------------------------------------------------------------------
def test_discrete_divergences_by_hand():
    p, q = [0.5, 0.5], np.array([0.9, 0.1])
    assert total_variation(p, q) == pytest.approx(0.4)
    kl_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    kl_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_divergence(p, q) == pytest.approx(kl_pq)
    assert kl_divergence(torch.tensor(q), p) == pytest.approx(kl_qp)
    assert symmetric_kl(p, q) == pytest.approx(kl_pq + kl_qp)
    # m = (p + q) / 2 = [0.7, 0.3]
    js = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3))
    js += 0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
    assert js_divergence(p, q) == pytest.approx(js) == pytest.approx(js_divergence(q, p))


def test_discrete_divergences_at_the_edges_of_the_support(rng):
    p, q = [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]
    assert total_variation(p, q) == 1.0
    assert js_divergence(p, q) == pytest.approx(math.log(2))
    assert kl_divergence(p, q) == math.inf
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2))  # p = 0 terms count 0
    assert kl_divergence(p, p) == 0.0
    for _ in range(20):
        a, b = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
        assert 0 < js_divergence(a, b) < math.log(2)


def test_discrete_divergences_reject_bad_input():
    with pytest.raises(ValueError, match="sums to 2"):
        kl_divergence([1.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        total_variation([1.5, -0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        js_divergence([0.5, 0.5], [0.2, 0.3, 0.5])


def test_histogram_divergences(rng):
    x = rng.normal(size=2000)
    assert histogram_divergences(x, x.copy(), bins=10) == pytest.approx(
        {"total_variation": 0, "kl_divergence": 0, "js_divergence": 0}
    )
    disjoint = histogram_divergences(x[:, None], x[:, None] + 100, bins=10)
    assert disjoint == {"total_variation": 1.0, "kl_divergence": math.inf, "js_divergence": pytest.approx(math.log(2))}


# ----- known densities -----------------------------------------------------------------------------------------------
def test_gaussian_kl_closed_form_and_monte_carlo(rng):
    # 1-D by hand: KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2.
    assert gaussian_kl(0.0, 1.0, 1.0, 4.0) == pytest.approx(math.log(2) + 2 / 8 - 0.5)
    a = rng.normal(size=(3, 3))
    mu1, cov1 = np.array([0.0, 1.0, -1.0]), a @ a.T + np.eye(3)
    mu2, cov2 = np.array([0.5, 0.0, 0.0]), np.diag([2.0, 1.0, 0.5])
    assert gaussian_kl(mu1, cov1, mu1, cov1) == pytest.approx(0, abs=1e-12)
    exact = gaussian_kl(mu1, cov1, mu2, cov2)
    p, q = scipy.stats.multivariate_normal(mu1, cov1), scipy.stats.multivariate_normal(mu2, cov2)
    samples = p.rvs(size=20000, random_state=rng)
    estimate = kl_divergence_monte_carlo(p.logpdf, q.logpdf, samples)
    standard_error = np.std(p.logpdf(samples) - q.logpdf(samples)) / math.sqrt(len(samples))
    assert abs(estimate - exact) < 4 * standard_error
    with pytest.raises(ValueError, match="positive definite"):
        gaussian_kl(mu1, cov1, mu2, np.diag([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="same dimension"):
        gaussian_kl(mu1, cov1, np.zeros(2), np.eye(2))


def test_gaussian_w2_in_one_dimension():
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2).
    assert gaussian_w2(1.0, 4.0, -2.0, 0.25) == pytest.approx(math.hypot(3.0, 1.5), rel=1e-12)
    assert gaussian_w2(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3)) == 0.0


# ----- samples -------------------------------------------------------------------------------------------------------
def test_wasserstein_1d(rng):
    assert wasserstein_1d([0.0, 1.0], [0.5]) == pytest.approx(0.5)  # unequal sizes
    x = rng.normal(size=5000)
    assert wasserstein_1d(torch.from_numpy(x), rng.normal(1.5, 1, size=4000)) == pytest.approx(1.5, abs=0.05)
    with pytest.raises(ValueError, match="one-dimensional"):
        wasserstein_1d(rng.normal(size=(10, 2)), rng.normal(size=(10, 2)))


def test_exact_wasserstein_agrees_with_sorted_matching_in_1d(rng):
    x, y = rng.normal(size=200), rng.exponential(size=200)
    assert exact_wasserstein(x, y) == pytest.approx(wasserstein_1d(x, y), rel=1e-10)
    w2 = math.sqrt(np.mean((np.sort(x) - np.sort(y)) ** 2))  # in 1-D the sorted matching is optimal for every p
    assert exact_wasserstein(x[:, None], y[:, None], p=2) == pytest.approx(w2, rel=1e-10)
    points = rng.normal(size=(50, 3))
    assert exact_wasserstein(points, points[::-1] + [3.0, 4.0, 0.0]) == pytest.approx(5.0)  # a pure shift


def test_exact_wasserstein_rejects_bad_sizes(rng):
    with pytest.raises(ValueError, match="same size"):
        exact_wasserstein(rng.normal(size=(10, 2)), rng.normal(size=(11, 2)))
    too_many = divergences.MAX_EXACT_OT_POINTS + 1
    with pytest.raises(ValueError, match="O\\(n\\^3\\)"):
        exact_wasserstein(np.zeros(too_many), np.zeros(too_many))
    with pytest.raises(ValueError, match="same dimension"):
        exact_wasserstein(np.zeros((10, 2)), np.zeros((10, 3)))


def test_sliced_wasserstein_of_a_shift(rng):
    # Shifting by m moves each projection by theta.m, so SW = |m| E|theta_1| = |m| / 2 for theta uniform on S^2.
    x = rng.normal(size=(500, 3))
    shift = np.array([3.0, 0.0, 4.0])
    assert sliced_wasserstein(x, x + shift, num_projections=4000) == pytest.approx(2.5, rel=0.03)
    assert sliced_wasserstein(x, x) == 0.0
    # In 1-D every direction is +-1, under which W1 is invariant: sliced = exact W1, for unequal sizes too.
    a, b = rng.normal(size=37), rng.exponential(size=23)
    assert sliced_wasserstein(a, b, num_projections=3) == pytest.approx(wasserstein_1d(a, b), rel=1e-12)
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(x, x[:, :2])


def test_mmd(rng):
    # By hand, x = y = {0, 1}, bandwidth 1: within-set terms k(0, 1) = e^-1/2, the cross term (2 + 2 e^-1/2) / 4.
    assert mmd([0.0, 1.0], [0.0, 1.0], bandwidth=1.0) == pytest.approx(math.exp(-0.5) - 1)
    x = rng.normal(size=(500, 4))
    assert abs(mmd(x, rng.normal(size=(400, 4)))) < 0.005
    assert mmd(x, rng.normal(0.5, 1, size=(400, 4))) > 0.03
    with pytest.raises(ValueError, match="same dimension"):
        mmd(x, x[:, :2])
    with pytest.raises(ValueError, match="identical"):
        mmd(np.zeros((5, 2)), np.zeros((5, 2)))


# ----- anomaly detection ---------------------------------------------------------------------------------------------
def test_auroc_of_two_gaussians(rng):
    # Scores N(0, 1) in and N(delta, 1) out: P(out > in) = Phi(delta / sqrt 2).
    delta = 1.0
    value = auroc(rng.normal(size=20000), torch.from_numpy(rng.normal(delta, 1, size=20000)))
    assert value == pytest.approx(scipy.stats.norm.cdf(delta / math.sqrt(2)), abs=0.01)
    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert auroc([0.0, 1.0], [math.inf]) == 1.0  # probability 0: the most anomalous
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.0, math.nan], [1.0])


class _EnergyPipeline:
    """A stand-in pipeline: bits/dim = mean squared pixel, so brighter images are more anomalous."""

    def __init__(self):
        self.batch_sizes = []

    def log_likelihood(self, images, offset=0.0):
        self.batch_sizes.append(len(images))
        bits_per_dim = images.flatten(1).square().mean(1) + offset
        return hfgen.LikelihoodOutput(-bits_per_dim, bits_per_dim, "exact", "none")


def test_anomaly_auroc_batches_and_scores():
    torch.manual_seed(0)
    pipeline = _EnergyPipeline()
    result = anomaly_auroc(pipeline, 0.1 * torch.randn(10, 1, 4, 4), torch.randn(5, 1, 4, 4), batch_size=4, offset=1)
    assert pipeline.batch_sizes == [4, 4, 2, 4, 1]
    assert result["auroc"] == 1.0 and result["kind"] == "exact"
    assert 1 < result["in_bits_per_dim"] < 1.1 < result["out_bits_per_dim"]
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        anomaly_auroc(pipeline, torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), batch_size=0)


def test_input_complexity_ranks_flat_below_half_noise_below_noise():
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    flat = torch.full((1, 1, 32, 32), 0.5)
    noise = torch.rand(1, 1, 32, 32, generator=generator)
    half_noise = torch.cat([flat[..., :16, :], noise[..., 16:, :]], dim=2)
    bits = input_complexity(torch.cat([flat, half_noise, noise]))
    assert bits[0] < bits[1] < bits[2] and bits[2] > 8  # noise does not compress (PNG adds its headers)
    # PIL images give what the same tensors give, RGB too.
    rgb = torch.rand(2, 3, 8, 8, generator=generator)
    pil = [Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for image in rgb]
    np.testing.assert_array_equal(input_complexity(pil), input_complexity(rgb))
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        input_complexity(noise * 2 - 1)
    with pytest.raises(ValueError, match="NaN"):
        input_complexity(torch.full((1, 1, 4, 4), math.nan))
    with pytest.raises(TypeError, match="permute"):
        input_complexity(noise.permute(0, 2, 3, 1).numpy())  # numpy, as output_type="np" returns it


def test_anomaly_auroc_complexity_correction_catches_simple_outliers():
    """Flat images that a model finds more likely than its own (noisy) data fool bits/dim (AUROC 0); bits/dim minus
    the PNG bits/dim (Serra et al. 2020) ranks them as the outliers they are."""
    generator = torch.Generator().manual_seed(0)
    noisy = 0.7 * torch.rand(20, 1, 8, 8, generator=generator)  # mean squared pixel about 0.16
    flat = torch.full((20, 1, 8, 8), 0.3)  # 0.09: more likely under _EnergyPipeline
    plain = anomaly_auroc(_EnergyPipeline(), noisy, flat)
    corrected = anomaly_auroc(_EnergyPipeline(), noisy, flat, complexity_correction=True)
    assert plain["auroc"] == 0.0 and plain["score"] == "bits/dim"
    assert corrected["auroc"] == 1.0 and corrected["score"] == "bits/dim - PNG bits/dim"
    assert corrected["bits_per_dim_auroc"] == plain["auroc"]  # the uncorrected figure comes along
    assert corrected["out_png_bits_per_dim"] < corrected["in_png_bits_per_dim"]
    assert corrected["in_bits_per_dim"] == plain["in_bits_per_dim"]  # the likelihoods themselves are unchanged


def test_anomaly_auroc_with_a_vae_pipeline():
    import sklearn.datasets

    digits = torch.from_numpy(sklearn.datasets.load_digits().images[:12]).float()[:, None] / 16  # (12, 1, 8, 8)
    noise = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # in [0, 1], as pipelines take
    torch.manual_seed(0)
    vae = hfgen.VAEModel(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
    pipeline = hfgen.VAEPipeline(vae=vae.eval())
    result = anomaly_auroc(pipeline, digits, noise, num_samples=2, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    in_bpd = pipeline.log_likelihood(digits, num_samples=2, generator=generator).bits_per_dim
    out_bpd = pipeline.log_likelihood(noise, num_samples=2, generator=generator).bits_per_dim
    assert result["auroc"] == auroc(in_bpd, out_bpd)
    assert result["in_bits_per_dim"] == pytest.approx(in_bpd.double().mean().item())
    assert result["out_bits_per_dim"] == pytest.approx(out_bpd.double().mean().item())
    assert result["kind"] == "lower bound (IWAE, K=2)"
