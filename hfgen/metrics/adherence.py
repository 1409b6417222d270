"""Prompt adherence: how often a text-conditioned model draws what its prompt asks for.

    from hfgen.metrics.adherence import prompt_adherence, format_adherence

    results = prompt_adherence(pipeline, "digits")                  # generates from the default prompt sets
    results = prompt_adherence(images, "shapes", prompts=captions)  # images you already have, one prompt each
    print(format_adherence(results))

`prompt_adherence(pipeline_or_images, dataset, prompts=None, num_samples=200, seed=0, batch_size=250,
extractor=None) -> dict` (see its docstring). The trainer, `hfgen evaluate --metrics adherence` and `hfgen compare`
call it the same way.

What is measured (`ATTRIBUTES`, with chance levels in `CHANCE`):
- digits, mnist: "digit", the data set's shipped classifier ([`load_feature_extractor`]) agrees with the prompted
  digit (chance 10%), overall and per class;
- shapes: "shape" by the shipped shapes classifier (chance 1/3); "color", the mean colour of the foreground pixels,
  nearest of the five in `hfgen.data.COLORS` (20%); "size", the foreground area against the two sizes of
  `hfgen.data.SIZES` (50%); "position", the foreground centroid, nearest of `hfgen.data.POSITIONS` (20%). The
  foreground is every pixel whose brightest channel exceeds 0.5 (the background is black).
Every result has "all": the fraction of images right on every attribute their prompt names (for digits the same as
"digit"; for a shapes prompt naming all four, chance 1/150).

Prompts are parsed ([`parse_prompt`]), so prompts the model never saw in training score as well as the training
template: "the number 7", "a 7", "digit seven", "seven"; "a red circle", "a big blue square in the upper left corner".
A prompt is "seen" when it is the training caption of its targets, else a "paraphrase"; the two groups are reported
separately. Words the parser does not know raise a warning that names them (the prompt is scored on the words it
knows, never on a guess); a prompt that names no target is an error.

Images are taken as the pipelines return them: PIL images, a numpy array (b, h, w, c) in [0, 1] (`output_type="np"`)
or a tensor (b, c, h, w) in [0, 1] (`output_type="pt"`, diffusers' convention). Values outside [0, 1] are refused
with an error, never scored: the shipped classifiers take [-1, 1], and mixing the two conventions silently gives
wrong figures (a tensor with negative values was most likely given in [-1, 1]: pass `(images + 1) / 2`).
"""

import math
import random
import re
import warnings

import numpy as np
import PIL.Image
import torch

from hfgen.data import COLORS, DIGIT_NAMES, POSITIONS, SHAPES, SIZES, shape_captions
from hfgen.metrics.features import DomainClassifier, load_feature_extractor

ATTRIBUTES = {"digits": ("digit",), "mnist": ("digit",), "shapes": ("shape", "color", "size", "position")}
CHANCE = {"digit": 1 / 10, "shape": 1 / 3, "color": 1 / 5, "size": 1 / 2, "position": 1 / 5}
# Area of a shape of half-extent r, in r^2: circle pi, square 4, triangle 2 (base and height 2r). Size is judged
# against the mean over the three shapes, so that it does not depend on the shape classifier.
MEAN_AREA_FACTOR = (math.pi + 4 + 2) / 3
FOREGROUND_THRESHOLD = 0.5

# ----- the parser ---------------------------------------------------------------------------------------------------
DIGIT_WORDS = {**{name: name for name in DIGIT_NAMES}, **{str(i): name for i, name in enumerate(DIGIT_NAMES)}}
DIGIT_FILLER = {
    "a", "an", "the", "handwritten", "hand", "written", "digit", "number", "numeral", "figure", "of", "image",
    "picture", "photo", "drawing", "sketch", "show", "showing", "draw", "write", "please",
}  # fmt: skip
SHAPE_WORDS = {"circle": "circle", "disc": "circle", "disk": "circle", "square": "square", "triangle": "triangle"}
COLOR_WORDS = {color: color for color in COLORS}
SIZE_WORDS = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large"}
VERTICAL_WORDS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
HORIZONTAL_WORDS = {"left": "left", "right": "right"}
CENTER_WORDS = {"center", "centre", "middle", "central"}
SHAPES_FILLER = {
    "a", "an", "the", "one", "at", "in", "on", "of", "to", "and", "is", "with", "shape", "shaped", "corner", "side",
    "part", "image", "picture", "drawing", "colored", "coloured", "placed", "located", "there", "it", "its", "draw",
    "show", "showing", "please",
}  # fmt: skip


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z]+|\d+", prompt.lower())


