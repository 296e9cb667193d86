"""Cluster specifications: service groups of nodes, from a hostfile, a node string or TOML.

A *service group* is the set of nodes one engine instance runs on (one node, or several for
multi-node tensor/data parallelism); the dispatcher evaluates one candidate per group at a time.

Three ways to describe a cluster:

* a node string: ``"n0,n1:n2,n3"`` is two groups of two nodes (``,`` joins nodes, ``:`` groups);
* a hostfile (one host per line, ``user@host[:port]``, ``#`` comments, MPI ``slots=`` ignored)
  cut into groups of ``nodes_per_group``;
* TOML with ``[[service_groups]]`` tables (see :func:`load_cluster_toml`).

The host name ``local`` means the local machine through a subprocess instead of SSH.

Example:
    >>> spec = parse_node_string("n0,n1:n2,n3", gpus_per_node=8)
    >>> [g.name for g in spec.groups], spec.groups[1].nodes[0].host, spec.groups[0].nodes[0].gpus[-1]
    (['g0', 'g1'], 'n2', 7)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from servetune import ConfigError
from servetune.data.engines import ENV_NAME

__all__ = [
    "NodeSpec",
    "ServiceGroupSpec",
    "SSHOptions",
    "ClusterSpec",
    "parse_node_string",
    "read_hostfile",
    "load_cluster_toml",
    "load_cluster",
    "LOCAL_HOST",
]

LOCAL_HOST = "local"
#: the default work dir: private to the SSH user, never a shared, predictable path
DEFAULT_WORK_DIR = "~/.servetune/work"
_HOST = re.compile(r"^[A-Za-z0-9._\-\[\]:]+$")


@dataclass(frozen=True)
class NodeSpec:
    """One node of a service group.

    Attributes:
        host: host name or address (``local`` for this machine without SSH).
        port: SSH port.
        user: SSH user (default: the current user).
        key: path of the private key (default: the SSH agent and ``~/.ssh`` keys).
        gpus: GPU indices given to the engine on this node (``CUDA_VISIBLE_DEVICES``).
        work_dir: directory on the node for logs and benchmark results: the SSH user's own,
            writable by nobody else (created 0700 when missing; ``~/`` is the user's home);
            each service runs in a fresh private directory inside it.
    """

    host: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    gpus: tuple[int, ...] = ()
    work_dir: str = DEFAULT_WORK_DIR

    @property
    def is_local(self) -> bool:
        """Whether this node is reached by a local subprocess instead of SSH."""
        return self.host == LOCAL_HOST

    @property
    def label(self) -> str:
        """``user@host:port`` for messages."""
        user = f"{self.user}@" if self.user else ""
        return self.host if self.is_local else f"{user}{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceGroupSpec:
    """Nodes that serve one engine instance, and how to start and reach it.

    Attributes:
        name: the group's name in reports.
        nodes: the nodes; the first is the head (rank 0) and serves the API.
        service_host: address the benchmark client connects to (default: the head's host,
            ``127.0.0.1`` for a local head).
        service_port: HTTP port of the OpenAI-compatible API.
        health_url: health-check URL (default ``http://service_host:service_port/health``).
        start_command: program argv replacing the engine's default (``["/opt/vllm/bin/vllm",
            "serve"]``); the launcher appends the candidate's flags.
        start_script: a user start script run instead of the engine launcher's command.
        env: extra environment variables for the engine on every node.
        dp_rpc_port: vLLM's data-parallel RPC port on the head (multi-node groups).
        dist_init_port: SGLang's distributed init port on the head (multi-node groups).
    """

    name: str
    nodes: tuple[NodeSpec, ...]
    service_host: str | None = None
    service_port: int = 8000
    health_url: str | None = None
    start_command: tuple[str, ...] = ()
    start_script: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    dp_rpc_port: int = 13345
    dist_init_port: int = 5000

    @property
    def head(self) -> NodeSpec:
        """Rank 0, which serves the API."""
        return self.nodes[0]

    @property
    def api_host(self) -> str:
        """The address the benchmark client uses."""
        if self.service_host:
            return self.service_host
        return "127.0.0.1" if self.head.is_local else self.head.host

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the OpenAI-compatible API."""
        host = self.api_host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.service_port}"

    @property
    def health(self) -> str:
        """The health-check URL."""
        return self.health_url or f"{self.base_url}/health"


