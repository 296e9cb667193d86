"""The SSH transport (paramiko): verified host keys, key/agent auth, timeouts, keepalive, SFTP.

Host keys are checked against a known_hosts file. An unknown host is refused with a message
that says how to trust it; :attr:`SSHOptions.trust_new_hosts` accepts it instead and records
its key in that file (it never silently accepts a *changed* key). Authentication and host-key
failures raise non-transient errors, so the dispatcher never retries them.

Every command is an argv list joined with :func:`shlex.quote`; stdout and stderr are drained
together so a chatty command cannot deadlock on a full pipe.

Example:
    >>> t = SSHTransport(NodeSpec("n0", user="svc"), SSHOptions(known_hosts="/dev/null"))
    >>> t.node.label                # constructing it does no I/O
    'svc@n0:22'
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import select
import shlex
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import paramiko

from servetune.tuner.hardware._cluster import NodeSpec, SSHOptions
from servetune.tuner.hardware._errors import (
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
)
from servetune.tuner.hardware._transport import CommandResult, Transport

__all__ = ["SSHTransport", "known_hosts_name"]

log = logging.getLogger(__name__)

_OUTPUT_LIMIT = 1 << 20
_READ = 1 << 16


def known_hosts_name(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def _fingerprint(key: paramiko.PKey) -> str:
    return key.fingerprint if hasattr(key, "fingerprint") else key.get_fingerprint().hex()


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):
    """Refuse a host that known_hosts does not list, saying how to trust it."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        raise HostKeyRejected(
            f"{hostname}: unknown host key ({key.get_name()} {_fingerprint(key)}) - not in "
            f"{self.known_hosts}; refusing to connect. Check the fingerprint, then add it with "
            f"ssh-keyscan, or pass --trust-new-hosts to accept and record it")


