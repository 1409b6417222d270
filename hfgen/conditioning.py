"""The conditioning contract every hfgen family shares.

A model is conditioned on a [`Condition`]: class labels, and/or a prompt's per-token hidden states with their attention
mask and its pooled embedding. A family's model reads the fields it needs: a vector model (the VAE, a DCGAN) the pooled
`text_embeds` or `class_labels`, a diffusers `UNet2DConditionModel` the `text_hidden_states` and
`text_attention_mask` for cross-attention, a `UNet2DModel` the `class_labels`.

One rule makes the *null* condition, the "no condition" that caption dropout trains and that classifier-free guidance
subtracts: the empty prompt `""` for text, the extra class index `num_classes` for classes (a model's class table has
`num_classes + 1` rows). [`ConditionEncoder`] applies that rule for the trainer (caption dropout) and for the pipelines
(unconditional samples, `negative_prompt`, guidance), so both sides always agree.
"""

from dataclasses import dataclass, fields

import torch
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel


@dataclass
class Condition(BaseOutput):
    r"""What a model is conditioned on, for a batch of b images. Unused fields stay None.

    Args:
        class_labels (`torch.LongTensor`, *optional*): (b,) class indices in [0, num_classes]; `num_classes` is the
            null class ("no class"). Never negative.
        text_embeds (`torch.Tensor`, *optional*): (b, d) one pooled embedding per prompt.
        text_hidden_states (`torch.Tensor`, *optional*): (b, t, d) the text encoder's last hidden states per token.
        text_attention_mask (`torch.LongTensor`, *optional*): (b, t) 1 for tokens, 0 for padding.
    """

    class_labels: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_hidden_states: torch.Tensor | None = None
    text_attention_mask: torch.Tensor | None = None

    def _map(self, function) -> "Condition":
        return Condition(**{f.name: _apply(function, getattr(self, f.name)) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return next(len(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None)

    def to(self, device=None, dtype=None) -> "Condition":
        """Moves every tensor to `device`; `dtype` applies to the floating-point ones (embeddings), not to labels or
        masks."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if t.is_floating_point() else None))

    def detach(self) -> "Condition":
        return self._map(torch.Tensor.detach)

    def repeat_interleave(self, repeats: int) -> "Condition":
        """Each image's condition `repeats` times in a row (diffusers' `num_images_per_prompt`)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def select(self, index) -> "Condition":
        """A part of the batch: `condition.select(slice(0, 2))`, `condition.select(mask)`."""
        return self._map(lambda t: t[index])

    def same_pairs(self) -> torch.Tensor:
        """(b, b) bool, True where images i and j have the same condition (the same class, the same prompt, the null
        one): the right answers when a model tells which of a batch's conditions belongs to each image."""
        same = None
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            ids = torch.unique(value.reshape(len(value), -1), dim=0, return_inverse=True)[1]
            pairs = ids[:, None] == ids[None]
            same = pairs if same is None else same & pairs
        return same

    @staticmethod
    def cat(conditions: list["Condition | None"]) -> "Condition | None":
        """Concatenates conditions along the batch (e.g. [negative, positive] for classifier-free guidance). Text
        states of different lengths are right-padded with masked zeros."""
        if conditions[0] is None:
            if any(c is not None for c in conditions):
                raise ValueError("Cannot concatenate a condition with no condition.")
            return None
        values = {}
        for f in fields(Condition):
            parts = [getattr(c, f.name) for c in conditions]
            if all(p is None for p in parts):
                values[f.name] = None
                continue
            if any(p is None for p in parts):
                raise ValueError(f"Cannot concatenate conditions where only some have {f.name}.")
            if f.name in ("text_hidden_states", "text_attention_mask"):
                length = max(p.shape[1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 2) + (0, length - p.shape[1])) for p in parts]
            values[f.name] = torch.cat(parts)
        return Condition(**values)


def _apply(function, value):
    return None if value is None else function(value)


def prompt_max_length(tokenizer) -> int:
    """The tokens of a prompt that the text encoder reads (CLIP's 77 at most); the rest are cut off."""
    return min(tokenizer.model_max_length, 77)


def encode_text(tokenizer, text_encoder, prompts: list[str], device: torch.device | None = None) -> Condition:
    """Prompts -> a [`Condition`] with `text_hidden_states` (b, t, d), `text_attention_mask` (b, t) and the pooled
    `text_embeds` (b, d).

    CLIP text models pool at the [EOS] token (their `pooler_output`); other encoders (BERT-like sentence encoders)
    are mean-pooled over the non-padding tokens, as sentence-transformers does.
    """
    device = device or next(text_encoder.parameters()).device
    # Pad to the longest prompt only: pretrained tokenizers report model_max_length=512, and padding is wasted work.
    inputs = tokenizer(
        prompts, padding=True, max_length=prompt_max_length(tokenizer), truncation=True, return_tensors="pt"
    ).to(device)
    output = text_encoder(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
    hidden_states = output.last_hidden_state  # (b, t, d)
    # During training the encoder may be wrapped (DistributedDataParallel): call the wrapper, inspect the module.
    if isinstance(getattr(text_encoder, "module", text_encoder), CLIPTextModel):
        pooled = output.pooler_output
    else:
        mask = inputs.attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (b, t, 1)
        pooled = (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)
    return Condition(text_embeds=pooled, text_hidden_states=hidden_states, text_attention_mask=inputs.attention_mask)


def class_label_tensor(class_labels) -> torch.Tensor:
    """An int, a list of ints or a 0-/1-D integer tensor -> a (b,) long tensor; anything else is a ValueError (a 2-D
    tensor too: flattening it would silently give one image per entry)."""
    try:
        labels = torch.as_tensor(class_labels)
    except (TypeError, ValueError, RuntimeError):
        labels = None
    if (
        labels is None
        or labels.ndim > 1
        or labels.dtype not in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        described = f" (dtype {labels.dtype}, shape {tuple(labels.shape)})" if labels is not None else ""
        raise ValueError(
            f"class_labels must be an int, a list of ints or a 1-D integer tensor, got {class_labels!r}{described}."
        )
    return labels.long().flatten()


class ConditionEncoder:
    r"""Prompts or class labels -> a [`Condition`], with the one null rule (empty prompt, class index `num_classes`).

    The trainer builds one from its tokenizer, text encoder and class count and calls it with caption dropout's mask;
    a pipeline builds one from its components and its model's config.

    Args:
        condition_type (`str`, *optional*): None (unconditional), "class" or "text".
        tokenizer, text_encoder: The text components, for "text".
        num_classes (`int`, *optional*): The number of real classes, for "class"; the null class is `num_classes`.
    """

    def __init__(self, condition_type: str | None, tokenizer=None, text_encoder=None, num_classes: int | None = None):
        if condition_type not in (None, "class", "text"):
            raise ValueError(f"condition_type must be None, 'class' or 'text', got {condition_type!r}.")
        if condition_type == "text" and (tokenizer is None or text_encoder is None):
            raise ValueError("A text-conditioned model needs a tokenizer and a text encoder.")
        if condition_type == "class" and not num_classes:
            raise ValueError("A class-conditioned model needs num_classes.")
        self.condition_type = condition_type
        self.tokenizer, self.text_encoder, self.num_classes = tokenizer, text_encoder, num_classes

    def __call__(
        self,
        prompts: list[str] | None = None,
        class_labels: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
        device: torch.device | None = None,
        batch_size: int | None = None,
    ) -> Condition | None:
        """The condition of a batch. `drop` (b,) bool replaces chosen entries by the null condition (caption dropout);
        missing prompts / labels mean the null condition for all `batch_size` images."""
        if self.condition_type != "class" and class_labels is not None:
            raise ValueError("This model is not class-conditioned: do not pass `class_labels`.")
        if self.condition_type is None:
            if prompts is not None:
                raise ValueError(
                    "This model was trained without text, so it has no text encoder: call it without `prompt` for "
                    "unconditional samples."
                )
            return None
        if self.condition_type == "class":
            if prompts is not None:
                raise ValueError("This model is conditioned on class labels, not text: pass `class_labels`.")
            if class_labels is None:
                class_labels = torch.full((batch_size,), self.num_classes, dtype=torch.long)
            labels = self.check_class_labels(class_labels).to(device)
            if drop is not None:
                labels = torch.where(drop.to(labels.device), self.num_classes, labels)
            return Condition(class_labels=labels)
        prompts = [""] * batch_size if prompts is None else list(prompts)
        if drop is not None:
            prompts = ["" if dropped else prompt for prompt, dropped in zip(prompts, drop.tolist())]
        return encode_text(self.tokenizer, self.text_encoder, prompts, device=device)

    def null(self, batch_size: int, device: torch.device | None = None) -> Condition | None:
        """The null condition ("no condition") for `batch_size` images."""
        return self(batch_size=batch_size, device=device)

    def check_class_labels(self, class_labels) -> torch.Tensor:
        """(b,) long labels in [0, num_classes] (the last is the null class), or a ValueError saying what is
        allowed."""
        labels = class_label_tensor(class_labels)
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(
                f"class_labels must be in [0, {self.num_classes - 1}] ({self.num_classes} classes), got "
                f"{labels.tolist()}. For unconditional samples pass no class_labels (the null class is "
                f"{self.num_classes})."
            )
        return labels
