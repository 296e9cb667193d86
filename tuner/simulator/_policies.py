"""Engine policies: the configuration keys each accepts, their defaults, and a registry.

A policy is declared as data: a tuple of :class:`Knob` (name, type, default, help, bounds) and a
function that turns a validated configuration into the kernel's parameter vector. The registry
refuses duplicate names and lists the valid ones when a lookup fails.

Example:
    >>> from servetune.tuner.simulator import default_config, engines
    >>> "vllm" in engines()
    True
    >>> default_config("transformers")["scheduler_type"]
    'fifo'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from servetune import ConfigError
from servetune.tuner.simulator import _kernel as K

__all__ = ["Knob", "EnginePolicy", "PolicyRegistry", "default_registry", "get_policy", "engines",
           "default_config", "config_keys", "resolve_config"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Knob:
    """One configuration key: its type (``int``, ``float``, ``bool``, ``str``), default and bounds.

    ``default=None`` means "let the policy decide" (for example the engine's own class default).
    """

    name: str
    kind: type
    default: object
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    def coerce(self, value: object, engine: str) -> object:
        """``value`` as this knob's type (strings from ``--set`` are parsed), or ConfigError."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{engine} config key {self.name!r} cannot be empty; {self.help}")
        where = f"{engine} config key {self.name!r}"
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in _TRUE | _FALSE:
                        raise ValueError(value)
                    out: object = low in _TRUE
                elif isinstance(value, (bool, np.bool_, int, np.integer)) and value in (0, 1):
                    out = bool(value)
                else:
                    raise ValueError(value)
            elif self.kind is int:
                if isinstance(value, (bool, np.bool_)):
                    raise ValueError(value)
                number = float(value)
                if not number.is_integer():
                    raise ValueError(value)
                out = int(number)
            elif self.kind is float:
                if isinstance(value, (bool, np.bool_)):
                    raise ValueError(value)
                out = float(value)
                if not np.isfinite(out):
                    raise ValueError(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be {_describe(self.kind)}; got {value!r}") from None
        if self.choices and out not in self.choices:
            raise ConfigError(f"{where} must be one of {', '.join(self.choices)}; got {out!r}")
        if self.minimum is not None and out < self.minimum:
            raise ConfigError(f"{where} must be >= {self.minimum}; got {out!r}")
        if self.maximum is not None and out > self.maximum:
            raise ConfigError(f"{where} must be <= {self.maximum}; got {out!r}")
        return out


def _describe(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")


# Keys every engine accepts: the deployment and the simulation itself.
COMMON_KNOBS: tuple[Knob, ...] = (
    Knob("dp_size", int, 1, "data-parallel replicas behind the router", minimum=1, maximum=1024),
    Knob("tp_size", int, 1, "tensor-parallel GPUs per replica (enters through the step-time "
         "model's tp_size knob)", minimum=1, maximum=64),
    Knob("router", str, "round_robin", "how arrivals are spread over DP replicas",
         choices=("round_robin", "least_pending_tokens")),
    Knob("step_overhead_ms", float, 0.0, "constant added to every predicted step time",
         minimum=0.0),
    Knob("min_step_ms", float, 0.01, "floor on a predicted step time", minimum=0.0),
    Knob("step_noise_cv", float, 0.0, "coefficient of variation of seeded multiplicative "
         "log-normal noise on step times (0: none)", minimum=0.0, maximum=2.0),
)


@dataclass(frozen=True)
class EnginePolicy:
    """An engine's scheduler policy: its keys, how they become kernel parameters, its knobs.

    Attributes:
        name: registry key (the ``--engine`` value).
        code: the kernel's policy code.
        knobs: engine-specific keys (the common deployment keys are added automatically).
        to_params: ``resolved config -> dict`` of kernel parameter names (``_kernel.P_NAMES``).
        model_knobs: step-time model knob (``features.KNOB_COLUMNS`` name) -> a function of the
            resolved config giving its value.
        description: one line for ``--help`` and error messages.
    """

    name: str
    code: int
    knobs: tuple[Knob, ...]
    to_params: Callable[[Mapping[str, object]], dict]
    model_knobs: Mapping[str, Callable[[Mapping[str, object]], float]]
    description: str
    runs_columns: Callable[[Mapping[str, object]], dict] = field(default=lambda c: {})
    aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def all_knobs(self) -> tuple[Knob, ...]:
        """Engine keys then the common deployment/simulation keys."""
        return self.knobs + COMMON_KNOBS

    def keys(self) -> tuple[str, ...]:
        """Every accepted configuration key."""
        return tuple(k.name for k in self.all_knobs)

    def default_config(self) -> dict:
        """The engine's default configuration (every key, defaults filled in)."""
        return {k.name: k.default for k in self.all_knobs}

    def resolve(self, config: Mapping[str, object] | None) -> dict:
        """Defaults overlaid with ``config``, every value checked and typed.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        config = dict(config or {})
        for alias, name in self.aliases.items():
            if alias in config:
                if name in config:
                    raise ConfigError(f"{self.name} config gives both {alias!r} and {name!r} "
                                      "(the same key); keep one")
                config[name] = config.pop(alias)
        known = {k.name: k for k in self.all_knobs}
        unknown = sorted(set(config) - set(known))
        if unknown:
            aliases = (f" (aliases: {', '.join(f'{a}={n}' for a, n in self.aliases.items())})"
                       if self.aliases else "")
            raise ConfigError(f"unknown {self.name} config key(s) {', '.join(map(repr, unknown))};"
                              f" valid keys: {', '.join(sorted(known))}{aliases}")
        return {name: knob.coerce(config.get(name, knob.default), self.name)
                for name, knob in known.items()}

    def params(self, resolved: Mapping[str, object]) -> np.ndarray:
        """The kernel's float64 parameter vector for a resolved configuration."""
        values = {"min_step_ms": resolved["min_step_ms"],
                  "step_overhead_ms": resolved["step_overhead_ms"], **self.to_params(resolved)}
        unknown = set(values) - set(K.P_NAMES)
        if unknown:  # a programming error in a policy definition
            raise ConfigError(f"policy {self.name} sets unknown kernel parameters {unknown}")
        out = np.zeros(K.N_PARAMS, dtype=np.float64)
        for j, name in enumerate(K.P_NAMES):
            out[j] = float(values.get(name, 0.0))
        if out[0] < 1 or out[1] < 1:
            raise ConfigError(f"{self.name}: block_size and the number of KV blocks must be >= 1;"
                              f" got block_size={out[0]:g}, blocks={out[1]:g}")
        return out


class PolicyRegistry:
    """Engine policies by name; duplicates are refused, unknown names list the valid ones."""

    def __init__(self) -> None:
        self._entries: dict[str, EnginePolicy] = {}

    def register(self, policy: EnginePolicy) -> EnginePolicy:
        """Add ``policy``; raises ConfigError if its name is taken."""
        if policy.name in self._entries:
            raise ConfigError(f"engine policy {policy.name!r} is already registered")
        self._entries[policy.name] = policy
        return policy

    @property
    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def get(self, name: str) -> EnginePolicy:
        """The policy called ``name``; ConfigError listing the valid names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"unknown engine {name!r}; expected one of "
                              f"{', '.join(self.names)}") from None


# --- transformers continuous batching (transformers 5.x ContinuousBatchingConfig names) -------

_TRANSFORMERS_KNOBS = (
    Knob("scheduler_type", str, "fifo", "FIFOScheduler (decodes first) or PrefillFirstScheduler",
         choices=("fifo", "prefill_first")),
    Knob("block_size", int, 256, "tokens per KV block", minimum=1),
    Knob("num_blocks", int, None, "KV blocks; the value the engine reported, else inferred from "
         "memory (gpu_memory_gib, model_weights_gib, kv_bytes_per_token, max_memory_percent)",
         minimum=1, nullable=True),
    Knob("max_memory_percent", float, 0.9, "fraction of free GPU memory for the KV cache",
         minimum=0.01, maximum=1.0),
    Knob("gpu_memory_gib", float, 140.0, "GPU memory per device (GiB; H200: 140)", minimum=0.1),
    Knob("model_weights_gib", float, 2.3, "model weights per device (GiB; llama-1b-like bf16: "
         "2.3)", minimum=0.0),
    Knob("kv_bytes_per_token", int, 32768, "KV bytes per token per device (llama-1b-like bf16: "
         "16 layers x 2 x 8 heads x 64 x 2 = 32768)", minimum=1),
    Knob("max_batch_tokens", int, 8192, "query tokens per step", minimum=1),
    Knob("max_requests_per_batch", int, 1024, "sequences per step", minimum=1),
    Knob("safety_margin", float, None, "free-block fraction below which new prefills stop "
         "(default: 0.15 for fifo, 0.0 for prefill_first)", minimum=0.0, maximum=1.0,
         nullable=True),
    Knob("use_async_batching", bool, False, "double-buffered batches (a finished request still "
         "takes a slot in the next step)"),
    Knob("use_cuda_graph", bool, False, "CUDA graphs: a batch's padded shape is captured the "
         "first time it is seen (costing cuda_graph_capture_ms), then replayed"),
    Knob("q_padding_interval_size", int, 64, "query padding interval of the graph shapes "
         "(engine default 64)", minimum=0),
    Knob("kv_padding_interval_size", int, 16384, "KV read padding interval of the graph shapes "
         "(engine default 16384)", minimum=0),
    Knob("cuda_graph_capture_ms", float, None, "cost of one graph capture beyond the step itself"
         " (default: the H200 llama-1b-like sample's fit for the batching mode and token "
         "budget)", minimum=0.0, nullable=True),
    Knob("cuda_graph_capture_ms_per_token", float, None, "additional capture cost per padded "
         "query token (default: as cuda_graph_capture_ms)", minimum=0.0, nullable=True),
    Knob("cuda_graph_capture_ms_per_kv_token", float, None, "additional capture cost per padded "
         "KV token read (default: as cuda_graph_capture_ms)", minimum=0.0, nullable=True),
    Knob("cuda_graph_capture_repeat_factor", float, None, "a capture whose padded query and KV "
         "shape was captured before (by the other async IO pair, or with another padded key "
         "length) costs this fraction of a new shape's (default: as cuda_graph_capture_ms)",
         minimum=0.0, nullable=True),
    Knob("cuda_graph_capture_noise_cv", float, 0.0, "coefficient of variation of seeded "
         "log-normal noise on each capture's cost (0: every capture costs its expected value)",
         minimum=0.0, maximum=2.0),
    Knob("cuda_graph_capture_run_cv", float, 0.0, "coefficient of variation of a seeded "
         "log-normal factor drawn once per replica and run for all its captures (the engine's "
         "run-to-run spread of capture cost; 0: none)", minimum=0.0, maximum=2.0),
    Knob("max_blocks_per_request", int, 32, "decode fast-path block table width (0 disables the "
         "fast path)", minimum=0),
)


def transformers_num_blocks(c: Mapping[str, object]) -> int:
    """KV blocks: ``num_blocks`` when given, else the free memory share over the block size
    (the engine also reserves activations for ``max_batch_tokens``; that term is small here)."""
    if c["num_blocks"] is not None:
        return int(c["num_blocks"])
    free = (c["gpu_memory_gib"] - c["model_weights_gib"]) * c["max_memory_percent"] * 2**30
    blocks = int(free // (c["block_size"] * c["kv_bytes_per_token"]))
    if blocks < 1:
        raise ConfigError("transformers: no memory left for the KV cache; lower "
                          "model_weights_gib, raise max_memory_percent or set num_blocks")
    return blocks


# CUDA graph capture cost beyond the step by batching mode: ms = a + b * padded query tokens
# + c * padded KV read + d * max_batch_tokens for a new padded query and KV shape, times f when that
# shape was captured before (by the other async IO pair, or with another padded key length);
# least squares over the capture steps of all 68 runs of the shipped H200 llama-1b-like sample
# (``python benchmarks/sim_fidelity.py --in-sample``, ``capture_cost``). A shape's first capture
# is the expensive one: later captures of it cost a third (sync) to a half (async) as much.
_CAPTURE_COST_DEFAULTS = {False: (59.8, 0.0060, 0.000079, 0.00074, 0.32),
                          True: (66.2, 0.0195, 0.00041, 0.0, 0.57)}
CAPTURE_KEYS = ("cuda_graph_capture_ms", "cuda_graph_capture_ms_per_token",
                "cuda_graph_capture_ms_per_kv_token", "cuda_graph_capture_repeat_factor")


def capture_cost(c: Mapping[str, object]) -> tuple[float, float, float, float]:
    """(ms, ms per padded query token, ms per padded KV token, repeat factor) of one graph
    capture: the configured values, the sample's fit for the batching mode and token budget
    where unset."""
    mode = _CAPTURE_COST_DEFAULTS[bool(c["use_async_batching"])]
    fixed, per_query, per_kv, per_budget, repeat = mode
    defaults = (fixed + per_budget * float(c["max_batch_tokens"]), per_query, per_kv, repeat)
    return tuple(float(default if c[key] is None else c[key])
                 for key, default in zip(CAPTURE_KEYS, defaults))


def _transformers_params(c: Mapping[str, object]) -> dict:
    margin = c["safety_margin"]
    if margin is None:
        margin = 0.15 if c["scheduler_type"] == "fifo" else 0.0
    capture_ms, capture_per_q, capture_per_kv, capture_repeat = capture_cost(c)
    return {"block_size": c["block_size"], "num_blocks": transformers_num_blocks(c),
            "max_tokens": c["max_batch_tokens"], "max_seqs": c["max_requests_per_batch"],
            "safety_margin": margin, "async_batching": float(c["use_async_batching"]),
            "max_blocks_per_request": c["max_blocks_per_request"],
            "prefill_first": float(c["scheduler_type"] == "prefill_first"),
            "cuda_graph": float(c["use_cuda_graph"]), "q_padding": c["q_padding_interval_size"],
            "kv_padding": c["kv_padding_interval_size"],
            "graph_capture_ms": capture_ms, "graph_capture_ms_per_token": capture_per_q,
            "graph_capture_ms_per_kv_token": capture_per_kv,
            "graph_capture_repeat_factor": capture_repeat,
            "graph_capture_noise_cv": c["cuda_graph_capture_noise_cv"],
            "graph_capture_run_cv": c["cuda_graph_capture_run_cv"]}


TRANSFORMERS = EnginePolicy(
    name="transformers",
    code=K.POLICY_TRANSFORMERS,
    knobs=_TRANSFORMERS_KNOBS,
    to_params=_transformers_params,
    model_knobs={"block_size": lambda c: c["block_size"],
                 "async_batching": lambda c: float(c["use_async_batching"]),
                 "cuda_graph": lambda c: float(c["use_cuda_graph"]),
                 "tp_size": lambda c: c["tp_size"],
                 "max_batch_tokens": lambda c: c["max_batch_tokens"]},
    description="transformers continuous batching (FIFO / prefill-first), transformers 5.x",
    runs_columns=lambda c: {"scheduler": c["scheduler_type"],
                            "max_batch_tokens": c["max_batch_tokens"],
                            "max_num_seqs": c["max_requests_per_batch"],
                            "block_size": c["block_size"],
                            "num_blocks": transformers_num_blocks(c),
                            "chunked_prefill": True, "async_batching": c["use_async_batching"],
                            "cuda_graph": c["use_cuda_graph"],
                            "gpu_memory_utilization": c["max_memory_percent"]},
    aliases={"scheduler": "scheduler_type", "async_batching": "use_async_batching",
             "cuda_graph": "use_cuda_graph", "tp": "tp_size", "dp": "dp_size"},
)

# --- vLLM V1 ----------------------------------------------------------------------------------

_VLLM_KNOBS = (
    Knob("block_size", int, 16, "tokens per KV block", minimum=1),
    Knob("max_num_batched_tokens", int, 8192, "token budget per step", minimum=1),
    Knob("max_num_seqs", int, 256, "running sequences", minimum=1),
    Knob("enable_chunked_prefill", bool, True, "split prompts over steps"),
    Knob("long_prefill_token_threshold", int, 0, "cap on one request's prefill chunk (0: none)",
         minimum=0),
    Knob("max_num_partial_prefills", int, 0, "sequences with a prefill chunk per step (0: no "
         "limit, as the V1 scheduler)", minimum=0),
    Knob("num_gpu_blocks_override", int, None, "explicit KV block count (else from memory)",
         minimum=1, nullable=True),
    Knob("gpu_memory_utilization", float, 0.9, "fraction of GPU memory vLLM may use",
         minimum=0.01, maximum=1.0),
    Knob("gpu_memory_gib", float, 140.0, "GPU memory per device (GiB; H200: 140)", minimum=0.1),
    Knob("model_weights_gib", float, 2.5, "model weights per device (GiB)", minimum=0.0),
    Knob("activation_gib", float, 2.0, "activation peak reserved at profiling (GiB)",
         minimum=0.0),
    Knob("kv_bytes_per_token", int, 32768, "KV cache bytes per token per device (layers x 2 x "
         "kv_heads x head_dim x dtype bytes / tp)", minimum=1),
    Knob("watermark", float, 0.0, "fraction of blocks kept free when admitting a new request",
         minimum=0.0, maximum=1.0),
    Knob("async_scheduling", bool, False, "step-time model knob async_batching"),
    Knob("enforce_eager", bool, False, "no CUDA graphs (step-time model knob cuda_graph)"),
)


def vllm_num_blocks(c: Mapping[str, object]) -> int:
    """KV blocks per replica: the override, else what fits in the memory vLLM may use."""
    if c["num_gpu_blocks_override"] is not None:
        return int(c["num_gpu_blocks_override"])
    free = (c["gpu_memory_gib"] * c["gpu_memory_utilization"] - c["model_weights_gib"]
            - c["activation_gib"]) * 2**30
    blocks = int(free // (c["block_size"] * c["kv_bytes_per_token"]))
    if blocks < 1:
        raise ConfigError(
            f"vllm: no memory left for the KV cache (gpu_memory_gib={c['gpu_memory_gib']} x "
            f"gpu_memory_utilization={c['gpu_memory_utilization']} - weights - activations <= 0);"
            " raise gpu_memory_utilization or set num_gpu_blocks_override")
    return blocks


VLLM = EnginePolicy(
    name="vllm",
    code=K.POLICY_VLLM,
    knobs=_VLLM_KNOBS,
    to_params=lambda c: {"block_size": c["block_size"], "num_blocks": vllm_num_blocks(c),
                         "max_tokens": c["max_num_batched_tokens"], "max_seqs": c["max_num_seqs"],
                         "safety_margin": c["watermark"],
                         "long_prefill_threshold": c["long_prefill_token_threshold"],
                         "max_partial_prefills": c["max_num_partial_prefills"],
                         "chunked_prefill": float(c["enable_chunked_prefill"])},
    model_knobs={"block_size": lambda c: c["block_size"],
                 "async_batching": lambda c: float(c["async_scheduling"]),
                 "cuda_graph": lambda c: float(not c["enforce_eager"]),
                 "tp_size": lambda c: c["tp_size"],
                 "max_batch_tokens": lambda c: c["max_num_batched_tokens"]},
    description="vLLM V1 style: chunked prefill, FCFS, preemption by recompute",
    runs_columns=lambda c: {"scheduler": "fcfs", "max_batch_tokens": c["max_num_batched_tokens"],
                            "max_num_seqs": c["max_num_seqs"], "block_size": c["block_size"],
                            "num_blocks": vllm_num_blocks(c),
                            "chunked_prefill": c["enable_chunked_prefill"],
                            "async_batching": c["async_scheduling"],
                            "cuda_graph": not c["enforce_eager"],
                            "gpu_memory_utilization": c["gpu_memory_utilization"]},
    aliases={"tp": "tp_size", "dp": "dp_size", "async_batching": "async_scheduling"},
)

# --- static batching --------------------------------------------------------------------------

_STATIC_KNOBS = (
    Knob("max_batch_size", int, 32, "requests per batch", minimum=1),
    Knob("block_size", int, 16, "tokens per KV block", minimum=1),
    Knob("num_blocks", int, 65536, "KV blocks (a request reserves input + output up front)",
         minimum=1),
)

STATIC = EnginePolicy(
    name="static",
    code=K.POLICY_STATIC,
    knobs=_STATIC_KNOBS,
    to_params=lambda c: {"block_size": c["block_size"], "num_blocks": c["num_blocks"],
                         "max_tokens": 2**62, "max_seqs": c["max_batch_size"]},
    model_knobs={"block_size": lambda c: c["block_size"], "tp_size": lambda c: c["tp_size"]},
    description="static batching: whole requests in fixed batches, no joining mid-batch",
    runs_columns=lambda c: {"scheduler": "static", "max_num_seqs": c["max_batch_size"],
                            "block_size": c["block_size"], "num_blocks": c["num_blocks"],
                            "chunked_prefill": False},
    aliases={"tp": "tp_size", "dp": "dp_size"},
)


def default_registry() -> PolicyRegistry:
    """A fresh registry holding the shipped policies (transformers, vllm, static)."""
    registry = PolicyRegistry()
    for policy in (TRANSFORMERS, VLLM, STATIC):
        registry.register(policy)
    return registry


_DEFAULT = MappingProxyType({p.name: p for p in (TRANSFORMERS, VLLM, STATIC)})
# Other spellings of engine names (the store's engine partition value, the tuner's spaces).
ENGINE_ALIASES = MappingProxyType({"transformers-cb": "transformers", "vllm-v1": "vllm"})


def get_policy(engine: str) -> EnginePolicy:
    """The shipped policy called ``engine`` (ConfigError listing the valid names otherwise)."""
    try:
        return _DEFAULT[ENGINE_ALIASES.get(engine, engine)]
    except KeyError:
        raise ConfigError(f"unknown engine {engine!r}; expected one of "
                          f"{', '.join(sorted(_DEFAULT))} (aliases: "
                          f"{', '.join(sorted(ENGINE_ALIASES))})") from None


def engines() -> tuple[str, ...]:
    """Names of the shipped engine policies."""
    return tuple(sorted(_DEFAULT))


def default_config(engine: str) -> dict:
    """Every configuration key of ``engine`` with its default value."""
    return get_policy(engine).default_config()


def config_keys(engine: str) -> tuple[str, ...]:
    """The configuration keys ``engine`` accepts."""
    return get_policy(engine).keys()


def resolve_config(engine: str, config: Mapping[str, object] | None) -> dict:
    """``engine``'s defaults overlaid with ``config``, validated (ConfigError on a bad key)."""
    return get_policy(engine).resolve(config)
