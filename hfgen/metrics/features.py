"""Domain feature extractors: the "Inception network" of hfgen's FID, KID, IS and precision/recall.

FID and its relatives compare generated and real images in the feature space of a classifier. The usual Inception-v3
features are downloaded from the internet and were trained on 299x299 photographs, so they mean little for 8x8 digits.
hfgen instead trains a small classifier per data set (`training/train_feature_extractor.py`) and ships its weights in
this package (`hfgen/metrics/extractors/<name>/`, a few hundred KB each, with a model card stating the test accuracy
and the command that reproduces them). Its penultimate layer gives the features; its softmax gives p(y | x).

Figures computed with these features are comparable with each other (same extractor, same data set), not with
published Inception-based figures.
"""

import os
from dataclasses import dataclass

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import nn

EXTRACTORS_DIR = os.path.join(os.path.dirname(__file__), "extractors")


@dataclass
class DomainClassifierOutput(BaseOutput):
    """
    Args:
        logits (`torch.Tensor`): (b, num_classes) class scores.
        features (`torch.Tensor`, *optional*): (b, block_out_channels[-1]) penultimate (pooled) activations.
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None


class DomainClassifier(ModelMixin, ConfigMixin):
    r"""A small convolutional classifier whose penultimate layer is a feature space for sample-quality metrics.

    (b, c, s, s) images in [-1, 1] -> conv blocks (the later ones halve the resolution while it is above 4x4) ->
    global average pooling, the features (b, block_out_channels[-1]) -> `num_classes` logits. As in Inception-v3,
    whose pool3 layer FID uses, the features are spatially pooled conv activations. Depth is a measured choice
    (`benchmarks/fid_sanity.py`): on digits, a third block made the features so class-specific that FID rated
    uniform noise no worse than a set of one digit class, while two blocks order real < one class < noise with wide
    margins; the 32x32 shapes need three blocks to tell triangles from squares (47.5% test accuracy with two).

    Args:
        sample_size (`int`, *optional*, defaults to 8): Height and width of the images (28 for mnist: 28 -> 14 -> 7).
        in_channels (`int`, *optional*, defaults to 1): Image channels.
        num_classes (`int`, *optional*, defaults to 10): Number of classes.
        block_out_channels (`tuple[int]`, *optional*, defaults to `(32, 64)`): Widths of the conv blocks; the
            last one is the size of the feature vector.
        class_names (`list[str]`, *optional*): Names of the classes, for display.
        dataset (`str`, *optional*): The data set the classifier was trained on.
        layers_per_block (`int`, *optional*, defaults to 1): 3x3 convolutions per block (the first one strides);
            two per block, as in VGG, widen the receptive field before pooling (the shipped mnist extractor: with batch
            norm, random shifts and four blocks, 0.9915 test accuracy where one conv per block reached 0.9595).
        batch_norm (`bool`, *optional*, defaults to `False`): Batch normalization after each convolution
            ([Ioffe & Szegedy, 2015](https://huggingface.co/papers/1502.03167)); frozen statistics in `eval()`.
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (32, 64),
        class_names: list[str] | None = None,
        dataset: str | None = None,
        layers_per_block: int = 1,
        batch_norm: bool = False,
    ):
        super().__init__()
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be at least 1, got {layers_per_block}.")
        if sample_size < 4:
            raise ValueError(f"sample_size must be at least 4, got {sample_size}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"Got {len(class_names)} class_names for num_classes={num_classes}.")
        layers, channels, size = [], in_channels, sample_size
        for i, out_channels in enumerate(block_out_channels):
            stride = 2 if i > 0 and size > 4 else 1
            for j in range(layers_per_block):
                layers.append(nn.Conv2d(channels, out_channels, 3, stride=stride if j == 0 else 1, padding=1))
                layers += [nn.BatchNorm2d(out_channels), nn.SiLU()] if batch_norm else [nn.SiLU()]
                channels = out_channels
            size = size // stride
        self.conv = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor, return_dict: bool = True) -> DomainClassifierOutput | tuple:
        features = self.conv(images).mean(dim=(2, 3))  # (b, block_out_channels[-1])
        logits = self.classifier(features)  # (b, num_classes)
        if not return_dict:
            return (logits, features)
        return DomainClassifierOutput(logits=logits, features=features)

    def _check(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.config.in_channels, self.config.sample_size, self.config.sample_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"The {self.config.dataset or 'domain'} feature extractor takes images of shape (b, *{expected}) in "
                f"[-1, 1], got {tuple(images.shape)}: generate at the data set's size and channels."
            )
        return images.to(self.device, self.dtype)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(b, c, s, s) images in [-1, 1] -> (b, d) features."""
        return self(self._check(images)).features

    @torch.no_grad()
    def class_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(b, c, s, s) images in [-1, 1] -> (b, num_classes) softmax p(y | x)."""
        return self(self._check(images)).logits.softmax(dim=-1)


def shipped_extractors() -> list[str]:
    """Names of the extractors shipped with hfgen (one per embedded data set)."""
    if not os.path.isdir(EXTRACTORS_DIR):
        return []
    return sorted(
        n for n in os.listdir(EXTRACTORS_DIR) if os.path.isfile(os.path.join(EXTRACTORS_DIR, n, "config.json"))
    )


def load_feature_extractor(name_or_path: str = "digits", **kwargs) -> DomainClassifier:
    """The shipped extractor of an embedded data set ("digits", "shapes"), or one saved with `save_pretrained` in a
    folder or a Hub repo. Safetensors only; returned in eval mode."""
    path = os.path.join(EXTRACTORS_DIR, name_or_path) if name_or_path in shipped_extractors() else name_or_path
    not_saved = os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json"))  # e.g. an image folder
    if not_saved or (not os.path.isdir(path) and "/" not in name_or_path):
        raise ValueError(
            f"No feature extractor for {name_or_path!r}{' (a folder without config.json)' * not_saved}: hfgen ships "
            f"{shipped_extractors()}. For another data set, "
            "train one with `python training/train_feature_extractor.py --dataset_name <data> --output_dir <dir>` "
            "and pass that folder."
        )
    return DomainClassifier.from_pretrained(path, use_safetensors=True, **kwargs).eval()