@dataclass(frozen=True)
class SSHOptions:
    """How SSH connections are made and verified.

    Attributes:
        known_hosts: known_hosts file checked for host keys (default ``~/.ssh/known_hosts``).
        trust_new_hosts: accept a host missing from known_hosts and record its key there.
            Off by default: an unknown host is refused.
        connect_timeout_s: TCP + SSH handshake + authentication timeout.
        command_timeout_s: default timeout of one remote command.
        keepalive_s: SSH keepalive interval (0 disables).
        allow_agent: try keys from the SSH agent.
    """

    known_hosts: str | None = None
    trust_new_hosts: bool = False
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0
    keepalive_s: float = 15.0
    allow_agent: bool = True

    @property
    def known_hosts_path(self) -> Path:
        """The known_hosts file in use."""
        return Path(self.known_hosts or "~/.ssh/known_hosts").expanduser()


@dataclass(frozen=True)
class ClusterSpec:
    """Service groups plus the settings every group shares.

    Attributes:
        groups: the service groups.
        engine: the engine to launch (any name of ``servetune.data.engines``, or ``script``);
            ``None``: not named here (``servetune validate`` takes it from the study or
            ``--engine``).
        model: model path or id given to the engine.
        ssh: SSH connection options.
        health_timeout_s: how long a starting service may take to become healthy.
        candidate_timeout_s: wall-clock limit of one candidate (start, benchmark, stop).
        stop_grace_s: seconds between SIGTERM and SIGKILL of a service's process group.
        retries: extra attempts for a transient failure.
        backoff_s: first retry delay; doubles each retry, with jitter.
        backoff_max_s: longest retry delay.
        breaker_threshold: consecutive group faults that open the group's circuit breaker.
        breaker_cooldown_s: how long an open breaker keeps the group out.
        env: environment variables for the engine on every group.
    """

    groups: tuple[ServiceGroupSpec, ...]
    engine: str | None = None
    model: str | None = None
    ssh: SSHOptions = field(default_factory=SSHOptions)
    health_timeout_s: float = 600.0
    candidate_timeout_s: float = 1800.0
    stop_grace_s: float = 15.0
    retries: int = 2
    backoff_s: float = 2.0
    backoff_max_s: float = 60.0
    breaker_threshold: int = 2
    breaker_cooldown_s: float = 300.0
    env: Mapping[str, str] = field(default_factory=dict)

    def with_settings(self, **changes) -> "ClusterSpec":
        """A copy with some settings replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _node_from_text(text: str, *, where: str, port: int, user: str | None, key: str | None,
                    gpus_per_node: int, work_dir: str) -> NodeSpec:
    entry = text.strip()
    node_user = user
    if "@" in entry:
        node_user, entry = entry.split("@", 1)
    node_port = port
    if entry.count(":") == 1:
        entry, raw_port = entry.split(":")
        node_port = _port(raw_port, where)
    if not entry or not _HOST.match(entry):
        raise ConfigError(f"{where}: expected a host name like n0 or user@n0:22, got {text!r}")
    return NodeSpec(host=entry, port=node_port, user=node_user or None, key=key,
                    gpus=tuple(range(gpus_per_node)), work_dir=work_dir)


def _port(raw: object, where: str) -> int:
    try:
        value = int(str(raw))
    except ValueError:
        value = -1
    if isinstance(raw, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: expected a port number 1..65535, got {raw!r}")
    return value


def _groups_from_hosts(hosts: list[NodeSpec], nodes_per_group: int, where: str,
                       service_port: int) -> tuple[ServiceGroupSpec, ...]:
    if nodes_per_group < 1:
        raise ConfigError(f"--nodes-per-group must be >= 1, got {nodes_per_group}")
    if not hosts:
        raise ConfigError(f"{where}: no hosts")
    if len(hosts) % nodes_per_group:
        raise ConfigError(f"{where}: {len(hosts)} hosts do not split into groups of "
                          f"{nodes_per_group} (--nodes-per-group)")
    return tuple(
        ServiceGroupSpec(name=f"g{i // nodes_per_group}",
                         nodes=tuple(hosts[i:i + nodes_per_group]), service_port=service_port)
        for i in range(0, len(hosts), nodes_per_group))


def parse_node_string(text: str, *, gpus_per_node: int = 0, port: int = 22,
                      user: str | None = None, key: str | None = None,
                      work_dir: str = DEFAULT_WORK_DIR, service_port: int = 8000,
                      **settings) -> ClusterSpec:
    """Groups from ``"n0,n1:n2,n3"`` (``:`` separates groups, ``,`` nodes of a group)."""
    groups = []
    for g, chunk in enumerate(text.split(":") if text.strip() else []):
        nodes = tuple(_node_from_text(h, where=f"node string group {g}", port=port, user=user,
                                      key=key, gpus_per_node=gpus_per_node, work_dir=work_dir)
                      for h in chunk.split(","))
        groups.append(ServiceGroupSpec(name=f"g{g}", nodes=nodes, service_port=service_port))
    if not groups:
        raise ConfigError(f"node string {text!r}: expected groups like n0,n1:n2,n3")
    return ClusterSpec(groups=tuple(groups), **settings)


def read_hostfile(path: str | Path, *, nodes_per_group: int = 1, gpus_per_node: int = 0,
                  port: int = 22, user: str | None = None, key: str | None = None,
                  work_dir: str = DEFAULT_WORK_DIR, service_port: int = 8000,
                  **settings) -> ClusterSpec:
    """Groups of ``nodes_per_group`` consecutive hosts of a hostfile."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the hostfile ({exc.strerror})") from None
    hosts = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        name = text.split()[0]
        hosts.append(_node_from_text(name, where=f"{path}, line {number}", port=port, user=user,
                                     key=key, gpus_per_node=gpus_per_node, work_dir=work_dir))
    groups = _groups_from_hosts(hosts, nodes_per_group, str(path), service_port)
    return ClusterSpec(groups=groups, **settings)


