"""Tests every family's model and pipeline must pass, shared through mixins (as diffusers' ModelTesterMixin and
PipelineTesterMixin).

A family's test class mixes one in, sets the class attribute, and defines the few `get_*` hooks; every test runs on
the CPU on a tiny, seeded configuration.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import hfgen


def output_tensors(output) -> list[torch.Tensor]:
    """The tensors of a model output (a `BaseOutput` or a tuple), in order."""
    values = output.values() if hasattr(output, "values") else output
    return [value for value in values if torch.is_tensor(value)]


def first_tensor(output) -> torch.Tensor:
    """The loss of a model output when it has one, else its first tensor."""
    loss = getattr(output, "loss", None)
    return loss if loss is not None else output_tensors(output)[0]


class ModelTesterMixin:
    model_class = None

    def get_init_dict(self) -> dict:
        """Keyword arguments of a tiny `model_class`."""
        raise NotImplementedError

    def get_inputs(self) -> dict:
        """Keyword arguments of `model.forward`, built deterministically."""
        raise NotImplementedError

    def get_bad_init_dicts(self) -> list[dict]:
        """Configurations that `model_class` must refuse with a ValueError."""
        return []

    def build_model(self):
        torch.manual_seed(0)
        return self.model_class(**self.get_init_dict()).eval()

    def seeded_forward(self, model):
        torch.manual_seed(0)
        with torch.no_grad():
            return model(**self.get_inputs())

    def test_forward_finite(self):
        output = self.seeded_forward(self.build_model())
        assert torch.isfinite(first_tensor(output)).all()
        for tensor in output_tensors(output):
            assert torch.isfinite(tensor).all()

    def test_save_load_round_trip(self, tmp_path):
        model = self.build_model()
        model.save_pretrained(tmp_path)
        files = os.listdir(tmp_path)
        assert any(name.endswith(".safetensors") for name in files), files
        assert not any(name.endswith(".bin") for name in files), files

        loaded = self.model_class.from_pretrained(tmp_path).eval()
        assert type(loaded) is self.model_class
        expected, actual = output_tensors(self.seeded_forward(model)), output_tensors(self.seeded_forward(loaded))
        assert len(actual) == len(expected) > 0
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, rtol=0, atol=0)

    def test_return_dict_false_returns_the_set_fields(self):
        """`return_dict=False` gives the output's fields that are set, in order (`BaseOutput.to_tuple()`, as diffusers'
        and transformers' outputs): no None in the tuple, and the same values as the dataclass."""
        model = self.build_model()
        output = self.seeded_forward(model)
        torch.manual_seed(0)
        with torch.no_grad():
            as_tuple = model(**self.get_inputs(), return_dict=False)
        assert isinstance(as_tuple, tuple)
        assert len(as_tuple) == len(output.to_tuple()), (len(as_tuple), list(output.keys()))
        for value, expected in zip(as_tuple, output.to_tuple()):
            torch.testing.assert_close(value, expected, rtol=0, atol=0)

    def test_config_round_trip(self):
        model = self.build_model()
        rebuilt = self.model_class.from_config(model.config)
        assert dict(rebuilt.config) == dict(model.config)
        assert rebuilt.num_parameters() == model.num_parameters()

    def test_bad_config_raises(self):
        bad_init_dicts = self.get_bad_init_dicts()
        if not bad_init_dicts:
            pytest.skip("the family defines no bad configurations")
        for init_dict in bad_init_dicts:
            with pytest.raises(ValueError):
                self.model_class(**init_dict)


