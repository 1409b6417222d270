"""`hfgen.metrics.marginal`: a conditional likelihood model with the condition summed out."""

import itertools
import math

import pytest
import torch

import hfgen
from hfgen.metrics.marginal import marginal_log_likelihood
from hfgen.models.modeling_autoregressive import GatedPixelCNNModel

ALL_2X2_BINARY_IMAGES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)


def class_conditional_pipeline(num_classes: int = 3, seed: int = 0) -> hfgen.AutoregressivePipeline:
    """A tiny class-conditional Gated PixelCNN on 2x2 binary images, its weights perturbed so that the classes differ
    (zero-initialised layers would otherwise give every class the same distribution)."""
    torch.manual_seed(seed)
    model = GatedPixelCNNModel(
        sample_size=2, in_channels=1, num_levels=2, embedding_dim=4, hidden_channels=8, num_layers=2, kernel_size=3,
        first_kernel_size=3, condition_type="class", num_classes=num_classes,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    pipeline = hfgen.AutoregressivePipeline(prior=model)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_marginal_of_every_2x2_binary_image_sums_to_one_and_is_bayes_rule():
    """p(x) = sum_c p(c) p(x | c) is a distribution (all 16 images sum to 1, exactly, for any prior), and the posterior
    is p(c) p(x | c) / p(x) computed from each class's own exact likelihood."""
    pipeline = class_conditional_pipeline()
    prior = [0.5, 0.3, 0.2]
    output = marginal_log_likelihood(pipeline, ALL_2X2_BINARY_IMAGES, class_labels=range(3), prior=prior, batch_size=5)
    assert output.kind == "exact"
    assert output.log_likelihood.exp().sum().item() == pytest.approx(1.0, abs=1e-6)  # the model computes in float32
    torch.testing.assert_close(output.posterior.sum(1), torch.ones(16, dtype=torch.float64))

    per_class = torch.stack(
        [pipeline.log_likelihood(ALL_2X2_BINARY_IMAGES, class_labels=c).log_likelihood.double() for c in range(3)], 1
    )  # (16, 3) log p(x | c), exact
    joint = per_class.exp() * torch.tensor(prior, dtype=torch.float64)
    torch.testing.assert_close(output.log_likelihood, joint.sum(1).log(), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.posterior, joint / joint.sum(1, keepdim=True), rtol=0, atol=1e-5)
    torch.testing.assert_close(output.bits_per_dim, -output.log_likelihood / (4 * math.log(2)))
    # The classes do differ here (else the posterior would be the prior and the test would prove little).
    assert (output.posterior - torch.tensor(prior, dtype=torch.float64)).abs().max() > 0.05


def test_true_condition_bits_and_classifier_accuracy_read_the_right_cells():
    """`true_condition_bits_per_dim(labels)` picks each image's own column of the conditional table, and
    `classifier_accuracy(labels)` counts the images whose most probable condition is their own; labels of another
    length or outside the conditions are refused."""
    output = marginal_log_likelihood(class_conditional_pipeline(), ALL_2X2_BINARY_IMAGES, class_labels=range(3))
    labels = torch.arange(16) % 3
    for i in range(16):
        assert output.true_condition_bits_per_dim(labels)[i] == output.conditional_bits_per_dim[i, labels[i]]
    predicted = output.posterior.argmax(1)
    assert output.classifier_accuracy(predicted) == 1.0
    assert output.classifier_accuracy(labels) == sum(int(predicted[i] == labels[i]) for i in range(16)) / 16
    assert output.classifier_accuracy((predicted + 1) % 3) == 0.0
    with pytest.raises(ValueError, match=r"one condition per image \(16\); got shape \(15,\)"):
        output.classifier_accuracy(labels[:15])
    with pytest.raises(ValueError, match=r"so in \[0, 3\); got 0 to 3"):
        output.true_condition_bits_per_dim(labels.clamp(max=2) + (torch.arange(16) == 5).long())


def test_a_conditional_model_with_one_class_is_its_own_marginal():
    pipeline = class_conditional_pipeline(num_classes=1)
    output = marginal_log_likelihood(pipeline, ALL_2X2_BINARY_IMAGES, class_labels=[0])
    expected = pipeline.log_likelihood(ALL_2X2_BINARY_IMAGES, class_labels=0).bits_per_dim.double()
    torch.testing.assert_close(output.bits_per_dim, expected, rtol=0, atol=1e-6)
    assert (output.posterior == 1).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "Give exactly one of class_labels"),
        ({"class_labels": [0], "prompts": ["a"]}, "Give exactly one of class_labels"),
        ({"class_labels": []}, "Got no conditions"),
        ({"class_labels": [0, 1], "prior": [0.7, 0.7]}, "summing to 1"),
        ({"class_labels": [0, 1], "prior": [1.0]}, "one probability per condition"),
        ({"prompts": ["a red circle"]}, "prompts need a text-conditioned model; this pipeline's condition is 'class'"),
        ({"class_labels": [0], "batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        marginal_log_likelihood(class_conditional_pipeline(), ALL_2X2_BINARY_IMAGES, **kwargs)


def test_an_unconditional_model_is_sent_to_log_likelihood():
    torch.manual_seed(0)
    model = GatedPixelCNNModel(sample_size=2, in_channels=1, num_levels=2, hidden_channels=8, num_layers=2)
    with pytest.raises(ValueError, match="condition is None: use pipeline.log_likelihood"):
        marginal_log_likelihood(hfgen.AutoregressivePipeline(prior=model), ALL_2X2_BINARY_IMAGES, class_labels=[0])
