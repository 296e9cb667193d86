"""Every file of the generated hostile-input corpus is refused cleanly through the CLI.

For each case (``tests/fuzz/make_corpus.py``): ``servetune.cli.main`` returns exit code 2 with a
``servetune: error:`` message, nothing escapes as an exception (no traceback), and every file
under the workspace's ``traces/`` is byte-for-byte what it was before.
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from servetune.cli import main
from fuzz.make_corpus import make_corpus, write_cluster

FIXTURES = Path(__file__).parent / "fixtures" / "data"
_TIME_LIMIT_S = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cases = make_corpus(root / "corpus")
    workspace = root / "ws"
    code = main(["--workspace", str(workspace), "ingest", "--set", "engine=vllm", "--set",
                 "model=m", str(FIXTURES / "steps_profile.csv")])
    assert code == 0
    return {case.name: case for case in cases}, workspace, write_cluster(root)


def _tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [case.name for case in make_corpus(tmp)]


NAMES = _names()


def test_corpus_is_large_and_covers_every_format():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        formats = {case.fmt for case in make_corpus(tmp)}
    assert len(NAMES) >= 100
    assert {"vllm-bench", "servetune-parquet", "steps-csv", "steps-jsonl", "requests-csv",
            "requests-jsonl", "workload", "workload-spec", "space", "candidates",
            "cluster"} <= formats


def _alarm(signum, frame):
    raise TimeoutError(f"no refusal within {_TIME_LIMIT_S} s")


@pytest.mark.parametrize("name", NAMES)
def test_hostile_input_is_refused(corpus, name, capsys):
    cases, workspace, cluster = corpus
    case = cases[name]
    traces = workspace / "traces"
    before = _tree_hash(traces)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(_TIME_LIMIT_S)
    try:
        code = main(["--workspace", str(workspace), *case.command(cluster)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == 2, err[-2000:]
    assert "servetune: error:" in err
    # the refusal is about this input: it names the file, or the flag that carried it
    if case.expect is not None:
        assert case.expect in err, err[-2000:]
    elif case.path is not None:
        assert case.path.name in err, err[-2000:]
    else:
        assert "--workload" in err or "--particles" in err, err[-2000:]
    assert _tree_hash(traces) == before
