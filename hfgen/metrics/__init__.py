"""Measuring generative models: domain features, FID/KID/IS/precision-recall, divergences, likelihood baselines,
anomaly detection, class-marginal likelihoods, and the `hfgen evaluate` / `hfgen compare` commands.

    from hfgen.metrics import load_feature_extractor, evaluate_pipeline
    results = evaluate_pipeline(hfgen.load_pipeline("out/vae-digits"), dataset="digits")
"""

from hfgen.metrics.anomaly import anomaly_auroc, auroc, input_complexity
from hfgen.metrics.baselines import sklearn_baselines
from hfgen.metrics.divergences import (
    exact_wasserstein,
    js_divergence,
    kl_divergence,
    mmd,
    sliced_wasserstein,
    total_variation,
    wasserstein_1d,
)
from hfgen.metrics.evaluate import compare_pipelines, evaluate_pipeline
from hfgen.metrics.features import DomainClassifier, load_feature_extractor
from hfgen.metrics.marginal import marginal_log_likelihood
from hfgen.metrics.sample_quality import (
    GaussianStatistics,
    class_histogram_entropy,
    fid,
    inception_score,
    kid,
    modes_covered,
    precision_recall,
)

__all__ = [
    "DomainClassifier",
    "GaussianStatistics",
    "anomaly_auroc",
    "input_complexity",
    "auroc",
    "class_histogram_entropy",
    "compare_pipelines",
    "evaluate_pipeline",
    "exact_wasserstein",
    "fid",
    "inception_score",
    "js_divergence",
    "kid",
    "kl_divergence",
    "load_feature_extractor",
    "marginal_log_likelihood",
    "mmd",
    "modes_covered",
    "precision_recall",
    "sklearn_baselines",
    "sliced_wasserstein",
    "total_variation",
    "wasserstein_1d",
]
