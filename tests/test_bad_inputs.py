"""The fault-and-bad-input probe (issue 10), kept as tests: each case is a clear error that names the problem, or the
right behaviour; none silent, nothing lost. Training cases use the tiny VAE of test_trainer.py (a family's own flags:
that family); most fail before any training step and take milliseconds."""

import errno
import io
import json
import logging
import os
import shutil
import signal

import accelerate.checkpointing
import numpy as np
import pytest
import torch
from hfgen.training import checks
from hfgen.training.train import parse_config
from hfgen.training.trainer_vae import VAETrainer
from PIL import Image
from safetensors.torch import load_file, save_file
from test_trainer import checkpoint_names, record_logs, tiny_args

import hfgen
from hfgen.cli import main as hfgen_main
from hfgen.data import load_image_dataset


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def build(output_dir, *extra_args: str, trainer_class=VAETrainer):
    _, config = parse_config(tiny_args(output_dir, *extra_args))
    return trainer_class(config)


# ----- settings: refused before any work, with the valid range -------------------------------------------------------
@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--max_train_steps", "0", "[1, inf)"),
        ("--checkpointing_steps", "0", "[1, inf)"),
        ("--logging_steps", "0", "[1, inf)"),
        ("--max_train_samples", "0", "[1, inf)"),
        ("--test_size", "0", "(0, 1)"),
        ("--test_size", "2.5", "whole number"),
        ("--resolution", "0", "[1, 1024]"),
        ("--resolution", "5000", "[1, 1024]"),
        ("--learning_rate", "-1", "[0, 1]"),
        ("--learning_rate", "nan", "[0, 1]"),
        ("--seed", "-1", "[0, 4294967295]"),
        ("--train_batch_size", "0", "[1, 65536]"),
        ("--adam_beta2", "1", "[0, 1)"),
        ("--latent_dim", "0", "[1, 4096]"),  # a family's own table
        ("--block_out_channels", "8 0", "[1, 4096]"),  # each entry of a list
    ],
)
def test_out_of_range_flag_is_refused_with_its_range(tmp_path, flag, value, expected):
    with pytest.raises(ValueError) as error:
        parse_config(tiny_args(tmp_path, flag, *value.split()))

    assert flag in str(error.value)
    assert expected in str(error.value)
    assert not tmp_path.joinpath("logs").exists()


def test_gan_flags_are_checked_by_its_table(tmp_path):
    with pytest.raises(ValueError, match=r"--discriminator_learning_rate must be in \[0, 1\]"):
        parse_config(["--family", "gan", "--output_dir", str(tmp_path), "--discriminator_learning_rate", "-1"])


@pytest.mark.parametrize(
    "family, flags, expected",
    [
        # Each of these trained: a 0-wide or 0-deep model failed deep inside torch at the first batch (or, 0 layers,
        # trained another model), a NaN Min-SNR gamma stopped at step 1 on a NaN loss, and the EMA warm-up settings
        # made a decay that diffusers' EMAModel clamps to 0 (the "average" was the live weights).
        ("diffusion", "--layers_per_block 0", "--layers_per_block must be in [1, 16]"),
        ("diffusion", "--snr_gamma nan", "--snr_gamma must be positive"),
        ("diffusion", "--use_ema --ema_power -1", "--ema_power must be in (0, inf)"),
        ("diffusion", "--use_ema --ema_inv_gamma 0", "--ema_inv_gamma must be in (0, inf)"),
        ("diffusion", "--eval_likelihood_images -1", "--eval_likelihood_images must be in [0, inf)"),
        ("diffusion", "--timestep_bias_strategy later --timestep_bias_portion nan", "--timestep_bias_portion"),
        ("score", "--attention_head_dim 0", "--attention_head_dim must be in [1, 4096]"),
        ("flow", "--hidden_channels 0", "--hidden_channels must be in [1, 4096]"),
        (
            "flow",
            "--conditioning class --label_column label --condition_dim 0",
            "--condition_dim must be in [1, 4096]",
        ),
        ("flow", "--conditioning none --spatial_prior_condition", "--spatial_prior_condition shapes how a condition"),
        ("autoregressive", "--hidden_channels 0", "--hidden_channels must be in [1, 4096]"),
        ("autoregressive", "--embedding_dim 0", "--embedding_dim must be in [1, 4096]"),
        ("autoregressive", "--num_layers 0", "--num_layers must be in [1, 256]"),
    ],
)
def test_family_flags_that_used_to_train_or_fail_inside_torch_are_refused(tmp_path, family, flags, expected):
    with pytest.raises(ValueError) as error:
        parse_config(["--family", family, "--output_dir", str(tmp_path), *flags.split()])
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "model, sizes, expected",
    [
        ("gated", {"hidden_channels": 0}, "hidden_channels=0: layer sizes and counts must be positive ints"),
        ("row_lstm", {"num_layers": 0}, "num_layers=0"),
        ("transformer", {"n_layer": 0}, "n_layer=0"),
        ("flow", {"condition_type": "class", "num_classes": 10, "condition_dim": 0}, "condition_dim=0"),
    ],
)
def test_models_refuse_layers_of_no_size(model, sizes, expected):
    """The same check where a model is built from Python, not through the trainer's flags."""
    from hfgen.models.modeling_autoregressive import build_transformer_prior

    build = {
        "gated": hfgen.GatedPixelCNNModel,
        "row_lstm": hfgen.RowLSTMModel,
        "transformer": build_transformer_prior,
        "flow": hfgen.FlowModel,
    }[model]
    with pytest.raises(ValueError, match=expected):
        build(**sizes)