class PipelineTesterMixin:
    pipeline_class = None

    def get_pipeline(self):
        """A tiny, seeded `pipeline_class` on the CPU."""
        raise NotImplementedError

    def get_call_kwargs(self) -> dict:
        """Keyword arguments of `pipeline.__call__` for at least two images, without generator or output_type."""
        raise NotImplementedError

    def get_expected_shape(self) -> tuple[int, int, int, int]:
        """(num_images, channels, height, width) that `get_call_kwargs` produces."""
        raise NotImplementedError

    def generate(self, pipeline, seed=0, **kwargs):
        generator = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
        kwargs = {**self.get_call_kwargs(), "generator": generator, "output_type": "np", **kwargs}
        return pipeline(**kwargs).images

    def test_output_types(self):
        pipeline = self.get_pipeline()
        num_images, channels, height, width = self.get_expected_shape()

        images = self.generate(pipeline, output_type="np")
        assert isinstance(images, np.ndarray)
        assert images.shape == (num_images, height, width, channels)
        assert images.min() >= 0 and images.max() <= 1

        tensors = self.generate(pipeline, output_type="pt")
        assert isinstance(tensors, torch.Tensor)
        assert tuple(tensors.shape) == (num_images, channels, height, width)
        np.testing.assert_allclose(tensors.permute(0, 2, 3, 1).numpy(), images, atol=1e-6)

        pil_images = self.generate(pipeline, output_type="pil")
        assert len(pil_images) == num_images
        assert all(isinstance(image, PIL.Image.Image) and image.size == (width, height) for image in pil_images)

    def test_seeded_determinism(self):
        pipeline = self.get_pipeline()
        first, again, other = (self.generate(pipeline, seed) for seed in (0, 0, 1))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)

    def test_one_generator_per_image(self):
        pipeline = self.get_pipeline()
        num_images = self.get_expected_shape()[0]
        assert num_images >= 2, "get_call_kwargs must make at least two images"
        seeds = list(range(num_images))
        images = self.generate(pipeline, [torch.Generator().manual_seed(s) for s in seeds])
        assert len(images) == num_images
        # Each image depends on its own generator only: changing the second seed leaves the first image unchanged.
        changed = self.generate(pipeline, [torch.Generator().manual_seed(s) for s in [0, 99, *seeds[2:]]])
        np.testing.assert_array_equal(images[0], changed[0])
        assert not np.array_equal(images[1], changed[1])

    def test_return_dict_false_returns_tuple(self):
        pipeline = self.get_pipeline()
        kwargs = {**self.get_call_kwargs(), "generator": torch.Generator().manual_seed(0), "output_type": "np"}
        output = pipeline(**kwargs, return_dict=False)
        assert isinstance(output, tuple) and len(output) == 1
        np.testing.assert_array_equal(output[0], self.generate(pipeline))

    def test_save_load_round_trip(self, tmp_path):
        pipeline = self.get_pipeline()
        pipeline.save_pretrained(tmp_path)
        loaded = hfgen.load_pipeline(tmp_path)
        assert type(loaded) is self.pipeline_class
        np.testing.assert_array_equal(self.generate(loaded), self.generate(pipeline))

    def test_batch_size_below_one_raises(self):
        pipeline = self.get_pipeline()
        with pytest.raises(ValueError, match="batch_size"):
            pipeline(**{**self.get_call_kwargs(), "prompt": None, "batch_size": 0})

    def test_empty_prompt_list_raises(self):
        pipeline = self.get_pipeline()
        with pytest.raises(ValueError, match="empty"):
            pipeline(**{**self.get_call_kwargs(), "prompt": []})


class ConditionVariantsPipelineTesterMixin(PipelineTesterMixin):
    """[`PipelineTesterMixin`] once per condition of an 8x8 grey model: "unconditional" (3 images), "class" (labels 1
    and 2, two images each) and "text" (two digit prompts, guided). `get_pipeline` builds the model for
    `self.condition` (None, "class" or "text") with `self.text_components` (the tiny tokenizer and text encoder)."""

    @pytest.fixture(autouse=True, params=["unconditional", "class", "text"])
    def variant(self, request, tiny_text_components):
        self.variant = request.param
        self.condition = None if request.param == "unconditional" else request.param
        self.text_components = tiny_text_components

    def get_call_kwargs(self):
        if self.variant == "text":
            return {"prompt": ["a handwritten digit seven", "a handwritten digit one"], "guidance_scale": 2.0}
        if self.variant == "class":
            return {"class_labels": [1, 2], "num_images_per_prompt": 2}
        return {"batch_size": 3}

    def get_expected_shape(self):
        return ({"unconditional": 3, "class": 4, "text": 2}[self.variant], 1, 8, 8)


def saved_pipeline_tensors(output_dir) -> dict[str, torch.Tensor]:
    """Every tensor of a pipeline saved in `output_dir` (each subfolder's *.safetensors), keyed "folder/file:name"."""
    from safetensors.torch import load_file

    tensors = {}
    for folder in sorted(os.listdir(output_dir)):
        if not os.path.isdir(os.path.join(output_dir, folder)) or folder.startswith("checkpoint-"):
            continue
        for file in sorted(os.listdir(os.path.join(output_dir, folder))):
            if file.endswith(".safetensors"):
                weights = load_file(os.path.join(output_dir, folder, file))
                tensors.update({f"{folder}/{file}:{name}": value for name, value in weights.items()})
    return tensors


