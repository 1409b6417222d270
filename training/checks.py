"""What the shared trainer checks so that nothing is lost and nothing goes wrong silently: setting ranges, the output
folder, checkpoint files and settings on resume, a full disk, and Ctrl-C.

Each check is a function the trainer calls in one line; the messages say what is wrong and what to do, as
transformers' example scripts do ("Output directory ... already exists and is not empty. Use --overwrite_output_dir").
"""

import dataclasses
import errno
import json
import math
import os
import re
import signal
import sys

import torch

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINING_CONFIG_NAME = "training_config.json"  # in every checkpoint: the settings of the run that wrote it
INTERVAL = re.compile(r"^([\[(])\s*(\S+)\s*,\s*(\S+)\s*([\])])$")


# ----- settings ------------------------------------------------------------------------------------------------------
def check_ranges(config) -> None:
    """Checks every field named in the `ranges` tables of `config`'s class and its bases: each maps a field to an
    interval such as "[1, inf)" or "(0, 1]" (for a list: of each entry); `None` (an unset optional flag) passes.
    Raises a ValueError naming the flag, the value and the valid range."""
    ranges = {}
    for cls in reversed(type(config).__mro__):
        ranges.update(vars(cls).get("ranges", {}))
    for name, interval in ranges.items():
        value = getattr(config, name)
        if value is None:
            continue
        low_bracket, low, high, high_bracket = INTERVAL.match(interval).groups()
        low, high = float(low), float(high)
        for number in value if isinstance(value, (list, tuple)) else [value]:  # a list: each entry
            if isinstance(number, bool) or not isinstance(number, (int, float)) or math.isnan(number):
                raise ValueError(f"--{name} must be a number in {interval}, got {value!r}.")
            above = number > low if low_bracket == "(" else number >= low
            below = number < high if high_bracket == ")" else number <= high
            if not (above and below):
                raise ValueError(f"--{name} must be in {interval}, got {value}.")


def check_test_size(test_size: float) -> None:
    """A fraction in (0, 1) or a whole count of at least 1: every run keeps some held-out images."""
    if isinstance(test_size, bool) or not (0 < test_size < 1 or (test_size >= 1 and float(test_size).is_integer())):
        raise ValueError(
            f"--test_size must be a fraction in (0, 1) or a whole number of images >= 1, got {test_size}: the "
            "held-out split is what validation and the final metrics use."
        )


def check_mixed_precision(mixed_precision: str) -> None:
    """fp16 needs a GPU: Accelerate silently trains in fp32 on a CPU, and the model card would say fp16."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError(
            "--mixed_precision fp16 needs a GPU; CPUs run bf16 (--mixed_precision bf16) or fp32 "
            "(--mixed_precision no)."
        )


def check_batches(trainer) -> None:
    """A training split smaller than one batch gives a data loader without batches (drop_last): the run would train
    zero steps and save an untrained model, or never end."""
    config = trainer.config
    if config.streaming:
        if config.max_train_samples is not None and config.max_train_samples < config.train_batch_size:
            raise ValueError(
                f"--max_train_samples {config.max_train_samples} is smaller than --train_batch_size "
                f"{config.train_batch_size}: no full batch to train on."
            )
        return
    num_examples = len(trainer.splits["train"])
    needed = config.train_batch_size * trainer.accelerator.num_processes
    if num_examples < needed:
        raise ValueError(
            f"The training split has {num_examples} images, fewer than one batch of {needed} "
            f"(--train_batch_size {config.train_batch_size} x {trainer.accelerator.num_processes} process(es)), and "
            f"incomplete batches are dropped: lower --train_batch_size to at most "
            f"{num_examples // trainer.accelerator.num_processes}, or give more data (--max_train_samples, "
            "--test_size)."
        )


# ----- the output folder ---------------------------------------------------------------------------------------------
def checkpoints_in(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints in `output_dir`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return [(step, os.path.join(output_dir, name)) for step, name in sorted(found)]


def check_output_dir(config, is_main_process: bool = True) -> None:
    """Refuses to train into a folder that holds a saved model or checkpoints of another run, unless the run resumes
    (--resume_from_checkpoint) or --overwrite_output_dir is given; the latter removes the old checkpoints, so that
    they cannot be pruned instead of the new run's or picked by `latest`."""
    output_dir = config.output_dir
    old_checkpoints = checkpoints_in(output_dir)
    has_model = os.path.isfile(os.path.join(output_dir, "model_index.json"))
    if not (old_checkpoints or has_model) or config.resume_from_checkpoint:
        return
    if not config.overwrite_output_dir:
        found = ["a saved model (model_index.json)"] if has_model else []
        if old_checkpoints:
            found.append(f"{len(old_checkpoints)} checkpoint(s) up to {os.path.basename(old_checkpoints[-1][1])}")
        raise FileExistsError(
            f"Output directory {output_dir} already holds {' and '.join(found)} of another run. Pass "
            "--resume_from_checkpoint latest to continue that run, --overwrite_output_dir to replace it (its "
            "checkpoints are deleted), or choose another --output_dir."
        )
    if is_main_process and old_checkpoints:
        import shutil

        print(f"--overwrite_output_dir: removing the {len(old_checkpoints)} checkpoint(s) of the run in {output_dir}")
        for _, path in old_checkpoints:
            shutil.rmtree(path)