def _check_dataset(dataset: str) -> None:
    if dataset not in ATTRIBUTES:
        raise ValueError(f"Prompt adherence knows the data sets {sorted(ATTRIBUTES)}, not {dataset!r}.")


def _set(targets: dict, attribute: str, value: str, prompt: str) -> None:
    if targets.get(attribute, value) != value:
        raise ValueError(f"Prompt {prompt!r} names two values of {attribute}: {targets[attribute]!r} and {value!r}.")
    targets[attribute] = value


def parse_prompt(prompt: str, dataset: str) -> dict[str, str]:
    """The attributes a prompt asks for, e.g. {"digit": "seven"} or {"shape": "circle", "color": "red"}.

    Warns (naming them) about words the parser does not know; raises `ValueError` for a prompt that names no target,
    or two values of one attribute ("a red blue circle").
    """
    _check_dataset(dataset)
    targets, unknown = {}, []
    if dataset in ("digits", "mnist"):
        for word in _words(prompt):
            if word in DIGIT_WORDS:
                _set(targets, "digit", DIGIT_WORDS[word], prompt)
            elif word not in DIGIT_FILLER:
                unknown.append(word)
    else:
        vertical, horizontal, center = set(), set(), False
        for word in _words(prompt):
            if word in SHAPE_WORDS:
                _set(targets, "shape", SHAPE_WORDS[word], prompt)
            elif word in COLOR_WORDS:
                _set(targets, "color", COLOR_WORDS[word], prompt)
            elif word in SIZE_WORDS:
                _set(targets, "size", SIZE_WORDS[word], prompt)
            elif word in VERTICAL_WORDS:
                vertical.add(VERTICAL_WORDS[word])
            elif word in HORIZONTAL_WORDS:
                horizontal.add(HORIZONTAL_WORDS[word])
            elif word in CENTER_WORDS:
                center = True
            elif word not in SHAPES_FILLER:
                unknown.append(word)
        if len(vertical) == 1 and len(horizontal) == 1 and not center:
            targets["position"] = f"{vertical.pop()} {horizontal.pop()}"
        elif center and not vertical and not horizontal:
            targets["position"] = "center"
        elif vertical or horizontal or center:
            words = sorted(vertical | horizontal | ({"center"} if center else set()))
            warnings.warn(
                f"Prompt {prompt!r}: the position words {words} do not name one of {list(POSITIONS)}; its position "
                "is not scored.",
                stacklevel=2,
            )
    if not targets:
        raise ValueError(
            f"Prompt {prompt!r} names nothing that prompt adherence can check on {dataset} (it looks for "
            f"{', '.join(ATTRIBUTES[dataset])}; unknown words: {unknown}); give a prompt such as "
            f"{default_prompts(dataset)['seen'][0]!r}."
        )
    if unknown:
        warnings.warn(
            f"Prompt {prompt!r}: the {dataset} adherence parser does not know the words {unknown}; the prompt is "
            f"scored on the words it knows: {targets or 'none'}.",
            stacklevel=2,
        )
    return targets


def template_prompt(targets: dict[str, str], dataset: str) -> str | None:
    """The training caption (the embedded data set's template) for these targets, or None when it needs more."""
    if dataset in ("digits", "mnist"):
        return f"a handwritten digit {targets['digit']}" if "digit" in targets else None
    if set(targets) != set(ATTRIBUTES["shapes"]):
        return None
    return shape_captions(targets["shape"], targets["color"], targets["size"], targets["position"])[0]


def is_seen(prompt: str, dataset: str, targets: dict[str, str] | None = None) -> bool:
    """Whether `prompt` is the training template of what it asks for (else it is a paraphrase)."""
    targets = parse_prompt(prompt, dataset) if targets is None else targets
    return " ".join(prompt.lower().split()) == template_prompt(targets, dataset)


