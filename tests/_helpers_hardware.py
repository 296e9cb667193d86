"""Real test hosts for the hardware tests: loopback ``sshd`` daemons, keys, tiny servers.

Each :class:`SshdHost` is a real OpenSSH daemon on ``127.0.0.1:<free port>`` with its own
generated host key, accepting one generated user key; :class:`SshKit` holds the keys and a
known_hosts file listing the hosts it registered. Needs root (sshd's privilege separation) and
``/usr/sbin/sshd``; when ``SERVETUNE_REQUIRE_SSHD=1`` (CI) a missing sshd fails the tests
instead of skipping them.

Run as a script, this module is a small OpenAI-compatible streaming server used where the
behaviour under test needs a server that misbehaves on purpose (hangs, never gets healthy) or
where CPU must not be the bottleneck (the parallel-dispatch benchmark): it streams ``max_tokens``
chunks at a fixed pace and does no model computation. ``fake-vllm-bench`` as first argument
makes it a stand-in for ``vllm bench serve`` (see :func:`_fake_vllm_bench`). The clean-run tests use a real
``transformers serve`` with a tiny model instead (:func:`make_tiny_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
REQUIRE_ENV = "SERVETUNE_REQUIRE_SSHD"


def sshd_unavailable_reason() -> str | None:
    """Why real sshd test hosts cannot run here, or ``None`` when they can."""
    if not Path(SSHD).exists():
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is missing (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd test hosts need root (privilege separation, logins as the current user)"
    return None


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
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.directory / "sshd_config"), "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "sshd.log", "ab"),
            start_new_session=True)
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


# ------------------------------------------------------------------ the scripted test server
def _serve(argv: list[str]) -> None:
    import http.server

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("SERVETUNE_PORT", 0)))
    parser.add_argument("--mode", choices=["ok", "hang", "never-healthy"], default="ok")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--token-ms", type=float, default=5.0)
    parser.add_argument("--record", default=None,
                        help="append argv and env at start, then one line per request, here")
    args, unknown = parser.parse_known_args(argv)
    if args.record:
        with open(args.record, "a") as handle:
            handle.write(json.dumps({"argv": argv, "unknown": unknown,
                                     "env": {k: v for k, v in os.environ.items()
                                             if k.startswith("SERVETUNE_")}}) + "\n")
    if os.environ.get("SERVETUNE_NODE_RANK", "0") != "0":
        while True:  # a worker node of a multi-node group: stays up, serves nothing
            time.sleep(3600)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_GET(self) -> None:
            healthy = args.mode != "never-healthy"
            body = b'{"status":"ok"}' if healthy else b'{"status":"starting"}'
            self.send_response(200 if healthy else 503)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            if args.record:
                with open(args.record, "a") as handle:
                    handle.write(json.dumps({"request": self.path}) + "\n")
            chat = self.path.endswith("/chat/completions")
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("connection", "close")
            self.end_headers()
            if args.mode == "hang":
                time.sleep(3600)
            time.sleep(args.ttft_ms / 1000)
            tokens = int(request.get("max_tokens", 16))
            for i in range(tokens):
                choice = {"index": 0, "delta": {"content": " tok"}} if chat else \
                    {"index": 0, "text": " tok"}
                self.wfile.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
                self.wfile.flush()
                if i + 1 < tokens:
                    time.sleep(args.token_ms / 1000)
            usage = {"prompt_tokens": len(str(request.get("prompt", "")).split()),
                     "completion_tokens": tokens}
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode()
                             + b"\n\ndata: [DONE]\n\n")
            self.wfile.flush()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def _fake_vllm_bench(argv: list[str]) -> None:
    """Stand-in for ``vllm bench serve`` (vLLM cannot be installed on this CPU machine).

    Writes the real ``vllm bench serve --save-detailed`` result shipped as a test fixture to
    ``--result-dir/--result-filename``, with ``--metadata`` keys added at the top level as vLLM
    does, and records its argv beside it.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-dir", required=True)
    parser.add_argument("--result-filename", required=True)
    parser.add_argument("--metadata", nargs="*", default=[])
    args, _ = parser.parse_known_args(argv)
    fixture = Path(__file__).parent / "fixtures" / "data" / "vllm_serve_detailed_60.json"
    result = json.loads(fixture.read_text())
    result.update(dict(item.split("=", 1) for item in args.metadata))
    out = Path(args.result_dir) / args.result_filename
    out.write_text(json.dumps(result))
    out.with_suffix(".argv.json").write_text(json.dumps(argv))


if __name__ == "__main__":
    if sys.argv[1:2] == ["fake-vllm-bench"]:
        _fake_vllm_bench(sys.argv[2:])
    else:
        _serve(sys.argv[1:])
