"""Training the autoregressive family (PixelCNN, Gated PixelCNN, Row LSTM, Diagonal BiLSTM, a GPT-2 prior): its
settings, its model, its loss (the exact negative log-likelihood).

accelerate launch training/train.py --family autoregressive --architecture gated_pixelcnn --output_dir out/ar
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from hfgen.pipelines.pipeline_autoregressive import AutoregressivePipeline
from hfgen.training.trainer import Trainer, TrainingConfig

from hfgen.conditioning import Condition
from hfgen.data import grey_levels
from hfgen.models.modeling_autoregressive import (
    ARCHITECTURES,
    MODEL_CLASSES,
    OUTPUT_DISTRIBUTIONS,
    build_transformer_prior,
    images_to_tokens,
    prior_forward,
)


@dataclass
class AutoregressiveTrainingConfig(TrainingConfig):
    architecture: str = field(default="gated_pixelcnn", metadata={"help": f"One of {', '.join(ARCHITECTURES)}."})
    num_levels: int | None = field(
        default=None,
        metadata={
            "help": "Values per channel; default: hfgen.data.grey_levels (digits 17, mnist_binarized 2, else 256)."
        },
    )
    hidden_channels: int = field(default=64, metadata={"help": "Width of the convolutional / recurrent models."})
    embedding_dim: int = field(default=16, metadata={"help": "Token embedding size per channel."})
    num_layers: int = field(default=5, metadata={"help": "Residual blocks, gated layers, LSTM or GPT-2 layers."})
    kernel_size: int = field(default=3, metadata={"help": "Kernel of the mask-B / gated / LSTM convolutions."})
    first_kernel_size: int = field(default=7, metadata={"help": "Kernel of the first (mask-A) convolution."})
    n_embd: int | None = field(
        default=None, metadata={"help": "GPT-2 width (default: 64, or the text encoder's width for text)."}
    )
    n_head: int = field(default=4, metadata={"help": "GPT-2 attention heads."})
    dropout: float = field(
        default=0.0,
        metadata={"help": "GPT-2's dropout on its embeddings, attention and residual branches (transformer only)."},
    )
    output_distribution: str = field(
        default="categorical",
        metadata={
            "help": "categorical (a softmax over the levels) or logistic_mixture (PixelCNN++'s discretized mixture of "
            "logistics, for 8-bit RGB); not for the transformer."
        },
    )
    num_mixtures: int = field(default=5, metadata={"help": "Mixture components for logistic_mixture."})
    eval_max_images: int = field(default=256, metadata={"help": "Test images for the final exact bits/dim."})

    ranges: ClassVar[dict[str, str]] = {
        "num_levels": "[2, 65536]",
        "hidden_channels": "[1, 4096]",
        "embedding_dim": "[1, 4096]",
        "num_layers": "[1, 256]",
        "kernel_size": "[1, 63]",
        "first_kernel_size": "[1, 63]",
        "n_embd": "[1, 8192]",
        "n_head": "[1, 256]",
        "dropout": "[0, 1)",
        "num_mixtures": "[1, 256]",
        "eval_max_images": "[0, inf)",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}.")
        if self.num_levels is None:
            self.num_levels = grey_levels(self.dataset_name)
        if self.output_distribution not in OUTPUT_DISTRIBUTIONS:
            raise ValueError(
                f"--output_distribution must be one of {', '.join(OUTPUT_DISTRIBUTIONS)}, got "
                f"{self.output_distribution!r}."
            )
        if self.dropout and self.architecture != "transformer":
            raise ValueError(
                f"--dropout is GPT-2's (--architecture transformer); the {self.architecture} model has none: leave it "
                "at 0 (--adam_weight_decay is what regularises the convolutional and recurrent models here)."
            )
        if self.output_distribution == "logistic_mixture" and self.architecture == "transformer":
            raise ValueError(
                "--output_distribution logistic_mixture is for the convolutional and recurrent models: the GPT-2 "
                "prior predicts one token at a time over its vocabulary."
            )


class AutoregressiveTrainer(Trainer):
    family = "autoregressive"
    config_class = AutoregressiveTrainingConfig

    def build_model(self):
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"The autoregressive models take square grids, got {height}x{width}: pass --resolution.")
        config, condition = self.config, self.condition_kwargs()
        if config.architecture == "transformer":
            n_embd = config.n_embd or condition.get("text_embed_dim") or 64
            return build_transformer_prior(
                sample_size=height,
                in_channels=channels,
                num_levels=config.num_levels,
                n_embd=n_embd,
                n_layer=config.num_layers,
                n_head=config.n_head,
                dropout=config.dropout,
                **condition,
            )
        return MODEL_CLASSES[config.architecture](
            sample_size=height,
            in_channels=channels,
            num_levels=config.num_levels,
            embedding_dim=config.embedding_dim,
            hidden_channels=config.hidden_channels,
            num_layers=config.num_layers,
            kernel_size=config.kernel_size,
            first_kernel_size=config.first_kernel_size,
            output_distribution=config.output_distribution,
            num_mixtures=config.num_mixtures,
            **condition,
        )

    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        tokens = images_to_tokens(batch["pixel_values"], self.config.num_levels)  # (b, c, h, w) levels
        config = self.accelerator.unwrap_model(self.model).config
        output = prior_forward(self.model, tokens, condition, config)
        nats_per_dim = -output.log_likelihood.mean() / tokens[0].numel()
        # The loss is the exact negative log-likelihood, in nats per dimension (the scale of a learning rate).
        return {"loss": nats_per_dim, "bits_per_dim": nats_per_dim.detach() / math.log(2)}

    def build_pipeline(self, model, tokenizer=None, text_encoder=None) -> AutoregressivePipeline:
        return AutoregressivePipeline(prior=model, tokenizer=tokenizer, text_encoder=text_encoder)

    @torch.no_grad()
    def evaluate(self, pipeline: AutoregressivePipeline) -> dict[str, float]:
        """Exact bits/dim on held-out images, under the null condition (empty prompt, null class): p(x)."""
        images = self.test_images(self.config.eval_max_images)
        if images is None:
            return {}
        prompt = [""] * len(images) if pipeline.tokenizer is not None else None
        bits = torch.cat(
            [pipeline.log_likelihood(images[i : i + 64], prompt=prompt and prompt[i : i + 64]).bits_per_dim
             for i in range(0, len(images), 64)]
        )  # fmt: skip
        return {"test_bits_per_dim": bits.mean().item()}