def test_a_missing_frozen_model_folder_is_named(tmp_path):
    """A mistyped local --vae_name_or_path used to fail in huggingface_hub's repo-id validator."""
    from hfgen.training.trainer import load_frozen_component

    with pytest.raises(OSError, match="No model at '/no/such/vae': no such local folder, and not a Hub repo id"):
        load_frozen_component("/no/such/vae")


def test_fp16_on_a_cpu_names_bf16_and_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CPUs run bf16") as error:
        parse_config(tiny_args(tmp_path, "--mixed_precision", "fp16"))
    assert "--mixed_precision no" in str(error.value)


def test_batch_larger_than_the_training_split_is_refused(tmp_path):
    trainer = build(tmp_path, "--max_train_samples", "20", "--max_train_steps", "2")  # batch size 32

    with pytest.raises(ValueError, match="fewer than one batch") as error:
        trainer.train()

    assert "--train_batch_size" in str(error.value) and "20 images" in str(error.value)
    assert not (tmp_path / "model_index.json").exists()


def test_resolution_far_above_the_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--resolution 1000") as error:
        build(tmp_path, "--resolution", "1000", "--max_train_steps", "1")
    assert "8x8" in str(error.value)


# ----- the output folder ---------------------------------------------------------------------------------------------
def test_refuses_a_folder_with_another_runs_model_and_checkpoints(tmp_path):
    build(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1").train()
    model_before = (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    with pytest.raises(FileExistsError) as error:
        build(tmp_path, "--max_train_steps", "1")

    message = str(error.value)
    assert "--overwrite_output_dir" in message and "--resume_from_checkpoint latest" in message
    assert "model_index.json" in message and "checkpoint-2" in message
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == model_before
    assert checkpoint_names(tmp_path) == ["checkpoint-1", "checkpoint-2"]


def test_overwrite_output_dir_replaces_the_old_run(tmp_path):
    build(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "4").train()

    build(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "1", "--overwrite_output_dir").train()

    # The old checkpoint-4 would have been kept by pruning and picked by `latest`.
    assert checkpoint_names(tmp_path) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 2


def test_pruning_happens_after_the_new_checkpoint_is_complete(tmp_path, monkeypatch):
    trainer = build(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1")
    save_state = trainer.accelerator.save_state
    seen_while_writing = []

    def recording_save_state(path):
        seen_while_writing.append(checkpoint_names(tmp_path))
        return save_state(path)

    monkeypatch.setattr(trainer.accelerator, "save_state", recording_save_state)
    trainer.train()

    # While checkpoint-4 was being written (a kill -9 then), checkpoint-2 was still there.
    assert seen_while_writing == [[], ["checkpoint-2"]]
    assert checkpoint_names(tmp_path) == ["checkpoint-4"]


def disk_full_on_write(monkeypatch, folder: str):
    """Simulates a full disk (a patched writer, not a real one): accelerate's `save` writes half a file into any path
    containing `folder`, then raises ENOSPC."""
    save = accelerate.checkpointing.save

    def full_disk_save(obj, path, **kwargs):
        if folder in str(path):
            with open(path, "wb") as f:
                f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save(obj, path, **kwargs)

    monkeypatch.setattr(accelerate.checkpointing, "save", full_disk_save)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer = build(tmp_path, "--max_train_steps", "4", "--checkpointing_steps", "2", "--checkpoints_total_limit", "1")
    disk_full_on_write(monkeypatch, ".checkpoint-4.tmp")

    with pytest.raises(OSError, match="disk is full") as error:
        trainer.train()

    assert error.value.errno == errno.ENOSPC
    assert "checkpoint-4" in str(error.value) and "checkpoint-2" in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]  # no half checkpoint, the previous one kept


def test_full_disk_during_the_final_save_keeps_the_checkpoint_and_no_half_model(tmp_path, monkeypatch):
    trainer = build(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2")

    def full_disk_save_pretrained(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(trainer.pipeline()), "save_pretrained", full_disk_save_pretrained)
    with pytest.raises(OSError, match="disk is full while writing the final model") as error:
        trainer.train()

    assert "checkpoint-2" in str(error.value) and "--resume_from_checkpoint latest" in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


def test_resume_at_the_last_step_writes_only_the_final_model(tmp_path):
    """After a failed final save: resuming the last checkpoint trains nothing and saves the model."""
    build(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2").train()
    os.remove(tmp_path / "model_index.json")

    trainer = build(tmp_path, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    trainer.training_step = lambda batch, step: pytest.fail("trained a step")
    assert trainer.train()["steps"] == 2
    assert (tmp_path / "model_index.json").is_file()

    with pytest.raises(ValueError, match="past the 1 steps"):
        build(tmp_path, "--max_train_steps", "1", "--resume_from_checkpoint", "latest").train()


# ----- Ctrl-C --------------------------------------------------------------------------------------------------------
def test_ctrl_c_finishes_the_step_and_writes_a_checkpoint(tmp_path):
    class CtrlCAtStep3(VAETrainer):
        calls = 0

        def compute_loss(self, batch, condition):
            CtrlCAtStep3.calls += 1
            if CtrlCAtStep3.calls == 3:
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            return super().compute_loss(batch, condition)

    trainer = build(tmp_path, "--max_train_steps", "10", "--checkpointing_steps", "100", trainer_class=CtrlCAtStep3)

    with pytest.raises(KeyboardInterrupt, match="after step 3") as error:
        trainer.train()

    assert isinstance(error.value, checks.TrainingInterrupted)
    assert str(tmp_path / "checkpoint-3") in str(error.value) and "--resume_from_checkpoint latest" in str(error.value)
    assert checkpoint_names(tmp_path) == ["checkpoint-3"]
    assert not isinstance(signal.getsignal(signal.SIGINT), checks._InterruptHandler)  # the previous one is back

    resumed = build(tmp_path, "--max_train_steps", "4", "--resume_from_checkpoint", "latest")
    assert resumed.train()["steps"] == 4


def test_keyboard_interrupt_inside_a_step_says_which_checkpoint_is_the_latest(tmp_path):
    class InterruptedAtStep4(VAETrainer):
        calls = 0

        def compute_loss(self, batch, condition):
            InterruptedAtStep4.calls += 1
            if InterruptedAtStep4.calls == 4:
                raise KeyboardInterrupt
            return super().compute_loss(batch, condition)

    trainer = build(
        tmp_path, "--max_train_steps", "10", "--checkpointing_steps", "2", trainer_class=InterruptedAtStep4
    )

    with pytest.raises(KeyboardInterrupt) as error:
        trainer.train()

    message = str(error.value)
    assert "in the middle of step 4" in message and "no checkpoint was written" in message
    assert str(tmp_path / "checkpoint-2") in message
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]


# ----- resume --------------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpointed_run(tmp_path):
    """A run of 2 steps with checkpoint-2, and the arguments that resume it."""
    build(tmp_path, "--max_train_steps", "2", "--checkpointing_steps", "2").train()
    return tmp_path, ("--max_train_steps", "3", "--resume_from_checkpoint", "latest")


@pytest.mark.parametrize(
    "name, damage",
    [
        ("random_states_0.pkl", "truncate"),
        ("random_states_0.pkl", "delete"),
        ("optimizer.bin", "truncate"),
        ("scheduler.bin", "delete"),
        ("model.safetensors", "truncate"),
    ],
)
def test_damaged_checkpoint_file_is_named(checkpointed_run, name, damage):
    output_dir, resume_args = checkpointed_run
    path = output_dir / "checkpoint-2" / name
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    trainer = build(output_dir, *resume_args)
    with pytest.raises(OSError if damage == "truncate" else FileNotFoundError) as error:
        trainer.train()

    assert str(path) in str(error.value)
    assert ("corrupt" if damage == "truncate" else "missing") in str(error.value)


def test_resume_with_other_model_settings_names_them(checkpointed_run):
    output_dir, resume_args = checkpointed_run
    trainer = build(output_dir, *resume_args, "--latent_dim", "6", "--conditioning", "none")

    with pytest.raises(ValueError, match="other model settings") as error:
        trainer.train()

    message = str(error.value)
    assert "--latent_dim: 4 in the checkpoint, 6 now" in message
    assert "--conditioning: 'text' in the checkpoint, 'none' now" in message


def test_every_seed_holds_out_the_images_that_evaluation_scores(tmp_path):
    """--seed changes weights, data order and noise, never the held-out split: a run with another seed is scored by
    `hfgen evaluate`, the baselines and the benchmarks (split seed 0) on images it never trained on."""
    evaluation_split = load_image_dataset("digits", test_size=0.1).raw["test"]  # as hfgen.metrics splits it
    held_out = {"seed 3": build(tmp_path, "--seed", "3").splits.raw["test"]["image"]}
    held_out["split seed 3"] = build(tmp_path, "--split_seed", "3").splits.raw["test"]["image"]

    def pixels(images):
        return sorted(np.asarray(image).tobytes() for image in images)

    assert pixels(held_out["seed 3"]) == pixels(evaluation_split["image"])
    assert pixels(held_out["split seed 3"]) != pixels(evaluation_split["image"])


def test_resume_on_another_split_is_refused(checkpointed_run):
    """Another held-out split on resume would train on images held out so far: refused, naming the flags."""
    output_dir, resume_args = checkpointed_run
    trainer = build(output_dir, *resume_args, "--split_seed", "1", "--seed", "5")

    with pytest.raises(ValueError, match="on another train/test split") as error:
        trainer.train()

    message = str(error.value)
    assert "--split_seed: 0 in the checkpoint, 1 now" in message
    assert "--seed" not in message  # another seed only changes what is drawn from now on: allowed


def test_resume_of_a_checkpoint_that_does_not_fit_says_so(checkpointed_run):
    """A checkpoint without its settings (as older hfgen versions wrote them), resumed with another model: a clear
    error naming the checkpoint, not torch's size mismatch from deep inside Accelerate."""
    output_dir, resume_args = checkpointed_run
    (output_dir / "checkpoint-2" / "training_config.json").unlink()
    trainer = build(output_dir, *resume_args, "--latent_dim", "6")

    with pytest.raises(ValueError, match="does not fit this run's model or optimizer") as error:
        trainer.train()

    assert "checkpoint-2" in str(error.value) and "size mismatch" in str(error.value)


def test_new_learning_rate_applies_on_resume(checkpointed_run, capsys):
    """The NaN message says to lower --learning_rate and resume: the new value must win over the checkpoint's."""
    output_dir, resume_args = checkpointed_run
    trainer = build(output_dir, *resume_args, "--learning_rate", "1e-4", "--logging_steps", "1")
    logs = record_logs(trainer)

    trainer.train()

    assert logs[-1][1]["lr"] == pytest.approx(1e-4)
    assert "0.001 in the checkpoint, 0.0001 from the settings" in capsys.readouterr().out


def test_nan_advice_names_the_resume_that_applies_the_new_learning_rate(tmp_path):
    class NaNAtStep2(VAETrainer):
        def compute_loss(self, batch, condition):
            losses = super().compute_loss(batch, condition)
            losses["loss"] = losses["loss"] * float("nan")
            return losses

    with pytest.raises(FloatingPointError, match="--learning_rate") as error:
        build(tmp_path, "--max_train_steps", "2", trainer_class=NaNAtStep2).train()
    assert "--resume_from_checkpoint latest" in str(error.value)


def test_checkpoint_without_training_config_still_resumes(checkpointed_run, capsys):
    output_dir, resume_args = checkpointed_run
    os.remove(output_dir / "checkpoint-2" / checks.TRAINING_CONFIG_NAME)
    shutil.rmtree(output_dir / "vae")

    assert build(output_dir, *resume_args).train()["steps"] == 3
    assert "settings are not compared" in capsys.readouterr().out


# ----- image folders users actually have -----------------------------------------------------------------------------
def write_folder(folder, images: dict, captions: dict | None = None):
    """Saves `images` (name -> PIL image or raw bytes) into `folder`, with metadata.jsonl rows from `captions`."""
    folder.mkdir(exist_ok=True)
    for name, image in images.items():
        if isinstance(image, bytes):
            (folder / name).write_bytes(image)
        else:
            image.save(folder / name)
    if captions is not None:
        rows = [json.dumps({"file_name": name, **({"text": c} if c else {})}) for name, c in captions.items()]
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(folder)


def folder_images(folder, **kwargs) -> torch.Tensor:
    splits = load_image_dataset(train_data_dir=folder, test_size=1, **kwargs)
    return torch.stack([example["pixel_values"] for example in splits["train"]] + [splits["test"][0]["pixel_values"]])


def encoded(image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def test_mixed_modes_convert_to_one_mode(tmp_path):
    grey = Image.new("L", (8, 8), 100)
    folder = write_folder(
        tmp_path / "mixed",
        {
            "l.png": grey,
            "la.png": grey.convert("LA"),
            "p.png": grey.convert("P"),
            "rgb.png": grey.convert("RGB"),
            "rgba.png": grey.convert("RGBA"),
        },
    )
    assert folder_images(folder).shape == (5, 3, 8, 8)  # one mode: RGB, so the batch stacks

    greys = write_folder(tmp_path / "greys", {"l.png": grey, "la.png": grey.convert("LA")})
    assert folder_images(greys).shape == (2, 1, 8, 8)  # all greyscale: L


def test_16_bit_greyscale_scales_to_8_bits(tmp_path):
    levels = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    folder = write_folder(tmp_path / "deep", {"a.png": image, "b.png": image})

    pixels = folder_images(folder)[0, 0]

    expected = torch.from_numpy(np.round(levels / 257.0) / 127.5 - 1).float()
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)  # clipping made 63 of 64 pixels +1


def test_mixed_sizes_without_resolution_say_to_pass_it(tmp_path):
    folder = write_folder(tmp_path / "sizes", {"a.png": Image.new("L", (8, 8)), "b.png": Image.new("L", (16, 12))})

    with pytest.raises(ValueError, match="pass --resolution") as error:
        load_image_dataset(train_data_dir=folder)
    assert "b.png is 16x12" in str(error.value)

    assert folder_images(folder, resolution=8).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "name, content",
    [
        ("truncated.png", encoded(NOISE, "PNG")[:-300]),
        ("notes.png", b"not an image at all"),
        ("truncated.jpg", encoded(NOISE, "JPEG")[:-300]),  # PIL's verify passes it: the end marker is checked
    ],
    ids=["truncated-png", "not-an-image", "truncated-jpg"],
)
def test_unreadable_image_is_named_before_training(tmp_path, name, content):
    folder = write_folder(tmp_path / "bad", {"a.png": Image.new("RGB", (32, 32)), name: content})

    with pytest.raises(ValueError, match="--skip_bad_images") as error:
        VAETrainer(
            parse_config(["--family", "vae", "--train_data_dir", folder, "--output_dir", str(tmp_path / "run")])[1]
        )
    assert name in str(error.value)
    assert not (tmp_path / "run").exists()


def test_train_data_dir_alone_is_the_data_set(tmp_path):
    """The README's `--train_data_dir my_images/` without --dataset_name (which defaulted to digits: refused)."""
    vae = ["--family", "vae"]
    _, config = parse_config([*vae, "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "run")])
    assert config.dataset_name is None and config.caption_column is None
    assert parse_config([*vae, "--output_dir", str(tmp_path / "run")])[1].dataset_name == "digits"
    with pytest.raises(ValueError, match="not both"):
        parse_config([*vae, "--train_data_dir", str(tmp_path), "--dataset_name", "shapes"])


def test_a_recipe_can_be_pointed_at_a_folder_without_captions(tmp_path, repo_root):
    """A digits recipe names the digits' columns; a folder given as a flag replaces its data set, and `none` unsets its
    columns (before: "not both", then no way to unset the recipe's caption column)."""
    from hfgen.training.trainer_flow import FlowTrainer

    folder = write_folder(tmp_path / "plain", {f"{i}.png": Image.new("L", (8, 8), i * 30) for i in range(8)})
    recipe = ["--recipe", str(repo_root / "training" / "recipes" / "flow_glow_digits.yaml")]
    args = [*recipe, "--train_data_dir", folder, "--train_batch_size", "2", "--test_size", "2"]

    _, config = parse_config([*args, "--output_dir", str(tmp_path / "run")])
    assert config.dataset_name is None and config.train_data_dir == folder
    with pytest.raises(ValueError, match="Column 'text' is not in the data set.*`--caption_column none`"):
        FlowTrainer(config)

    _, config = parse_config(
        [*args, "--caption_column", "none", "--label_column", "None", "--output_dir", str(tmp_path)]
    )
    assert config.caption_column is None and config.label_column is None
    assert len(FlowTrainer(config).splits["train"]) == 6
    assert parse_config([*recipe, "--dataset_name", "shapes"])[1].dataset_name == "shapes"  # a flag over the recipe's
    # An explicit `none` holds on an embedded data set too, whose columns are otherwise filled in.
    _, config = parse_config(["--family", "flow", "--caption_column", "none", "--label_column", "none"])
    assert config.dataset_name == "digits" and config.caption_column is None and config.label_column is None


def test_skip_bad_images_counts_and_leaves_them_out(tmp_path, caplog):
    images = {f"{i}.png": Image.new("L", (8, 8), i * 10) for i in range(4)}
    folder = write_folder(tmp_path / "bad", {**images, "broken.png": b"\x89PNG broken"})

    with caplog.at_level(logging.WARNING, logger="hfgen.data"):
        splits = load_image_dataset(train_data_dir=folder, test_size=1, skip_bad_images=True)

    assert len(splits["train"]) + len(splits["test"]) == 4
    assert "Skipping 1 unreadable image(s)" in caplog.text and "broken.png" in caplog.text


def test_malformed_metadata_names_the_line(tmp_path):
    folder = write_folder(tmp_path / "meta", {"a.png": Image.new("L", (8, 8)), "b.png": Image.new("L", (8, 8))})
    (tmp_path / "meta" / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a"}\n{"file_name": "b.png",\n')

    with pytest.raises(ValueError, match="metadata.jsonl, line 2, is not valid JSON"):
        load_image_dataset(train_data_dir=folder)


def test_rows_without_a_caption_are_counted(tmp_path, caplog):
    images = {f"{i}.png": Image.new("L", (8, 8), i) for i in range(4)}
    folder = write_folder(tmp_path / "meta", images, captions={"0.png": "zero", "1.png": "one", "2.png": None})

    with caplog.at_level(logging.WARNING, logger="hfgen.data"):
        load_image_dataset(train_data_dir=folder, caption_column="text", test_size=1)

    assert "1 of 3 rows have no 'text' (lines 3)" in caplog.text
    assert "1 image(s)" in caplog.text and "3.png" in caplog.text  # no row: imagefolder leaves it out


def test_resolution_far_above_a_folders_images_is_refused(tmp_path):
    folder = write_folder(tmp_path / "small", {"a.png": Image.new("L", (8, 8))})

    with pytest.raises(ValueError, match="at most 8x") as error:
        load_image_dataset(train_data_dir=folder, resolution=1000)
    assert "a.png (8x8)" in str(error.value)


# ----- loading checks weights ----------------------------------------------------------------------------------------
@pytest.fixture
def saved_pipeline(tmp_path):
    """A tiny saved VAEPipeline (digits-sized) and its weights file."""
    torch.manual_seed(0)
    vae = hfgen.VAEModel(sample_size=8, in_channels=1, latent_dim=4, block_out_channels=(8, 16), norm_num_groups=4)
    hfgen.VAEPipeline(vae=vae).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe", tmp_path / "pipe" / "vae" / "diffusion_pytorch_model.safetensors"


def test_weights_file_missing_a_tensor_is_named(saved_pipeline):
    folder, weights = saved_pipeline
    tensors = load_file(weights)
    del tensors["decoder.blocks.0.conv.bias"]
    save_file(tensors, weights, metadata={"format": "pt"})

    with pytest.raises(ValueError, match="lacks 1 tensor") as error:
        hfgen.load_pipeline(str(folder))
    assert str(weights) in str(error.value) and "decoder.blocks.0.conv.bias" in str(error.value)


def test_text_encoder_missing_a_tensor_is_named(tmp_path, repo_root):
    folder = tmp_path / "vae-text"
    shutil.copytree(repo_root / "tests" / "fixtures" / "legacy_pipelines" / "vae-text", folder)
    weights = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["encoder.layers.0.layer_norm1.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})

    with pytest.raises(ValueError, match="lacks 1 tensor.*CLIPTextModel.*encoder.layers.0.layer_norm1.weight"):
        hfgen.load_pipeline(str(folder))


def test_nan_weights_are_named(saved_pipeline):
    folder, weights = saved_pipeline
    tensors = load_file(weights)
    tensors["encoder.conv_in.weight"][0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})

    with pytest.raises(ValueError, match="NaN") as error:
        hfgen.load_pipeline(str(folder))
    assert "encoder.conv_in.weight" in str(error.value) and str(folder / "vae") in str(error.value)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("latent_dim", "four", "latent_dim is 'four', but VAEModel takes int"),
        ("latent_dim", -3, "latent_dim is -3; sizes and counts must be at least 1"),
        ("block_out_channels", [8, "16"], "block_out_channels is [8, '16']"),
        ("likelihood", "poisson", "does not describe a valid VAEModel: likelihood must be one of"),
    ],
)
def test_config_value_of_the_wrong_type_or_range_is_named(saved_pipeline, key, value, expected):
    folder, _ = saved_pipeline
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))

    with pytest.raises(ValueError) as error:
        hfgen.load_pipeline(str(folder))
    assert str(config_path) in str(error.value) and expected in str(error.value)


def test_model_index_naming_a_pipeline_whose_components_are_missing(saved_pipeline):
    folder, _ = saved_pipeline
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())

    index_path.write_text(json.dumps({**index, "_class_name": "GANPipeline"}))
    with pytest.raises(ValueError, match=r"needs the component\(s\) \['generator'\]") as error:
        hfgen.load_pipeline(str(folder))
    assert str(index_path) in str(error.value)

    index_path.write_text(json.dumps(index))
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileNotFoundError, match="its folder .*vae is missing"):
        hfgen.load_pipeline(str(folder))