# ----- a full disk ---------------------------------------------------------------------------------------------------
class explain_write_errors:
    """A context (reusable) that turns an OSError while writing `what` into one that says what was not written and
    what is kept; a full disk (ENOSPC, or a quota: EDQUOT) is named as such. `cleanup` is a half-written folder to
    remove."""

    def __init__(self, what: str, latest: str | None, cleanup: str | None = None):
        self.what, self.latest, self.cleanup = what, latest, cleanup

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if not isinstance(error, OSError):
            return False
        if self.cleanup is not None:
            import shutil

            shutil.rmtree(self.cleanup, ignore_errors=True)
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = "The disk is full" if full else f"Writing failed ({error})"
        kept = f"The last complete checkpoint, {self.latest}, is kept" if self.latest else "There is no checkpoint"
        advice = "Free some space" if full else "Fix the cause"
        raise OSError(
            error.errno,
            f"{cause} while writing {self.what}: it was not written. {kept}. {advice}, then rerun with "
            "--resume_from_checkpoint latest.",
        ) from error


# ----- checkpoints on resume -----------------------------------------------------------------------------------------
def save_training_config(config, folder: str) -> None:
    """Writes the run's settings into a checkpoint folder, for `compare_training_config` on resume."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if k != "hub_token"}
    with open(os.path.join(folder, TRAINING_CONFIG_NAME), "w") as f:
        json.dump(values, f, indent=2, default=str)


SPLIT_SETTINGS = ("test_size", "split_seed")  # they choose the held-out images


def compare_training_config(config, checkpoint: str, print_fn=print) -> None:
    """Raises a ValueError listing the model settings (the config class's `model_settings`) or the split settings
    (`SPLIT_SETTINGS`) that differ from those the checkpoint was written with; other differences are printed, as
    they apply from now on."""
    path = os.path.join(checkpoint, TRAINING_CONFIG_NAME)
    if not os.path.isfile(path):
        print_fn(f"{checkpoint} has no {TRAINING_CONFIG_NAME} (an older hfgen wrote it): settings are not compared.")
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is corrupt ({error}): the checkpoint cannot be trusted.") from error
    current = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    model_settings = set()
    for cls in type(config).__mro__:
        model_settings.update(vars(cls).get("model_settings", ()))
    ignored = {"output_dir", "resume_from_checkpoint", "overwrite_output_dir", "hub_token", "recipe"}
    differ = {k: (saved[k], current[k]) for k in current if k in saved and k not in ignored and saved[k] != current[k]}
    for fixed, what in (
        (model_settings, "with other model settings"),
        # Another split would train on images held out so far and score on images already trained on.
        (SPLIT_SETTINGS, "on another train/test split"),
    ):
        refused = {k: v for k, v in differ.items() if k in fixed}
        if refused:
            listed = "; ".join(
                f"--{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in sorted(refused.items())
            )
            raise ValueError(
                f"{checkpoint} was trained {what}: {listed}. Resume with the checkpoint's settings, or start a new "
                "run in another --output_dir."
            )
    for name, (old, new) in sorted(differ.items()):
        if name != "learning_rate":  # `apply_learning_rates` reports that one
            print_fn(f"--{name} is {new!r} now ({old!r} when {checkpoint} was written): the new value applies.")


def _load_checkpoint_file(path: str):
    from accelerate.utils import load

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return load(path, map_location="cpu", weights_only=not os.path.basename(path).startswith("custom_checkpoint_"))


def check_checkpoint_files(accelerator, checkpoint: str) -> None:
    """Checks that every file `accelerator.load_state` will read exists and loads, naming the first that does not.
    Accelerate itself skips an unreadable RNG state with an info-level log line, and the run is then not exact."""
    expected = [f"model{'' if i == 0 else f'_{i}'}.safetensors" for i in range(len(accelerator._models))]
    expected += [f"optimizer{'' if i == 0 else f'_{i}'}.bin" for i in range(len(accelerator._optimizers))]
    expected += [f"scheduler{'' if i == 0 else f'_{i}'}.bin" for i in range(len(accelerator._schedulers))]
    expected += [f"custom_checkpoint_{i}.pkl" for i in range(len(accelerator._custom_objects))]
    expected.append(f"random_states_{accelerator.process_index}.pkl")
    for name in expected:
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: {checkpoint} is incomplete, so resuming from it would not continue the run "
                "exactly. Resume from an earlier checkpoint (--resume_from_checkpoint <folder>)."
            )
        try:
            _load_checkpoint_file(path)
        except Exception as error:  # torch, pickle and safetensors each raise their own types
            raise OSError(
                f"{path} is corrupt ({type(error).__name__}: {error}): resuming from {checkpoint} would not continue "
                "the run exactly. Resume from an earlier checkpoint (--resume_from_checkpoint <folder>)."
            ) from error


def scheduled_learning_rates(accelerator) -> list[list[float]]:
    """The base learning rate of each parameter group of each prepared schedule (what the settings asked for)."""
    return [list(scheduler.scheduler.base_lrs) for scheduler in accelerator._schedulers]


def apply_learning_rates(accelerator, wanted: list[list[float]], print_fn=print) -> None:
    """After `load_state`, the schedules carry the learning rates of the run that wrote the checkpoint. This puts back
    the ones of the current settings (`wanted`, read before loading), keeping each schedule's position (warm-up,
    decay), and says so: a lower --learning_rate on resume is how one recovers from a NaN loss."""
    for index, (scheduler, new_lrs) in enumerate(zip(accelerator._schedulers, wanted)):
        inner = scheduler.scheduler
        if list(inner.base_lrs) == new_lrs:
            continue
        lambdas = getattr(inner, "lr_lambdas", None)  # diffusers' schedules are LambdaLR: base lr x factor(step)
        for i, (group, old, new) in enumerate(zip(inner.optimizer.param_groups, inner.base_lrs, new_lrs)):
            group["lr"] = new * lambdas[i](inner.last_epoch) if lambdas else group["lr"] * new / old
            group["initial_lr"] = new
        print_fn(
            f"Learning rate of schedule {index}: {inner.base_lrs[0]:g} in the checkpoint, {new_lrs[0]:g} from the "
            "settings: the new value applies from now on."
        )
        inner.base_lrs = list(new_lrs)
        inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]


# ----- Ctrl-C --------------------------------------------------------------------------------------------------------
class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training; the message says which checkpoint holds the run."""