class TrainerTesterMixin:
    """Tests every family's trainer must pass: a family's test class sets `trainer_class` and defines
    `get_args(output_dir)`, a tiny, fast, text-conditioned configuration without --max_train_steps; each test trains
    it on the CPU. A family whose trainer refuses gradient accumulation sets `supports_gradient_accumulation = False`,
    and one whose `training_step` does not go through `compute_loss` overrides `conditioned_loss`."""

    trainer_class = None
    supports_gradient_accumulation = True

    def conditioned_loss(self, trainer, batch: dict, condition) -> torch.Tensor:
        """The family's training loss for `batch` under `condition` (the global RNG is seeded by the caller)."""
        return trainer.compute_loss(batch, condition)["loss"]

    def get_args(self, output_dir) -> list[str]:
        """The family's tiny training arguments (command-line flags) for `output_dir`, without --max_train_steps."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _fresh_accelerate_state(self):
        """A process keeps one Accelerate state (its mixed precision, for one): every test starts from a fresh one."""
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        yield
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    def build_trainer(self, output_dir, *extra_args: str, trainer_class=None):
        """A trainer for `get_args(output_dir) + extra_args`; `trainer_class` swaps in a subclass."""
        from hfgen.training.train import parse_config

        parsed_class, config = parse_config([*self.get_args(str(output_dir)), *extra_args])
        assert parsed_class is self.trainer_class
        return (trainer_class or parsed_class)(config)

    def test_two_steps_finite_and_parameters_change(self, tmp_path):
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "2")
        model = trainer.accelerator.unwrap_model(trainer.model)
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        received_grad = set()
        for name, parameter in model.named_parameters():
            parameter.register_post_accumulate_grad_hook(lambda p, name=name: received_grad.add(name))

        summary = trainer.train()

        losses = {name: value for name, value in summary["metrics"].items() if name.startswith("train_")}
        assert "train_loss" in losses
        for name, value in losses.items():
            assert np.isfinite(value), f"{name} = {value}"
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert received_grad == trainable, f"no gradient reached {sorted(trainable - received_grad)}"
        for name, parameter in model.named_parameters():
            if name in received_grad:
                assert not torch.equal(before[name], parameter.detach()), f"{name} did not change in 2 steps"

    def test_exact_resume(self, tmp_path):
        import shutil

        run_a, run_b = tmp_path / "a", tmp_path / "b"
        self.build_trainer(run_a, "--max_train_steps", "6", "--checkpointing_steps", "3").train()
        run_b.mkdir()
        shutil.copytree(run_a / "checkpoint-3", run_b / "checkpoint-3")

        resumed = self.build_trainer(
            run_b, "--max_train_steps", "6", "--checkpointing_steps", "3", "--resume_from_checkpoint", "latest"
        )
        # A run that ignored the checkpoint would train 6 steps from the same seed and match run A as well.
        steps_run = []
        training_step = resumed.training_step
        resumed.training_step = lambda batch, step: steps_run.append(step) or training_step(batch, step)
        summary = resumed.train()

        assert steps_run == [4, 5, 6]
        assert summary["steps"] == 6
        tensors_a, tensors_b = saved_pipeline_tensors(run_a), saved_pipeline_tensors(run_b)
        assert tensors_a, f"no *.safetensors in the subfolders of {run_a}"
        assert tensors_a.keys() == tensors_b.keys()
        for name, tensor in tensors_a.items():
            assert torch.equal(tensor, tensors_b[name]), f"{name} differs after resuming from checkpoint-3"

    def test_saves_loadable_pipeline(self, tmp_path):
        from huggingface_hub import ModelCard

        self.build_trainer(tmp_path, "--max_train_steps", "2").train()

        assert (tmp_path / "model_index.json").is_file()
        assert (tmp_path / "samples" / "final.png").is_file()
        pipeline = hfgen.load_pipeline(str(tmp_path))
        assert isinstance(pipeline, hfgen.HFGenPipeline)
        assert pipeline.capabilities >= {"prompt"}  # get_args trains a text-conditioned model
        first = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
        again = pipeline(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np").images
        assert len(first) == 2
        assert np.array_equal(first, again), "the same seed gave different samples"

        card = ModelCard.load(tmp_path / "README.md")
        assert card.data.library_name == "hfgen"
        assert self.trainer_class.family in card.data.tags

    def test_gradient_accumulation_accumulates(self, tmp_path):
        """Parameters after one step accumulated over 2 micro-batches equal one step on the loss of both batches
        together (the same examples and the same noise)."""
        if not self.supports_gradient_accumulation:
            with pytest.raises(ValueError, match="gradient_accumulation_steps"):
                self.build_trainer(tmp_path, "--max_train_steps", "1", "--gradient_accumulation_steps", "2")
            return
        args = ("--max_train_steps", "1", "--gradient_accumulation_steps", "2")
        trainer = self.build_trainer(tmp_path / "accumulated", *args)
        micro_batches = []
        training_step = trainer.training_step
        trainer.training_step = lambda batch, step: (
            micro_batches.append((torch.get_rng_state(), batch)) or training_step(batch, step)
        )
        trainer.train()
        accumulated = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())

        reference = self.build_trainer(tmp_path / "reference", "--max_train_steps", "1")
        assert len(micro_batches) == 2, "2 micro-batches should make one optimizer step"
        total = 0
        for rng_state, batch in micro_batches:
            torch.set_rng_state(rng_state)
            total = total + self.conditioned_loss(reference, batch, reference.condition_from_batch(batch)) / 2
        total.backward()
        reference.optimizer_step(reference.optimizer, reference.lr_scheduler)

        model = reference.accelerator.unwrap_model(reference.model)
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(accumulated[name], parameter, rtol=0, atol=1e-6, msg=name)

    def test_mixed_precision_autocasts(self, tmp_path):
        """With --mixed_precision bf16 the model's layers compute in bfloat16 during training."""
        trainer = self.build_trainer(tmp_path, "--max_train_steps", "1", "--mixed_precision", "bf16")
        model = trainer.accelerator.unwrap_model(trainer.model)
        layer = next(m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        dtypes = []
        layer.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))

        summary = trainer.train()

        assert torch.bfloat16 in dtypes, f"{type(layer).__name__} computed in {set(dtypes)}, not bfloat16"
        assert np.isfinite(summary["metrics"]["train_loss"])

    @pytest.mark.parametrize("conditioning", ["text", "class"])
    def test_condition_reaches_the_loss(self, tmp_path, conditioning):
        """The same batch and noise with other captions (or labels) gives another loss: the trainer conditions on
        what the batch says, not on the null condition."""
        trainer = self.build_trainer(
            tmp_path, "--max_train_steps", "1", "--conditioning", conditioning, "--caption_dropout", "0"
        )
        batch = next(iter(trainer.train_dataloader))
        other = {**batch, "captions": batch["captions"][::-1], "labels": batch["labels"].flip(0)}
        assert batch["captions"] != other["captions"] and not torch.equal(batch["labels"], other["labels"])
        losses = []
        with torch.no_grad():
            for candidate in (batch, other, batch):
                torch.manual_seed(0)
                losses.append(self.conditioned_loss(trainer, candidate, trainer.condition_from_batch(candidate)))
        assert losses[0] == losses[2], "the loss is not deterministic for a seed"
        assert losses[0] != losses[1], "the loss does not depend on the batch's captions / labels"


