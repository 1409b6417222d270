"""The diffusion family: diffusers' UNets and schedulers in DiffusionImagePipeline and DiffusionTrainer, through the
shared mixins, plus what only diffusion does (the closed-form forward process, guidance, swappable samplers, the
trajectory, RePaint inpainting, the L_vlb bound, latent diffusion)."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.models.unets.unet_2d import UNet2DOutput
from hfgen.pipelines.pipeline_diffusion import (
    encode_to_latents,
    predicted_original_and_noise,
    unet_forward,
    with_coordinates,
)
from hfgen.training.train import parse_config
from hfgen.training.trainer_diffusion import DiffusionTrainer
from test_remote_code import SUBPROCESS_SCRIPT
from testing_utils import ConditionVariantsPipelineTesterMixin, TrainerTesterMixin, record_logs, train_on_two_cpu_ranks

import hfgen
from hfgen.data import make_digits_dataset

TINY_UNET = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=4,
)


def tiny_unet(condition: str | None = None, text_dim: int = 32):
    torch.manual_seed(0)
    if condition == "text":
        return UNet2DConditionModel(
            **TINY_UNET,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_dim,
        ).eval()
    return UNet2DModel(
        **TINY_UNET,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
        num_class_embeds=11 if condition == "class" else None,
    ).eval()


def tiny_pipeline(condition=None, text_components=None, prediction_type="epsilon", num_train_timesteps=20):
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, prediction_type=prediction_type)
    tokenizer, text_encoder = text_components if condition == "text" else (None, None)
    return hfgen.DiffusionImagePipeline(
        unet=tiny_unet(condition), scheduler=scheduler, tokenizer=tokenizer, text_encoder=text_encoder, num_bins=17
    )


@pytest.fixture(scope="module")
def digit_images() -> torch.Tensor:
    """The first 16 digits, (16, 1, 8, 8) in [0, 1], as pipelines take images."""
    pixels = np.stack(
        [np.asarray(image, dtype=np.float32) for image in make_digits_dataset().select(range(16))["image"]]
    )
    return torch.from_numpy(pixels)[:, None] / 255


# ----- the shared mixins --------------------------------------------------------------------------------------------
class TestDiffusionPipeline(ConditionVariantsPipelineTesterMixin):
    pipeline_class = hfgen.DiffusionImagePipeline

    def get_pipeline(self):
        return tiny_pipeline(self.condition, self.text_components)

    def get_call_kwargs(self):
        return {**super().get_call_kwargs(), "num_inference_steps": 4}


TINY_ARGS = (
    "--family diffusion --dataset_name digits --train_batch_size 16 --block_out_channels 8 16 --norm_num_groups 4 "
    "--attention_head_dim 4 --num_train_timesteps 50 --report_to none --text_hidden_size 32 --text_num_layers 1 "
    "--num_validation_images 2 --no_attention --validation_inference_steps 5"
).split()


def tiny_args(output_dir, *extra_args: str) -> list[str]:
    return [*TINY_ARGS, "--output_dir", str(output_dir), *extra_args]


class TestDiffusionTrainer(TrainerTesterMixin):
    trainer_class = DiffusionTrainer

    def get_args(self, output_dir) -> list[str]:
        return tiny_args(output_dir)

    def test_noisy_input_is_the_closed_form(self, tmp_path):
        """The UNet sees x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for the batch's noise and timesteps, on the
        cosine schedule too."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "1", "--conditioning", "none", "--beta_schedule", "squaredcos_cap_v2"
        )
        batch = next(iter(trainer.train_dataloader))
        seen = []
        trainer.model.register_forward_hook(lambda module, args, kwargs, output: seen.append(args), with_kwargs=True)
        torch.manual_seed(3)
        trainer.compute_loss(batch, None)

        torch.manual_seed(3)
        clean = batch["pixel_values"]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, 50, (len(clean),))
        # The cosine schedule written out (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999.
        f = [math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(51)]
        abar = torch.tensor(np.cumprod([1 - min(1 - f[t + 1] / f[t], 0.999) for t in range(50)]))
        a = abar[timesteps].float().view(-1, 1, 1, 1)
        expected = a.sqrt() * clean + (1 - a).sqrt() * noise
        sample, timestep = seen[0][0], seen[0][1]
        torch.testing.assert_close(timestep, timesteps)
        torch.testing.assert_close(sample, expected, rtol=0, atol=1e-5)

    @pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
    def test_loss_is_zero_for_the_exact_target(self, tmp_path, prediction_type):
        """A UNet that outputs exactly the target of --prediction_type has zero loss, with and without Min-SNR."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "1", "--conditioning", "none", "--prediction_type", prediction_type,
            "--snr_gamma", "5",
        )  # fmt: skip
        batch = next(iter(trainer.train_dataloader))
        clean = batch["pixel_values"]
        torch.manual_seed(1)
        noise, timesteps = torch.randn_like(clean), torch.randint(0, 50, (len(clean),))
        abar = trainer.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        target = {
            "epsilon": noise,
            "sample": clean,
            "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * clean,
        }[prediction_type]
        trainer.model.forward = lambda sample, timestep, class_labels=None: UNet2DOutput(sample=target)
        torch.manual_seed(1)
        losses = trainer.compute_loss(batch, None)
        assert losses["loss"].item() == pytest.approx(0, abs=1e-10) and losses["mse"].item() == pytest.approx(
            0, abs=1e-10
        )
        trainer.model.forward = lambda sample, timestep, class_labels=None: UNet2DOutput(sample=target + 0.1)
        torch.manual_seed(1)
        assert trainer.compute_loss(batch, None)["mse"].item() == pytest.approx(0.01, rel=1e-4)

    def test_min_snr_weights(self, tmp_path):
        """--snr_gamma 5 with epsilon: each image's MSE is weighted by min(SNR_t, 5) / SNR_t."""
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "1", "--conditioning", "none", "--snr_gamma", "5")
        batch = next(iter(trainer.train_dataloader))
        clean = batch["pixel_values"]
        torch.manual_seed(2)
        noise, timesteps = torch.randn_like(clean), torch.randint(0, 50, (len(clean),))
        errors = torch.arange(1.0, len(clean) + 1).view(-1, 1, 1, 1)  # image i's error is i + 1 everywhere
        trainer.model.forward = lambda sample, timestep, class_labels=None: UNet2DOutput(sample=noise + errors)
        torch.manual_seed(2)
        loss = trainer.compute_loss(batch, None)["loss"]
        abar = trainer.noise_scheduler.alphas_cumprod[timesteps]
        snr = abar / (1 - abar)
        expected = (errors.flatten() ** 2 * snr.clamp(max=5) / snr).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    def test_timestep_bias_draws_the_chosen_steps_more_often(self, tmp_path):
        """--timestep_bias_strategy, as diffusers' train_text_to_image_sdxl.py: "later" with portion 0.2 and multiplier
        4 makes each of the last 10 of 50 steps 4 times as likely as any other, and the loss trains the drawn steps."""
        bias = ["--timestep_bias_strategy", "later", "--timestep_bias_portion", "0.2"]
        bias += ["--timestep_bias_multiplier", "4"]
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "1", "--conditioning", "none", *bias)
        expected = torch.cat([torch.full((40,), 1 / 80), torch.full((10,), 4 / 80)])
        torch.testing.assert_close(trainer.timestep_weights, expected)
        batch = next(iter(trainer.train_dataloader))
        drawn = []

        def record(sample, timestep, class_labels=None):
            drawn.append(timestep)
            return UNet2DOutput(sample=torch.zeros_like(sample))

        trainer.model.forward = record
        torch.manual_seed(0)
        for _ in range(40):
            trainer.compute_loss(batch, None)
        share_late = (torch.cat(drawn) >= 40).float().mean().item()
        assert share_late == pytest.approx(40 / 80, abs=0.05)  # uniform drawing gives 10 / 50

        ranged = ("--timestep_bias_strategy", "range", "--timestep_bias_begin", "45", "--timestep_bias_end", "50")
        trainer = self.build_trainer(tmp_path / "range", "--max_train_steps", "1", *ranged)
        assert trainer.timestep_weights is None  # multiplier 1: uniform, diffusers' randint
        ranged += ("--timestep_bias_multiplier", "1e9")
        weights = self.build_trainer(tmp_path / "range2", "--max_train_steps", "1", *ranged).timestep_weights
        assert weights[45:].sum().item() == pytest.approx(1.0) and (weights[45:] == weights[45]).all()

    def test_exact_resume_with_timestep_bias(self, tmp_path, monkeypatch):
        """The biased draw (torch.multinomial on torch's global generator, whose state the checkpoint keeps) resumes
        exactly, as the uniform one does."""
        bias = ("--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "4")
        monkeypatch.setattr(self, "get_args", lambda output_dir: tiny_args(output_dir, *bias))
        self.test_exact_resume(tmp_path)

    def test_loss_falls_on_digits(self, tmp_path):
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "60", "--learning_rate", "3e-3", "--logging_steps", "20",
            "--conditioning", "none",
        )  # fmt: skip
        logs = record_logs(trainer)

        trainer.train()

        logged = [values["loss"] for _, values in logs]
        assert len(logged) == 3
        # Measured (seed 0, two runs): mean loss of steps 1-20 0.76-0.81, of steps 41-60 0.58 (a ratio of 0.71-0.76).
        assert logged[-1] < logged[0] * 0.85, logged

    def test_two_cpu_ranks_train_together(self, tmp_path, repo_root):
        train_on_two_cpu_ranks(repo_root, tmp_path / "run", tiny_args(tmp_path / "run", "--max_train_steps", "3"))

    def test_ema_warmup_settings_reach_the_ema(self, tmp_path):
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "1", "--use_ema", "--ema_warmup", "--ema_power", "0.5",
            "--ema_decay", "0.9999",
        )  # fmt: skip
        assert trainer.ema.use_ema_warmup and trainer.ema.power == 0.5
        # diffusers' warm-up: decay 1 - (1 + step / inv_gamma) ** -power at step 10 (step - update_after_step - 1).
        assert trainer.ema.get_decay(11) == pytest.approx(1 - (1 + 10) ** -0.5)

    def test_latent_diffusion_on_a_frozen_autoencoder_kl(self, tmp_path):
        torch.manual_seed(0)
        vae = AutoencoderKL(
            in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8), norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        )  # fmt: skip
        vae.save_pretrained(tmp_path / "vae")
        trainer = self.build_trainer(
            tmp_path / "run", "--max_train_steps", "2", "--conditioning", "none", "--vae_name_or_path",
            str(tmp_path / "vae"), "--block_out_channels", "8", "--scaling_factor_images", "256",
        )  # fmt: skip
        frozen = trainer.frozen_components["vae"]
        assert not any(p.requires_grad for p in frozen.parameters())
        # The measured scaling factor gives the training latents unit standard deviation.
        pixels = torch.stack([trainer.splits["train"][i]["pixel_values"] for i in range(256)])
        latents = encode_to_latents(frozen, pixels, torch.Generator().manual_seed(0))
        assert latents.std().item() == pytest.approx(1.0, abs=1e-4)
        assert frozen.config.scaling_factor != 1.0
        unet = trainer.accelerator.unwrap_model(trainer.model)
        assert (unet.config.in_channels, unet.config.sample_size) == (2, 4)  # the latent, not the 8x8 image
        trainer.train()

        pipeline = hfgen.load_pipeline(str(tmp_path / "run"))
        assert isinstance(pipeline.vae, AutoencoderKL)
        assert pipeline.vae.config.scaling_factor == pytest.approx(frozen.config.scaling_factor)
        assert pipeline.scheduler.config.clip_sample is False  # latents of std 1 must not be clamped to [-1, 1]
        with pytest.raises(ValueError, match="--clip_sample"):
            self.build_trainer(tmp_path / "clip", "--vae_name_or_path", str(tmp_path / "vae"), "--clip_sample")
        images = pipeline(batch_size=2, num_inference_steps=3, output_type="pt").images
        assert images.shape == (2, 1, 8, 8)  # decoded
        with pytest.raises(ValueError, match="pixel space"):
            pipeline.inpaint(images * 2 - 1, torch.ones(8, 8))

    @pytest.mark.parametrize("clip_sample", [False, True])
    def test_saved_scheduler_clips_x0_only_when_asked(self, tmp_path, clip_sample):
        flags = ["--clip_sample"] if clip_sample else []
        self.build_trainer(tmp_path, "--max_train_steps", "1", "--conditioning", "none", *flags).train()
        pipeline = hfgen.load_pipeline(str(tmp_path))
        assert pipeline.scheduler.config.clip_sample is clip_sample
        # The diffusers swap inherits it (diffusers' own default would be True).
        assert DDIMScheduler.from_config(pipeline.scheduler.config).config.clip_sample is clip_sample

    def test_latent_diffusion_on_a_trained_hfgen_vae_with_a_spatial_latent(self, tmp_path):
        """`--family vae --latent_channels` trains the first stage; its saved pipeline folder is `--vae_name_or_path`:
        frozen, latents scaled to unit std, the UNet on the (2, 4, 4) latent grid, and the saved pipeline decodes."""
        vae_args = [
            "--family", "vae", "--dataset_name", "digits", "--conditioning", "none", "--latent_channels", "2",
            "--block_out_channels", "8", "--norm_num_groups", "4", "--beta", "0.1", "--train_batch_size", "32",
            "--max_train_steps", "3", "--eval_max_images", "8", "--eval_num_samples", "2", "--report_to", "none",
            "--output_dir", str(tmp_path / "vae"),
        ]  # fmt: skip
        trainer_class, config = parse_config(vae_args)
        assert trainer_class.family == "vae"
        trainer_class(config).train()

        trainer = self.build_trainer(
            tmp_path / "run", "--max_train_steps", "2", "--conditioning", "none", "--vae_name_or_path",
            str(tmp_path / "vae"), "--block_out_channels", "8", "--scaling_factor_images", "256",
        )  # fmt: skip
        frozen = trainer.frozen_components["vae"]
        assert isinstance(frozen, hfgen.VAEModel) and not any(p.requires_grad for p in frozen.parameters())
        pixels = torch.stack([trainer.splits["train"][i]["pixel_values"] for i in range(256)])
        latents = encode_to_latents(frozen, pixels, torch.Generator().manual_seed(0))
        assert latents.shape == (256, 2, 4, 4) and latents.std().item() == pytest.approx(1.0, abs=1e-4)
        unet = trainer.accelerator.unwrap_model(trainer.model)
        assert (unet.config.in_channels, unet.config.sample_size) == (2, 4)
        trainer.train()

        pipeline = hfgen.load_pipeline(str(tmp_path / "run"))
        assert isinstance(pipeline.vae, hfgen.VAEModel)
        assert pipeline.vae.config.scaling_factor == pytest.approx(frozen.config.scaling_factor)
        assert pipeline.vae.config.scaling_factor != 1.0
        assert pipeline(batch_size=2, num_inference_steps=3, output_type="pt").images.shape == (2, 1, 8, 8)

    def test_coordinate_channels_reach_the_unet_and_the_pipeline_samples_images(self, tmp_path):
        """--coordinate_channels builds the UNet with two more input channels, and every UNet call (training and
        sampling) gets every position's (x, y) in [-1, 1] there; the images keep their own channel count."""
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "2", "--coordinate_channels")
        unet = trainer.accelerator.unwrap_model(trainer.model)
        assert (unet.config.in_channels, unet.config.out_channels) == (3, 1)
        seen = []
        unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
        trainer.train()
        x, y = seen[0][0, 1], seen[0][0, 2]  # the first training call's grid
        torch.testing.assert_close(x[0], torch.linspace(-1, 1, 8))  # x grows left to right along every row
        torch.testing.assert_close(y[:, 0], torch.linspace(-1, 1, 8))  # y grows top to bottom
        assert (x == x[:1]).all() and (y == y[:, :1]).all()

        pipeline = hfgen.load_pipeline(str(tmp_path))
        assert pipeline.image_format == (1, 8) and pipeline.latent_shape(2) == (2, 1, 8, 8)
        seen.clear()
        pipeline.unet.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
        prompts = ["a handwritten digit three", "a handwritten digit seven"]
        images = pipeline(prompts, num_inference_steps=2, guidance_scale=2.0, output_type="pt").images
        assert images.shape == (2, 1, 8, 8) and seen[0].shape[1] == 3
        torch.testing.assert_close(seen[0][:, 1:], with_coordinates(torch.zeros(len(seen[0]), 1, 8, 8))[:, 1:])

    def test_hfgen_vae_with_a_vector_latent_is_refused_for_latent_diffusion(self, tmp_path):
        vae = hfgen.VAEModel(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
        vae.save_pretrained(tmp_path / "vae")
        with pytest.raises(ValueError, match="vector latent.*--latent_channels"):
            self.build_trainer(tmp_path / "run", "--max_train_steps", "1", "--vae_name_or_path", str(tmp_path / "vae"))
        # A model that is no autoencoder at all is named as such (it was said to have "a vector latent").
        hfgen.RowLSTMModel(sample_size=8, hidden_channels=8, num_layers=1).save_pretrained(tmp_path / "prior")
        with pytest.raises(ValueError, match=r"is a RowLSTMModel \(not an autoencoder\)"):
            self.build_trainer(
                tmp_path / "run", "--max_train_steps", "1", "--vae_name_or_path", str(tmp_path / "prior")
            )

    def test_bad_settings_raise(self, tmp_path):
        bad = [("--prediction_type", "x0"), ("--beta_schedule", "cosine"), ("--snr_gamma", "0")]
        bad += [("--validation_inference_steps", "51"), ("--norm_num_groups", "3"), ("--cross_attention_levels", "2")]
        bad += [("--timestep_bias_strategy", "high")]
        for flag, value in bad:
            with pytest.raises(ValueError, match=flag):
                self.build_trainer(tmp_path, flag, value)
        later = ("--timestep_bias_strategy", "later")
        bad_bias = [
            (("--timestep_bias_multiplier", "0"), "--timestep_bias_multiplier must be positive"),
            (("--timestep_bias_portion", "1"), "--timestep_bias_portion 1.0 of 50"),
            (("--timestep_bias_strategy", "range", "--timestep_bias_end", "60"), "0 <= begin < end <= "),
        ]
        for flags, message in bad_bias:
            with pytest.raises(ValueError, match=message):
                self.build_trainer(tmp_path, *later, *flags)


# ----- sampling -----------------------------------------------------------------------------------------------------
def test_guidance_scale_one_is_the_conditional_prediction(tiny_text_components):
    pipeline = tiny_pipeline("text", tiny_text_components)
    condition, negative = pipeline.encode_prompt(["a handwritten digit seven"] * 2, do_classifier_free_guidance=True)
    latents = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(7)
    conditional = unet_forward(pipeline.unet, latents, t, condition)
    unconditional = unet_forward(pipeline.unet, latents, t, negative)
    assert not torch.allclose(conditional, unconditional)
    # Through the guided (batched [negative, condition]) path:
    torch.testing.assert_close(pipeline.predict(latents, t, condition, negative, 1.0), conditional)
    torch.testing.assert_close(
        pipeline.predict(latents, t, condition, negative, 3.0), unconditional + 3 * (conditional - unconditional)
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_each_prediction_type_converts_back_to_x0_and_noise(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=20, prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 1, 8, 8, generator=generator), torch.randn(3, 1, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 9, 19])
    x_t = scheduler.add_noise(x0, noise, timesteps)
    output = {"epsilon": noise, "sample": x0, "v_prediction": scheduler.get_velocity(x0, noise, timesteps)}
    recovered_x0, recovered_noise = predicted_original_and_noise(scheduler, output[prediction_type], x_t, timesteps)
    torch.testing.assert_close(recovered_x0, x0, rtol=0, atol=2e-4)
    torch.testing.assert_close(recovered_noise, noise, rtol=0, atol=2e-4)


SAMPLERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim-eta0": (DDIMScheduler, {"eta": 0.0}),
    "ddim-eta1": (DDIMScheduler, {"eta": 1.0}),
    "dpm-solver++": (DPMSolverMultistepScheduler, {}),
}


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_is_deterministic_for_a_seed_and_survives_save_load(sampler, tmp_path):
    scheduler_class, kwargs = SAMPLERS[sampler]
    pipeline = tiny_pipeline("class")
    pipeline.scheduler = scheduler_class.from_config(pipeline.scheduler.config)  # the diffusers way
    assert pipeline.scheduler.config.num_train_timesteps == 20

    def sample(pipe, seed):
        generator = torch.Generator().manual_seed(seed)
        return pipe(class_labels=[3, 4], num_inference_steps=5, generator=generator, output_type="np", **kwargs).images

    first, again, other = sample(pipeline, 0), sample(pipeline, 0), sample(pipeline, 1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    pipeline.save_pretrained(tmp_path)
    loaded = hfgen.load_pipeline(tmp_path)
    assert type(loaded.scheduler) is scheduler_class
    np.testing.assert_array_equal(sample(loaded, 0), first)


def test_ddim_eta_changes_the_samples():
    pipeline = tiny_pipeline()
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    images = [
        pipeline(batch_size=2, num_inference_steps=5, eta=eta, generator=torch.manual_seed(0), output_type="np").images
        for eta in (0.0, 1.0)
    ]
    assert not np.array_equal(*images)


def test_saved_unet_and_scheduler_load_with_plain_diffusers(tmp_path):
    pipeline = tiny_pipeline("class", prediction_type="v_prediction")
    pipeline.save_pretrained(tmp_path)
    unet = UNet2DModel.from_pretrained(tmp_path / "unet")
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.num_train_timesteps == 20
    for name, tensor in pipeline.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[name], tensor), name
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["num_bins"] == 17