# ----------------------------------------------------------------------------- TOML
_CLUSTER_KEYS = {"engine": str, "model": str, "health_timeout_s": float,
                 "candidate_timeout_s": float, "stop_grace_s": float, "retries": int,
                 "backoff_s": float, "backoff_max_s": float, "breaker_threshold": int,
                 "breaker_cooldown_s": float}
_SSH_KEYS = {f.name: f.type for f in fields(SSHOptions)}
_NODE_KEYS = {"host", "port", "user", "key", "gpus", "work_dir"}
_GROUP_KEYS = {"name", "nodes", "service_host", "service_port", "health_url", "start_command",
               "start_script", "env", "dp_rpc_port", "dist_init_port"}


class _Reader:
    """Typed look-ups in a TOML table with errors naming the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}")

    def check_keys(self, table: Mapping, allowed: set[str], where: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{where}.{unknown[0]}" if where else unknown[0],
                            f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def value(self, table: Mapping, key: str, kind: type, where: str, default=None):
        if key not in table:
            return default
        raw = table[key]
        name = f"{where}.{key}" if where else key
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if kind is bool and not isinstance(raw, bool) or kind is not bool and isinstance(raw, bool):
            raise self.fail(name, f"expected {kind.__name__}, got {raw!r}")
        if not isinstance(raw, kind):
            raise self.fail(name, f"expected {kind.__name__}, got {raw!r}")
        if kind in (int, float) and not 0 <= raw <= 1e9:  # also refuses NaN and inf
            raise self.fail(name, f"expected a finite value in 0..1e9, got {raw!r}")
        return raw

    def strings(self, table: Mapping, key: str, where: str) -> tuple[str, ...]:
        raw = table.get(key, [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.fail(f"{where}.{key}", f"expected a list of strings, got {raw!r}")
        return tuple(raw)

    def env(self, table: Mapping, where: str) -> dict[str, str]:
        raw = table.get("env", {})
        if not isinstance(raw, dict):
            raise self.fail(f"{where}.env", f"expected a table of NAME = value, got {raw!r}")
        out = {}
        for name, value in raw.items():
            if not ENV_NAME.fullmatch(name):
                raise self.fail(f"{where}.env.{name}", "expected an environment variable name")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise self.fail(f"{where}.env.{name}", f"expected a string, got {value!r}")
            out[name] = str(value)
        return out


def load_cluster_toml(path: str | Path) -> ClusterSpec:
    """Read a cluster TOML file.

    Layout::

        engine = "vllm"                 # cluster-wide settings (all optional)
        model = "/models/llama-3-8b"
        candidate_timeout_s = 1800
        retries = 2
        [ssh]
        known_hosts = "~/.ssh/known_hosts"
        trust_new_hosts = false
        [defaults]                      # node defaults
        user = "svc"
        key = "~/.ssh/id_ed25519"
        work_dir = "/scratch/servetune"
        [[service_groups]]
        name = "g0"
        service_port = 8000
        health_url = "http://n0:8000/health"
        start_script = "/opt/start.sh"  # or start_command = ["/opt/vllm/bin/vllm", "serve"]
        env = { HF_HOME = "/data/hf" }
        nodes = [{ host = "n0", gpus = [0, 1, 2, 3] }, { host = "n1", gpus = [0, 1, 2, 3] }]
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster file ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
    r = _Reader(path)
    r.check_keys(data, set(_CLUSTER_KEYS) | {"ssh", "defaults", "service_groups", "env"}, "")
    settings = {key: r.value(data, key, kind, "") for key, kind in _CLUSTER_KEYS.items()
                if key in data}
    ssh_table = data.get("ssh", {})
    r.check_keys(ssh_table, set(_SSH_KEYS), "ssh")
    ssh = SSHOptions(**{k: r.value(ssh_table, k, {"str | None": str, "bool": bool,
                                                    "float": float}[str(t)], "ssh")
                        for k, t in _SSH_KEYS.items() if k in ssh_table})
    defaults = data.get("defaults", {})
    r.check_keys(defaults, _NODE_KEYS - {"host"}, "defaults")
    raw_groups = data.get("service_groups")
    if not isinstance(raw_groups, list) or not raw_groups:
        raise r.fail("service_groups", "expected at least one [[service_groups]] table")
    groups = []
    for g, table in enumerate(raw_groups):
        where = f"service_groups[{g}]"
        r.check_keys(table, _GROUP_KEYS, where)
        raw_nodes = table.get("nodes")
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise r.fail(f"{where}.nodes", "expected a list of at least one node table")
        nodes = tuple(_node_from_table(r, {**defaults, **node}, f"{where}.nodes[{n}]")
                      for n, node in enumerate(raw_nodes))
        service_port = table.get("service_port", 8000)
        groups.append(ServiceGroupSpec(
            name=r.value(table, "name", str, where, f"g{g}"),
            nodes=nodes,
            service_host=r.value(table, "service_host", str, where),
            service_port=_port(service_port, f"{path}: {where}.service_port"),
            health_url=r.value(table, "health_url", str, where),
            start_command=r.strings(table, "start_command", where),
            start_script=r.value(table, "start_script", str, where),
            env=r.env(table, where),
            dp_rpc_port=_port(table.get("dp_rpc_port", 13345), f"{path}: {where}.dp_rpc_port"),
            dist_init_port=_port(table.get("dist_init_port", 5000),
                                 f"{path}: {where}.dist_init_port")))
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise r.fail("service_groups", f"group names must be unique, got {names}")
    return ClusterSpec(groups=tuple(groups), ssh=ssh, env=r.env(data, "cluster"), **settings)


