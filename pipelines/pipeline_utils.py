"""The one pipeline base every hfgen family shares: input checks, prompt encoding, conditioning, image conversion,
the likelihood output, and a loader that opens any saved hfgen pipeline.

A family's pipeline subclasses [`HFGenPipeline`] and adds only its own `__call__` and extras.
"""

import importlib
import importlib.util
import json
import math
import os
from dataclasses import dataclass

import diffusers.pipelines
import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES
from diffusers.utils import BaseOutput, make_image_grid
from hfgen.pipelines.loading_checks import check_loaded_weights, check_pipeline_folder
from huggingface_hub import snapshot_download

from hfgen.text import encode_prompts

PIPELINE_CLASSES: dict[str, type["HFGenPipeline"]] = {}


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

    # ----- inputs ---------------------------------------------------------------------------------------------------
    @staticmethod
    def check_inputs(
        prompt, batch_size: int, num_images_per_prompt: int, class_labels=None
    ) -> tuple[list[str] | None, int]:
        """Returns (one prompt per image or None, number of images). Class labels, like prompts, give one image each
        (times `num_images_per_prompt`), so `batch_size` is then left out or equal to their number."""
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}.")
        if class_labels is not None and prompt is None:
            num_labels = torch.as_tensor(class_labels).numel()
            if batch_size not in (1, num_labels):
                raise ValueError(
                    f"Got {num_labels} class_labels but batch_size={batch_size}: class labels give one image each, "
                    "so leave batch_size out (or equal to the number of labels)."
                )
            batch_size = num_labels
        if prompt is None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
            return None, batch_size * num_images_per_prompt
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt is an empty list: give at least one prompt, or None for unconditional samples.")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a list of strings.")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        return prompts, len(prompts)

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> pooled text embeddings (b, d) from the pipeline's `tokenizer` and `text_encoder`."""
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError(
                f"This {type(self).__name__} was trained without text, so it has no text encoder: call it without "
                "`prompt` for unconditional samples."
            )
        return encode_prompts(self.tokenizer, self.text_encoder, prompts, device=self.device)

    def prepare_condition(self, model, prompts: list[str] | None, num_images: int, class_labels=None):
        """What the model is conditioned on: text embeddings (an empty prompt stands for "no text", as in caption
        dropout during training), class labels (-1 for "no class"), or None for an unconditional model."""
        condition_type = getattr(model.config, "condition_type", None)
        if condition_type == "class":
            if prompts is not None:
                raise ValueError("This model is conditioned on class labels, not text: pass `class_labels`.")
            if class_labels is None:
                return None
            labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).flatten()
            if num_images % labels.numel() == 0:  # one label for all images, or each label repeated per image
                labels = labels.repeat_interleave(num_images // labels.numel())
            if labels.numel() != num_images:
                raise ValueError(f"Got {labels.numel()} class labels for {num_images} images.")
            return labels
        if class_labels is not None:
            raise ValueError("This model is not class-conditioned: do not pass `class_labels`.")
        if condition_type == "text":
            return self.encode_prompt(prompts if prompts is not None else [""] * num_images)
        if prompts is not None:
            self.encode_prompt(prompts)  # raises the "trained without text" error when there is no text encoder
            raise ValueError(f"This {type(self).__name__}'s model is not conditioned: call it without `prompt`.")
        return None

    def preprocess(self, images, sample_size: int, channels: int) -> torch.Tensor:
        """PIL image(s), a uint8/float numpy array (b, h, w, c) in [0, 1], or a tensor (b, c, h, w) in [-1, 1] ->
        a tensor (b, c, h, w) in [-1, 1] on the pipeline's device, with a clear error for the wrong size."""
        if not isinstance(images, (torch.Tensor, np.ndarray, PIL.Image.Image)):
            images = list(images)  # a tuple, or a `datasets` column of images
        if isinstance(images, (PIL.Image.Image, np.ndarray)) or (
            isinstance(images, list) and images and isinstance(images[0], PIL.Image.Image)
        ):
            images = images if isinstance(images, list) else [images]
            if isinstance(images[0], PIL.Image.Image):
                mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
                images = np.stack([np.asarray(image.convert(mode), dtype=np.float32) / 255.0 for image in images])
            else:
                images = np.concatenate(images) if images[0].ndim == 4 else np.stack(images)
                images = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
            if images.ndim == 3:
                images = images[..., None]
            images = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
        images = torch.as_tensor(images)
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.shape[1:] != (channels, sample_size, sample_size):
            raise ValueError(
                f"This model takes {sample_size}x{sample_size} images with {channels} channel(s); got shape "
                f"{tuple(images.shape)} (batch, channels, height, width). Resize the images first."
            )
        return images.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def postprocess(images: torch.Tensor, output_type: str = "pil"):
        """(b, c, h, w) in [-1, 1] -> PIL images, a numpy array (b, h, w, c) in [0, 1], or a tensor in [0, 1]."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}.")
        return VaeImageProcessor(do_normalize=True).postprocess(images.float().cpu(), output_type=output_type)