def handle_interrupts(trainer) -> None:
    """The first Ctrl-C lets the current step finish, writes a checkpoint and stops with `TrainingInterrupted`; a
    second one stops at once. A KeyboardInterrupt raised inside a step stops without a checkpoint (the step is half
    done) and says which checkpoint is the latest.

    Works through `trainer.training_step`, which the loop calls with the step number: the first call of a new step is
    the point where the previous step is complete (model, optimizer, schedule and RNG states all agree)."""
    trainer.interrupt_requested = False
    if threading_main():
        previous = signal.getsignal(signal.SIGINT)
        if isinstance(previous, _InterruptHandler):  # left by a run that stopped with an error
            previous = previous.previous
        signal.signal(signal.SIGINT, _InterruptHandler(trainer, previous))
    step_function = trainer.training_step
    started = []  # the step numbers seen

    def training_step(batch, step):
        if not started or started[-1] != step:  # the first micro-batch of a new step: the previous one is complete
            if _any_process_interrupted(trainer):
                restore_interrupt_handler()
                done = step - 1
                if done > 0 and not os.path.isdir(os.path.join(trainer.config.output_dir, f"checkpoint-{done}")):
                    trainer.save_checkpoint(done)
                latest = trainer.latest_checkpoint()
                raise TrainingInterrupted(
                    f"Interrupted after step {done}. Latest checkpoint: {latest or 'none'}. Continue with "
                    "--resume_from_checkpoint latest."
                )
            started.append(step)
        try:
            return step_function(batch, step)
        except KeyboardInterrupt as error:
            restore_interrupt_handler()
            if isinstance(error, TrainingInterrupted):
                raise
            latest = trainer.latest_checkpoint()
            raise TrainingInterrupted(
                f"Interrupted in the middle of step {step}: no checkpoint was written for it (its state is half "
                f"updated). Latest checkpoint: {latest or 'none, so the run starts over'}"
                f"{'. Continue with --resume_from_checkpoint latest' if latest else ''}."
            ) from error

    trainer.training_step = training_step


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _InterruptHandler:
    def __init__(self, trainer, previous):
        self.trainer, self.previous = trainer, previous

    def __call__(self, signum, frame):
        if self.trainer.interrupt_requested or not _in_train(self.trainer, frame):
            restore_interrupt_handler()
            raise KeyboardInterrupt
        self.trainer.interrupt_requested = True
        print(
            "\nCtrl-C: finishing this step, then writing a checkpoint. Ctrl-C again stops at once, without one.",
            file=sys.stderr,
        )


