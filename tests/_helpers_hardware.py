"""Real test hosts for the hardware tests: loopback ``sshd`` daemons, keys, tiny servers.

The hosts and the scripted server live in :mod:`servetune.testing` (shared with the benchmarks);
this module re-exports them and adds what only the tests use: :func:`sshd_kit_or_skip` (skips,
or fails when ``SERVETUNE_REQUIRE_SSHD=1`` (CI), where real sshd hosts cannot run) and
:func:`make_tiny_model` (the clean-run tests use a real ``transformers serve`` with it).

Run as a script, this module is :mod:`servetune.testing.scripted_server` (same arguments), a
small OpenAI-compatible streaming server that misbehaves on purpose where asked (``--mode hang``,
``never-healthy``); ``fake-vllm-bench`` as first argument makes it a stand-in for
``vllm bench serve`` writing the real result shipped as a test fixture.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from servetune.testing._sshd import (
    SSHD,
    SshdHost,
    SshKit,
    free_port,
    keygen,
    session_alive,
    sshd_unavailable_reason,
    wait_port,
)

__all__ = ["BENCH_FIXTURE", "REQUIRE_ENV", "SSHD", "SshdHost", "SshKit", "free_port", "keygen",
           "make_tiny_model", "session_alive", "sshd_kit_or_skip", "sshd_unavailable_reason",
           "wait_port"]

REQUIRE_ENV = "SERVETUNE_REQUIRE_SSHD"
BENCH_FIXTURE = Path(__file__).parent / "fixtures" / "data" / "vllm_serve_detailed_60.json"


def sshd_kit_or_skip(root: Path) -> "SshKit":
    """A fresh :class:`SshKit`; skips the test - or fails it when ``SERVETUNE_REQUIRE_SSHD=1``
    (CI) - where real sshd hosts cannot run."""
    import pytest

    reason = sshd_unavailable_reason()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but real sshd test hosts cannot run: {reason}")
        pytest.skip(reason)
    return SshKit.create(root)


def make_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save a tiny randomly initialised Llama with a byte-level BPE tokenizer (offline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                          "{% endfor %}assistant:")
    fast.save_pretrained(directory)
    generator = torch.Generator().manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=fast.eos_token_id,
                         bos_token_id=fast.eos_token_id, pad_token_id=fast.eos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(directory)
    return directory


if __name__ == "__main__":
    from servetune.testing.scripted_server import main

    main(sys.argv[1:], bench_template=BENCH_FIXTURE)
