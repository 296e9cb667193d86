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
from servetune.data.engines import (
    SGLANG,
    TRANSFORMERS_CB,
    VLLM,
    EngineSpec,
    check_env_name,
    get_engine,
)
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


def _flag_value(value: object) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@dataclass
class RenderedKnobs:
    """Flags and environment from a candidate, and the knobs that could not be applied."""

    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    unapplied: list[str] = field(default_factory=list)


class EngineLauncher(abc.ABC):
    """Base of the engine launchers: an engine's spec plus how it spreads over a group's nodes.

    Attributes:
        spec: the engine's :class:`~servetune.data.engines.EngineSpec` (knobs, flags, program),
            ``None`` for the script launcher, which passes every knob through.
        skip: knobs the launcher places itself (topology), not through their flag.
    """

    spec: EngineSpec | None = None
    skip: tuple[str, ...] = ()

    def __init__(self, *, unsupported: str = "error") -> None:
        if unsupported not in ("error", "record"):
            raise ConfigError(f"unsupported= must be 'error' or 'record', got {unsupported!r}")
        self.unsupported = unsupported

    @property
    def name(self) -> str:
        """The engine's canonical name (``--engine``)."""
        return self.spec.name

    @property
    def engine_label(self) -> str:
        """The ``engine`` value of the measured runs in the trace store."""
        return self.spec.name

    @property
    def program(self) -> tuple[str, ...]:
        """Default program argv (a group's ``start_command`` replaces it)."""
        return self.spec.program

    @property
    def request_extras(self) -> Mapping[str, object]:
        """Extra JSON fields for every benchmark request."""
        return self.spec.request_extras

    def knobs(self, config: Mapping[str, object], *, skip: tuple[str, ...] = ()) -> RenderedKnobs:
        """Flags and env for ``config``; raises :class:`ConfigError` naming the knobs the engine
        cannot take (and those it can) unless unapplied knobs are recorded."""
        skipped = set(skip) | set(self.skip)
        config = {k: v for k, v in self.spec.canonical(config, strict=False).items()
                  if k not in skipped}
        parts = self.spec.check_launchable(config, unapplied=self.unsupported)
        return RenderedKnobs(list(parts.flags), dict(parts.env),
                             parts.unknown + parts.config_only)

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

    def base_argv(self, group: ServiceGroupSpec, model: str, flags: list[str]) -> list[str]:
        """Program, model, the spec's fixed arguments, host and port, then ``flags``."""
        head = [*self.program_for(group)]
        head += [self.spec.model_flag, model] if self.spec.model_flag else [model]
        return [*head, *self.spec.fixed_args, "--host", self.bind_host(group), "--port",
                str(group.service_port), *flags]


def _need_model(name: str, model: str | None) -> str:
    if not model:
        raise ConfigError(f"{name}: no model; set `model` in the cluster file or pass --model")
    return model


class VLLMLauncher(EngineLauncher):
    """``vllm serve``; several nodes run data parallelism (head + ``--headless`` workers)."""

    spec = VLLM
    skip = ("data_parallel_size",)

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        knobs = self.knobs(config)
        base = self.base_argv(group, model, knobs.flags)
        dp = self.spec.canonical(config, strict=False).get("data_parallel_size")
        nodes = len(group.nodes)
        if nodes == 1:
            if dp is not None:
                base += self.spec.knob("data_parallel_size").render(int(dp))
            return [LaunchSpec(tuple(base), {**knobs.env, **self.node_env(group, 0)}, "head", 0)]
        dp = int(dp if dp is not None else nodes)
        if dp % nodes:
            raise ConfigError(f"vllm: dp={dp} does not split over the {nodes} nodes of group "
                              f"{group.name}; multi-node groups run data parallelism")
        local = dp // nodes
        common = [*self.spec.knob("data_parallel_size").render(dp),
                  "--data-parallel-size-local", str(local),
                  "--data-parallel-address", group.head.host, "--data-parallel-rpc-port",
                  str(group.dp_rpc_port)]
        specs = [LaunchSpec(tuple(base + common), {**knobs.env, **self.node_env(group, 0)},
                            "head", 0)]
        for rank in range(1, nodes):
            argv = base + common + ["--headless", "--data-parallel-start-rank", str(rank * local)]
            specs.append(LaunchSpec(tuple(argv), {**knobs.env, **self.node_env(group, rank)},
                                    "worker", rank))
        return specs


class SGLangLauncher(EngineLauncher):
    """``python -m sglang.launch_server``; several nodes share one TP group (``--nnodes``)."""

    spec = SGLANG

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        knobs = self.knobs(config)
        base = self.base_argv(group, model, knobs.flags)
        nodes = len(group.nodes)
        if nodes == 1:
            return [LaunchSpec(tuple(base), {**knobs.env, **self.node_env(group, 0)}, "head", 0)]
        init = f"{group.head.host}:{group.dist_init_port}"
        return [LaunchSpec(tuple(base + ["--dist-init-addr", init, "--nnodes", str(nodes),
                                         "--node-rank", str(rank)]),
                           {**knobs.env, **self.node_env(group, rank)},
                           "head" if rank == 0 else "worker", rank)
                for rank in range(nodes)]


class TransformersLauncher(EngineLauncher):
    """``transformers serve MODEL --continuous-batching --cb-...`` (single node).

    transformers 5.17's ``serve`` takes only some ``ContinuousBatchingConfig`` fields as flags
    (the spec says which); the others count as unapplied.
    """

    spec = TRANSFORMERS_CB

    def render(self, config, group, *, model):
        model = _need_model(self.name, model)
        if len(group.nodes) != 1:
            raise ConfigError(f"transformers: group {group.name} has {len(group.nodes)} nodes; "
                              "transformers serve runs on one node")
        knobs = self.knobs(config)
        argv = self.base_argv(group, model, knobs.flags)
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
    program = ()
    request_extras: Mapping[str, object] = {}

    def knobs(self, config, *, skip=()):
        """Every knob as ``--knob-name value`` (``--knob`` / ``--no-knob`` for booleans)."""
        out = RenderedKnobs()
        for key, value in config.items():
            if key in skip or value is None:
                continue
            if key.startswith("env."):
                out.env[check_env_name(key[4:], f"script knob {key!r}")] = _flag_value(value)
            elif isinstance(value, bool):
                out.flags.append(("--" if value else "--no-") + key.replace("_", "-"))
            else:
                out.flags += ["--" + key.replace("_", "-"), _flag_value(value)]
        return out

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
    **{cls.spec.name: cls for cls in (VLLMLauncher, SGLangLauncher, TransformersLauncher)},
    "script": ScriptLauncher}


def launcher_for(name: str, *, unsupported: str = "error") -> EngineLauncher:
    """The launcher of engine ``name`` (any of its names), or ``script``."""
    key = name if name == "script" else _launchable_engine(name)
    return LAUNCHERS[key](unsupported=unsupported)


def _launchable_engine(name: str) -> str:
    spec = get_engine(name)
    if spec.name not in LAUNCHERS:
        raise ConfigError(f"engine {spec.name!r} cannot be launched; launchable engines: "
                          f"{', '.join(sorted(LAUNCHERS))}")
    return spec.name