def _in_train(trainer, frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "train" and frame.f_locals.get("self") is trainer:
            return True
        frame = frame.f_back
    return False


def restore_interrupt_handler() -> None:
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, _InterruptHandler) and threading_main():
        signal.signal(signal.SIGINT, handler.previous)


def _any_process_interrupted(trainer) -> bool:
    requested = trainer.interrupt_requested
    accelerator = trainer.accelerator
    if accelerator.num_processes > 1:  # every rank must stop at the same step, or the checkpoint's barriers hang
        flag = torch.tensor([float(requested)], device=accelerator.device)
        requested = bool(accelerator.reduce(flag, "max").item())
    return requested


# ----- the run's start and end ---------------------------------------------------------------------------------------
def before_training(trainer) -> None:
    """What `Trainer.train` checks and sets up before its first step."""
    check_batches(trainer)
    handle_interrupts(trainer)


def save_pipeline(pipeline, output_dir: str) -> None:
    """`save_pretrained` into a temporary folder, then each entry moved into `output_dir`: a write that fails (a full
    disk) leaves no half-saved model there."""
    import shutil

    temporary = os.path.join(output_dir, ".pipeline.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        pipeline.save_pretrained(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    for name in sorted(os.listdir(temporary), key=lambda n: n == "model_index.json"):  # the index last
        target = os.path.join(output_dir, name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.replace(os.path.join(temporary, name), target)
    os.rmdir(temporary)
