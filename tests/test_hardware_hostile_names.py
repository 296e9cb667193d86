"""Hostile names: an ``env.*`` knob cannot run a command through GNU ``env``, and a candidate
name cannot leave the work dir (issue: security and robustness)."""

from __future__ import annotations

import pytest

from servetune import ConfigError
from servetune.cli import main
from servetune.data.engines import get_engine
from servetune.tuner.hardware import NodeSpec, ServiceGroupSpec, launcher_for
from servetune.tuner.hardware._service import path_segment
from servetune.tuner.hardware._transport import LocalTransport

HOSTILE = ("-S/bin/touch PWNED #", "A B", "1ABC", "A=B", "-u", "")


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_env_knob_names_are_refused_by_every_launcher(name):
    group = ServiceGroupSpec("g", (NodeSpec("local"),), start_script="/bin/true")
    for engine in ("vllm", "sglang", "transformers-cb", "script"):
        with pytest.raises(ConfigError, match="not an environment variable name"):
            launcher_for(engine).render({f"env.{name}": "1"}, group, model="m")
    with pytest.raises(ConfigError, match="not an environment variable name"):
        get_engine("vllm").split({f"env.{name}": "1"})


def test_the_transport_refuses_a_hostile_name_and_runs_nothing(tmp_path):
    """The last line of defence: even a caller that skips the launcher cannot pass `-S`."""
    marker = tmp_path / "PWNED"
    transport = LocalTransport(NodeSpec("local", work_dir=str(tmp_path / "w")))
    with pytest.raises(ConfigError):
        transport.start(["/bin/true"], work_dir=str(tmp_path / "w"),
                        log_path=str(tmp_path / "w" / "log"),
                        env={f"-S/bin/touch {marker} #": "1"})
    assert not marker.exists()


def test_a_valid_env_name_still_reaches_the_process(tmp_path):
    out = tmp_path / "out"
    transport = LocalTransport(NodeSpec("local", work_dir=str(tmp_path / "w")))
    sid = transport.start(["sh", "-c", f'printf %s "$SERVETUNE_T" > {out}'],
                          work_dir=str(tmp_path / "w"), log_path=str(tmp_path / "w" / "log"),
                          env={"SERVETUNE_T": "-S not an option"})
    transport.stop_session(sid, grace_s=5)
    for _ in range(100):
        if out.exists() and out.read_text():
            break
        import time

        time.sleep(0.05)
    assert out.read_text() == "-S not an option"


def test_validate_refuses_a_hostile_knob_before_any_connection(tmp_path, capsys):
    # 192.0.2.1 (TEST-NET-1) is never contacted: the refusal comes first
    code = main(["--workspace", str(tmp_path / "ws"), "validate", "--cluster", "192.0.2.1",
                 "--engine", "vllm", "--model", "m", "--set", "env.-S/bin/touch PWNED #=1",
                 "--workload", "poisson:rate=20,n=4,input=const:8,output=const:4"])
    err = capsys.readouterr().err
    assert code == 2 and "not an environment variable name" in err


@pytest.mark.parametrize("name, expected", [("../../etc/cron.d/x", "_._.._etc_cron.d_x"),
                                            ("rank1-ab12", "rank1-ab12"), ("a b/c", "a_b_c"),
                                            (".hidden", "_hidden"), ("", "_")])
def test_candidate_names_become_one_path_segment(name, expected):
    assert path_segment(name) == expected
    assert "/" not in path_segment(name) and not path_segment(name).startswith(".")


def _start(transport, work, tmp_path):
    return transport.start(["sleep", "30"], work_dir=str(work),
                           log_path=str(work / "logs" / "x.log"))


def test_a_work_dir_writable_by_others_is_refused(tmp_path):
    from servetune.tuner.hardware import HardwareError

    work = tmp_path / "shared"
    work.mkdir()
    work.chmod(0o777)
    transport = LocalTransport(NodeSpec("local", work_dir=str(work)))
    with pytest.raises(HardwareError, match="writable by other users"):
        _start(transport, work, tmp_path)


def test_a_work_dir_owned_by_another_uid_is_refused(tmp_path):
    import os

    from servetune.tuner.hardware import HardwareError

    if os.geteuid() != 0:
        pytest.skip("making a directory owned by another uid needs root (CI runs as root)")
    work = tmp_path / "theirs"
    work.mkdir(mode=0o700)
    os.chown(work, 65534, 65534)  # nobody
    transport = LocalTransport(NodeSpec("local", work_dir=str(work)))
    with pytest.raises(HardwareError, match="not a directory owned by"):
        _start(transport, work, tmp_path)


def test_a_symlinked_work_dir_is_refused(tmp_path):
    from servetune.tuner.hardware import HardwareError

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    transport = LocalTransport(NodeSpec("local", work_dir=str(link)))
    with pytest.raises(HardwareError, match="not a directory owned by"):
        _start(transport, link, tmp_path)


def test_each_service_runs_in_a_fresh_private_dir_and_nothing_planted_is_imported(tmp_path):
    """A `sglang/launch_server.py` planted in the work dir is not what `python3 -m` runs."""
    import sys
    import time

    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "planted").mkdir()
    (work / "planted" / "__init__.py").write_text("")
    (work / "planted" / "__main__.py").write_text(
        f"open({str(tmp_path / 'PWNED')!r}, 'w').write('x')\n")
    out = tmp_path / "cwd"
    transport = LocalTransport(NodeSpec("local", work_dir=str(work)))
    sid = transport.start(["sh", "-c", f'pwd > {out}; stat -c %a . >> {out}; '
                                       f'{sys.executable} -m planted; true'],
                          work_dir=str(work), log_path=str(work / "logs" / "p.log"))
    for _ in range(200):
        if out.exists() and len(out.read_text().split()) == 2:
            break
        time.sleep(0.05)
    transport.stop_session(sid, grace_s=5)
    cwd, mode = out.read_text().split()
    assert cwd.startswith(str(work) + "/run.") and mode == "700"
    assert not (tmp_path / "PWNED").exists()


def test_secret_env_values_are_redacted_in_what_is_stored_and_printed(tmp_path, capsys):
    """A token given as an env.* knob reaches the service but not the store or --json."""
    import json
    import sys
    from pathlib import Path

    from servetune.data import TraceStore

    from _helpers_hardware import free_port

    helper = Path(__file__).parent / "_helpers_hardware.py"  # serves a fake OpenAI API

    cluster = tmp_path / "cluster.toml"
    command = json.dumps([sys.executable, str(helper)])
    cluster.write_text(f'engine = "script"\nmodel = "m"\nhealth_timeout_s = 5\n'
                       f'candidate_timeout_s = 30\nstop_grace_s = 3\n[[service_groups]]\n'
                       f'service_port = {free_port()}\nstart_command = {command}\n'
                       f'nodes = [{{ host = "local", work_dir = "{tmp_path / "w"}" }}]\n')
    code = main(["--workspace", str(tmp_path / "ws"), "validate", "--cluster", str(cluster),
                 "--workload", "poisson:rate=20,n=4,input=const:8,output=const:4",
                 "--warmup", "0", "--set", "env.HF_TOKEN=hf_sekrit", "--set", "env.MODE=fast",
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "hf_sekrit" not in out and '"env.MODE": "fast"' in out
    runs = TraceStore(tmp_path / "ws" / "traces").query("runs")
    assert "hf_sekrit" not in runs["config"].iloc[0]
    assert json.loads(runs["config"].iloc[0])["env.HF_TOKEN"] == "***"