def _node_from_table(r: _Reader, table: Mapping, where: str) -> NodeSpec:
    if not isinstance(table, dict):
        raise r.fail(where, f"expected a node table like {{ host = \"n0\" }}, got {table!r}")
    r.check_keys(table, _NODE_KEYS, where)
    host = r.value(table, "host", str, where)
    if not host or not _HOST.match(host):
        raise r.fail(f"{where}.host", f"expected a host name or address, got {host!r}")
    gpus = table.get("gpus", [])
    if not isinstance(gpus, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                             and x >= 0 for x in gpus):
        raise r.fail(f"{where}.gpus", f"expected a list of GPU indices like [0, 1], got {gpus!r}")
    key = r.value(table, "key", str, where)
    return NodeSpec(host=host, port=_port(table.get("port", 22), f"{r.path}: {where}.port"),
                    user=r.value(table, "user", str, where),
                    key=str(Path(key).expanduser()) if key else None, gpus=tuple(gpus),
                    work_dir=r.value(table, "work_dir", str, where, DEFAULT_WORK_DIR))


def load_cluster(source: str, *, nodes_per_group: int = 1, gpus_per_node: int = 0,
                 **options) -> ClusterSpec:
    """A cluster from a ``.toml`` file, a hostfile, or a node string (in that order).

    ``options`` are node defaults (``port``, ``user``, ``key``, ``work_dir``,
    ``service_port``) for hostfiles and node strings, and :class:`ClusterSpec` settings; ``None``
    values are ignored.
    """
    options = {k: v for k, v in options.items() if v is not None}
    path = Path(source).expanduser()
    if path.suffix == ".toml":
        if nodes_per_group != 1 or gpus_per_node:
            raise ConfigError(f"{path}: --nodes-per-group/--gpus-per-node apply to hostfiles and "
                              "node strings; a TOML cluster lists its nodes and GPUs itself")
        spec = load_cluster_toml(path)
        return spec.with_settings(**{k: v for k, v in options.items() if k in _CLUSTER_KEYS})
    if path.is_file():
        return read_hostfile(path, nodes_per_group=nodes_per_group, gpus_per_node=gpus_per_node,
                             **options)
    spec = parse_node_string(source, gpus_per_node=gpus_per_node, **options)
    if nodes_per_group != 1 and any(len(g.nodes) != nodes_per_group for g in spec.groups):
        raise ConfigError(f"node string {source!r}: every group must have {nodes_per_group} "
                          "nodes (--nodes-per-group); join nodes of a group with ','")
    return spec
