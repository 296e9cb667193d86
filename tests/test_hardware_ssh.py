"""Transports against a real sshd on loopback (and the local transport): quoting, output,
timeouts, host-key verification, authentication, SFTP, and stopping exactly one session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _helpers_hardware import session_alive, sshd_kit_or_skip  # noqa: E402

from servetune.tuner.hardware import (  # noqa: E402
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    HostKeyRejected,
    HostUnreachable,
    LocalTransport,
    NodeSpec,
    SSHOptions,
    SSHTransport,
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = sshd_kit_or_skip(tmp_path_factory.mktemp("ssh"))
    kit.start_host("h0")
    yield kit
    kit.close()


def ssh(kit, host=None, *, key=None, known_hosts=None, **options):
    host = host or kit.hosts[0]
    return SSHTransport(NodeSpec("127.0.0.1", port=host.port, user="root",
                                 key=key or kit.user_key),
                        SSHOptions(known_hosts=known_hosts or kit.known_hosts, allow_agent=False,
                                   connect_timeout_s=5, **options))


@pytest.fixture(params=["ssh", "local"])
def transport(request, kit):
    t = ssh(kit) if request.param == "ssh" else LocalTransport(NodeSpec("local"))
    with t:
        yield t


def test_arguments_are_never_interpreted_by_a_shell(transport, tmp_path):
    pwned = tmp_path / "pwned"
    args = [f"$(touch {pwned})", f"; touch {pwned}", "`id`", "a b", "'\"", "*"]
    result = transport.run(["printf", "%s\\n", *args])
    assert result.stdout.splitlines() == args
    assert not pwned.exists()


def test_large_stdout_and_stderr_do_not_deadlock(transport):
    script = "i=0; while [ $i -lt 30000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    result = transport.run(["sh", "-c", script], timeout_s=60)
    assert result.stdout.splitlines()[-1] == "out29999"
    assert result.stderr.splitlines()[-1] == "err29999"


def test_exit_status_and_timeout(transport):
    with pytest.raises(CommandFailed, match="exited with 3"):
        transport.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert transport.run(["false"], check=False).exit_status == 1
    with pytest.raises(CommandTimeout, match="within 0.5s"):
        transport.run(["sleep", "5"], timeout_s=0.5)


def test_start_and_stop_exactly_one_session(transport, tmp_path):
    work = tmp_path / "work dir"
    log = work / "logs" / "svc.log"
    sid = transport.start(["sh", "-c", "sleep 300 & sleep 300 & echo started; wait"],
                          work_dir=str(work), log_path=str(log), env={"X": "$(id)"})
    neighbour = transport.start(["sleep", "300"], work_dir=str(work), log_path=str(log))
    try:
        assert transport.session_processes(sid) == 3
        assert len(session_alive(sid)) == 3
        assert transport.stop_session(sid, grace_s=5) == 0
        assert session_alive(sid) == []
        assert transport.session_processes(neighbour) == 1  # the other session is untouched
    finally:
        transport.stop_session(neighbour, grace_s=5)
    assert session_alive(neighbour) == []
    assert "started" in log.read_text()


def test_stop_escalates_to_sigkill(transport, tmp_path):
    sid = transport.start(["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
                          work_dir=str(tmp_path), log_path=str(tmp_path / "l.log"))
    assert transport.stop_session(sid, grace_s=0.5) == 0
    assert session_alive(sid) == []


def test_files_round_trip(transport, tmp_path):
    path = str(tmp_path / "deep" / "dir" / "f.json")
    transport.write_file(path, b'{"a": 1}')
    assert transport.read_file(path) == b'{"a": 1}'
    with pytest.raises(CommandFailed):
        transport.read_file(str(tmp_path / "missing"))


def test_unknown_host_is_refused_until_explicitly_trusted(kit, tmp_path):
    stranger = kit.start_host("stranger", register=False)
    known = tmp_path / "known_hosts"
    known.write_text(Path(kit.known_hosts).read_text())
    with pytest.raises(HostKeyRejected, match="unknown host key .* refusing to connect"):
        ssh(kit, stranger, known_hosts=str(known)).connect()
    assert f"[127.0.0.1]:{stranger.port}" not in known.read_text()
    with ssh(kit, stranger, known_hosts=str(known), trust_new_hosts=True) as t:
        assert t.run(["echo", "hi"]).stdout == "hi\n"
    assert stranger.host_key_line.split()[2] in known.read_text()
    with ssh(kit, stranger, known_hosts=str(known)) as t:  # recorded: now known
        assert t.run(["true"]).exit_status == 0


def test_changed_host_key_is_refused_even_when_trusting_new_hosts(kit, tmp_path):
    host = kit.hosts[0]
    other_key = Path(kit.root / "stranger" / "host_ed25519.pub")
    if not other_key.exists():
        kit.start_host("stranger", register=False)
    key_type, key_b64 = other_key.read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{host.port} {key_type} {key_b64}\n")
    with pytest.raises(HostKeyRejected, match="does not match"):
        ssh(kit, known_hosts=str(known), trust_new_hosts=True).connect()


def test_bad_key_and_closed_port(kit):
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        ssh(kit, key=kit.wrong_key).connect()
    dead = NodeSpec("127.0.0.1", port=1, user="root", key=kit.user_key)
    with pytest.raises(HostUnreachable, match="cannot connect"):
        SSHTransport(dead, SSHOptions(known_hosts=kit.known_hosts, connect_timeout_s=2)).connect()
    assert not AuthenticationFailed.transient and not HostKeyRejected.transient
    assert HostUnreachable.transient


def test_environment_values_never_reach_a_command_line(transport, tmp_path):
    """A token in the service's environment is in its environ, never in any process's argv,
    and the 0600 file it travelled in is gone once the service has started."""
    import os
    import time

    secret = f"hf_{os.getpid()}_not_on_argv"
    work = tmp_path / "work"
    sid = transport.start(["sleep", "30"], work_dir=str(work), log_path=str(work / "l.log"),
                          env={"HF_TOKEN": secret, "PLAIN": "a b $(id)"})
    try:
        for _ in range(100):
            if session_alive(sid):
                break
            time.sleep(0.05)
        (pid,) = session_alive(sid)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"HF_TOKEN={secret}".encode() in environ
        assert b"PLAIN=a b $(id)" in environ
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert secret.encode() not in cmdline.read_bytes(), cmdline
            except OSError:
                continue
        assert not list(work.glob("run.*/.env"))
    finally:
        transport.stop_session(sid, grace_s=5)
