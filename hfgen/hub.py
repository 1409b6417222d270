"""Model cards and Hub uploads shared by every hfgen family.

Everything here except [`push_to_hub`] is local: cards are rendered from a template string held in this module, so
writing a card never touches the network (no template download, no card validation call).
"""

import contextlib
import os
import re
import shlex
from typing import Any

from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
    add_space_variable,
    create_branch,
    create_repo,
    upload_folder,
)
from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id

from hfgen.remote_code import self_contained_copy

# Files a training run leaves in its output dir that do not belong in a published model repo.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/**", "*.tmp*", "logs/**"]

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

This is a **{{ family }}** model trained with `hfgen`, packaged as a
`hfgen.{{ pipeline_class }}` pipeline for {{ task }}{% if dataset %} on `{{ dataset }}`{% endif %}.
{% if base_text %}
{{ base_text }}
{% endif %}
## How to use

```python
import hfgen, torch

pipe = hfgen.{{ pipeline_class }}.from_pretrained("{{ model_id }}")
image = {{ call }}.images[0]

# or, without knowing the pipeline class:
pipe = hfgen.load_pipeline("{{ model_id }}")
```
{% if sample_grid %}
## Samples

![samples]({{ sample_grid }})
{% endif %}
{% if settings_rows %}
## Training settings

| key | value |
|-----|-------|
{% for key, value in settings_rows %}| {{ key }} | {{ value }} |
{% endfor %}
{% endif %}
{% if metrics_rows %}
## Results

| key | value |
|-----|-------|
{% for key, value in metrics_rows %}| {{ key }} | {{ value }} |
{% endfor %}
{% endif %}
{% if adherence %}
## Prompt adherence

How often samples show what the prompt asks for, judged by the data set's shipped classifier
(`hfgen.metrics.prompt_adherence`): "seen" prompts use the training captions' wording, "paraphrase" prompts
word it in ways never seen in training.

{{ adherence }}
{% endif %}
{% if command %}
## Training command

