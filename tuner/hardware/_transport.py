"""Transports run commands on a node: a local subprocess, or SSH (see :mod:`._ssh`).

Both take an argv list, never a command string: the SSH transport ``shlex.quote``s every
element, the local one passes the list to ``exec`` directly, so no configuration value is ever
interpreted by a shell. Services are started in a new session (``setsid``) whose id is also its
process-group id; stopping signals exactly that session's processes, by id, never by name.

Example:
    >>> t = LocalTransport(NodeSpec("local"))
    >>> t.run(["echo", "$(touch /tmp/pwned)"]).stdout
    '$(touch /tmp/pwned)\\n'
"""

from __future__ import annotations

import abc
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from servetune.data.engines import check_env_name
from servetune.tuner.hardware._cluster import NodeSpec
from servetune.tuner.hardware._errors import (
    CommandFailed,
    CommandTimeout,
    HardwareError,
    ServiceStartFailed,
)

__all__ = ["CommandResult", "Transport", "LocalTransport", "PREPARE_SCRIPT", "LAUNCH_SCRIPT",
           "SESSION_SCRIPT", "STOP_SCRIPT"]

# Makes the private directory a service runs in and prints it. The work dir "$1" must be this
# user's own, a real directory, writable by nobody else (created 0700 when missing); the service
# then runs in a fresh directory made inside it (mktemp -d, mode 0700), so nothing another
# account plants can be imported or executed from the service's cwd.
PREPARE_SCRIPT = (
    'umask 077; base="$1"; '
    'mkdir -p "$base" 2>/dev/null; '
    '{ [ -d "$base" ] && [ ! -L "$base" ] && [ -O "$base" ]; } || '
    '{ echo "servetune: work dir $base is not a directory owned by $(id -un)" >&2; exit 96; }; '
    '[ -z "$(find "$base" -maxdepth 0 -perm /022)" ] || '
    '{ echo "servetune: work dir $base is writable by other users" >&2; exit 96; }; '
    'run=$(mktemp -d "$base/run.XXXXXXXX") || '
    '{ echo "servetune: cannot make a private dir in $base" >&2; exit 97; }; echo "$run"'
)

# Runs "$@" in a new session, in the private dir "$1", with its output appended to the log "$2";
# "$3" is a 0600 file of `export NAME='value'` lines (or empty): it is read, then removed, so
# environment values never appear on a command line. Prints the session id (the pid of the
# session leader, which is also its process-group id), then closes stdout.
LAUNCH_SCRIPT = (
    'umask 077; cd "$1" || exit 97; log="$2"; envfile="$3"; shift 3; '
    'if [ -n "$envfile" ]; then set -a; . "$envfile" || exit 99; set +a; rm -f "$envfile"; fi; '
    'mkdir -p "$(dirname "$log")" || exit 98; '
    "setsid sh -c 'echo $$; exec \"$@\" >>\"$0\" 2>&1 </dev/null' \"$log\" \"$@\" </dev/null &"
)

# Lists the live (non-zombie) pids of session $sid from /proc with shell builtins only (no ps,
# awk or a fork per process): field 3 of /proc/PID/stat after the command name is the state,
# field 6 the session id.
_ALIVE = (
    'alive() { for d in /proc/[0-9]*; do read -r s 2>/dev/null < "$d/stat" || continue; '
    'set -- ${s##*) }; [ "$4" = "$sid" ] && [ "$1" != Z ] && echo "${d#/proc/}"; done; }; '
)

# Counts the live processes of session "$1", then sends them signal "$2" (0 only probes): the
# process group, plus any member that moved to another group inside the session.
SESSION_SCRIPT = (
    'sid="$1"; sig="$2"; ' + _ALIVE
    + 'pids=$(alive); n=0; for p in $pids; do n=$((n+1)); done; echo "$n"; '
    '[ "$n" -eq 0 ] || [ "$sig" = 0 ] && exit 0; '
    'kill -s "$sig" -- -"$sid" 2>/dev/null; kill -s "$sig" $pids 2>/dev/null; exit 0'
)

