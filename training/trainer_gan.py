"""Training the GAN family (DCGAN, WGAN, WGAN-GP, spectral-norm/hinge GAN, conditional GAN, VAE-GAN): its settings,
its two networks and their alternating updates.

    accelerate launch training/train.py --family gan --gan_loss wgan-gp --discriminator_norm layer --n_critic 5

The generator is the trainer's `model` (what the pipeline saves, what EMA tracks); the discriminator is an auxiliary
network with its own optimizer and schedule (TTUR: its own learning rate and betas), prepared by Accelerate, so both
are checkpointed and resumed. Each step trains the discriminator once with the generator frozen; every `n_critic`-th
step then trains the generator once with the discriminator frozen.

VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric",
https://arxiv.org/abs/1512.09300): `--generator_type vae` makes the model an hfgen `VAEModel` whose decoder is the
generator; its loss gains an adversarial term and a feature-matching term on the discriminator's features, and it is
saved as a `VAEPipeline`.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from hfgen.pipelines.pipeline_gan import GANPipeline
from hfgen.pipelines.pipeline_vae import VAEPipeline
from hfgen.training.trainer import Trainer, TrainingConfig

from hfgen.conditioning import Condition
from hfgen.metrics.features import load_feature_extractor
from hfgen.metrics.sample_quality import class_histogram_entropy, fid
from hfgen.models.modeling_gan import (
    DISCRIMINATOR_CONDITIONINGS,
    DISCRIMINATOR_NORMS,
    GAN_LOSSES,
    GANDiscriminator,
    GANGenerator,
    discriminator_fake_loss,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    interpolate_images,
)
from hfgen.models.modeling_vae import VAEModel

BOUNDED_LOSSES = ("non-saturating", "minimax", "hinge")  # a score of 0 separates "real" from "generated"


class GANDivergenceError(RuntimeError):
    """The discriminator has won outright for too long: the generator gets no useful gradient."""


@dataclass
class GANTrainingConfig(TrainingConfig):
    # ----- objective -----
    gan_loss: str = field(
        default="non-saturating", metadata={"help": f"The adversarial objective: {', '.join(GAN_LOSSES)}."}
    )
    n_critic: int = field(default=1, metadata={"help": "Discriminator steps per generator step (WGAN: 5)."})
    clip_value: float = field(default=0.01, metadata={"help": "--gan_loss wgan: clip critic weights to [-c, c]."})
    lambda_gp: float = field(default=10.0, metadata={"help": "--gan_loss wgan-gp: weight of the gradient penalty."})

    # ----- networks -----
    generator_type: str = field(default="dcgan", metadata={"help": "dcgan, or vae for a VAE-GAN."})
    noise_dim: int = field(default=32, metadata={"help": "Size of the noise z (the latent for a VAE-GAN)."})
    block_out_channels: list[int] = field(
        default_factory=lambda: [32, 64], metadata={"help": "Widths per resolution, for both networks."}
    )
    discriminator_norm: str = field(
        default="batch", metadata={"help": f"Discriminator normalisation: {', '.join(DISCRIMINATOR_NORMS)}."}
    )
    spectral_norm: bool = field(default=False, metadata={"help": "Spectral normalisation on the discriminator."})
    discriminator_conditioning: str = field(
        default="projection", metadata={"help": f"How D sees the condition: {', '.join(DISCRIMINATOR_CONDITIONINGS)}."}
    )
    condition_dim: int = field(default=32, metadata={"help": "Size the condition is embedded to."})
    text_encoder_loss: str | None = field(
        default=None,
        metadata={
            "help": "Which loss trains a jointly trained text encoder: discriminator (it must tell the captions apart "
            "to judge image-caption pairs) or generator (the generator can then move the embeddings wherever the "
            "discriminator scores high, whatever the image). Default: discriminator for the bounded losses, "
            "generator for the WGAN critics (their unbounded scores are not tried with a text encoder behind them)."
        },
    )
    mismatch_weight: float = field(
        default=0.0,
        metadata={
            "help": "Matching-aware discriminator (Reed et al. 2016): weight of a third term that scores real images "
            "with another image's caption or class as fake, so that D, and through it G, must check the condition "
            "(0: off; hinge, non-saturating and minimax only)."
        },
    )

    # ----- VAE-GAN -----
    beta: float = field(default=1.0, metadata={"help": "VAE-GAN: KL weight."})
    norm_num_groups: int = field(default=8, metadata={"help": "VAE-GAN: GroupNorm groups of the VAE."})
    reconstruction_weight: float = field(default=1.0, metadata={"help": "VAE-GAN: weight of the VAE's loss."})
    feature_matching_weight: float = field(
        default=1.0, metadata={"help": "VAE-GAN: weight of ||D features(x) - D features(reconstruction)||^2."}
    )
    adversarial_weight: float = field(default=1.0, metadata={"help": "VAE-GAN: weight of the generator loss."})

    # ----- optimisation (TTUR: the discriminator's own learning rate and betas) -----
    learning_rate: float = field(default=2e-4, metadata={"help": "The generator's learning rate."})
    adam_beta1: float = field(default=0.5, metadata={"help": "The generator's AdamW beta1 (DCGAN: 0.5)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm, both networks (0: off)."})
    discriminator_learning_rate: float | None = field(
        default=None, metadata={"help": "The discriminator's learning rate (default: --learning_rate)."}
    )
    discriminator_adam_beta1: float | None = field(default=None, metadata={"help": "Default: --adam_beta1."})
    discriminator_adam_beta2: float | None = field(default=None, metadata={"help": "Default: --adam_beta2."})

    # ----- diagnostics -----
    divergence_patience: int = field(
        default=200, metadata={"help": "Stop when D is 100%% accurate this many steps in a row (0: never)."}
    )
    mode_collapse_samples: int = field(
        default=256, metadata={"help": "Samples for the mode-collapse number on digits, at each log (0: off)."}
    )

    ranges: ClassVar[dict[str, str]] = {
        "n_critic": "[1, 100]",
        "clip_value": "(0, inf)",
        "lambda_gp": "[0, inf)",
        "noise_dim": "[1, 4096]",
        "block_out_channels": "[1, 4096]",
        "condition_dim": "[1, 4096]",
        "mismatch_weight": "[0, inf)",
        "beta": "[0, inf)",
        "norm_num_groups": "[1, 1024]",
        "reconstruction_weight": "[0, inf)",
        "feature_matching_weight": "[0, inf)",
        "adversarial_weight": "[0, inf)",
        "discriminator_learning_rate": "[0, 1]",
        "discriminator_adam_beta1": "[0, 1)",
        "discriminator_adam_beta2": "[0, 1)",
        "divergence_patience": "[0, inf)",
        "mode_collapse_samples": "[0, inf)",
    }
    model_settings: ClassVar[tuple[str, ...]] = (
        "generator_type", "noise_dim", "block_out_channels", "discriminator_norm", "spectral_norm",
        "discriminator_conditioning", "condition_dim", "norm_num_groups", "text_encoder_loss",
    )  # fmt: skip

    def __post_init__(self):
        super().__post_init__()
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"--gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}.")
        if self.generator_type not in ("dcgan", "vae"):
            raise ValueError(f"--generator_type must be dcgan or vae, got {self.generator_type!r}.")
        if self.gradient_accumulation_steps != 1:
            raise ValueError(
                "GAN training alternates the two networks' optimizer steps batch by batch, so it does not accumulate "
                "gradients: raise --train_batch_size instead of --gradient_accumulation_steps."
            )
        if self.text_encoder_loss is None:
            self.text_encoder_loss = "discriminator" if self.gan_loss in BOUNDED_LOSSES else "generator"
        if self.text_encoder_loss not in ("discriminator", "generator"):
            raise ValueError(
                f"--text_encoder_loss must be discriminator or generator, got {self.text_encoder_loss!r}."
            )
        if self.mismatch_weight and (self.conditioning == "none" or self.gan_loss not in BOUNDED_LOSSES):
            raise ValueError(
                "--mismatch_weight scores real images with a wrong condition as fake: it needs --conditioning text or "
                f"class and a bounded loss ({', '.join(BOUNDED_LOSSES)}), not --conditioning {self.conditioning} "
                f"--gan_loss {self.gan_loss}. Set --mismatch_weight 0 or change those."
            )
        if self.gan_loss == "wgan-gp" and self.discriminator_norm == "batch":
            raise ValueError(
                "--gan_loss wgan-gp penalises each image's gradient, which batch norm couples across the batch: use "
                "--discriminator_norm layer (Gulrajani et al. 2017, section 4) or none."
            )


class GANTrainer(Trainer):
    family = "gan"
    config_class = GANTrainingConfig

    # ----- the two networks ------------------------------------------------------------------------------------------
    def build_model(self) -> GANGenerator | VAEModel:
        """The generator: a DCGAN generator, or for a VAE-GAN a VAE (Gaussian decoder, so its images are
        differentiable) whose decoder generates."""
        channels, height, width = self.image_shape
        if height != width:
            raise ValueError(f"GANs here take square images, got {height}x{width}: pass --resolution.")
        config = self.config
        common = dict(block_out_channels=tuple(config.block_out_channels), condition_dim=config.condition_dim)
        if config.generator_type == "vae":
            return VAEModel(
                sample_size=height,
                in_channels=channels,
                latent_dim=config.noise_dim,
                norm_num_groups=config.norm_num_groups,
                likelihood="gaussian",
                beta=config.beta,
                **common,
                **self.condition_kwargs(),
            )
        return GANGenerator(
            sample_size=height, out_channels=channels, noise_dim=config.noise_dim, **common, **self.condition_kwargs()
        )

    def prepare_auxiliary_models(self):
        config = self.config
        channels, size, _ = self.image_shape
        discriminator = GANDiscriminator(
            sample_size=size,
            in_channels=channels,
            block_out_channels=tuple(config.block_out_channels),
            norm=config.discriminator_norm,
            spectral_norm=config.spectral_norm,
            conditioning=config.discriminator_conditioning,
            condition_dim=config.condition_dim,
            **self.condition_kwargs(),
        )
        betas = (
            config.adam_beta1 if config.discriminator_adam_beta1 is None else config.discriminator_adam_beta1,
            config.adam_beta2 if config.discriminator_adam_beta2 is None else config.discriminator_adam_beta2,
        )
        parameters = list(discriminator.parameters())
        if self.train_text_encoder and not self.text_encoder_learns_with_model():
            parameters += list(self.text_encoder.parameters())
        optimizer, lr_scheduler = self.build_optimizer(parameters, config.discriminator_learning_rate, betas)
        self.discriminator, self.d_optimizer, self.d_lr_scheduler = self.accelerator.prepare(
            discriminator, optimizer, lr_scheduler
        )
        # Generator steps call the bare module: its parameters are frozen then, and a DistributedDataParallel wrapper
        # would wait for gradients that never come.
        self.frozen_discriminator = self.accelerator.unwrap_model(self.discriminator, keep_fp32_wrapper=True)
        self.accurate_steps = 0  # consecutive steps on which D told every real and generated image apart
        self.digit_classifier = None
        if config.mode_collapse_samples and config.dataset_name == "digits" and self.image_shape == (1, 8, 8):
            self.digit_classifier = load_feature_extractor("digits")  # hfgen's shipped digit classifier

    def text_encoder_learns_with_model(self) -> bool:
        return self.config.text_encoder_loss == "generator"

    def build_pipeline(self, model, tokenizer=None, text_encoder=None) -> GANPipeline | VAEPipeline:
        if isinstance(model, VAEModel):
            return VAEPipeline(vae=model, tokenizer=tokenizer, text_encoder=text_encoder)
        return GANPipeline(generator=model, tokenizer=tokenizer, text_encoder=text_encoder)

    # ----- one step: D (G frozen), then every n_critic-th step G (D frozen) ------------------------------------------
    def training_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        generator_turn = step % self.config.n_critic == 0
        drop = torch.rand(len(batch["labels"])) < self.config.caption_dropout
        by_discriminator = self.config.text_encoder_loss == "discriminator"
        with torch.set_grad_enabled(by_discriminator or generator_turn):  # a trained text encoder learns from one loss
            condition = self.condition_from_batch(batch, drop)
        real = batch["pixel_values"]
        mismatch = (
            self.mismatched_pairs(batch, drop) if condition is not None and self.config.mismatch_weight else None
        )
        detached = None if condition is None else condition.detach()
        losses = self.discriminator_step(real, condition if by_discriminator else detached, step, mismatch)
        if generator_turn:
            losses.update(self.generator_step(real, detached if by_discriminator else condition, step))
        with warnings.catch_warnings():  # both schedules follow the global step (one discriminator update each), so
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)  # G's may lead
            self.lr_scheduler.step()
        if step % self.config.logging_steps == 0 and self.digit_classifier is not None:
            self.model.eval()  # sampled as the pipeline will: batch norm with its running statistics
            losses["sample_class_entropy"] = torch.tensor(self.mode_collapse_entropy(self.pipeline()))
            self.model.train()
        return losses

    def fake_images(self, real: torch.Tensor, condition: Condition | None):
        """(images, condition for them, VAE losses): G(z) for z ~ N(0, I); a VAE-GAN's fakes are its
        reconstructions of `real` followed by decoded prior samples."""
        noise = torch.randn(real.shape[0], self.config.noise_dim, device=real.device, dtype=real.dtype)
        if self.config.generator_type == "dcgan":
            return self.model(noise, condition).sample, condition, {}
        output = self.model(real, condition)
        prior_samples = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=True).decode(noise, condition)
        images = torch.cat([output.sample, prior_samples.sample])
        return images, Condition.cat([condition, condition]), {"vae_loss": output.loss, "kl": output.kl}

    def mismatched_pairs(self, batch: dict, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices, condition indices) of real images paired with the condition of another image that asks
        for something else: a shuffled batch, kept where neither caption was dropped and the two differ in class
        (in caption where there are no labels: two wordings of one class must not count as a mismatch)."""
        labels = batch["labels"].cpu()
        other = torch.randperm(len(labels))
        if (labels >= 0).all():
            differ = labels != labels[other]
        else:
            differ = torch.tensor([a != b for a, b in zip(batch["captions"], [batch["captions"][i] for i in other])])
        keep = differ & ~drop & ~drop[other]
        return keep.nonzero().squeeze(1), other[keep]

    def discriminator_step(
        self, real: torch.Tensor, condition: Condition | None, step: int, mismatch: tuple | None = None
    ) -> dict:
        config = self.config
        with torch.no_grad():
            fakes, fake_condition, _ = self.fake_images(real, condition)
        images, conditions = [real, fakes], [condition, fake_condition]
        if mismatch is not None:  # real images with the wrong condition: "fake" for a matching-aware D
            images.append(real[mismatch[0].to(real.device)])
            conditions.append(condition.select(mismatch[1].to(real.device)))
        if config.gan_loss == "wgan-gp":
            interpolates = interpolate_images(real, fakes[: len(real)])
            images.append(interpolates)
            conditions.append(condition)
        # One forward pass over real, generated (mismatched, interpolated) images, as BigGAN does:
        # DistributedDataParallel expects one forward per backward.
        scores = self.discriminator(torch.cat(images), Condition.cat(conditions)).scores
        real_scores, fake_scores = scores[: len(real)], scores[len(real) : len(real) + len(fakes)]
        loss = discriminator_loss(real_scores, fake_scores, config.gan_loss)
        losses = {"d_real": real_scores.detach().mean(), "d_fake": fake_scores.detach().mean()}
        if mismatch is not None and len(mismatch[0]):
            start = len(real) + len(fakes)
            mismatched_scores = scores[start : start + len(mismatch[0])]
            loss = loss + config.mismatch_weight * discriminator_fake_loss(mismatched_scores, config.gan_loss)
            losses["d_mismatched"] = mismatched_scores.detach().mean()
        if config.gan_loss == "wgan-gp":
            penalty = gradient_penalty(scores[-len(interpolates) :], interpolates)
            loss = loss + config.lambda_gp * penalty
            losses["gradient_penalty"] = penalty.detach()
        losses["loss"] = losses["d_loss"] = loss
        self.check_finite(losses, step)
        self.accelerator.backward(loss)
        self.optimizer_step(self.d_optimizer, self.d_lr_scheduler)
        if config.gan_loss == "wgan":  # keeps the critic (roughly) Lipschitz
            with torch.no_grad():
                for parameter in self.discriminator.parameters():
                    parameter.clamp_(-config.clip_value, config.clip_value)
        if config.gan_loss in BOUNDED_LOSSES:
            losses["d_accuracy"] = self.check_divergence(real_scores.detach(), fake_scores.detach(), step)
        return losses

    def generator_step(self, real: torch.Tensor, condition: Condition | None, step: int) -> dict:
        config, discriminator = self.config, self.frozen_discriminator
        discriminator.requires_grad_(False)
        try:
            fakes, fake_condition, vae_losses = self.fake_images(real, condition)
            output = discriminator(fakes, fake_condition)
            adversarial = generator_loss(output.scores, config.gan_loss)
            losses = {"g_loss": adversarial, **vae_losses}
            loss = adversarial
            if vae_losses:  # Larsen et al.: reconstruct in D's feature space as well as in pixels
                with torch.no_grad():
                    real_features = discriminator(real, condition).features
                feature_matching = ((output.features[: len(real)] - real_features) ** 2).sum(1).mean()
                losses["feature_matching"] = feature_matching
                loss = (
                    config.reconstruction_weight * vae_losses["vae_loss"]
                    + config.adversarial_weight * adversarial
                    + config.feature_matching_weight * feature_matching
                )
                losses["g_total"] = loss
            self.check_finite({"loss": loss}, step)
            self.accelerator.backward(loss)
            self.optimizer_step(self.optimizer)  # the generator and a jointly trained text encoder, clipped together
        finally:
            discriminator.requires_grad_(True)
        return {name: value.detach() for name, value in losses.items()}

    # ----- diagnostics -----------------------------------------------------------------------------------------------
    def check_divergence(self, real_scores: torch.Tensor, fake_scores: torch.Tensor, step: int) -> torch.Tensor:
        """D's accuracy (score > 0 means "real"), averaged over processes; raises GANDivergenceError when it has
        been 100% for `divergence_patience` steps in a row."""
        accuracy = ((real_scores > 0).float().mean() + (fake_scores < 0).float().mean()) / 2
        accuracy = self.accelerator.reduce(accuracy, "mean")
        self.accurate_steps = self.accurate_steps + 1 if accuracy.item() == 1.0 else 0
        patience = self.config.divergence_patience
        if patience and self.accurate_steps >= patience:
            remedies = ["a lower --discriminator_learning_rate"] + ["--spectral_norm"] * (
                not self.config.spectral_norm
            )
            raise GANDivergenceError(
                f"The GAN has diverged at step {step}: the discriminator told every real image from every generated "
                f"one for {patience} steps in a row, so the generator gets no useful gradient (--gan_loss "
                f"{self.config.gan_loss}). Last checkpoint: {self.latest_checkpoint() or 'none yet'}. Try "
                f"{', '.join(remedies)} or --gan_loss wgan-gp --discriminator_norm layer; --divergence_patience 0 "
                "turns this check off."
            )
        return accuracy

    @torch.no_grad()
    def mode_collapse_entropy(self, pipeline) -> float:
        """Entropy (nats) of the digit classifier's predicted classes over unconditional samples: log 10 = 2.30 when
        all ten digits are drawn equally often, 0 when the generator has collapsed to one."""
        images = pipeline.generate(self.config.mode_collapse_samples, seed=self.config.seed)  # its own generator
        classifier = self.digit_classifier.to(images.device)
        return class_histogram_entropy(classifier.class_probabilities(images * 2 - 1))

    @torch.no_grad()
    def evaluate(self, pipeline) -> dict[str, float]:
        """The mode-collapse number, and the Frechet distance in the digit classifier's feature space between the
        held-out digits and as many samples (both on the digits only)."""
        if self.digit_classifier is None:
            return {}
        metrics = {"sample_class_entropy": self.mode_collapse_entropy(pipeline), "max_class_entropy": math.log(10)}
        test = self.splits["test"]
        real = torch.stack([test[i]["pixel_values"] for i in range(len(test))])
        fake = pipeline.generate(len(real), seed=self.config.seed + 1) * 2 - 1
        classifier = self.digit_classifier
        metrics[f"fid{len(real)}_digit_features"] = fid(
            classifier.features(real.to(fake.device)).cpu().numpy(), classifier.features(fake).cpu().numpy()
        )
        return metrics
