"""Real signals: SIGINT, SIGTERM and SIGHUP sent to a real ``servetune validate`` process stop
every service it started, locally and over loopback sshd (no survivor in /proc)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from _helpers_hardware import free_port, sshd_kit_or_skip

HELPER = str(Path(__file__).parent / "_helpers_hardware.py")


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    kit = sshd_kit_or_skip(tmp_path_factory.mktemp("sshd"))
    yield kit
    kit.close()


def _with_marker(marker: str) -> list[int]:
    """Pids of live processes whose command line holds ``marker``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                stat = (cmdline.parent / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(cmdline.parent.name))
        except (OSError, IndexError):
            continue
    return found


def _cluster(tmp_path: Path, marker: str, record: Path, node: str) -> Path:
    command = json.dumps([sys.executable, HELPER, "--token-ms", "400", "--record", str(record),
                          f"--marker={marker}"])
    path = tmp_path / "cluster.toml"
    path.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 20\n'
                    f'candidate_timeout_s = 300\nstop_grace_s = 3\n{node}'
                    f'[[service_groups]]\nservice_port = {free_port()}\n'
                    f'start_command = {command}\n'
                    f'nodes = [{{ host = "HOST", work_dir = "{tmp_path / "w"}" }}]\n')
    return path


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "ssh"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_every_started_service(tmp_path, kit, where, signum):
    marker = uuid.uuid4().hex
    record = tmp_path / "record.jsonl"
    cluster = _cluster(tmp_path, marker, record, "")
    text = cluster.read_text()
    if where == "local":
        text = text.replace('host = "HOST"', 'host = "local"')
    else:
        host = kit.start_host(f"sig{signum}")
        text = text.replace(
            'host = "HOST"', f'host = "127.0.0.1", port = {host.port}, user = "root", '
                             f'key = "{kit.user_key}"') + f'[ssh]\nknown_hosts = "{kit.known_hosts}"\n'

    cluster.write_text(text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "servetune.cli._main", "--workspace", str(tmp_path / "ws"),
         "validate", "--cluster", str(cluster), "--set", "batch=1", "--warmup", "0",
         "--workload", "poisson:rate=2,n=20,input=const:8,output=const:200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (record.exists() and _with_marker(marker)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        assert _with_marker(marker), "the service never started"
        time.sleep(1.0)  # the benchmark is running
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (130, 143), err
    for _ in range(50):
        if not _with_marker(marker):
            break
        time.sleep(0.1)
    assert _with_marker(marker) == [], f"survivors after {signal.Signals(signum).name}: {err}"
    assert "Traceback" not in err