```bash
{{ command }}
```
{% endif %}
"""


def _cell(value: Any) -> str:
    """Formats a value for a markdown table cell: floats to 4 significant digits, no pipes or newlines."""
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _is_hub_dataset(dataset: str | None) -> bool:
    """Whether `dataset` names a Hub dataset (or a bare embedded name) rather than a local folder or file.

    Only such names go into the card metadata: the Hub rejects/links `datasets:` entries as dataset ids.
    """
    if not dataset or os.path.exists(dataset):
        return False
    try:
        validate_repo_id(dataset)
    except HFValidationError:
        return False
    return True


def write_model_card(
    output_dir: str,
    *,
    family: str,
    pipeline_class: str,
    pipeline_tag: str,
    dataset: str | None,
    settings: dict,
    metrics: dict | None = None,
    sample_grid: str | None = None,
    adherence: str | None = None,
    repo_id: str | None = None,
    tags: list[str] | None = None,
    base_text: str | None = None,
) -> ModelCard:
    """Renders a model card for a trained pipeline and saves it to `output_dir/README.md`.

    Args:
        output_dir (`str`): Folder holding the saved pipeline; the card is written there as `README.md`.
        family (`str`): Model family (e.g. `"ddpm"`, `"vae"`), used in the description and tags.
        pipeline_class (`str`): Name of the `hfgen` pipeline class, used in the usage snippet.
        pipeline_tag (`str`): `"unconditional-image-generation"` or `"text-to-image"`.
        dataset (`str`, *optional*): Training dataset. Listed in the metadata only when it looks like a Hub id.
        settings (`dict`): Training settings, rendered as a sorted table. A `"command"` entry (string or list of
            arguments) is also shown as the training command.
        metrics (`dict`, *optional*): Final metrics, rendered as a "Results" table.
        sample_grid (`str`, *optional*): Path of a sample grid image relative to `output_dir`.
        adherence (`str`, *optional*): Prompt adherence tables (`hfgen.metrics.format_adherence`), in their own
            section.
        repo_id (`str`, *optional*): Hub repo id used in the snippet; defaults to `output_dir`.
        tags (`list[str]`, *optional*): Extra tags appended to `["hfgen", family, pipeline_tag]`.
        base_text (`str`, *optional*): Extra paragraph (family-specific notes) placed after the description.

    Returns:
        [`huggingface_hub.ModelCard`]: The rendered card.
    """
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="hfgen",
        pipeline_tag=pipeline_tag,
        datasets=[dataset] if _is_hub_dataset(dataset) else None,
        # dict.fromkeys drops duplicates (e.g. a family tag passed again) while keeping order.
        tags=list(dict.fromkeys(["hfgen", family, pipeline_tag, *(tags or [])])),
    )

    command = settings.get("command")
    if isinstance(command, (list, tuple)):
        command = shlex.join(str(arg) for arg in command)
    # Text-to-image pipelines need a prompt; unconditional ones only a batch size.
    if pipeline_tag == "text-to-image":
        call = 'pipe(prompt="a photo of a cat", generator=torch.manual_seed(0))'
    else:
        call = "pipe(batch_size=16, generator=torch.manual_seed(0))"

    card = ModelCard.from_template(
        card_data,
        template_str=MODEL_CARD_TEMPLATE,
        title=repo_id or os.path.basename(os.path.normpath(output_dir)),
        family=family,
        pipeline_class=pipeline_class,
        task=pipeline_tag.replace("-", " "),
        dataset=dataset,
        base_text=base_text,
        model_id=repo_id or output_dir,
        call=call,
        sample_grid=sample_grid,
        adherence=adherence,
        settings_rows=[(_cell(k), _cell(v)) for k, v in sorted(settings.items()) if k != "command"],
        metrics_rows=[(_cell(k), _cell(v)) for k, v in sorted((metrics or {}).items())],
        command=command,
    )
    # Optional sections leave runs of blank lines behind; collapse them so the markdown stays tidy.
    card = ModelCard(re.sub(r"\n{3,}", "\n\n", card.content))
    card.save(os.path.join(output_dir, "README.md"))
    return card


# Metrics that go into the card's `model-index` (what the Hub shows as evaluation results), with display names.
EVAL_METRIC_NAMES = {
    "fid": "FID ({features} features)",
    "kid": "KID ({features} features)",
    "is": "Inception Score ({features} classifier)",
    "precision": "Precision (k=3, {features} features)",
    "recall": "Recall (k=3, {features} features)",
    "nll_bits_per_dim": "NLL bits/dim (test split)",
}


def add_eval_results(output_dir: str, results: dict, dataset: str, split: str = "train") -> ModelCard:
    """Writes `hfgen evaluate` results into the `model-index` metadata of `output_dir/README.md` (and keeps the rest
    of the card). Sample-quality metrics compare with the `split` images, NLL is on the test split."""
    path = os.path.join(output_dir, "README.md")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model card at {path}: train with hfgen (or write one) before adding results.")
    card = ModelCard.load(path)
    task = card.data.pipeline_tag or "unconditional-image-generation"
    card.data.model_name = card.data.model_name or os.path.basename(os.path.normpath(output_dir))
    card.data.eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split="test" if key.startswith("nll") else split,
            metric_type=key,
            metric_value=round(float(results[key]), 6),
            metric_name=name.format(features=f"hfgen {dataset}"),
        )
        for key, name in EVAL_METRIC_NAMES.items()
        if results.get(key) is not None
    ]
    card.save(path)
    return card


def repo_id_for(output_dir: str, hub_model_id: str | None) -> str:
    """Returns `hub_model_id` if given, else the basename of `output_dir` (as diffusers' training examples do)."""
    return hub_model_id or os.path.basename(os.path.normpath(output_dir))


def push_to_hub(
    folder: str,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload with hfgen",
    revision: str | None = None,
) -> str:
    """Uploads a saved pipeline folder to a Hub model repo, creating the repo (and branch) if needed.

    Intermediate checkpoints, temporary files and logs are left out (see `PUSH_IGNORE_PATTERNS`). A pipeline saved by
    hfgen is pushed self-contained: its code goes along, so that `diffusers.DiffusionPipeline.from_pretrained(repo_id,
    trust_remote_code=True)` loads it without hfgen (see [`hfgen.remote_code.make_self_contained`]).

    Args:
        folder (`str`): Local folder to upload (usually a training `output_dir`).
        repo_id (`str`): Target repo, `"name"` or `"namespace/name"`.
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` / the token saved by `hf auth login`.
        private (`bool`, defaults to `False`): Whether to create the repo as private (ignored if it exists).
        commit_message (`str`): Commit message of the upload.
        revision (`str`, *optional*): Branch to push to; created from `main` if missing. Defaults to `main`.

    Returns:
        `str`: The URL of the created commit (`CommitInfo.commit_url`).

    Raises:
        `ValueError`: If `repo_id` is not a valid repo id; raised before any network call.
        `RuntimeError`: If the Hub refuses the push (HTTP 401/403), chained to the original error.
    """
    check_repo_id(repo_id)
    with refusal_explained(f"push to {repo_id}"):
        create_repo(repo_id, token=token, private=private, exist_ok=True)
        if revision not in (None, "main"):
            # upload_folder fails on a branch that does not exist yet.
            create_branch(repo_id, branch=revision, token=token, exist_ok=True)
        # An hfgen pipeline goes up self-contained (its code bundled, see hfgen.remote_code); `folder` is unchanged.
        with self_contained_copy(folder, repo_id, ignore_patterns=PUSH_IGNORE_PATTERNS) as upload_path:
            commit_info = upload_folder(
                repo_id=repo_id,
                folder_path=upload_path,
                commit_message=commit_message,
                token=token,
                revision=revision,
                ignore_patterns=PUSH_IGNORE_PATTERNS,
            )
    return commit_info.commit_url


@contextlib.contextmanager
def refusal_explained(action: str):
    """Turns the Hub's 401/403 answer inside the block into a RuntimeError that says what to check."""
    try:
        yield
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status in (401, 403):
            raise RuntimeError(
                f"{action} was refused ({status}): check HF_TOKEN / `hf auth login` and that you can write to that "
                "namespace"
            ) from e
        raise


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub repo id, else a ValueError that says what the form is."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(
            f"Invalid Hub repo id {repo_id!r}: expected the form 'namespace/name' (or just 'name'), using only "
            f"letters, digits, '-', '_' and '.'. ({e})"
        ) from e
    return repo_id


def deploy_space(
    folder: str, repo_id: str, *, variables: dict[str, str] | None = None, token: str | None = None
) -> str:
    """Creates (or updates) a Gradio Space from a folder (`app.py`, `README.md`, `requirements.txt`) and sets its
    variables, such as the model ids the app reads (`HFGEN_MODEL_VAE=user/vae-digits`). Returns the commit URL."""
    check_repo_id(repo_id)
    if not os.path.isfile(os.path.join(folder, "app.py")) or not os.path.isfile(os.path.join(folder, "README.md")):
        raise FileNotFoundError(f"{folder} is not a Space folder: it needs app.py and README.md (with front matter).")
    with refusal_explained(f"deploying the Space {repo_id}"):
        create_repo(repo_id, repo_type="space", space_sdk="gradio", token=token, exist_ok=True)
        for key, value in (variables or {}).items():  # also updates the variables of an existing Space
            add_space_variable(repo_id, key, value, token=token)
        commit_info = upload_folder(
            repo_id=repo_id,
            repo_type="space",
            folder_path=folder,
            commit_message="Deploy with hfgen",
            token=token,
            ignore_patterns=["__pycache__/**", "*.pyc", "flagged/**"],
        )
    return commit_info.commit_url
