"""The one pipeline base every hfgen family shares: input checks, prompt encoding, conditioning, image conversion,
the likelihood output, and a loader that opens any saved hfgen pipeline.

A family's pipeline subclasses [`HFGenPipeline`] and adds only its own `__call__` and extras.
"""

import importlib
import importlib.util
import inspect
import json
import math
import numbers
import os
from dataclasses import dataclass

import diffusers.pipelines
import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils import BaseOutput, logging, make_image_grid
from diffusers.utils.torch_utils import randn_tensor
from hfgen.pipelines.loading_checks import check_loaded_weights, check_pipeline_folder
from huggingface_hub import snapshot_download

from hfgen.conditioning import Condition, ConditionEncoder, class_label_tensor, prompt_max_length

logger = logging.get_logger(__name__)

PIPELINE_CLASSES: dict[str, type["HFGenPipeline"]] = {}
# The most images one `__call__` makes: beyond it, memory runs out before an error could say why (`generate` batches).
MAX_IMAGES_PER_CALL = 4096


def check_int(name: str, value, minimum: int = 1, maximum: int | None = None, why: str = "") -> int:
    """`value` as an int when it is an integer (not a bool) in [minimum, maximum]; else a ValueError that names the
    argument, the range and (`why`) where the range comes from."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an int {allowed}{why}, got {value!r}.")
    return int(value)


def check_number(
    name: str, value, minimum: float, maximum: float | None = None, strict: bool = False, why: str = ""
) -> float:
    """`value` as a float when it is a finite real number (not a bool) >= `minimum` (> with `strict`) and <= `maximum`;
    else a ValueError that names the argument and the range. NaN and inf are refused: they sample garbage silently."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or (value <= minimum if strict else value < minimum)
        or (maximum is not None and value > maximum)
    ):
        allowed = f"{'>' if strict else '>='} {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be a finite number {allowed}{why}, got {value!r}.")
    return float(value)


def check_generator(generator, num_images: int) -> None:
    """A `torch.Generator`, a list of one per image, or None (diffusers' convention)."""
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            f"generator must be a torch.Generator, a list of them (one per image) or None, got {generator!r}. For a "
            "seed pass `torch.Generator().manual_seed(seed)`."
        )
    if isinstance(generator, list) and len(generator) != num_images:
        raise ValueError(
            f"You passed a list of {len(generator)} generators for {num_images} images: pass one generator, or one "
            "per image."
        )


def check_latents(latents, shape: tuple[int, ...]) -> torch.Tensor:
    """`latents` as a tensor when it has `shape` and holds finite floats; else a ValueError saying which."""
    if not isinstance(latents, (torch.Tensor, np.ndarray)):
        raise ValueError(f"latents must be a tensor of shape {tuple(shape)}, got {type(latents).__name__}.")
    latents = torch.as_tensor(latents)
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}.")
    if not latents.is_floating_point() or not torch.isfinite(latents).all():
        raise ValueError("latents must be a finite floating-point tensor (no NaN or inf).")
    return latents


def image_grid(images: list[PIL.Image.Image], cols: int | None = None, min_side: int = 64) -> PIL.Image.Image:
    """One grid image; small images (8x8 digits) are upscaled with nearest-neighbour to be seen."""
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images = images + [PIL.Image.new(images[0].mode, images[0].size)] * (rows * cols - len(images))
    scale = max(1, math.ceil(min_side / images[0].width))
    images = [image.resize((image.width * scale, image.height * scale), PIL.Image.NEAREST) for image in images]
    return make_image_grid(images, rows=rows, cols=cols)


@dataclass
class LikelihoodOutput(BaseOutput):
    """log p(x) per image, as the family can give it.

    Args:
        log_likelihood (`torch.Tensor`): (b,) nats per image.
        bits_per_dim (`torch.Tensor`): (b,) -log2 p(x) / number of dimensions, on the discrete data scale.
        kind (`str`): "exact", "lower bound (...)" or "estimate (...)".
        dequantization (`str`): how continuous densities were turned into probabilities of discrete pixels.
    """

    log_likelihood: torch.Tensor
    bits_per_dim: torch.Tensor
    kind: str
    dequantization: str


