"""Test and benchmark tools for servetune: not product code, nothing here is used by it.

The test suite and the scripts in ``benchmarks/`` share these, so a benchmark imports the
package instead of the tests:

- loopback ``sshd`` test hosts: :class:`SshKit`, :class:`SshdHost`, :func:`free_port`,
  :func:`wait_port`, :func:`session_alive`, :func:`sshd_unavailable_reason`;
- a scripted OpenAI-compatible streaming server that does no model computation, run as
  ``python -m servetune.testing.scripted_server [--port P] [--mode ok|hang|never-healthy]
  [--ttft-ms MS] [--token-ms MS] [--record FILE]`` (or ``... scripted_server fake-vllm-bench
  ARGS`` for a stand-in of ``vllm bench serve``); :data:`SCRIPTED_SERVER` is its file;
- :func:`write_vllm_result`: a synthetic ``vllm bench serve`` result in vLLM's own layout;
- :func:`synthetic_traces`: small generated step traces with a plausible step-time law;
- :func:`servetune_command`: this environment's ``servetune`` console script;
- :func:`word_level_model` (from ``servetune.data.collect``): a served model for GPU benchmarks
  (a preset's shape, random weights, a word-level tokenizer of the client's prompt words, no
  EOS).

Names are imported on first use, so starting the scripted server stays light (no numpy/pandas).

Example:
    >>> from servetune.testing import free_port
    >>> 0 < free_port() < 65536
    True
"""

from __future__ import annotations

__all__ = [
    "SCRIPTED_SERVER",
    "SshKit",
    "SshdHost",
    "free_port",
    "wait_port",
    "keygen",
    "session_alive",
    "sshd_unavailable_reason",
    "write_vllm_result",
    "sample_lengths",
    "synthetic_traces",
    "servetune_command",
    "word_level_model",
]

#: lazily imported public names -> their module
_LAZY = {
    "SCRIPTED_SERVER": "servetune.testing.scripted_server",
    "SshKit": "servetune.testing._sshd",
    "SshdHost": "servetune.testing._sshd",
    "free_port": "servetune.testing._sshd",
    "wait_port": "servetune.testing._sshd",
    "keygen": "servetune.testing._sshd",
    "session_alive": "servetune.testing._sshd",
    "sshd_unavailable_reason": "servetune.testing._sshd",
    "write_vllm_result": "servetune.testing._vllm_results",
    "sample_lengths": "servetune.testing._vllm_results",
    "synthetic_traces": "servetune.testing._traces",
    "servetune_command": "servetune.testing._cli",
    "word_level_model": "servetune.data.collect",
}


def __getattr__(name: str):
    """Import the tools on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'servetune.testing' has no attribute {name!r}; "
                             f"available: {', '.join(__all__)}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