def default_prompts(dataset: str) -> dict[str, list[str]]:
    """{"seen": the training template for every class (every attribute combination for shapes, in a fixed shuffled
    order), "paraphrase": wordings never used in training}, each balanced over the classes."""
    _check_dataset(dataset)
    if dataset in ("digits", "mnist"):
        paraphrases = ["the number {i}", "a {i}", "digit {name}", "{name}"]
        return {
            "seen": [f"a handwritten digit {name}" for name in DIGIT_NAMES],
            "paraphrase": [t.format(i=i, name=name) for t in paraphrases for i, name in enumerate(DIGIT_NAMES)],
        }
    combos = [(s, c, z, p) for s in SHAPES for c in COLORS for z in SIZES for p in POSITIONS]
    random.Random(0).shuffle(combos)
    other_size = {"small": "tiny", "large": "big"}
    other_where = {
        p: "in the middle" if p == "center" else f"in the {p.replace('top', 'upper')} corner" for p in POSITIONS
    }
    paraphrases = [
        "a {color} {shape}",
        "a {size2} {shape}",
        "{color} {shape} {where2}",
        "one {size2} {color} {shape} {where2}",
        "the {shape} is {color} and {size2}, {where2}",
    ]
    seen, paraphrase = [], []
    for i, (shape, color, size, position) in enumerate(combos):
        seen.append(template_prompt({"shape": shape, "color": color, "size": size, "position": position}, dataset))
        paraphrase.append(
            paraphrases[i % len(paraphrases)].format(
                shape=shape, color=color, size2=other_size[size], where2=other_where[position]
            )
        )
    return {"seen": seen, "paraphrase": paraphrase}


# ----- images -------------------------------------------------------------------------------------------------------
def to_unit_images(images) -> torch.Tensor:
    """What a pipeline returns (PIL images, numpy (b, h, w, c) in [0, 1], a tensor (b, c, h, w) in [0, 1]) ->
    a float tensor (b, c, h, w) in [0, 1]. Refuses values outside [0, 1], and integer arrays, with a clear error."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], PIL.Image.Image):
        arrays = [
            np.asarray(i if i.mode in ("L", "RGB") else i.convert("L" if i.mode == "1" else "RGB")) for i in images
        ]
        array = np.stack(arrays).astype(np.float32) / 255.0
        array = array[..., None] if array.ndim == 3 else array
        return torch.from_numpy(array).permute(0, 3, 1, 2)
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(
                f"A numpy batch of images is (b, h, w, c) with c = 1 or 3, as `output_type='np'` returns it; got "
                f"shape {images.shape}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"A tensor of images is (b, c, h, w), as `output_type='pt'` returns it; got {tuple(images.shape)}."
            )
        tensor = images.detach().cpu()
    else:
        raise TypeError(f"Expected PIL images, a numpy array or a tensor of images, got {type(images).__name__}.")
    if not tensor.is_floating_point():
        raise ValueError(
            f"Images must be floats in [0, 1], as the pipelines return them; got {tensor.dtype}. Divide uint8 images "
            "by 255."
        )
    low, high = tensor.min().item(), tensor.max().item()
    if low < -1e-6 or high > 1 + 1e-6:
        hint = (
            "Negative values: these look like images in [-1, 1] (the classifiers' convention); pass (images + 1) / 2."
            if low < 0
            else "Values above 1: these look like 0-255 grey levels; divide by 255."
        )
        raise ValueError(
            f"Prompt adherence takes images in [0, 1], as pipelines return them (output_type 'pt' or 'np'); got "
            f"values in [{low:.3g}, {high:.3g}]. {hint}"
        )
    return tensor.float().clamp(0, 1)


def _extractor(dataset: str, extractor) -> DomainClassifier:
    if isinstance(extractor, DomainClassifier):
        return extractor
    return load_feature_extractor(extractor or dataset)


@torch.no_grad()
def predicted_classes(images: torch.Tensor, classifier: DomainClassifier) -> torch.Tensor:
    """The classifier's class for each image (b, c, h, w) in [0, 1] (the classifiers take [-1, 1]), in batches."""
    return torch.cat([classifier.class_probabilities(batch * 2 - 1).argmax(-1) for batch in images.split(500)])


@torch.no_grad()
def nearest_position(x: float, y: float) -> str:
    """The name of the `hfgen.data.POSITIONS` entry nearest (x, y), given as fractions of the width and height."""
    centres = torch.tensor(list(POSITIONS.values()))  # (5, 2) as (x, y) fractions
    return list(POSITIONS)[(centres - torch.tensor([float(x), float(y)])).norm(dim=1).argmin()]


