"""Engine launchers: render a candidate configuration into one command per node of a group.

A launcher turns ``{knob: value}`` into argv + environment for each node role (head, workers)
and says which extra JSON fields the benchmark requests need (``ignore_eos`` where supported).
Knobs are mapped explicitly where an engine spells them differently; a knob a launcher cannot
express is an error (``unsupported="error"``) or is recorded as not applied
(``unsupported="record"``) - never silently dropped. Keys ``env.NAME`` become environment
variables.

Example:
    >>> from servetune.tuner.hardware._cluster import NodeSpec, ServiceGroupSpec
    >>> group = ServiceGroupSpec("g0", (NodeSpec("n0", gpus=(0, 1)),))
    >>> spec = launcher_for("vllm").render({"max_num_seqs": 64, "cuda_graph": False}, group,
    ...                                    model="m")[0]
    >>> spec.argv
    ('vllm', 'serve', 'm', '--host', '0.0.0.0', '--port', '8000', '--max-num-seqs', '64', '--enforce-eager')
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from servetune import ConfigError
from servetune.tuner.hardware._cluster import ServiceGroupSpec

__all__ = ["LaunchSpec", "EngineLauncher", "VLLMLauncher", "SGLangLauncher",
           "TransformersLauncher", "ScriptLauncher", "LAUNCHERS", "launcher_for"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class LaunchSpec:
    """What to run on one node: argv, environment, and the node's role (``head``/``worker``)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    role: str
    rank: int


@dataclass
class RenderedKnobs:
    """Flags and environment from a candidate, and the knobs that could not be applied."""

    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    unapplied: list[str] = field(default_factory=list)


def _flag_value(value: object) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


class EngineLauncher(abc.ABC):
    """Base of the engine launchers.

    Attributes:
        name: registry key (``--engine``).
        engine_label: the ``engine`` value of the measured runs in the trace store.
        program: default program argv (a group's ``start_command`` replaces it).
        request_extras: extra JSON fields for every benchmark request.
        aliases: knob -> flag for knobs the engine spells differently; ``None`` = no flag.
        bool_flags: knob -> (flag when true, flag when false); ``None`` = nothing to add.
        generic: whether other knobs become ``--knob-name value`` (engines whose CLI mirrors
            their config); if not, they are unsupported.
    """

    name: str = ""
    engine_label: str = ""
    program: tuple[str, ...] = ()
    request_extras: Mapping[str, object] = {}
    aliases: Mapping[str, str | None] = {}
    bool_flags: Mapping[str, tuple[str | None, str | None]] = {}
    generic: bool = True

    def __init__(self, *, unsupported: str = "error") -> None:
        if unsupported not in ("error", "record"):
            raise ConfigError(f"unsupported= must be 'error' or 'record', got {unsupported!r}")
        self.unsupported = unsupported

    def knobs(self, config: Mapping[str, object], *, skip: tuple[str, ...] = ()) -> RenderedKnobs:
        """Flags and env for ``config``; raises :class:`ConfigError` on an unsupported knob."""
        out = RenderedKnobs()
        for key, value in config.items():
            if key in skip or value is None:
                continue
            if key.startswith("env."):
                out.env[key[4:]] = _flag_value(value)
                continue
            if key in self.bool_flags or isinstance(value, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{self.name}: knob {key!r} expects true or false, "
                                      f"got {value!r}")
                on, off = self.bool_flags.get(key, (self._flag(key), self._no_flag(key)))
                chosen = on if value else off
                if chosen is None and key not in self.bool_flags:
                    self._unsupported(key, out)
                elif chosen:
                    out.flags.append(chosen)
                continue
            flag = self.aliases[key] if key in self.aliases else (
                self._flag(key) if self.generic else None)
            if flag is None:
                self._unsupported(key, out)
                continue
            out.flags.extend([flag, _flag_value(value)])
        return out

    def _flag(self, key: str) -> str | None:
        return "--" + key.replace("_", "-") if self.generic else None

    def _no_flag(self, key: str) -> str | None:
        return "--no-" + key.replace("_", "-") if self.generic else None

    def _unsupported(self, key: str, out: RenderedKnobs) -> None:
        if self.unsupported == "record":
            out.unapplied.append(key)
            return
        known = sorted(set(self.aliases) | set(self.bool_flags))
        raise ConfigError(f"{self.name}: the engine's command line has no flag for knob {key!r} "
                          f"(known: {', '.join(known) or 'none'}); drop it from the candidate "
                          f"or allow unapplied knobs (--unapplied record)")

    @staticmethod
    def bind_host(group: ServiceGroupSpec) -> str:
        """Listen on loopback when the client connects through loopback, else everywhere."""
        return "127.0.0.1" if group.api_host in _LOOPBACK else "0.0.0.0"

    @staticmethod
    def node_env(group: ServiceGroupSpec, rank: int) -> dict[str, str]:
        gpus = group.nodes[rank].gpus
        return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))} if gpus else {}

    @abc.abstractmethod
    def render(self, config: Mapping[str, object], group: ServiceGroupSpec, *,
               model: str | None) -> list[LaunchSpec]:
        """One :class:`LaunchSpec` per node of ``group`` (head first)."""

    def unapplied(self, config: Mapping[str, object]) -> list[str]:
        """Knobs of ``config`` this launcher cannot express (empty when all apply)."""
        return type(self)(unsupported="record").knobs(config).unapplied

    def program_for(self, group: ServiceGroupSpec) -> tuple[str, ...]:
        return tuple(group.start_command) or self.program