class _RecordNewHost(paramiko.MissingHostKeyPolicy):
    """Accept a host that known_hosts does not list and append its key there (explicit opt-in)."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with open(self.known_hosts, "a") as handle:  # flock: one appender at a time
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write(line)
        log.warning("%s: trusted a new host key (%s %s) and recorded it in %s", hostname,
                    key.get_name(), _fingerprint(key), self.known_hosts)


class SSHTransport(Transport):
    """Commands and files on a node over one SSH connection (paramiko)."""

    def __init__(self, node: NodeSpec, options: SSHOptions) -> None:
        super().__init__(node, command_timeout_s=options.command_timeout_s)
        self.options = options
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    # ------------------------------------------------------------------------ connection
    def connect(self) -> None:
        if self._client is not None:
            return
        node, opts = self.node, self.options
        known_hosts = opts.known_hosts_path
        client = paramiko.SSHClient()
        try:
            if known_hosts.exists():
                client.load_host_keys(str(known_hosts))
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyRejected(f"{node.label}: cannot read known_hosts {known_hosts} "
                                  f"({exc})") from None
        policy = _RecordNewHost(known_hosts) if opts.trust_new_hosts else \
            _RefuseUnknownHost(known_hosts)
        client.set_missing_host_key_policy(policy)
        timeout = opts.connect_timeout_s
        try:
            client.connect(hostname=node.host, port=node.port,
                           username=node.user or getpass.getuser(), key_filename=node.key,
                           allow_agent=opts.allow_agent, look_for_keys=node.key is None,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout)
        except HostKeyRejected:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = known_hosts_name(node.host, node.port)
            raise HostKeyRejected(
                f"{node.label}: the host key ({exc.key.get_name()} {_fingerprint(exc.key)}) does "
                f"not match the one in {known_hosts}; refusing to connect (possible "
                f"man-in-the-middle). If the host was re-installed, verify its new key and "
                f"remove the old entry with: ssh-keygen -R {shlex.quote(name)}") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {node.key}" if node.key else "the SSH agent and ~/.ssh keys"
            raise AuthenticationFailed(f"{node.label}: authentication failed with {how} "
                                       f"({exc}); check the user and key") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise HostUnreachable(f"{node.label}: cannot connect ({exc or type(exc).__name__})"
                                  ) from None
        transport = client.get_transport()
        if transport is not None and opts.keepalive_s > 0:
            transport.set_keepalive(int(max(1, opts.keepalive_s)))
        self._client = client

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _transport(self) -> paramiko.Transport:
        self.connect()
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            self.close()
            raise HostUnreachable(f"{self.node.label}: the SSH connection was lost")
        return transport

    # ------------------------------------------------------------------------ commands
    def node_path(self, path: str) -> str:
        # remote commands and SFTP start in the login user's home: "~/x" is the relative "x"
        return path[2:] if path.startswith("~/") else path

    def run(self, argv: Sequence[str], *, timeout_s: float | None = None,
            check: bool = True) -> CommandResult:
        argv = tuple(str(a) for a in argv)
        command = " ".join(shlex.quote(a) for a in argv)
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=self.options.connect_timeout_s)
            channel.exec_command(command)
            channel.shutdown_write()
            status, out, err = self._drain(channel, timeout, argv[0])
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.close()
            raise HostUnreachable(f"{self.node.label}: connection lost while running "
                                  f"{argv[0]} ({exc or type(exc).__name__})") from None
        result = CommandResult(argv, status, out, err)
        if check and status != 0:
            raise CommandFailed(f"{self.node.label}: {argv[0]} exited with {status}: "
                                f"{err.strip()[-500:]}")
        return result

    def _drain(self, channel: paramiko.Channel, timeout: float, name: str
               ) -> tuple[int, str, str]:
        """Read stdout and stderr together until EOF and exit status, or time out."""
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()
        try:
            while True:
                progressed = False
                while channel.recv_ready():
                    out += channel.recv(_READ)
                    progressed = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(_READ)
                    progressed = True
                del out[:-_OUTPUT_LIMIT], err[:-_OUTPUT_LIMIT]
                if (channel.exit_status_ready() and channel.eof_received
                        and not channel.recv_ready() and not channel.recv_stderr_ready()):
                    break
                if channel.closed and not progressed:
                    if not channel.exit_status_ready():
                        raise EOFError("channel closed without an exit status")
                    break
                if not channel.get_transport().is_active():
                    raise EOFError("transport closed")
                if time.monotonic() > deadline:
                    raise CommandTimeout(f"{self.node.label}: {name} did not finish within "
                                         f"{timeout:g}s")
                if not progressed:
                    select.select([channel], [], [], 0.05)
            status = channel.recv_exit_status()
        finally:
            channel.close()
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    # ------------------------------------------------------------------------ files (SFTP)
    def _sftp_client(self) -> paramiko.SFTPClient:
        transport = self._transport()
        if self._sftp is None:
            try:
                self._sftp = paramiko.SFTPClient.from_transport(transport)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise HostUnreachable(f"{self.node.label}: cannot open SFTP ({exc})") from None
        return self._sftp

    def read_file(self, path: str) -> bytes:
        sftp = self._sftp_client()
        try:
            with sftp.open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise CommandFailed(f"{self.node.label}: cannot read {path} via SFTP "
                                f"({exc.strerror or exc})") from None

    def write_private_file(self, path: str, data: bytes) -> None:
        sftp = self._sftp_client()
        try:
            # create it empty with mode 0600, then write: the data never sits in a wider file
            with sftp.open(path, "wx") as handle:
                handle.chmod(0o600)
                handle.write(data)
        except OSError as exc:
            raise CommandFailed(f"{self.node.label}: cannot write {path} via SFTP "
                                f"({exc.strerror or exc})") from None

    def write_file(self, path: str, data: bytes) -> None:
        self.run(["mkdir", "-p", str(PurePosixPath(path).parent)])
        sftp = self._sftp_client()
        try:
            with sftp.open(path, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise CommandFailed(f"{self.node.label}: cannot write {path} via SFTP "
                                f"({exc.strerror or exc})") from None