# ----- the CLI: clear errors, no tracebacks, nothing overwritten -----------------------------------------------------
@pytest.mark.parametrize("output, expected", [("missing/grid.png", "does not exist"), ("grid.xyz", ".xyz is not")])
def test_generate_checks_the_output_before_sampling(saved_pipeline, tmp_path, output, expected):
    folder, _ = saved_pipeline

    with pytest.raises(SystemExit, match=expected):
        hfgen_main(["generate", str(folder), "-o", str(tmp_path / output)])
    assert not (tmp_path / output).exists()


def test_generate_names_a_sampling_argument_the_family_does_not_take(saved_pipeline, tmp_path):
    """A VAE samples in one pass: --num_inference_steps used to end in a TypeError traceback from its __call__."""
    folder, _ = saved_pipeline
    with pytest.raises(SystemExit, match=r"VAEPipeline takes no num_inference_steps; its sampling arguments: \[.*'"):
        hfgen_main(["generate", str(folder), "--num_inference_steps", "5", "-o", str(tmp_path / "grid.png")])
    assert not (tmp_path / "grid.png").exists()


def test_info_on_a_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for command in ("info", "generate"):
        with pytest.raises(SystemExit, match="no model_index.json"):
            hfgen_main([command, str(tmp_path)])
    with pytest.raises(SystemExit, match="not a saved pipeline folder"):
        hfgen_main(["info", str(tmp_path / "nowhere")])


