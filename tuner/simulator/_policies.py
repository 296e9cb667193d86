"""Engine policies: how an engine's resolved configuration becomes the kernel's parameters.

An engine's knobs (names, types, defaults, aliases) come from its
:class:`~servetune.data.engines.EngineSpec`; a policy adds only what the simulation itself needs
(the deployment: DP replicas, TP size, router; hardware sizes; step noise) and a function that
turns a resolved configuration into the kernel's parameter vector. Its behaviour comes as numba
functions that the event loop (``_kernel.run_kernel``) is compiled with, one loop per policy:

* ``schedule(r, p, st, rs, run, wq, bq, bl, starved, cand) -> int``: fill replica ``r``'s next
  batch (``_state._add_to_batch``) from its running list ``run`` and waiting queue ``wq``, with
  the ``_state`` helpers for blocks, admission and preemption; return the batch size (0:
  nothing schedulable, -1: the engine would fail). ``starved``/``cand`` are scratch arrays.
* ``hook_init(p, n_replicas, seed) -> hs`` and ``step_hook(hs, r, p, rs, n_seq, q_tokens,
  kv_read, kv_max) -> (captured, extra_ms)``: a cost beyond the predicted step time (the
  transformers CUDA-graph capture); ``_state.no_hook_init``/``no_step_hook`` by default.

Adding a policy is one new file with its ``@numba.njit`` schedule function (and hook, if any;
plain ``njit``, not ``cache=True``: it is compiled into the cached loop) plus an entry here::

    MY_POLICY = EnginePolicy(engine=MY_SPEC, schedule=schedule_mine, knobs=(),
                             to_params=lambda c: {"block_size": c["block_size"], ...})

registered in a :class:`PolicyRegistry` (``tests/test_simulator_policy_plugin.py`` simulates a
toy FCFS policy defined in the test file end to end). The registry refuses duplicate names and
lists the valid ones when a lookup fails.

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
from servetune.data.engines import STATIC as STATIC_SPEC
from servetune.data.engines import TRANSFORMERS_CB, VLLM as VLLM_SPEC, EngineSpec, Knob, get_engine
from servetune.data.engines._transformers_resolve import mask_copy_bytes_per_step
from servetune.models._engine_constants import CAPTURE_KEYS, EngineConstants
from servetune.tuner.simulator import _kernel as K
from servetune.tuner.simulator._state import no_hook_init, no_step_hook
from servetune.tuner.simulator._static import schedule_static
from servetune.tuner.simulator._transformers import (
    schedule_transformers,
    transformers_hook_init,
    transformers_step_hook,
)
from servetune.tuner.simulator._vllm import schedule_vllm

__all__ = ["Knob", "EnginePolicy", "PolicyRegistry", "default_registry", "get_policy", "engines",
           "default_config", "config_keys", "resolve_config", "COMMON_KNOBS"]

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


#: the deployment keys' other spellings (an engine spec may name them too, e.g. vLLM's
#: ``tensor_parallel_size``: the simulator keeps them under the common names)
_COMMON_ALIASES = MappingProxyType({"tp": "tp_size", "dp": "dp_size"})
_DEPLOYMENT_COLUMNS = ("tp_size", "dp_size")


@dataclass(frozen=True)
class EnginePolicy:
    """An engine's scheduler policy in the simulator.

    Attributes:
        engine: the engine's spec: its knobs, their names, defaults and aliases.
        schedule: the policy's numba schedule function (the module docstring gives its
            signature).
        knobs: simulation-only keys (hardware sizes, capture costs); the common deployment
            and simulation keys (``COMMON_KNOBS``) are added automatically.
        to_params: ``resolved config -> dict`` of kernel parameter names (``_kernel.P_NAMES``).
        extra_runs_columns: ``resolved config -> dict`` of ``runs`` columns the spec's knobs do
            not give (derived values such as the KV block count).
        step_hook, hook_init: the policy's numba step hook and its per-run state (no-ops by
            default).
    """

    engine: EngineSpec
    schedule: Callable
    knobs: tuple[Knob, ...]
    to_params: Callable[[Mapping[str, object]], dict]
    extra_runs_columns: Callable[[Mapping[str, object]], dict] = field(default=lambda c: {})
    step_hook: Callable = no_step_hook
    hook_init: Callable = no_hook_init

    @property
    def name(self) -> str:
        """The engine's canonical name."""
        return self.engine.name

    @property
    def description(self) -> str:
        """One line for ``--help`` and error messages."""
        return self.engine.description

    @property
    def engine_knobs(self) -> tuple[Knob, ...]:
        """The spec's knobs, less the deployment ones the simulator keeps under common names."""
        return tuple(k for k in self.engine.knobs if k.runs_column not in _DEPLOYMENT_COLUMNS)

    @property
    def all_knobs(self) -> tuple[Knob, ...]:
        """Engine keys, then simulation-only keys, then the common deployment/simulation keys."""
        return self.engine_knobs + self.knobs + COMMON_KNOBS

    @property
    def aliases(self) -> Mapping[str, str]:
        """Every other accepted spelling -> the simulator's key."""
        out = dict(_COMMON_ALIASES)
        for knob in self.engine.knobs:
            target = knob.runs_column if knob.runs_column in _DEPLOYMENT_COLUMNS else knob.name
            for spelling in (knob.name, *knob.aliases):
                if spelling != target:
                    out[spelling] = target
        return MappingProxyType(out)

    def keys(self) -> tuple[str, ...]:
        """Every accepted configuration key."""
        return tuple(k.name for k in self.all_knobs)

    def default_config(self) -> dict:
        """The engine's default configuration (every key, defaults filled in)."""
        return self.resolve({})

    def resolve(self, config: Mapping[str, object] | None,
                constants: EngineConstants | None = None) -> dict:
        """Defaults overlaid with ``config``, every value checked and typed, and the defaults
        the engine resolves at start-up filled in as it does (the spec's ``resolve_defaults``).
        Simulation keys the config leaves unset (hardware sizes, CUDA-graph capture cost) are
        taken from ``constants``, the step-time model's ``engine_constants``, where it has them.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        aliases = self.aliases
        given: dict[str, str] = {}
        values: dict = {}
        for key, value in dict(config or {}).items():
            name = aliases.get(key, key)
            if name in given:
                raise ConfigError(f"{self.name} config gives both {given[name]!r} and {key!r} "
                                  "(the same key); keep one")
            given[name] = key
            values[name] = value
        engine_names = {k.name for k in self.engine_knobs}
        sim = {k.name: k for k in self.knobs + COMMON_KNOBS}
        unknown = sorted(set(values) - engine_names - set(sim))
        if unknown:
            shown = ", ".join(f"{a}={n}" for a, n in sorted(aliases.items()))
            raise ConfigError(f"unknown {self.name} config key(s) {', '.join(map(repr, unknown))};"
                              f" valid keys: {', '.join(sorted(engine_names | set(sim)))} "
                              f"(aliases: {shown})")
        resolved_sim = {name: knob.coerce(values.get(name, knob.default), self.name)
                        for name, knob in sim.items()}
        hardware = {} if constants is None else constants.hardware()
        if constants is not None:
            for name, value in constants.memory_config().items():
                if name in resolved_sim and resolved_sim[name] is None:
                    resolved_sim[name] = sim[name].coerce(value, self.name)
        hardware["gpu_memory_gib"] = resolved_sim.get("gpu_memory_gib")
        engine = self.engine.resolve({k: v for k, v in values.items() if k in engine_names},
                                     hardware=hardware)
        out = {**{k.name: engine[k.name] for k in self.engine_knobs}, **resolved_sim}
        if constants is not None and all(k in out for k in CAPTURE_KEYS):
            fitted = constants.capture_config(bool(out["use_async_batching"]),
                                              out["max_batch_tokens"])
            for name, value in fitted.items():
                if out[name] is None:
                    out[name] = sim[name].coerce(value, self.name)
        return out

    def model_knobs(self, resolved: Mapping[str, object]) -> dict[str, float]:
        """The step-time model knobs (``features.KNOB_COLUMNS`` names) of a resolved config;
        ``cache_tokens`` is the KV cache the policy sizes (blocks x block size)."""
        sized = self.to_params(resolved)
        return {**self.engine.model_knobs(resolved), "tp_size": float(resolved["tp_size"]),
                "cache_tokens": float(sized["num_blocks"]) * float(sized["block_size"])}

    def runs_columns(self, resolved: Mapping[str, object]) -> dict:
        """The ``runs`` table's knob columns of a resolved config."""
        return {**self.engine.runs_columns({k: v for k, v in resolved.items()
                                            if k in self.engine.spellings}),
                **self.extra_runs_columns(resolved)}

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