def test_trajectory_and_step_callback():
    pipeline = tiny_pipeline()
    seen = []

    def callback(pipe, step, timestep, values):
        seen.append((step, int(timestep)))
        return {"latents": values["latents"]}

    output = pipeline(
        batch_size=2, num_inference_steps=6, generator=torch.manual_seed(0), output_type="pt", return_trajectory=True,
        trajectory_steps=4, callback_on_step_end=callback,
    )  # fmt: skip
    assert [step for step, _ in seen] == list(range(6))
    assert [t for _, t in seen] == pipeline.scheduler.timesteps.tolist()
    assert len(output.trajectory) == 4
    torch.testing.assert_close(output.trajectory[-1], output.images)
    noise = pipeline.postprocess(torch.randn(2, 1, 8, 8, generator=torch.manual_seed(0)), "pt")
    torch.testing.assert_close(output.trajectory[0], noise)  # x_T, the initial noise
    images, trajectory = pipeline(num_inference_steps=6, return_trajectory=True, trajectory_steps=4, return_dict=False)
    assert len(trajectory) == 4
    with pytest.raises(ValueError, match="trajectory_steps"):
        pipeline(return_trajectory=True, trajectory_steps=1)


def test_class_labels_use_the_null_class_for_unconditional_samples():
    pipeline = tiny_pipeline("class")
    assert pipeline.condition_type == "class" and pipeline.num_classes == 10
    assert {"class", "guidance", "steps", "inpainting", "likelihood"} <= pipeline.capabilities
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        pipeline(class_labels=[11], num_inference_steps=2)
    # No class labels means the null class, index 10 (the UNet's last class embedding).
    kwargs = {"num_inference_steps": 3, "output_type": "np"}
    unconditional = pipeline(batch_size=2, generator=torch.manual_seed(0), **kwargs).images
    null = pipeline(class_labels=[10, 10], generator=torch.manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(unconditional, null)
    assert not np.array_equal(
        unconditional, pipeline(class_labels=[3, 3], generator=torch.manual_seed(0), **kwargs).images
    )
    assert "guidance" not in tiny_pipeline().capabilities


# ----- inpainting ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_inpainting_keeps_the_known_pixels(digit_images, prediction_type):
    pipeline = tiny_pipeline("class", prediction_type=prediction_type)
    images = digit_images[:4]
    hole = torch.zeros(8, 8)
    hole[4:] = 1  # complete the bottom half
    completed = pipeline.inpaint(
        images, hole, class_labels=[0, 1, 2, 3], num_inference_steps=10, jump_length=3, jump_n_sample=2,
        guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="pt",
    )  # fmt: skip
    original = images
    torch.testing.assert_close(completed[:, :, :4], original[:, :, :4], rtol=0, atol=1e-6)
    assert (completed[:, :, 4:] - original[:, :, 4:]).abs().max() > 0.1  # the hole was generated
    with pytest.raises(ValueError, match="mask_image"):
        pipeline.inpaint(images, torch.ones(4, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mask_image": "255"}, r"mask_image values must be in \[0, 1\].*got 0 to 255. For a 0..255 mask pass"),
        ({"mask_image": "nan"}, "mask_image values must be in .0, 1.*NaN"),
        ({"jump_length": 0}, "jump_length must be an int >= 1"),
        ({"jump_n_sample": 0}, r"jump_n_sample must be an int >= 1 \(1: no resampling\)"),
        ({"num_inference_steps": 0}, "num_inference_steps must be an int in"),
        ({"num_inference_steps": 21}, r"num_inference_steps must be an int in \[1, 20\] \(the trained timesteps\)"),
        ({"eta": -0.1}, r"eta must be a finite number in \[0, 1\]"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ],
    ids=[
        "mask-0-255",
        "mask-nan",
        "jump-length",
        "jump-n-sample",
        "no-steps",
        "too-many-steps",
        "eta",
        "nan-guidance",
    ],
)
def test_bad_inpainting_arguments_are_refused(digit_images, kwargs, message):
    """Each of these used to end in a ZeroDivisionError or a range() error inside diffusers' RePaintScheduler, or to
    inpaint silently with a rounded mask or without guidance."""
    pipeline = tiny_pipeline("class", num_train_timesteps=20)
    mask = torch.zeros(8, 8)
    mask[4:] = 1
    mask = {"255": mask * 255, "nan": mask * float("nan")}.get(kwargs.pop("mask_image", None), mask)
    call = {"num_inference_steps": 4, "jump_length": 2, "jump_n_sample": 2, "class_labels": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipeline.inpaint(digit_images[:1], mask, **call)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inference_steps": 21}, r"num_inference_steps must be an int in \[1, 20\] \(the trained timesteps\)"),
        ({"eta": 1.5}, r"eta must be a finite number in \[0, 1\]"),
        ({"eta": float("nan")}, "eta must be a finite number"),
        ({"return_trajectory": True, "trajectory_steps": 2.5}, "trajectory_steps must be an int >= 2, got 2.5"),
    ],
    ids=["too-many-steps", "eta-above-one", "eta-nan", "fractional-trajectory"],
)
def test_bad_sampling_steps_and_eta_are_refused(kwargs, message):
    """More steps than trained used to raise from inside diffusers' scheduler; eta outside [0, 1] was passed on to
    DDIM (whose noise above 1 outgrows x_{t-1}: NaN samples) or silently ignored by DDPM."""
    pipeline = tiny_pipeline(num_train_timesteps=20)
    with pytest.raises(ValueError, match=message):
        pipeline(**{"num_inference_steps": 4, **kwargs})


# ----- the likelihood bound ------------------------------------------------------------------------------------------
def test_vlb_of_an_oracle_denoiser_is_prior_plus_decoder(digit_images):
    """A UNet that predicts x_0 exactly makes every KL term of L_vlb zero: the bound is then KL(q(x_T|x_0) || N(0,I))
    plus the discretized Gaussian decoder's -log P(x_0) with the mean on the pixel, computed here by hand."""
    pipeline = tiny_pipeline(prediction_type="sample", num_train_timesteps=20)
    x0 = digit_images[:1] * 2 - 1  # the model's scale
    pipeline.unet.forward = lambda sample, timestep, class_labels=None: UNet2DOutput(sample=x0.expand_as(sample))
    bound = pipeline.log_likelihood(digit_images[:1], generator=torch.Generator().manual_seed(0))

    scheduler = DDPMScheduler(num_train_timesteps=20)
    abar, betas = scheduler.alphas_cumprod.double(), scheduler.betas.double()
    variance_T = 1 - abar[-1]
    prior = (0.5 * (-variance_T.log() + variance_T + abar[-1] * x0.double() ** 2 - 1)).sum()
    sigma = math.sqrt(betas[1] * (1 - abar[0]) / (1 - abar[1]))  # beta~_1, DDPM's decoder variance
    half_bin = 1 / 16
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    interior, edge = math.log(phi(half_bin / sigma) - phi(-half_bin / sigma)), math.log(phi(half_bin / sigma))
    is_edge = (x0.abs() > 1 - half_bin).double()
    decoder = -(is_edge * edge + (1 - is_edge) * interior).sum()
    expected_nats = (prior + decoder).item()
    assert bound.log_likelihood.item() == pytest.approx(-expected_nats, rel=1e-5)
    assert bound.bits_per_dim.item() == pytest.approx(expected_nats / (64 * math.log(2)), rel=1e-5)
    assert bound.kind.startswith("lower bound") and "17 levels" in bound.dequantization


@pytest.mark.parametrize("clip_sample", [False, True])
def test_vlb_clamps_x0_predictions_to_the_data_range_whatever_the_sampler(digit_images, clip_sample):
    pipeline = tiny_pipeline(prediction_type="sample", num_train_timesteps=20)
    pipeline.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, clip_sample=clip_sample)
    x0 = digit_images[:1] * 2 - 1
    bounds = []
    for prediction in (x0 * 5, (x0 * 5).clamp(-1, 1)):  # far outside [-1, 1], and the same clamped
        pipeline.unet.forward = lambda sample, timestep, class_labels=None, p=prediction: UNet2DOutput(
            sample=p.expand_as(sample)
        )
        bounds.append(pipeline.log_likelihood(digit_images[:1], generator=torch.Generator().manual_seed(0)))
    assert bounds[0].log_likelihood.item() == bounds[1].log_likelihood.item()