def predict_attributes(images, dataset: str, extractor: DomainClassifier | str | None = None) -> dict[str, list]:
    """What each image shows, per attribute of `dataset`: {"digit": ["seven", ...]} or {"shape": [...], "color":
    [...], "size": [...], "position": [...]} (None where an image has no foreground)."""
    _check_dataset(dataset)
    images = to_unit_images(images)
    classifier = _extractor("mnist" if dataset == "mnist" else dataset, extractor)
    if classifier.config.in_channels == 1 and images.shape[1] == 3:
        images = images.mean(dim=1, keepdim=True)
    names = classifier.config.class_names
    classes = predicted_classes(images, classifier).tolist()
    if dataset in ("digits", "mnist"):
        return {"digit": [names[c] for c in classes]}

    predictions = {"shape": [names[c] for c in classes], "color": [], "size": [], "position": []}
    _, _, height, width = images.shape
    mask = images.amax(dim=1) > FOREGROUND_THRESHOLD  # (b, h, w)
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255  # (5, 3)
    log_areas = torch.tensor([math.log(MEAN_AREA_FACTOR * (s * width) * (s * height)) for s in SIZES.values()])
    ys, xs = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width, indexing="ij")
    for image, foreground in zip(images, mask):
        area = foreground.sum()
        if area == 0:
            for attribute in ("color", "size", "position"):
                predictions[attribute].append(None)
            continue
        color = image[:, foreground].mean(dim=1)  # (3,)
        predictions["color"].append(list(COLORS)[(palette - color).norm(dim=1).argmin()])
        predictions["size"].append(list(SIZES)[(log_areas - area.float().log()).abs().argmin()])
        predictions["position"].append(nearest_position(xs[foreground].mean(), ys[foreground].mean()))
    return predictions


# ----- scores -------------------------------------------------------------------------------------------------------
def adherence(images, prompts: str | list[str], dataset: str, extractor=None) -> dict:
    """Scores images against the prompts they were generated from (one prompt per image, or one for all).

    Returns {"dataset", "chance", and per group present ("seen", "paraphrase"): {"num_images", "all", one fraction
    per attribute, "per_class": {attribute: {value: fraction}}}}. An attribute is scored only on the images whose
    prompt names it.
    """
    images = to_unit_images(images)
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"Got {len(prompts)} prompts for {len(images)} images: give one prompt per image.")
    parsed = {}
    for prompt in dict.fromkeys(prompts):  # each distinct prompt parsed (and warned about) once
        targets = parse_prompt(prompt, dataset)
        parsed[prompt] = (targets, "seen" if is_seen(prompt, dataset, targets) else "paraphrase")
    predictions = predict_attributes(images, dataset, extractor)
    attributes = ATTRIBUTES[dataset]

    results = {"dataset": dataset, "chance": {a: CHANCE[a] for a in attributes}}
    for group in ("seen", "paraphrase"):
        members = [i for i, p in enumerate(prompts) if parsed[p][1] == group]
        if not members:
            continue
        scores = {"num_images": len(members)}
        hits = {i: {a: predictions[a][i] == v for a, v in parsed[prompts[i]][0].items()} for i in members}
        scores["all"] = float(np.mean([all(h.values()) for h in hits.values()]))
        scores["chance_all"] = float(np.mean([math.prod(CHANCE[a] for a in hits[i]) for i in members]))
        scores["per_class"] = {}
        for attribute in attributes:
            scored = [i for i in members if attribute in hits[i]]
            if not scored:
                continue
            scores[attribute] = float(np.mean([hits[i][attribute] for i in scored]))
            values = sorted({parsed[prompts[i]][0][attribute] for i in scored}, key=_value_order(attribute))
            scores["per_class"][attribute] = {
                value: float(
                    np.mean([hits[i][attribute] for i in scored if parsed[prompts[i]][0][attribute] == value])
                )
                for value in values
            }
        results[group] = scores
    return results


def _value_order(attribute: str):
    order = {"digit": DIGIT_NAMES, "shape": SHAPES, "color": list(COLORS), "size": list(SIZES)}
    order["position"] = list(POSITIONS)
    return order[attribute].index


@torch.no_grad()
def generate_for_prompts(pipeline, prompts: list[str], seed: int = 0, batch_size: int = 250) -> torch.Tensor:
    """One image per prompt as (n, c, h, w) in [0, 1], through the pipeline's `generate` (the one sampling path:
    its `default_sampling_kwargs`, one generator seeded with `seed` through all batches of `batch_size`)."""
    if getattr(pipeline, "tokenizer", None) is None or getattr(pipeline, "text_encoder", None) is None:
        raise ValueError(
            f"Prompt adherence needs a text-conditioned pipeline; this {type(pipeline).__name__} has no text encoder."
        )
    return pipeline.generate(1, prompt=prompts, seed=seed, max_batch_size=batch_size, output_type="pt").cpu()