# simulation-only keys of the transformers policy (the engine's own knobs: TRANSFORMERS_CB)
_TRANSFORMERS_SIM_KNOBS = (
    Knob("gpu_memory_gib", float, None, "GPU memory per device (GiB; default: the step-time "
         "model's training GPU)", minimum=0.1, nullable=True),
    Knob("model_weights_gib", float, None, "model weights per device (GiB; default: the "
         "step-time model's training model)", minimum=0.0, nullable=True),
    Knob("kv_bytes_per_token", int, None, "KV bytes per token per device (layers x 2 x kv_heads "
         "x head_dim x dtype bytes / tp; default: the step-time model's training model)",
         minimum=1, nullable=True),
    Knob("cuda_graph_capture_ms", float, None, "cost of one graph capture beyond the step itself"
         " (default: the step-time model's fit for the batching mode and token budget)",
         minimum=0.0, nullable=True),
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
    Knob("h2d_gb_per_s", float, None, "host-to-device bandwidth (GB/s) of async batching's "
         "per-step copy of its whole static inputs; with a mask-based attention (paged|sdpa) "
         "every step takes at least mask bytes / bandwidth (default: the step-time model's "
         "engine constants; unset: no floor)", minimum=1e-3, nullable=True),
)


def _require(engine: str, c: Mapping[str, object], keys: tuple[str, ...], what: str,
             instead: str) -> None:
    """ConfigError naming the ``keys`` of ``c`` that are None (neither the configuration nor the
    step-time model's engine constants gave them)."""
    missing = [k for k in keys if c[k] is None]
    if missing:
        raise ConfigError(
            f"{engine}: {what} needs {', '.join(missing)}, which neither the configuration nor "
            "the step-time model's engine constants give (a model registered before they were "
            "recorded, or trained on runs that do not record them); set "
            f"{' '.join(f'--set {k}=VALUE' for k in missing)}{instead}, or re-register the "
            "model with `servetune train`")


