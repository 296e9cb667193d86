"""Global options (``--workspace``, ``-v/-vv``) are accepted before and after the sub-command,
with the same meaning: real ``servetune`` subprocesses on real workspaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers_data import servetune_command

FIXTURE = Path(__file__).parent / "fixtures" / "data" / "vllm_serve_summary.json"
INGEST_SETS = ("--set", "engine=vllm", "--set", "model=m", "--set", "hardware=H100")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*servetune_command(), *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_workspace_and_verbose_on_either_side_of_the_sub_command(tmp_path, before):
    ws = tmp_path / "ws"
    options = ("--workspace", str(ws), "-v")
    command = ("ingest", str(FIXTURE), *INGEST_SETS, "--json")
    out = _run(*options, *command) if before else _run(*command, *options)
    assert out.returncode == 0, out.stderr
    assert "INFO servetune.data._ingest: reading" in out.stderr  # -v: info on stderr
    assert (ws / "traces").is_dir()  # written into --workspace, not the cwd
    assert json.loads(out.stdout)


def test_without_verbose_no_info_lines(tmp_path):
    out = _run("ingest", str(FIXTURE), *INGEST_SETS, "--workspace", str(tmp_path / "ws"))
    assert out.returncode == 0, out.stderr
    assert "INFO" not in out.stderr


@pytest.mark.parametrize("argv, level", [
    (["-v", "data", "ls", "-v"], "DEBUG"),  # -v before and -v after: -vv
    (["data", "ls", "-vv"], "DEBUG"),
    (["data", "ls", "-v"], "INFO"),
    (["data", "ls"], "WARNING"),
])
def test_verbose_counts_add_up_wherever_given(tmp_path, argv, level):
    script = ("import logging, sys; from servetune.cli._main import main; "
              "code = main(sys.argv[1:]); "
              "print(logging.getLevelName(logging.getLogger().getEffectiveLevel()))")
    out = subprocess.run([sys.executable, "-c", script, "--workspace", str(tmp_path), *argv],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == level


def test_workspace_after_the_sub_command_wins_in_nested_groups(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    out = _run("--workspace", str(first), "data", "ls", "--workspace", str(second))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"workspace: {second}"
    out = _run("data", "--workspace", str(first), "ls")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"workspace: {first}"


def test_validate_accepts_vv_after_the_sub_command():
    out = _run("validate", "-vv", "--help")
    assert out.returncode == 0, out.stderr
    assert "--workspace" in out.stdout and "-v, --verbose" in out.stdout
    out = _run("validate", "-vv", "--cluster", "local")  # parses, then refuses the input
    assert "No such option" not in out.stderr
    assert "give either --candidates STUDY or --set" in out.stderr