def record_logs(trainer) -> list[tuple[int, dict]]:
    """Wraps the real `trainer.accelerator.log` so that every (step, values) it receives is also recorded."""
    calls = []
    log = trainer.accelerator.log

    def recording_log(values, step=None, **kwargs):
        calls.append((step, dict(values)))
        return log(values, step=step, **kwargs)

    trainer.accelerator.log = recording_log
    return calls


def train_on_two_cpu_ranks(repo_root, output_dir, args: list[str]) -> dict:
    """Runs training/train.py with `args` (which write to `output_dir`) in two CPU processes (torch.distributed.run)
    and checks that the ranks trained together: world size 2, and equal weights on both (gradients all-reduced, each
    rank on its own half of the data). Returns the run's train_summary.json."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        str(Path(repo_root) / "training" / "train.py"), *args,
    ]  # fmt: skip
    result = subprocess.run(
        # PYTHONFAULTHANDLER: a rank that aborts prints every thread's Python stack, so a failure says where it was.
        command, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((Path(output_dir) / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and "MULTI_CPU" in summary["distributed_type"]
    checksums = summary["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    return summary


# ----- Spaces and servers --------------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_app(path, module_name: str):
    """A Space's app.py as a module (a Space folder is not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(demo) -> str:
    """Launches a Gradio Blocks on 127.0.0.1 without blocking; returns its URL. Close it with `demo.close()`."""
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    return url
