"""Training the normalizing flows (RealNVP, Glow, NICE coupling): their settings, their model, their loss.

accelerate launch training/train.py --family flow --architecture glow --dataset_name digits --output_dir out/flow

The loss is the negative log-likelihood of dequantised images in bits/dim on the discrete scale: exact for uniform
dequantisation, and with `--dequantization variational` (Flow++) the variational bound, q(u | x) trained jointly.
Two optional terms help a conditional flow use its condition: Glow's label loss (a classifier of the class on the top
latent) and a contrastive condition loss (the top prior's classifier of which of the batch's conditions is each
image's), both in bits and weighted.
Glow's ActNorm layers are initialised from data once, in `build_model`, on the first `train_batch_size` training
images (the same on every rank, before Accelerate copies the model), and saved with the weights as their
`initialized` buffers: a resumed or loaded model is never initialised again.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from hfgen.pipelines.pipeline_flow import FlowPipeline
from hfgen.training.trainer import Trainer, TrainingConfig

from hfgen.conditioning import Condition, ConditionEncoder
from hfgen.data import collate_fn, grey_levels
from hfgen.models.modeling_flow import ARCHITECTURES, COUPLINGS, DEQUANTIZATIONS, FlowModel


@dataclass
class FlowTrainingConfig(TrainingConfig):
    architecture: str = field(default="glow", metadata={"help": "realnvp or glow."})
    num_scales: int = field(default=2, metadata={"help": "Scales; each but the last factors out half the channels."})
    steps_per_scale: int = field(default=4, metadata={"help": "Flow steps (couplings) per scale."})
    hidden_channels: int = field(default=64, metadata={"help": "Width of each coupling network."})
    coupling: str = field(default="affine", metadata={"help": "affine (RealNVP, Glow) or additive (NICE)."})
    learned_prior: bool | None = field(
        default=None, metadata={"help": "Learned priors at the splits and the top (default: glow yes, realnvp no)."}
    )
    logit_alpha: float = field(default=0.05, metadata={"help": "s = logit(alpha + (1 - 2 alpha) y)."})
    num_bins: int | None = field(
        default=None,
        metadata={
            "help": "Levels of the data; default: hfgen.data.grey_levels (digits 17, mnist_binarized 2, else 256)."
        },
    )
    condition_dim: int = field(default=16, metadata={"help": "Size the condition is projected to."})
    condition_couplings: bool = field(
        default=True,
        metadata={
            "help": "Feed the condition to the coupling networks; false: to the priors only (Glow's class model)."
        },
    )
    spatial_prior_condition: bool = field(
        default=False,
        metadata={"help": "The condition shifts the top prior at every position; false: once per channel (Glow)."},
    )
    label_loss_weight: float = field(
        default=0.0,
        metadata={
            "help": "Glow's label loss: a linear classifier of the --label_column class from the top latent, its "
            "cross-entropy in bits times this weight added to the bits/dim (Glow's PyTorch port defaults to 0.01); "
            "0: none. Use it with --condition_couplings false, or the head can read the caption instead of the image."
        },
    )
    condition_contrast_weight: float = field(
        default=0.0,
        metadata={
            "help": "A contrastive loss on the condition: the top prior's own classifier of which of the batch's "
            "conditions belongs to each image, softmax over j of log p(top_i | c_j), its cross-entropy in bits times "
            "this weight added to the bits/dim (each process over its own batch); needs no labels. With "
            "--condition_couplings false. 0: none."
        },
    )
    dequantization: str = field(
        default="uniform",
        metadata={"help": "uniform (u ~ U[0, 1)) or variational (u ~ q(u | x), a flow trained jointly; Flow++)."},
    )
    dequantizer_steps: int = field(default=4, metadata={"help": "Affine couplings of q(u | x) (variational)."})
    eval_max_images: int = field(default=256, metadata={"help": "Test images used for the final bits/dim."})

    ranges: ClassVar[dict[str, str]] = {
        "num_scales": "[1, 16]",
        "steps_per_scale": "[1, 256]",
        "hidden_channels": "[1, 4096]",
        "logit_alpha": "(0, 0.5)",
        "num_bins": "[2, 65536]",
        "condition_dim": "[1, 4096]",
        "label_loss_weight": "[0, inf)",
        "condition_contrast_weight": "[0, inf)",
        "dequantizer_steps": "[1, 256]",
        "eval_max_images": "[0, inf)",
    }

    def __post_init__(self):
        super().__post_init__()
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"--architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}.")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"--coupling must be one of {', '.join(COUPLINGS)}, got {self.coupling!r}.")
        if self.dequantization not in DEQUANTIZATIONS:
            raise ValueError(
                f"--dequantization must be one of {', '.join(DEQUANTIZATIONS)}, got {self.dequantization!r}."
            )
        if self.spatial_prior_condition and self.conditioning == "none":
            raise ValueError("--spatial_prior_condition shapes how a condition enters the prior: pass --conditioning.")
        if self.label_loss_weight > 0 and self.label_column is None:
            raise ValueError("--label_loss_weight needs the images' classes: pass --label_column.")
        if self.learned_prior is None:
            self.learned_prior = self.architecture == "glow"
        if self.condition_contrast_weight > 0 and (
            self.conditioning == "none" or self.condition_couplings or not self.learned_prior
        ):
            raise ValueError(
                "--condition_contrast_weight trains the top prior to tell the batch's conditions apart: it needs "
                "--conditioning class or text, --condition_couplings false and a learned prior (--learned_prior true)."
            )
        if self.condition_contrast_weight > 0 and self.train_batch_size < 2:
            # One image per batch has one caption to choose from: the loss would be 0 and train nothing.
            raise ValueError(
                "--condition_contrast_weight compares the captions within a batch: use --train_batch_size 2 or more."
            )
        if self.num_bins is None:
            self.num_bins = grey_levels(self.dataset_name)


class FlowTrainer(Trainer):
    family = "flow"
    config_class = FlowTrainingConfig

    def build_model(self) -> FlowModel:
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"The flow takes square images, got {height}x{width}: pass --resolution.")
        config = self.config
        model = FlowModel(
            sample_size=height,
            in_channels=channels,
            num_bins=config.num_bins,
            architecture=config.architecture,
            num_scales=config.num_scales,
            steps_per_scale=config.steps_per_scale,
            hidden_channels=config.hidden_channels,
            coupling=config.coupling,
            learned_prior=config.learned_prior,
            logit_alpha=config.logit_alpha,
            condition_dim=config.condition_dim,
            condition_couplings=config.condition_couplings,
            spatial_prior_condition=config.spatial_prior_condition,
            num_label_classes=self.count_classes() if config.label_loss_weight > 0 else None,
            dequantization=config.dequantization,
            dequantizer_steps=config.dequantizer_steps,
            **self.condition_kwargs(),
        )
        self.initialize_actnorm(model)
        return model

    def initialize_actnorm(self, model: FlowModel):
        """Glow's data-dependent initialisation on the first `train_batch_size` training images, under the null
        condition (the couplings start as the identity, so the condition does not change what ActNorm sees)."""
        if not any(name.endswith("initialized") for name, _ in model.named_buffers()):
            return
        train = self.splits["train"]
        count = self.config.train_batch_size
        examples = (
            list(train.take(count)) if self.config.streaming else [train[i] for i in range(min(count, len(train)))]
        )
        images = collate_fn(examples)["pixel_values"]
        conditioning = None if self.config.conditioning == "none" else self.config.conditioning
        encoder = ConditionEncoder(conditioning, self.tokenizer, self.text_encoder, self.num_classes)
        with torch.no_grad():
            condition = encoder.null(len(images))
        model.initialize_actnorm(images, condition, generator=torch.Generator().manual_seed(self.config.seed))

    def compute_loss(self, batch: dict, condition: Condition | None) -> dict[str, torch.Tensor]:
        contrast = self.config.condition_contrast_weight > 0
        output = self.model(batch["pixel_values"], condition, condition_logits=contrast)
        losses = {"loss": output.loss, "bits_per_dim": output.bits_per_dim.detach().mean()}
        if contrast:
            # A caption repeated in the batch (the null one of caption dropout too) is as right as the image's own.
            same = condition.same_pairs().float()
            log_probs = output.condition_logits.float().log_softmax(dim=1)
            condition_bits = -(same / same.sum(1, keepdim=True) * log_probs).sum(1).mean() / math.log(2)
            losses["loss"] = losses["loss"] + self.config.condition_contrast_weight * condition_bits
            losses["condition_bits"] = condition_bits.detach()
        if self.config.label_loss_weight > 0:
            label_bits = F.cross_entropy(output.label_logits.float(), batch["labels"]) / math.log(2)
            losses["loss"] = losses["loss"] + self.config.label_loss_weight * label_bits
            losses["label_bits"] = label_bits.detach()
        return losses

    def build_pipeline(self, model, tokenizer=None, text_encoder=None) -> FlowPipeline:
        return FlowPipeline(flow=model, tokenizer=tokenizer, text_encoder=text_encoder)

    @torch.no_grad()
    def evaluate(self, pipeline: FlowPipeline) -> dict[str, float]:
        """Test bits/dim of the dequantised images, one u per image (uniform: the exact density; variational: the
        bound; unconditional: the empty prompt or the null class)."""
        images = self.test_images(self.config.eval_max_images)
        if images is None:
            return {}
        prompt = [""] * len(images) if pipeline.tokenizer is not None else None
        generator = torch.Generator().manual_seed(self.config.seed)
        likelihood = pipeline.log_likelihood(images, prompt=prompt, generator=generator)
        return {"test_bits_per_dim": likelihood.bits_per_dim.mean().item()}