def test_evaluate_checks_its_output_before_scoring(saved_pipeline, tmp_path, monkeypatch):
    """The JSON's folder is checked first: a typo used to fail after the whole evaluation, its results lost."""
    import hfgen.metrics.evaluate

    def not_reached(*args, **kwargs):
        raise AssertionError("evaluated before the output was checked")

    monkeypatch.setattr(hfgen.metrics.evaluate, "evaluate_pipeline", not_reached)
    output = tmp_path / "missing" / "results.json"
    with pytest.raises(SystemExit, match="missing does not exist; create it first"):
        hfgen_main(["evaluate", str(saved_pipeline[0]), "--metrics", "nll", "-o", str(output)])


def test_evaluate_num_samples_zero(saved_pipeline):
    with pytest.raises(SystemExit, match=r"--num_samples must be at least 10 .*, got 0"):
        hfgen_main(["evaluate", str(saved_pipeline[0]), "--num_samples", "0"])


def test_evaluate_nll_on_a_gan_says_it_is_skipped_and_why(tmp_path, capsys):
    generator = hfgen.GANGenerator(sample_size=8, out_channels=1, noise_dim=4, block_out_channels=(8, 16))
    hfgen.GANPipeline(generator=generator).save_pretrained(tmp_path / "gan")

    with pytest.raises(SystemExit, match="Nothing to evaluate"):
        hfgen_main(["evaluate", str(tmp_path / "gan"), "--metrics", "nll"])
    assert "nll skipped: a GANPipeline defines no likelihood" in capsys.readouterr().err


