"""Loopback ``sshd`` test hosts: real OpenSSH daemons, generated keys, a known_hosts file.

Test and benchmark tool, not product code. Each :class:`SshdHost` is a real OpenSSH daemon on
``127.0.0.1:<free port>`` with its own generated host key, accepting one generated user key;
:class:`SshKit` holds the keys and a known_hosts file listing the hosts it registered. Needs root
(sshd's privilege separation) and ``/usr/sbin/sshd``: :func:`sshd_unavailable_reason` says why
not where they cannot run.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from servetune.testing import SshKit, sshd_unavailable_reason
    >>> if sshd_unavailable_reason() is None:  # doctest: +SKIP
    ...     kit = SshKit.create(Path(tempfile.mkdtemp()) / "kit")
    ...     host = kit.start_host("h0")  # ssh -i kit.user_key -p host.port root@127.0.0.1
    ...     kit.close()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_unavailable_reason() -> str | None:
    """Why real sshd test hosts cannot run here, or ``None`` when they can."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd test hosts need root (privilege separation, logins as the current user)"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def keygen(path: Path) -> Path:
    """Generate an ed25519 key pair at ``path`` (and ``path.pub``)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "servetune-test",
                    "-f", str(path)], check=True, capture_output=True)
    return path


@dataclass
class SshdHost:
    """One running sshd on loopback."""

    name: str
    port: int
    directory: Path
    host_key_line: str
    process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the daemon in its own session (its log is ``sshd.log`` in its directory)."""
        with open(self.directory / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config"), "-p",
                 str(self.port)], stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        wait_port(self.port)

    def kill(self) -> None:
        """Stop the daemon (its own process group, by id) - the host 'goes down'."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@dataclass
class SshKit:
    """A user key, an authorized_keys file, a known_hosts file and the sshd hosts using them."""

    root: Path
    hosts: list[SshdHost] = field(default_factory=list)

    @classmethod
    def create(cls, root: Path) -> "SshKit":
        root.mkdir(parents=True, exist_ok=True)
        keygen(root / "id_user")
        (root / "authorized_keys").write_text((root / "id_user.pub").read_text())
        (root / "known_hosts").write_text("")
        keygen(root / "id_other")  # a key the hosts do not accept
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return cls(root)

    @property
    def user_key(self) -> str:
        return str(self.root / "id_user")

    @property
    def wrong_key(self) -> str:
        return str(self.root / "id_other")

    @property
    def known_hosts(self) -> str:
        return str(self.root / "known_hosts")

    def start_host(self, name: str, *, register: bool = True) -> SshdHost:
        """Start a new sshd; ``register`` adds its host key to the kit's known_hosts."""
        directory = self.root / name
        directory.mkdir()
        keygen(directory / "host_ed25519")
        port = free_port()
        (directory / "sshd_config").write_text(
            f"ListenAddress 127.0.0.1\nHostKey {directory / 'host_ed25519'}\n"
            f"PidFile {directory / 'sshd.pid'}\nAuthorizedKeysFile {self.root / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxSessions 64\n"
            "MaxStartups 64:30:128\nPrintMotd no\n")
        key_type, key_b64 = (directory / "host_ed25519.pub").read_text().split()[:2]
        line = f"[127.0.0.1]:{port} {key_type} {key_b64}\n"
        host = SshdHost(name, port, directory, line)
        if register:
            with open(self.known_hosts, "a") as handle:
                handle.write(line)
        host.start()
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Stop every host this kit started."""
        for host in self.hosts:
            host.kill()


def session_alive(sid: int) -> list[int]:
    """Live (non-zombie) pids of session ``sid`` on this machine, read from /proc."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            alive.append(int(entry.name))
    return alive