class HFGenPipeline(DiffusionPipeline):
    r"""Base of every hfgen pipeline. Calling `HFGenPipeline.from_pretrained(path)` (alias `hfgen.load_pipeline`)
    reads `model_index.json` and returns the right family's pipeline: diffusers' own `DiffusionPipeline` only knows
    diffusers classes.

    The likelihood contract: a family that can give log p(x) defines `log_likelihood(images, generator=None, ...)`
    (any further arguments have defaults) returning a [`LikelihoodOutput`]; `hfgen evaluate`, `hfgen compare` and
    `hfgen.metrics.anomaly` call it that way, and skip NLL for families without it."""

    _optional_components = ["tokenizer", "text_encoder"]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        PIPELINE_CLASSES[cls.__name__] = cls

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls is HFGenPipeline:
            config = cls.load_config(
                pretrained_model_name_or_path,
                **{k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs},
            )
            name = config.get("_class_name")
            if name not in PIPELINE_CLASSES:
                raise ValueError(
                    f"{pretrained_model_name_or_path}/model_index.json names the pipeline class {name!r}, which hfgen "
                    f"does not know. Known classes: {sorted(PIPELINE_CLASSES)}. Upgrade hfgen, or load it with the "
                    "library that saved it."
                )
            return PIPELINE_CLASSES[name].from_pretrained(pretrained_model_name_or_path, **kwargs)
        # Loading never unpickles: weights come from safetensors files only.
        kwargs.setdefault("use_safetensors", True)
        folder = str(pretrained_model_name_or_path) if os.path.isdir(pretrained_model_name_or_path) else None
        if folder is not None:  # components present, configs of the right types (a Hub repo: after the download)
            check_pipeline_folder(folder, cls)
        try:
            pipeline = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, json.JSONDecodeError) as error:
            raise OSError(
                f"Could not load {cls.__name__} from {pretrained_model_name_or_path}: a weights or config file is "
                f"missing or corrupt ({error}). Re-save it with `save_pretrained`, or re-download it with "
                "`force_download=True`."
            ) from error
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"Could not load {cls.__name__} from {pretrained_model_name_or_path}: a safetensors weights file is "
                f"corrupt ({error}). Re-save it with `save_pretrained`, or re-download it with `force_download=True`."
            ) from error
        check_loaded_weights(pipeline, folder or cls._downloaded_folder(pretrained_model_name_or_path, kwargs))
        # diffusers loads safetensors weights as views into the file's buffer, at whatever alignment the file gives:
        # vectorised kernels then round differently in the last bit from run to run. Owned, aligned copies make a
        # loaded pipeline generate the same images every time.
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                for tensor in [*component.parameters(), *component.buffers()]:
                    tensor.data = tensor.data.clone()
        return pipeline

    @classmethod
    def _downloaded_folder(cls, repo_id: str, kwargs: dict) -> str | None:
        """The local snapshot a Hub repo was loaded from, for `check_loaded_weights` (None if it cannot be found)."""
        try:
            return cls.download(repo_id, **{**kwargs, "local_files_only": True, "force_download": False})
        except Exception:
            return None

    @classmethod
    def load_config(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Reads `model_index.json`. A self-contained repo (see `hfgen.remote_code`) names its bundled code,
        `"_class_name": ["pipeline_vae", "VAEPipeline"]` and `"vae": ["modeling_vae", "VAEModel"]`: hfgen reads
        those as its installed classes, so it loads such a repo without `trust_remote_code` and runs none of its code.
        """
        result = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        if isinstance(config.get("_class_name"), (list, tuple)):
            config["_class_name"] = config["_class_name"][-1]
        expected_types = cls._get_signature_types() if cls is not HFGenPipeline else {}
        for name, value in config.items():
            if name.startswith("_") or not isinstance(value, (list, tuple)) or len(value) != 2 or value[0] is None:
                continue
            library, class_name = value
            if "." in library or library in LOADABLE_CLASSES or hasattr(diffusers.pipelines, library):
                continue  # "hfgen.models.modeling_vae", "transformers", a diffusers pipeline module
            installed = [t for t in expected_types.get(name, ()) if isinstance(t, type) and t.__name__ == class_name]
            if not installed and importlib.util.find_spec(f"hfgen.models.{library}") is not None:
                installed = [getattr(importlib.import_module(f"hfgen.models.{library}"), class_name, None)]
            if not installed or installed[0] is None:
                raise ValueError(
                    f"{pretrained_model_name_or_path} bundles its `{name}` as {name}/{library}.py ({class_name}), "
                    "which this hfgen does not have. Upgrade hfgen, or load the repo with diffusers' "
                    "`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` after reading its code."
                )
            config[name] = [installed[0].__module__, class_name]
        return result

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """Fetches a Hub repo. diffusers' own `download` rejects components from libraries it does not know (it reads
        `["hfgen.models.modeling_vae", "VAEModel"]` as remote code), so hfgen snapshots the repo itself; weights
        are then loaded from the folder, safetensors only."""
        return snapshot_download(
            pretrained_model_name,
            revision=kwargs.get("revision"),
            cache_dir=kwargs.get("cache_dir"),
            token=kwargs.get("token"),
            local_files_only=bool(kwargs.get("local_files_only")),
            force_download=bool(kwargs.get("force_download")),
            ignore_patterns=["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx"],
        )

    # ----- what the family declares ----------------------------------------------------------------------------------
    # The component that takes the condition (its config says how it is conditioned), e.g. "vae", "generator", "unet".
    model_component: str = ""
    # What the family can do besides sampling: any of "guidance", "steps", "interpolation", "likelihood", "encode",
    # "inpainting", "trajectory", "completion". `capabilities` adds "prompt" or "class" from the loaded model.
    family_capabilities: frozenset[str] = frozenset()
    # `__call__` arguments that validation, the CLI, the Spaces and the metrics use unless their caller gives others
    # (an iterative sampler declares few steps here, e.g. {"num_inference_steps": 50}).
    default_sampling_kwargs: dict = {}
    # The family's own `__call__` knobs a Space shows as sliders: {argument: (low, high, default, label)}.
    sampling_controls: dict[str, tuple[float, float, float, str]] = {}
    # Schedulers a Space offers, swapped the diffusers way (`cls.from_config(pipe.scheduler.config)`): {label: cls}.
    samplers: dict[str, type] = {}
    # Tensors a `callback_on_step_end` may read and replace (diffusers' convention).
    _callback_tensor_inputs = ["latents"]

    @property
    def conditioned_model(self):
        return getattr(self, self.model_component)

    @property
    def condition_type(self) -> str | None:
        """None, "class" or "text": how the pipeline's model is conditioned."""
        return getattr(self.conditioned_model.config, "condition_type", None)

    @property
    def num_classes(self) -> int | None:
        """The number of real classes of a class-conditioned model (the null class is this index)."""
        return getattr(self.conditioned_model.config, "num_classes", None)

    @property
    def capabilities(self) -> frozenset[str]:
        """What this pipeline can do, for the Spaces and the CLI: the family's capabilities plus "prompt" (a text
        model) or "class" (a class model); "guidance" only when there is a condition to guide by."""
        capabilities = set(self.family_capabilities)
        if self.condition_type is None:
            capabilities.discard("guidance")
        else:
            capabilities.add("prompt" if self.condition_type == "text" else "class")
        return frozenset(capabilities)

    @property
    def condition_encoder(self) -> ConditionEncoder:
        return ConditionEncoder(
            self.condition_type,
            getattr(self, "tokenizer", None),
            getattr(self, "text_encoder", None),
            self.num_classes,
        )

    # ----- inputs ---------------------------------------------------------------------------------------------------
    @staticmethod
    def check_inputs(
        prompt, batch_size: int, num_images_per_prompt: int, class_labels=None
    ) -> tuple[list[str] | None, int]:
        """Returns (one prompt per image or None, number of images). Class labels, like prompts, give one image each
        (times `num_images_per_prompt`), so `batch_size` is then left out or equal to their number."""
        batch_size = check_int("batch_size", batch_size)
        num_images_per_prompt = check_int("num_images_per_prompt", num_images_per_prompt)
        if class_labels is not None and prompt is None:
            num_labels = class_label_tensor(class_labels).numel()
            if batch_size not in (1, num_labels):
                raise ValueError(
                    f"Got {num_labels} class_labels but batch_size={batch_size}: class labels give one image each, "
                    "so leave batch_size out (or equal to the number of labels)."
                )
            batch_size = num_labels
        if prompt is None:
            prompts, num_images = None, batch_size * num_images_per_prompt
        else:
            if not isinstance(prompt, (str, list, tuple)):
                raise ValueError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}.")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts:
                raise ValueError(
                    "prompt is an empty list: give at least one prompt, or None for unconditional samples."
                )
            if not all(isinstance(p, str) for p in prompts):
                raise ValueError("prompt must be a string or a list of strings.")
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            num_images = len(prompts)
        if num_images > MAX_IMAGES_PER_CALL:
            raise ValueError(
                f"{num_images} images in one call is more than the {MAX_IMAGES_PER_CALL} allowed: use "
                "`pipeline.generate(num_images, ...)`, which samples in batches."
            )
        return prompts, num_images

    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | list[str] | None = None,
    ) -> tuple[Condition, Condition | None]:
        """diffusers' `encode_prompt`: the prompts' [`Condition`] (per-token states, mask, pooled embedding), each
        repeated `num_images_per_prompt` times, and with guidance the negative condition (`negative_prompt`, or the
        empty prompt: the null condition caption dropout trained)."""
        if self.condition_type != "text":
            self.condition_encoder(prompts=[prompt] if isinstance(prompt, str) else prompt)  # says what is wrong
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        self.warn_if_truncated(prompts)
        device = device or self.device
        expanded = [p for p in prompts for _ in range(num_images_per_prompt)]
        condition = self.condition_encoder(prompts=expanded, device=device)
        if not do_classifier_free_guidance:
            return condition, None
        if negative_prompt is None:
            negative_prompts = [""] * len(prompts)
        elif isinstance(negative_prompt, str):
            negative_prompts = [negative_prompt] * len(prompts)
        else:
            negative_prompts = list(negative_prompt)
            if len(negative_prompts) != len(prompts) or not all(isinstance(p, str) for p in negative_prompts):
                raise ValueError(
                    f"negative_prompt must be a string or a list of {len(prompts)} strings (one per prompt), got "
                    f"{negative_prompt!r}."
                )
        expanded = [p for p in negative_prompts for _ in range(num_images_per_prompt)]
        return condition, self.condition_encoder(prompts=expanded, device=device)

    def warn_if_truncated(self, prompts: list[str]) -> None:
        """diffusers' warning: the tokens past what the text encoder reads are cut off, so the image ignores them."""
        max_length = prompt_max_length(self.tokenizer)
        for prompt, ids in zip(prompts, self.tokenizer(prompts, truncation=False, verbose=False).input_ids):
            if len(ids) > max_length:
                ignored = self.tokenizer.decode(ids[max_length - 1 :], skip_special_tokens=True)
                ignored = ignored if len(ignored) <= 80 else ignored[:77] + "..."
                logger.warning(
                    f"A prompt is {len(ids)} tokens long and the text encoder reads the first {max_length}: this part "
                    f"is ignored: {ignored!r}"
                )

    def prepare_condition(
        self,
        prompt=None,
        class_labels=None,
        batch_size: int = 1,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        negative_prompt=None,
    ) -> tuple[int, Condition | None, Condition | None]:
        """(number of images, their condition, the negative condition when `guidance_scale` > 1 else None).

        No prompt means the empty prompt and no class labels the null class: the unconditional samples caption
        dropout trained. Class labels are one image each (times `num_images_per_prompt`)."""
        prompts, num_images = self.check_inputs(prompt, batch_size, num_images_per_prompt, class_labels)
        guidance_scale = check_number("guidance_scale", guidance_scale, 1, why=" (1 turns guidance off)")
        do_guidance = guidance_scale > 1
        if do_guidance and "guidance" not in self.capabilities:
            raise ValueError(
                f"guidance_scale={guidance_scale} needs a conditioned model that supports classifier-free guidance; "
                f"this {type(self).__name__} has none: leave guidance_scale at 1."
            )
        if negative_prompt is not None and (self.condition_type != "text" or prompt is None):
            raise ValueError("negative_prompt needs a text-conditioned model, a prompt and guidance_scale > 1.")
        encoder = self.condition_encoder
        if class_labels is not None and self.condition_type != "class":
            encoder(class_labels=class_labels)  # raises: says the model takes no class labels
        if prompt is not None and self.condition_type == "text":
            condition, negative = self.encode_prompt(
                prompt, self.device, num_images_per_prompt, do_guidance, negative_prompt
            )
            return num_images, condition, negative
        if class_labels is not None and self.condition_type == "class":
            labels = encoder.check_class_labels(class_labels)
            if num_images % labels.numel() == 0:  # one label for all images, or each label repeated per image
                labels = labels.repeat_interleave(num_images // labels.numel())
            if labels.numel() != num_images:
                raise ValueError(f"Got {labels.numel()} class labels for {num_images} images.")
            class_labels = labels
        condition = encoder(prompts=prompts, class_labels=class_labels, device=self.device, batch_size=num_images)
        negative = encoder.null(num_images, self.device) if do_guidance else None
        return num_images, condition, negative

    def condition_for_images(self, num_images: int, prompt=None, class_labels=None) -> Condition | None:
        """The condition for `num_images` given images (encode, likelihood): one prompt or label for all, or one
        each; none means the null condition."""
        prompts = None
        if prompt is not None:
            prompts, _ = self.check_inputs(prompt, 1, 1)
            prompts = prompts * num_images if len(prompts) == 1 else prompts
            if len(prompts) != num_images:
                raise ValueError(
                    f"Got {len(prompts)} prompts for {num_images} images: give one prompt, or one per image."
                )
        if class_labels is not None:
            labels = (
                self.condition_encoder.check_class_labels(class_labels) if self.condition_type == "class" else None
            )
            if labels is not None and labels.numel() == 1:
                class_labels = labels.repeat(num_images)
            elif labels is not None and labels.numel() != num_images:
                raise ValueError(f"Got {labels.numel()} class labels for {num_images} images.")
        return self.condition_encoder(
            prompts=prompts, class_labels=class_labels, device=self.device, batch_size=num_images
        )

    # ----- sampling, shared by every family --------------------------------------------------------------------------
    def prepare_latents(
        self,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """diffusers' `prepare_latents`: noise of `shape` from `generator` (one, or one per image), or the given
        `latents` checked and moved; scaled by the scheduler's `init_noise_sigma` when the pipeline has a scheduler."""
        check_generator(generator, shape[0])
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = check_latents(latents, shape).to(device=device, dtype=dtype)
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            latents = latents * scheduler.init_noise_sigma
        return latents

    @staticmethod
    def guide(unconditional: torch.Tensor, conditional: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598, eq. 6): extrapolate from
        the null condition's prediction through the condition's. `guidance_scale` 1 gives the conditional one."""
        return unconditional + guidance_scale * (conditional - unconditional)

    def check_callback(self, callback_on_step_end, callback_on_step_end_tensor_inputs: list[str]) -> None:
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError("callback_on_step_end must be callable: f(pipeline, step, timestep, callback_kwargs).")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {sorted(unknown)} are not available; this pipeline offers "
                f"{self._callback_tensor_inputs}."
            )

    def step_callback(self, callback_on_step_end, tensor_inputs: list[str], step: int, timestep, values: dict):
        """Calls `callback_on_step_end(self, step, timestep, {name: tensor})` and returns `values` with whatever
        tensors the callback replaced (diffusers' convention)."""
        if callback_on_step_end is None:
            return values
        outputs = callback_on_step_end(self, step, timestep, {name: values[name] for name in tensor_inputs}) or {}
        return {**values, **{name: outputs[name] for name in tensor_inputs if name in outputs}}

    @torch.no_grad()
    def generate(
        self,
        num_images: int = 1,
        prompt: str | list[str] | None = None,
        class_labels=None,
        seed: int = 0,
        max_batch_size: int = 256,
        output_type: str = "pt",
        **call_kwargs,
    ):
        """The one sampling path that validation, the CLI, the Spaces and `hfgen.metrics` use.

        `num_images` images for each prompt or class label (or in all, unconditionally), in batches of at most
        `max_batch_size`, from one generator seeded with `seed` (the same seed gives the same set), with the family's
        `default_sampling_kwargs` unless `call_kwargs` say otherwise. Returns a (n, c, h, w) tensor in [0, 1] for
        `output_type="pt"`, else a list of PIL images or a numpy array.
        """
        num_images = check_int("num_images", num_images)
        accepted = inspect.signature(self.__call__).parameters
        takes_any = any(parameter.kind is parameter.VAR_KEYWORD for parameter in accepted.values())  # a wrapper
        unknown = [] if takes_any else sorted(set(call_kwargs) - set(accepted))
        if unknown:  # e.g. num_inference_steps for a model that samples in one pass or pixel by pixel
            shared = {"prompt", "class_labels", "batch_size", "num_images_per_prompt", "generator", "latents"}
            shared |= {"output_type", "return_dict", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
            knobs = [name for name in accepted if name not in shared]
            raise ValueError(f"{type(self).__name__} takes no {', '.join(unknown)}; its sampling arguments: {knobs}.")
        kwargs = {k: v for k, v in self.default_sampling_kwargs.items() if k in accepted}
        kwargs.update(call_kwargs)
        generator = torch.Generator().manual_seed(seed)
        if prompt is not None:
            items, key = (
                [p for p in ([prompt] if isinstance(prompt, str) else prompt) for _ in range(num_images)],
                "prompt",
            )
        elif class_labels is not None:
            labels = class_label_tensor(class_labels).tolist()
            items, key = [label for label in labels for _ in range(num_images)], "class_labels"
        else:
            items, key = [None] * num_images, None
        batches = []
        for first in range(0, len(items), max_batch_size):
            chunk = items[first : first + max_batch_size]
            chunk_kwargs = {key: chunk} if key else {"batch_size": len(chunk)}
            output = self(**chunk_kwargs, generator=generator, output_type=output_type, **kwargs).images
            batches.append(output)
        if output_type == "pt":
            return torch.cat(batches)
        if output_type == "np":
            return np.concatenate(batches)
        return [image for batch in batches for image in batch]

    def seed_latents(self, seed: int) -> torch.Tensor:
        """The latent noise (one image's, without the batch dimension) that `seed` gives, drawn on the CPU so that a
        seed means the same on any device; Spaces and interpolation walk between these."""
        return torch.randn(self.latent_shape(1)[1:], generator=torch.Generator().manual_seed(seed))

    def latent_shape(self, num_images: int) -> tuple[int, ...]:
        """The shape of the noise that `__call__` starts from for `num_images` images."""
        raise NotImplementedError(f"{type(self).__name__} does not define latent_shape.")

    @property
    def image_format(self) -> tuple[int, int]:
        """(channels, side) of the images the pipeline's model (`model_component`) takes and makes."""
        config = self.conditioned_model.config
        # What the model makes: a UNet with coordinate channels takes two more channels than its images have.
        return getattr(config, "out_channels", None) or config.in_channels, config.sample_size

    def model_images(self, images) -> torch.Tensor:
        """Images as a user has them (any form `preprocess` takes, in [0, 1]) -> (b, c, h, w) in [-1, 1] at the
        pipeline's `image_format`, on its device: what `encode`, `complete`, inpainting and likelihoods start from."""
        channels, sample_size = self.image_format
        return self.preprocess(images, sample_size, channels)

    def preprocess(self, images, sample_size: int, channels: int) -> torch.Tensor:
        """Images as a user has them -> a tensor (b, c, h, w) in [-1, 1] (the models' scale) on the pipeline's device.

        Takes what the pipelines return, in diffusers' convention: PIL images; numpy arrays (b, h, w, c) or (h, w, c)
        in [0, 1] (or uint8 in 0..255); tensors (b, c, h, w) or (c, h, w) in [0, 1], as `output_type="pt"` returns
        them; or a list of any one of these. Anything else (values outside [0, 1], uint8 or integer tensors, NaN, the
        wrong size) is a ValueError that names the form expected."""
        if images is None:
            raise ValueError("Got no images (None): pass PIL images, a numpy array or a tensor in [0, 1].")
        if not isinstance(images, (torch.Tensor, np.ndarray, PIL.Image.Image)):
            images = list(images)  # a tuple, a list, or a `datasets` column of images
            if not images:
                raise ValueError("Got no images: pass at least one.")
            kinds = {type(image) for image in images}
            if all(isinstance(image, PIL.Image.Image) for image in images):
                pass
            elif kinds <= {torch.Tensor}:
                images = torch.cat([image if image.ndim == 4 else image.unsqueeze(0) for image in images])
            elif kinds <= {np.ndarray}:
                images = np.concatenate([image if image.ndim == 4 else image[None] for image in images])
            else:
                raise ValueError(f"Images must be all PIL images, all numpy arrays or all tensors, got {kinds}.")
        if isinstance(images, PIL.Image.Image):
            images = [images]
        if isinstance(images, list):  # PIL images
            mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
            images = np.stack([np.asarray(image.convert(mode), dtype=np.uint8) for image in images])
            images = images[..., None] if channels == 1 else images  # (b, h, w, c): a 4-pixel-wide "L" is no RGBA
        if isinstance(images, np.ndarray):
            if images.dtype == np.uint8:
                images = images.astype(np.float32) / 255.0
            elif not np.issubdtype(images.dtype, np.floating):
                raise ValueError(f"numpy images must be float in [0, 1] or uint8 in 0..255, got dtype {images.dtype}.")
            if images.ndim == 2:
                images = images[None, ..., None]  # one greyscale (h, w) image
            if images.ndim == 3:
                images = images[None] if images.shape[-1] in (1, 3, 4) else images[..., None]
            if images.ndim != 4:
                raise ValueError(f"numpy images must be (b, h, w, c) or (h, w, c), got shape {images.shape}.")
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8 or not images.is_floating_point():
            raise ValueError(
                f"Image tensors must be floating point in [0, 1] (as `output_type='pt'` returns them), got dtype "
                f"{images.dtype}. For 0..255 values pass `images.float() / 255`."
            )
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1:] != (channels, sample_size, sample_size):
            raise ValueError(
                f"This model takes {sample_size}x{sample_size} images with {channels} channel(s); got shape "
                f"{tuple(images.shape)} (batch, channels, height, width). Resize the images first."
            )
        if len(images) == 0:
            raise ValueError("Got no images: pass at least one.")
        if not torch.isfinite(images).all():
            raise ValueError("The images contain NaN or infinite values.")
        low, high = images.min().item(), images.max().item()
        if low < -1e-6 or high > 1 + 1e-6:
            hint = (
                " They look like [-1, 1] images: pass `(images + 1) / 2`."
                if low >= -1 - 1e-6 and high <= 1 + 1e-6
                else " They look like 0..255 values: pass `images / 255`."
                if high <= 255 and low >= 0
                else ""
            )
            raise ValueError(
                f"Image values must be in [0, 1], as `output_type='pt'` returns them (diffusers' convention); got "
                f"values from {low:.3g} to {high:.3g}.{hint}"
            )
        images = images.clamp(0, 1) * 2 - 1
        return images.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def postprocess(images: torch.Tensor, output_type: str = "pil"):
        """(b, c, h, w) in [-1, 1] -> PIL images, a numpy array (b, h, w, c) in [0, 1], or a tensor in [0, 1]."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        return VaeImageProcessor(do_normalize=True).postprocess(images.float().cpu(), output_type=output_type)
