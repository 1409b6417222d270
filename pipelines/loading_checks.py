"""What `HFGenPipeline.from_pretrained` checks in a saved pipeline, so that a damaged one is an error naming the file
and the problem instead of a model that samples NaN.

diffusers 0.42 loads a weights file that lacks a tensor with only a log line ("Some weights ... are newly
initialized"), and the tensor stays on the meta device: every image then comes out NaN. A config value of the wrong
type fails deep inside torch, and NaN weights load silently.
"""

import inspect
import json
import math
import os
import types
import typing

import torch
from diffusers import ModelMixin


def check_pipeline_folder(folder: str, pipeline_class) -> None:
    """Before loading: model_index.json names every component `pipeline_class` needs, each named component has its
    folder, and each hfgen model's config.json has values of the right type and range and builds the model."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    expected, _ = pipeline_class._get_signature_keys(pipeline_class)
    optional = set(getattr(pipeline_class, "_optional_components", []))
    named = {k: v for k, v in index.items() if not k.startswith("_")}
    missing = sorted(
        name
        for name in set(expected) - optional
        if not (isinstance(named.get(name), list) and named[name][0] is not None)
    )
    if missing:
        raise ValueError(
            f"{index_path} names the pipeline class {pipeline_class.__name__}, which needs the component(s) "
            f"{missing}; the file lists {sorted(named)}, without a saved {' or '.join(missing)}."
        )
    for name, value in named.items():
        if not (isinstance(value, list) and len(value) == 2 and value[0] is not None):
            continue
        component_folder = os.path.join(folder, name)
        if not os.path.isdir(component_folder):
            raise FileNotFoundError(
                f"{index_path} lists the component {name!r} ({value[1]}), but its folder {component_folder} is "
                "missing."
            )
        model_class = next(
            (
                t
                for t in _signature_types(pipeline_class, name)
                if isinstance(t, type) and issubclass(t, ModelMixin) and t.__name__ == value[1]
            ),
            None,
        )
        if model_class is not None:
            check_model_config(os.path.join(component_folder, "config.json"), model_class)


def _signature_types(pipeline_class, name: str) -> tuple:
    return pipeline_class._get_signature_types().get(name, ())


def _matches(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (tuple, list) or annotation in (tuple, list):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value) if args else True
    return True


def check_model_config(path: str, model_class) -> None:
    """Each value of an hfgen model's config.json has the type its `__init__` declares; sizes (ints) are at least 1
    and numbers finite; and the config builds the model (its own range checks), without allocating weights."""
    try:
        with open(path) as f:
            config = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from None
    parameters = inspect.signature(model_class.__init__).parameters
    for key, value in config.items():
        if key.startswith("_") or key not in parameters:
            continue
        annotation = parameters[key].annotation
        if annotation is not inspect.Parameter.empty and not _matches(value, annotation):
            shown = getattr(annotation, "__name__", None) or str(annotation)
            raise ValueError(f"{path}: {key} is {value!r}, but {model_class.__name__} takes {shown}.")
        numbers = value if isinstance(value, list) else [value]
        for number in numbers:
            if isinstance(number, float) and not math.isfinite(number):
                raise ValueError(f"{path}: {key} is {value!r}; it must be a finite number.")
            if isinstance(number, int) and not isinstance(number, bool) and number < 1:
                raise ValueError(f"{path}: {key} is {value!r}; sizes and counts must be at least 1.")
    try:
        with torch.device("meta"):
            model_class.from_config(config)
    except Exception as error:  # the model's own ValueErrors, or torch's on impossible shapes
        raise ValueError(f"{path} does not describe a valid {model_class.__name__}: {error}") from error


def check_loaded_weights(pipeline, folder: str | None) -> None:
    """After loading: every module's tensors came from its weights file (none missing, none left on the meta device)
    and are finite. `folder` is the pipeline's local folder (None: only the tensors are checked)."""
    for name, component in pipeline.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        where = os.path.join(folder, name) if folder else name
        weights = _weights_files(where) if folder else []
        tensors = dict(component.state_dict())
        if weights:
            from safetensors import safe_open

            stored = set()
            for path in weights:
                with safe_open(path, framework="pt") as f:
                    stored.update(f.keys())
            missing = sorted(k for k in tensors if k not in stored and not _derived(component, k))
            if missing:
                raise ValueError(
                    f"{', '.join(weights)} lacks {len(missing)} tensor(s) of the {name} "
                    f"({type(component).__name__}): {missing[:10]}{' ...' if len(missing) > 10 else ''}. They would "
                    "be random (the loader only logs this) and the images wrong or NaN: re-save it with "
                    "`save_pretrained`."
                )
        on_meta = sorted(k for k, t in tensors.items() if t.is_meta)
        if on_meta:
            raise ValueError(
                f"The {name} in {where} has tensors that were never loaded: {on_meta[:10]}. Re-save the pipeline."
            )
        bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
        if bad:
            raise ValueError(
                f"The weights of the {name} in {where} hold NaN or infinite values, in {bad[:10]}"
                f"{' ...' if len(bad) > 10 else ''}: the model diverged before it was saved. Use an earlier "
                "checkpoint."
            )


def _weights_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))


def _derived(component, key: str) -> bool:
    """Tensors a library does not save: tied weights (transformers)."""
    tied = getattr(component, "_tied_weights_keys", None) or []
    return any(key == t or key.endswith("." + t) for t in (tied if isinstance(tied, (list, tuple)) else list(tied)))