# Stops session "$1": SIGTERM, up to "$2" polls 50 ms apart, then SIGKILL and up to 5 s more;
# prints how many processes survived (0 on success).
STOP_SCRIPT = (
    'sid="$1"; polls="$2"; ' + _ALIVE
    + 'wait_gone() { i=0; while [ "$i" -lt "$1" ]; do pids=$(alive); '
    '[ -z "$pids" ] && { echo 0; exit 0; }; sleep 0.05; i=$((i+1)); done; }; '
    'pids=$(alive); [ -z "$pids" ] && { echo 0; exit 0; }; '
    'kill -s TERM -- -"$sid" 2>/dev/null; kill -s TERM $pids 2>/dev/null; '
    'wait_gone "$polls"; '
    'pids=$(alive); kill -s KILL -- -"$sid" 2>/dev/null; kill -s KILL $pids 2>/dev/null; '
    'wait_gone 100; n=0; for p in $(alive); do n=$((n+1)); done; echo "$n"'
)

_OUTPUT_LIMIT = 1 << 20


@dataclass(frozen=True)
class CommandResult:
    """A finished command: its argv, exit status and (possibly truncated) output."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str


class Transport(abc.ABC):
    """Runs commands and manages services on one node. Constructing one does no I/O.

    Subclasses implement :meth:`run` (plus :meth:`connect`/:meth:`close` and file access);
    starting, probing and stopping services are built on it, identically for every transport.
    """

    def __init__(self, node: NodeSpec, *, command_timeout_s: float = 60.0) -> None:
        self.node = node
        self.command_timeout_s = command_timeout_s

    def connect(self) -> None:
        """Open the connection (a no-op for the local transport)."""

    def close(self) -> None:
        """Close the connection; safe to call twice."""

    def __enter__(self) -> "Transport":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @abc.abstractmethod
    def run(self, argv: Sequence[str], *, timeout_s: float | None = None,
            check: bool = True) -> CommandResult:
        """Run ``argv`` to completion; raise :class:`CommandFailed` on a non-zero exit if
        ``check``, :class:`CommandTimeout` past ``timeout_s``."""

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes:
        """The content of a file on the node."""

    @abc.abstractmethod
    def write_file(self, path: str, data: bytes) -> None:
        """Write a file on the node (creating its parent directory)."""

    def node_path(self, path: str) -> str:
        """``path`` as the node resolves it: a leading ``~/`` is the login user's home."""
        return path

    @abc.abstractmethod
    def write_private_file(self, path: str, data: bytes) -> None:
        """Create ``path`` (which must not exist) readable by the login user only (0600)."""

    # ----------------------------------------------------------------- services, by session
    def start(self, argv: Sequence[str], *, work_dir: str, log_path: str,
              env: Mapping[str, str] | None = None) -> int:
        """Start ``argv`` in a new session on the node; return the session id (= its pgid).

        ``work_dir`` must be the login user's own directory, writable by no one else (it is
        created 0700 when missing); the service runs in a fresh private directory inside it.
        """
        work_dir, log_path = self.node_path(work_dir), self.node_path(log_path)
        if not argv:
            raise ServiceStartFailed(f"{self.node.label}: empty start command")
        prepared = self.run(["sh", "-c", PREPARE_SCRIPT, "servetune-prepare", work_dir],
                            check=False)
        run_dir = prepared.stdout.strip().splitlines()[-1] if prepared.stdout.strip() else ""
        if prepared.exit_status != 0 or not run_dir:
            raise ServiceStartFailed(f"{self.node.label}: {prepared.stderr.strip() or 'no work dir'}"
                                     f" (exit {prepared.exit_status})")
        env_file = ""
        if env:
            # names are checked (none can read as an option or a shell word); values travel in
            # a 0600 file inside the private dir, never on a command line (/proc/PID/cmdline)
            lines = [f"{check_env_name(k, self.node.label)}={shlex.quote(str(v))}\n"
                     for k, v in env.items()]
            env_file = f"{run_dir}/.env"
            self.write_private_file(env_file, "".join(lines).encode())
        result = self.run(["sh", "-c", LAUNCH_SCRIPT, "servetune-launch", run_dir, log_path,
                           env_file, *argv], check=False)
        if result.exit_status != 0:
            raise ServiceStartFailed(f"{self.node.label}: could not start {argv[0]!r} "
                                     f"(exit {result.exit_status}): {result.stderr.strip()}")
        try:
            return int(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise ServiceStartFailed(f"{self.node.label}: the launcher printed no session id "
                                     f"(stdout {result.stdout!r})") from None

    def session_processes(self, sid: int) -> int:
        """How many live processes session ``sid`` still has on the node."""
        return self._session(sid, "0")

    def signal_session(self, sid: int, signal: str = "TERM") -> int:
        """Send ``signal`` to every live process of session ``sid``; return how many there were."""
        return self._session(sid, signal)

    def stop_session(self, sid: int, *, grace_s: float = 10.0) -> int:
        """SIGTERM the session, SIGKILL what is left after ``grace_s``; return survivors (0).

        One round trip: the polling runs on the node (:data:`STOP_SCRIPT`).
        """
        if not isinstance(sid, int) or sid <= 1:
            raise ValueError(f"refusing to signal session {sid!r}")
        polls = max(1, int(grace_s / 0.05))
        result = self.run(["sh", "-c", STOP_SCRIPT, "servetune-stop", str(sid), str(polls)],
                          timeout_s=grace_s + 30)
        return int(result.stdout.strip() or 0)

    def tail(self, path: str, lines: int = 20) -> str:
        """The last lines of a text file on the node ('' when it cannot be read)."""
        try:
            result = self.run(["tail", "-n", str(lines), self.node_path(path)], check=False,
                              timeout_s=15)
        except HardwareError:
            return ""
        return result.stdout if result.exit_status == 0 else ""

    def _session(self, sid: int, signal: str) -> int:
        if not isinstance(sid, int) or sid <= 1:
            raise ValueError(f"refusing to signal session {sid!r}")
        result = self.run(["sh", "-c", SESSION_SCRIPT, "servetune-session", str(sid), signal],
                          timeout_s=30)
        return int(result.stdout.strip() or 0)


class LocalTransport(Transport):
    """Runs commands on this machine as subprocesses (argv lists, no shell of ours)."""

    def node_path(self, path: str) -> str:
        return os.path.expanduser(path) if path.startswith("~/") else path

    def run(self, argv: Sequence[str], *, timeout_s: float | None = None,
            check: bool = True) -> CommandResult:
        argv = tuple(str(a) for a in argv)
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"local: {argv[0]} did not finish within {timeout:g}s") from None
        except OSError as exc:
            raise CommandFailed(f"local: cannot run {argv[0]!r} ({exc.strerror})") from None
        result = CommandResult(argv, proc.returncode,
                               proc.stdout[-_OUTPUT_LIMIT:].decode("utf-8", "replace"),
                               proc.stderr[-_OUTPUT_LIMIT:].decode("utf-8", "replace"))
        if check and proc.returncode != 0:
            raise CommandFailed(f"local: {argv[0]} exited with {proc.returncode}: "
                                f"{result.stderr.strip()[-500:]}")
        return result

    def read_file(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise CommandFailed(f"local: cannot read {path} ({exc.strerror})") from None

    def write_private_file(self, path: str, data: bytes) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise CommandFailed(f"local: cannot write {path} ({exc.strerror})") from None

    def write_file(self, path: str, data: bytes) -> None:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            raise CommandFailed(f"local: cannot write {path} ({exc.strerror})") from None