def transformers_num_blocks(c: Mapping[str, object]) -> int:
    """KV blocks: ``num_blocks`` when given, else the free memory share over the block size
    (the engine also reserves activations for ``max_batch_tokens``; that term is small here)."""
    if c["num_blocks"] is not None:
        return int(c["num_blocks"])
    _require("transformers", c, ("gpu_memory_gib", "model_weights_gib", "kv_bytes_per_token"),
             "the KV cache size", " (or --set num_blocks=N)")
    free = (c["gpu_memory_gib"] - c["model_weights_gib"]) * c["max_memory_percent"] * 2**30
    blocks = int(free // (c["block_size"] * c["kv_bytes_per_token"]))
    if blocks < 1:
        raise ConfigError("transformers: no memory left for the KV cache; lower "
                          "model_weights_gib, raise max_memory_percent or set num_blocks")
    return blocks


def capture_cost(c: Mapping[str, object]) -> tuple[float, float, float, float]:
    """(ms, ms per padded query token, ms per padded KV token, repeat factor) of one graph
    capture (``CAPTURE_KEYS``): the configured values, which :meth:`EnginePolicy.resolve` fills
    from the step-time model's fit (``models.EngineConstants``) for the batching mode and token
    budget where the configuration leaves them unset. Without CUDA graphs nothing is captured
    (zeros); with them, a value neither gives is a ConfigError."""
    if not c["use_cuda_graph"] and any(c[key] is None for key in CAPTURE_KEYS):
        return (0.0, 0.0, 0.0, 0.0)
    mode = "async" if c["use_async_batching"] else "sync"
    _require("transformers", c, CAPTURE_KEYS,
             f"the CUDA-graph capture cost ({mode} batching)", "")
    return tuple(float(c[key]) for key in CAPTURE_KEYS)


def async_copy_floor_ms(c: Mapping[str, object]) -> float:
    """The least time of an async step: transformers copies its whole static attention mask
    ``[M, N + M]`` host-to-device before every forward pass (``mask_copy_bytes_per_step``,
    transformers 5.17 ``continuous_batching/input_outputs.py:212-242``), at the bandwidth of the
    model's engine constants; 0 when sync, mask-free, or the bandwidth is unknown."""
    if not c["use_async_batching"] or c["h2d_gb_per_s"] is None:
        return 0.0
    copied = mask_copy_bytes_per_step({
        "use_async_batching": True, "max_batch_tokens": c["max_batch_tokens"],
        "num_blocks": transformers_num_blocks(c), "block_size": c["block_size"],
        "attn_implementation": c["attn_implementation"] or "paged|sdpa"})
    return copied / (c["h2d_gb_per_s"] * 1e9) * 1e3


def _transformers_params(c: Mapping[str, object]) -> dict:
    margin = c["safety_margin"]
    if margin is None:
        margin = 0.15 if c["scheduler_type"] == "fifo" else 0.0
    capture_ms, capture_per_q, capture_per_kv, capture_repeat = capture_cost(c)
    return {"min_step_ms": max(float(c["min_step_ms"]), async_copy_floor_ms(c)),
            "block_size": c["block_size"], "num_blocks": transformers_num_blocks(c),
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
    engine=TRANSFORMERS_CB,
    schedule=schedule_transformers,
    step_hook=transformers_step_hook,
    hook_init=transformers_hook_init,
    knobs=_TRANSFORMERS_SIM_KNOBS,
    to_params=_transformers_params,
    extra_runs_columns=lambda c: {"num_blocks": transformers_num_blocks(c),
                                  "chunked_prefill": True},
)

# --- vLLM V1 ----------------------------------------------------------------------------------

# simulation-only keys of the vLLM policy (the engine's own knobs: servetune.data.engines.VLLM)
_VLLM_SIM_KNOBS = (
    Knob("gpu_memory_gib", float, None, "GPU memory per device (GiB; default: the step-time "
         "model's training GPU)", minimum=0.1, nullable=True),
    Knob("model_weights_gib", float, None, "model weights per device (GiB; default: the "
         "step-time model's training model)", minimum=0.0, nullable=True),
    Knob("activation_gib", float, None, "activation peak vLLM's profiling run reserves "
         "(GiB; it depends on the model and max_num_batched_tokens: the server log's memory "
         "profiling line gives it)", minimum=0.0, nullable=True),
    Knob("kv_bytes_per_token", int, None, "KV cache bytes per token per device (layers x 2 x "
         "kv_heads x head_dim x dtype bytes / tp; default: the step-time model's training "
         "model)", minimum=1, nullable=True),
    Knob("watermark", float, 0.0, "fraction of blocks kept free when admitting a new request",
         minimum=0.0, maximum=1.0),
)


def vllm_num_blocks(c: Mapping[str, object]) -> int:
    """KV blocks per replica: the override, else what fits in the memory vLLM may use."""
    if c["num_gpu_blocks_override"] is not None:
        return int(c["num_gpu_blocks_override"])
    _require("vllm", c, ("gpu_memory_gib", "model_weights_gib", "kv_bytes_per_token",
                         "activation_gib"),
             "the KV cache size", " (or --set num_gpu_blocks_override=N)")
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
    engine=VLLM_SPEC,
    schedule=schedule_vllm,
    knobs=_VLLM_SIM_KNOBS,
    # the V1 scheduler gives any number of requests a prefill chunk in one step (no partial
    # prefill cap): kernel parameter max_partial_prefills = 0 means no limit
    to_params=lambda c: {"block_size": c["block_size"], "num_blocks": vllm_num_blocks(c),
                         "max_tokens": c["max_num_batched_tokens"], "max_seqs": c["max_num_seqs"],
                         "safety_margin": c["watermark"],
                         "long_prefill_threshold": c["long_prefill_token_threshold"],
                         "max_partial_prefills": 0,
                         "chunked_prefill": float(c["enable_chunked_prefill"])},
    extra_runs_columns=lambda c: {"scheduler": "fcfs", "num_blocks": vllm_num_blocks(c)},
)