def test_vlb_of_a_real_unet_is_finite_and_positive(digit_images):
    pipeline = tiny_pipeline(num_train_timesteps=20)
    bound = pipeline.log_likelihood(digit_images[:4], generator=torch.Generator().manual_seed(0))
    assert bound.bits_per_dim.shape == (4,) and torch.isfinite(bound.bits_per_dim).all()
    assert (bound.bits_per_dim > 0).all()


# ----- loading without hfgen ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", ["pixels", "latents of an hfgen VAE"])
def test_self_contained_pipeline_loads_with_diffusers_alone(tmp_path, space):
    """make_self_contained (what hfgen.hub.push_to_hub uploads) bundles pipeline_diffusion.py (and, for latent
    diffusion on an hfgen VAE, its modeling file); a process that cannot import hfgen loads it with
    `trust_remote_code=True` and samples the same images."""
    from hfgen.remote_code import make_self_contained

    pipeline = tiny_pipeline("class")
    if space != "pixels":
        torch.manual_seed(0)
        vae = hfgen.VAEModel(latent_channels=2, block_out_channels=(8,), norm_num_groups=4, num_bins=17).eval()
        unet = UNet2DModel.from_config({**pipeline.unet.config, "sample_size": 4, "in_channels": 2, "out_channels": 2})
        pipeline = hfgen.DiffusionImagePipeline(unet=unet.eval(), scheduler=pipeline.scheduler, vae=vae, num_bins=17)
    call = {"class_labels": [3, 7], "guidance_scale": 2.0, "num_inference_steps": 3}
    images = pipeline(**call, generator=torch.manual_seed(0), output_type="np").images
    folder = tmp_path / "pipe"
    pipeline.save_pretrained(folder)
    assert make_self_contained(str(folder))[0] == "pipeline_diffusion.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "DIFFUSERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", SUBPROCESS_SCRIPT, json.dumps({str(folder): call})],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    loaded = json.loads(line.removeprefix("RESULT "))
    assert loaded["hfgen_modules"] == [] and loaded["refused"] is not None
    assert loaded[str(folder)]["classes"]["pipeline"].startswith("diffusers_modules.")
    assert loaded[str(folder)]["classes"]["unet"] == "diffusers.models.unets.unet_2d.UNet2DModel"
    if space != "pixels":
        assert loaded[str(folder)]["classes"]["vae"].startswith("diffusers_modules.")  # the bundled VAEModel
    expected = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()
    assert loaded[str(folder)]["images"] == expected
    shutil.rmtree(folder)
