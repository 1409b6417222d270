"""A conditional likelihood model with its condition summed out: p(x) and the classifier that Bayes' rule gives.

A class- or text-conditioned likelihood model gives log p(x | c). Over a finite set of conditions (the ten digit
classes, or one caption per class) with a prior p(c),

    p(x) = sum_c p(c) p(x | c)        and        p(c | x) = p(c) p(x | c) / p(x),

so the same model is scored on the same likelihood table as unconditional models (without the condition's help: p(x)
needs no label), and it is a generative classifier (Ng & Jordan 2002, "On Discriminative vs. Generative
Classifiers"): how well `posterior.argmax(1)` names the class says how much the likelihood uses the condition.

    from hfgen.metrics.marginal import marginal_log_likelihood
    output = marginal_log_likelihood(pipeline, test_images, class_labels=range(10))
    output.bits_per_dim.mean(), output.classifier_accuracy(test_labels)
"""

import math
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from hfgen.metrics.anomaly import bits_per_dim_in_batches


@dataclass
class MarginalLikelihoodOutput(BaseOutput):
    """The condition summed out.

    Args:
        log_likelihood (`torch.Tensor`): (n,) log P(x) = log sum_c p(c) P(x | c) of each discrete image, nats.
        bits_per_dim (`torch.Tensor`): (n,) -log2 P(x) per dimension.
        posterior (`torch.Tensor`): (n, k) p(c | x), one column per condition in the order given; rows sum to 1.
        conditional_bits_per_dim (`torch.Tensor`): (n, k) -log2 P(x | c) per dimension, as `log_likelihood` gives it.
        kind (`str`): that of the pipeline's `log_likelihood`. Exact stays exact; for a stochastic estimate (a VAE's
            IWAE, a flow's dequantisation noise) the same noise serves every condition, the mixture of unbiased
            estimates of P(x | c) is an unbiased estimate of P(x), and its log is a lower bound in expectation.
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    posterior: torch.Tensor
    conditional_bits_per_dim: torch.Tensor
    kind: str

    def true_condition_bits_per_dim(self, labels) -> torch.Tensor:
        """(n,) -log2 P(x | its own condition) per dimension; `labels[i]` is image i's condition, as a position in
        the conditions given (for `class_labels=range(10)`, the class itself)."""
        labels = self._check_labels(labels)
        return self.conditional_bits_per_dim[torch.arange(len(labels)), labels]

    def classifier_accuracy(self, labels) -> float:
        """The fraction of images whose most probable condition, argmax_c p(c | x), is their own: how much the
        likelihood uses the condition (the prior's mode when it ignores it)."""
        return (self.posterior.argmax(1) == self._check_labels(labels)).double().mean().item()

    def _check_labels(self, labels) -> torch.Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long)
        num_images, num_conditions = self.posterior.shape
        if labels.shape != (num_images,):
            raise ValueError(
                f"labels must hold one condition per image ({num_images}); got shape {tuple(labels.shape)}."
            )
        if ((labels < 0) | (labels >= num_conditions)).any():
            raise ValueError(
                f"labels are positions in the {num_conditions} conditions given, so in [0, {num_conditions}); got "
                f"{labels.min().item()} to {labels.max().item()}."
            )
        return labels


def marginal_log_likelihood(
    pipeline,
    images,
    class_labels=None,
    prompts: list[str] | None = None,
    prior=None,
    batch_size: int = 64,
    seed: int = 0,
    **likelihood_kwargs,
) -> MarginalLikelihoodOutput:
    r"""log p(x) = log sum_c p(c) p(x | c) of a conditional likelihood model, and the posterior p(c | x).

    Args:
        pipeline ([`~hfgen.HFGenPipeline`]): a class- or text-conditioned pipeline with a `log_likelihood` method.
        images (`torch.Tensor`): (n, c, h, w) in [0, 1], as pipelines return them.
        class_labels (iterable of `int`, *optional*): The conditions, for a class-conditioned model (e.g. `range(10)`).
        prompts (`list[str]`, *optional*): The conditions, for a text-conditioned model (e.g. one caption per class).
            Give exactly one of `class_labels` and `prompts`.
        prior (sequence of `float`, *optional*): p(c), one per condition, summing to 1. Default uniform.
        batch_size (`int`, *optional*, defaults to 64): images per `log_likelihood` call.
        seed (`int`, *optional*, defaults to 0): seeds the likelihood's noise, the same for every condition.
        likelihood_kwargs: passed on to `pipeline.log_likelihood` (e.g. `num_samples` of a VAE's IWAE).
    """
    if (class_labels is None) == (prompts is None):
        raise ValueError("Give exactly one of class_labels (a class-conditioned model) and prompts (a text one).")
    conditions = [int(label) for label in class_labels] if prompts is None else list(prompts)
    key = "class_labels" if prompts is None else "prompt"
    wanted = "class" if prompts is None else "text"
    if pipeline.condition_type != wanted:
        raise ValueError(
            f"{'class_labels' if prompts is None else 'prompts'} need a {wanted}-conditioned model; this pipeline's "
            f"condition is {pipeline.condition_type!r}"
            + (": use pipeline.log_likelihood for p(x)." if pipeline.condition_type is None else ".")
        )
    if not conditions:
        raise ValueError(f"Got no conditions to sum over: pass at least one of {key}.")
    prior = torch.full((len(conditions),), 1 / len(conditions), dtype=torch.float64) if prior is None else prior
    prior = torch.as_tensor(prior, dtype=torch.float64)
    if prior.shape != (len(conditions),) or (prior < 0).any() or abs(prior.sum().item() - 1) > 1e-6:
        raise ValueError(
            f"prior must hold one probability per condition ({len(conditions)}), none negative, summing to 1; "
            f"got {prior.tolist()}."
        )
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
        raise ValueError("images must be a non-empty (n, c, h, w) tensor in [0, 1], as pipelines return them.")

    columns = []
    for condition in conditions:
        # One generator per condition, seeded alike and drawn in the same order: the same noise for every condition.
        kwargs = {key: condition, "generator": torch.Generator().manual_seed(seed), **likelihood_kwargs}
        bits, output = bits_per_dim_in_batches(pipeline, images, batch_size, kwargs)
        columns.append(torch.from_numpy(bits))
    conditional_bits = torch.stack(columns, dim=1)  # (n, k)

    # In bits per image: log P(x | c) = -bits/dim x D x ln 2, whatever scale the family's log_likelihood uses.
    channels, side = pipeline.image_format
    num_dims = channels * side * side
    log_joint = -conditional_bits * num_dims * math.log(2) + prior.log()  # (n, k) log p(c) P(x | c)
    log_marginal = log_joint.logsumexp(dim=1)
    return MarginalLikelihoodOutput(
        log_likelihood=log_marginal,
        bits_per_dim=-log_marginal / (num_dims * math.log(2)),
        posterior=(log_joint - log_marginal[:, None]).exp(),
        conditional_bits_per_dim=conditional_bits,
        kind=output.kind,
    )
