"""A model directory ``transformers serve`` can serve for a preset: the preset's shape, random
weights, a word-level tokenizer whose vocabulary starts with the streaming client's prompt words
(a prompt of N words is N tokens, as the collector's token-id prompts are) and no EOS (every
request generates exactly its output length)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["word_level_model"]


def word_level_model(directory: str | Path, *, preset: str = "llama-1b-like",
                     vocab_size: int = 32000, tiny: bool = False) -> Path:
    """Save the model and tokenizer to ``directory`` (``tiny``: a 2-layer model for a CPU)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from servetune.data.collect import PRESETS
    from servetune.tuner.hardware._client import _WORDS

    directory = Path(directory)
    words = list(dict.fromkeys(_WORDS))
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    vocab.update({f"w{i}": i for i in range(len(vocab), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
    fast.save_pretrained(directory)
    shape = dict(PRESETS[preset].kwargs)
    if tiny:
        shape.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    config = LlamaConfig(**{**shape, "vocab_size": vocab_size, "eos_token_id": None,
                            "bos_token_id": None, "pad_token_id": 0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = None
    model.save_pretrained(directory)
    return directory