def _need_model(name: str, model: str | None) -> str:
    if not model:
        raise ConfigError(f"{name}: no model; set `model` in the cluster file or pass --model")
    return model


class VLLMLauncher(EngineLauncher):
    """``vllm serve``; several nodes run data parallelism (head + ``--headless`` workers)."""

    name = "vllm"
    engine_label = "vllm"
    program = ("vllm", "serve")
    request_extras = {"ignore_eos": True}
    aliases = {"tp": "--tensor-parallel-size", "pp": "--pipeline-parallel-size",
               "dp": "--data-parallel-size", "max_batch_tokens": "--max-num-batched-tokens",
               "dp_rpc_port": None}
    bool_flags = {"cuda_graph": (None, "--enforce-eager"),
                  "chunked_prefill": ("--enable-chunked-prefill", "--no-enable-chunked-prefill"),
                  "prefix_caching": ("--enable-prefix-caching", "--no-enable-prefix-caching")}

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        knobs = self.knobs(config, skip=("dp", "dp_rpc_port"))
        base = [*self.program_for(group), model, "--host", self.bind_host(group),
                "--port", str(group.service_port), *knobs.flags]
        nodes = len(group.nodes)
        if nodes == 1:
            if "dp" in config:
                base += ["--data-parallel-size", str(config["dp"])]
            return [LaunchSpec(tuple(base), {**knobs.env, **self.node_env(group, 0)}, "head", 0)]
        dp = int(config.get("dp", nodes))
        if dp % nodes:
            raise ConfigError(f"vllm: dp={dp} does not split over the {nodes} nodes of group "
                              f"{group.name}; multi-node groups run data parallelism")
        local = dp // nodes
        rpc_port = str(config.get("dp_rpc_port", 13345))
        common = ["--data-parallel-size", str(dp), "--data-parallel-size-local", str(local),
                  "--data-parallel-address", group.head.host, "--data-parallel-rpc-port", rpc_port]
        specs = [LaunchSpec(tuple(base + common), {**knobs.env, **self.node_env(group, 0)},
                            "head", 0)]
        for rank in range(1, nodes):
            argv = base + common + ["--headless", "--data-parallel-start-rank", str(rank * local)]
            specs.append(LaunchSpec(tuple(argv), {**knobs.env, **self.node_env(group, rank)},
                                    "worker", rank))
        return specs


class SGLangLauncher(EngineLauncher):
    """``python -m sglang.launch_server``; several nodes share one TP group (``--nnodes``)."""

    name = "sglang"
    engine_label = "sglang"
    program = ("python3", "-m", "sglang.launch_server")
    request_extras = {"ignore_eos": True}
    aliases = {"tp": "--tp-size", "dp": "--dp-size", "pp": "--pp-size",
               "max_num_seqs": "--max-running-requests",
               "max_batch_tokens": "--chunked-prefill-size",
               "gpu_memory_utilization": "--mem-fraction-static", "block_size": "--page-size",
               "dist_init_port": None}
    bool_flags = {"cuda_graph": (None, "--disable-cuda-graph"),
                  "prefix_caching": (None, "--disable-radix-cache")}

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        knobs = self.knobs(config, skip=("dist_init_port",))
        base = [*self.program_for(group), "--model-path", model, "--host",
                self.bind_host(group), "--port", str(group.service_port), *knobs.flags]
        nodes = len(group.nodes)
        if nodes == 1:
            return [LaunchSpec(tuple(base), {**knobs.env, **self.node_env(group, 0)}, "head", 0)]
        init = f"{group.head.host}:{config.get('dist_init_port', 5000)}"
        return [LaunchSpec(tuple(base + ["--dist-init-addr", init, "--nnodes", str(nodes),
                                         "--node-rank", str(rank)]),
                           {**knobs.env, **self.node_env(group, rank)},
                           "head" if rank == 0 else "worker", rank)
                for rank in range(nodes)]