# --- static batching --------------------------------------------------------------------------


STATIC = EnginePolicy(
    engine=STATIC_SPEC,
    schedule=schedule_static,
    knobs=(),
    to_params=lambda c: {"block_size": c["block_size"], "num_blocks": c["num_blocks"],
                         "max_tokens": 2**62, "max_seqs": c["max_batch_size"]},
    extra_runs_columns=lambda c: {"scheduler": "static", "chunked_prefill": False},
)


def default_registry() -> PolicyRegistry:
    """A fresh registry holding the shipped policies (transformers-cb, vllm, static)."""
    registry = PolicyRegistry()
    for policy in (TRANSFORMERS, VLLM, STATIC):
        registry.register(policy)
    return registry


_DEFAULT = MappingProxyType({p.name: p for p in (TRANSFORMERS, VLLM, STATIC)})


def get_policy(engine: str) -> EnginePolicy:
    """The simulator policy of ``engine`` (any of its names); ConfigError when the engine is
    unknown or has no simulator policy."""
    spec = get_engine(engine)
    try:
        return _DEFAULT[spec.name]
    except KeyError:
        raise ConfigError(f"engine {spec.name!r} has no simulator policy; simulated engines: "
                          f"{', '.join(sorted(_DEFAULT))}") from None


def engines() -> tuple[str, ...]:
    """Names of the shipped engine policies."""
    return tuple(sorted(_DEFAULT))


def default_config(engine: str) -> dict:
    """Every configuration key of ``engine`` with its default value."""
    return get_policy(engine).default_config()


def config_keys(engine: str) -> tuple[str, ...]:
    """The configuration keys ``engine`` accepts."""
    return get_policy(engine).keys()


def resolve_config(engine: str, config: Mapping[str, object] | None,
                   constants: EngineConstants | None = None) -> dict:
    """``engine``'s defaults overlaid with ``config``, validated (ConfigError on a bad key);
    unset simulation keys from ``constants`` (a step-time model's ``engine_constants``)."""
    return get_policy(engine).resolve(config, constants)