def test_evaluate_warns_when_the_model_held_out_other_images(tmp_path, capsys):
    """A model trained with another --split_seed partly trained on the images `hfgen evaluate` scores its nll on: the
    trainer records what it held out, and evaluate says the figure is optimistic; with the default split it says
    nothing."""
    for name, extra in (("default", ()), ("other", ("--split_seed", "3"))):
        build(tmp_path / name, "--max_train_steps", "1", "--conditioning", "none", *extra).train()
    summary = json.loads((tmp_path / "other" / "train_summary.json").read_text())
    assert summary["held_out"] == {"dataset": "digits", "test_size": 0.1, "split_seed": 3}

    for name, warned in (("default", False), ("other", True)):
        capsys.readouterr()
        hfgen_main(["evaluate", str(tmp_path / name), "--dataset", "digits", "--metrics", "nll"])
        err = capsys.readouterr().err
        assert ("partly trained on: the figure is optimistic" in err) == warned, err
        assert ("split_seed=3" in err) == warned


def test_datasets_export_into_a_model_folder_overwrites_nothing(saved_pipeline):
    folder, weights = saved_pipeline
    before = sorted(os.listdir(folder)), weights.read_bytes()

    with pytest.raises(SystemExit, match="already holds a saved pipeline"):
        hfgen_main(["datasets", "export", "digits", str(folder)])
    assert (sorted(os.listdir(folder)), weights.read_bytes()) == before


def test_errors_reach_the_user_without_a_traceback(saved_pipeline, tmp_path):
    folder, weights = saved_pipeline
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit, match="hfgen generate: error: .*corrupt"):
        hfgen_main(["generate", str(folder), "-o", str(tmp_path / "grid.png")])
    with pytest.raises(SystemExit, match="hfgen train: error: --learning_rate must be in"):
        hfgen_main(["train", *tiny_args(tmp_path / "run", "--learning_rate", "-1")])
