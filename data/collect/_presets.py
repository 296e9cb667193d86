"""Model architecture presets with random weights (no downloads), or a local model directory.

A preset is an architecture shape copied from a public model family's config; the weights are
random, which is all a step-time trace needs (the compute per token depends on the shapes only).

Example:
    >>> sorted(PRESETS)[:2]
    ['llama-1b-like', 'llama-8b-like']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from servetune import ConfigError

__all__ = ["PRESETS", "ModelPreset", "build_model", "resolve_dtype"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPreset:
    """A transformers config class name and the keyword arguments of that config."""

    config_class: str
    kwargs: dict = field(default_factory=dict)
    description: str = ""


_LLAMA_COMMON = {"rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                 "hidden_act": "silu"}

PRESETS: dict[str, ModelPreset] = {
    "llama-1b-like": ModelPreset("LlamaConfig", {
        **_LLAMA_COMMON, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": 128256, "tie_word_embeddings": True},
        "Llama-3.2-1B shapes: 16 layers, hidden 2048, GQA 32/8 heads, vocab 128256"),
    "llama-8b-like": ModelPreset("LlamaConfig", {
        **_LLAMA_COMMON, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 128256, "tie_word_embeddings": False},
        "Llama-3.1-8B shapes: 32 layers, hidden 4096, GQA 32/8 heads, vocab 128256"),
    "qwen2-1.5b-like": ModelPreset("Qwen2Config", {
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "use_sliding_window": False},
        "Qwen2-1.5B shapes: 28 layers, hidden 1536, GQA 12/2 heads, vocab 151936"),
    "mistral-7b-like": ModelPreset("MistralConfig", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": None},
        "Mistral-7B-v0.3 shapes: 32 layers, hidden 4096, GQA 32/8 heads, vocab 32000"),
    "tiny-llama": ModelPreset("LlamaConfig", {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
        "max_position_embeddings": 4096, "tie_word_embeddings": True},
        "a 2-layer toy llama for CPU tests"),
}

_DTYPES = ("bfloat16", "float16", "float32")


def resolve_dtype(name: str):
    """``"bfloat16"`` -> ``torch.bfloat16``; anything else outside :data:`_DTYPES` is an error."""
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {', '.join(_DTYPES)}")
    return getattr(torch, name)


def build_model(source: str, *, dtype: str = "bfloat16", attn_implementation: str = "paged|sdpa",
                device: str = "cuda", seed: int = 0):
    """A causal LM from a preset name (random weights) or a local model directory.

    Returns ``(model, vocab_size)``. Random weights are drawn under ``seed`` inside a forked RNG
    scope, so the process-wide generator is left as it was.
    """
    import torch
    import transformers

    torch_dtype = resolve_dtype(dtype)
    path = Path(source).expanduser()
    if source in PRESETS:
        preset = PRESETS[source]
        config = getattr(transformers, preset.config_class)(**preset.kwargs)
        devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(seed)
            with torch.device(device):
                model = transformers.AutoModelForCausalLM.from_config(
                    config, dtype=torch_dtype, attn_implementation=attn_implementation)
    elif path.is_dir():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn_implementation, device_map=device)
    else:
        raise ConfigError(f"unknown model {source!r}: expected a preset ({', '.join(PRESETS)}) or "
                          "a local model directory")
    model.eval()
    vocab_size = int(model.config.get_text_config().vocab_size)
    log.info("built %s (%s, %s) on %s: %.0fM parameters", source, dtype, attn_implementation,
             device, sum(p.numel() for p in model.parameters()) / 1e6)
    return model, vocab_size