class TransformersLauncher(EngineLauncher):
    """``transformers serve MODEL --continuous-batching --cb-...`` (single node).

    transformers 5.17's ``serve`` exposes ``--cb-block-size``, ``--cb-num-blocks``,
    ``--cb-max-batch-tokens``, ``--cb-max-memory-percent`` and ``--cb-use-cuda-graph``; other
    ``ContinuousBatchingConfig`` fields (``max_requests_per_batch``, ``scheduler``,
    ``async_batching``) have no flag and count as unsupported.
    """

    name = "transformers"
    engine_label = "transformers-cb"
    program = ("transformers", "serve")
    request_extras = {}
    aliases = {"block_size": "--cb-block-size", "num_blocks": "--cb-num-blocks",
               "max_batch_tokens": "--cb-max-batch-tokens",
               "max_memory_percent": "--cb-max-memory-percent",
               "attn_implementation": "--attn-implementation", "dtype": "--dtype",
               "device": "--device", "max_requests_per_batch": None, "scheduler": None}
    bool_flags = {"cuda_graph": ("--cb-use-cuda-graph", "--no-cb-use-cuda-graph"),
                  "compile": ("--compile", "--no-compile"), "async_batching": (None, None)}
    generic = False

    def knobs(self, config, *, skip=()):
        out = super().knobs(config, skip=skip)
        if config.get("async_batching") is True and "async_batching" not in out.unapplied:
            self._unsupported("async_batching", out)
        return out

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        if len(group.nodes) != 1:
            raise ConfigError(f"transformers: group {group.name} has {len(group.nodes)} nodes; "
                              "transformers serve runs on one node")
        knobs = self.knobs(config)
        argv = [*self.program_for(group), model, "--continuous-batching", "--host",
                self.bind_host(group), "--port", str(group.service_port), *knobs.flags]
        return [LaunchSpec(tuple(argv), {**knobs.env, **self.node_env(group, 0)}, "head", 0)]


class ScriptLauncher(EngineLauncher):
    """A user start script (the group's ``start_script`` or ``start_command``).

    The script gets every knob as ``--knob value`` arguments and as ``SERVETUNE_KNOB``
    environment variables, plus ``SERVETUNE_PORT``, ``SERVETUNE_MODEL``,
    ``SERVETUNE_NODE_RANK``, ``SERVETUNE_NUM_NODES``, ``SERVETUNE_HEAD`` and
    ``SERVETUNE_CONFIG`` (the whole configuration as JSON). It must serve the OpenAI API on the
    head's ``service_port`` and stay in the foreground.
    """

    name = "script"
    engine_label = "script"

    def render(self, config, group, *, model):
        program = (group.start_script,) if group.start_script else tuple(group.start_command)
        if not program:
            raise ConfigError(f"script: group {group.name} has no start_script or start_command")
        knobs = self.knobs(config)
        specs = []
        for rank in range(len(group.nodes)):
            env = {**knobs.env, **self.node_env(group, rank),
                   "SERVETUNE_PORT": str(group.service_port), "SERVETUNE_MODEL": model or "",
                   "SERVETUNE_NODE_RANK": str(rank), "SERVETUNE_NUM_NODES": str(len(group.nodes)),
                   "SERVETUNE_HEAD": group.head.host,
                   "SERVETUNE_CONFIG": json.dumps(dict(config), sort_keys=True, default=str)}
            for key, value in config.items():
                if not key.startswith("env."):
                    env["SERVETUNE_" + key.upper().replace("-", "_").replace(".", "_")] = \
                        _flag_value(value)
            specs.append(LaunchSpec((*program, *knobs.flags), env,
                                    "head" if rank == 0 else "worker", rank))
        return specs


LAUNCHERS: Mapping[str, type[EngineLauncher]] = {
    cls.name: cls for cls in (VLLMLauncher, SGLangLauncher, TransformersLauncher, ScriptLauncher)}


def launcher_for(name: str, *, unsupported: str = "error") -> EngineLauncher:
    """The launcher called ``name`` (``transformers-cb`` is an alias of ``transformers``)."""
    key = {"transformers-cb": "transformers"}.get(name, name)
    try:
        return LAUNCHERS[key](unsupported=unsupported)
    except KeyError:
        raise ConfigError(f"unknown engine {name!r}; expected one of "
                          f"{', '.join(LAUNCHERS)}") from None