def prompt_adherence(
    pipeline_or_images,
    dataset: str,
    prompts: str | list[str] | None = None,
    num_samples: int = 200,
    seed: int = 0,
    batch_size: int = 250,
    extractor: DomainClassifier | str | None = None,
) -> dict:
    """Prompt adherence of a text-conditioned pipeline, or of images already generated.

    Args:
        pipeline_or_images: A loaded hfgen pipeline with a text encoder, or images as a pipeline returns them
            (PIL images, numpy (b, h, w, c) or a tensor (b, c, h, w), in [0, 1]).
        dataset (`str`): "digits", "mnist" or "shapes": what the prompts can ask for and which classifier checks it.
        prompts (`str` or `list[str]`, *optional*): With images, one prompt per image (or one for all); required.
            With a pipeline, the prompts to sample, cycled to `num_samples` images; default: `default_prompts`, the
            training template and the paraphrases, `num_samples` images each.
        num_samples (`int`, *optional*, defaults to 200): Images generated per prompt set (pipeline only).
        seed (`int`, *optional*, defaults to 0): Seed of the generated images (pipeline only).
        batch_size (`int`, *optional*, defaults to 250): Images per pipeline call.
        extractor ([`DomainClassifier`] or `str`, *optional*): The classifier; default: the one shipped for `dataset`.

    Returns:
        `dict`: see [`adherence`]; "seen" and "paraphrase" groups with "all", one fraction per attribute and
        "per_class", plus "chance".
    """
    _check_dataset(dataset)
    if not hasattr(pipeline_or_images, "components"):  # images, not a pipeline
        if prompts is None:
            raise ValueError("Scoring images needs the prompts they were generated from: pass `prompts`.")
        return adherence(pipeline_or_images, prompts, dataset, extractor)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompt_sets = list(default_prompts(dataset).values()) if prompts is None else [list(prompts)]
    all_prompts = [s[i % len(s)] for s in prompt_sets for i in range(num_samples)]
    images = generate_for_prompts(pipeline_or_images, all_prompts, seed=seed, batch_size=batch_size)
    return adherence(images, all_prompts, dataset, extractor)


def summary(results: dict) -> dict[str, float]:
    """Flat figures for tables and model cards: adherence_seen, adherence_paraphrase (the "all" fractions) and
    adherence_<group>_<attribute>."""
    flat = {}
    for group in ("seen", "paraphrase"):
        if group in results:
            flat[f"adherence_{group}"] = results[group]["all"]
            if len(ATTRIBUTES[results["dataset"]]) > 1:
                flat.update({f"adherence_{group}_{a}": results[group][a] for a in ATTRIBUTES[results["dataset"]]})
    return flat


def format_adherence(results: dict) -> str:
    """Markdown tables: one row per prompt group (and chance) with every attribute, then the per-class fractions."""
    attributes = ATTRIBUTES[results["dataset"]]
    columns = ["all", *attributes] if len(attributes) > 1 else list(attributes)
    header = f"| prompts | images | {' | '.join(columns)} | chance of all |"
    lines = [header, "|---|---|" + "---|" * (len(columns) + 1)]
    for group in ("seen", "paraphrase"):
        if group in results:
            row = results[group]
            cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns] + [f"{row['chance_all']:.3f}"]
            lines.append(f"| {group} | {row['num_images']} | {' | '.join(cells)} |")
    chance = [f"{results['chance'][c]:.3f}" if c in results["chance"] else "-" for c in columns]
    lines.append(f"| chance | - | {' | '.join(chance)} | - |")
    for attribute in attributes:
        groups = [g for g in ("seen", "paraphrase") if attribute in results.get(g, {}).get("per_class", {})]
        if not groups:
            continue
        values = list(dict.fromkeys(v for g in groups for v in results[g]["per_class"][attribute]))
        lines += ["", f"| {attribute} | " + " | ".join(values) + " |", "|---|" + "---|" * len(values)]
        for group in groups:
            per_class = results[group]["per_class"][attribute]
            cells = [f"{per_class[v]:.2f}" if v in per_class else "-" for v in values]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
