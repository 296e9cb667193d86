"""Generate a corpus of malformed inputs for every format servetune reads.

Each case is one hostile or careless input plus the ``servetune`` command line that reads it
(``{path}`` stands for the generated file, ``{cluster}`` for a valid cluster file whose hosts are
never reached). Every case must end in a clean refusal: exit code 2, a message, no traceback,
and a trace store left byte-for-byte as it was. Nothing is committed but this script: the files
are written into a temporary directory at test time.

Usage::

    python tests/fuzz/make_corpus.py OUT_DIR     # writes the files, prints one line per case
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["Case", "make_corpus"]

DEEP = 200_000  # nesting depth of the "deeply nested" cases
HUGE_INT = "9" * 5000  # an integer with thousands of digits
IDENTITY = ["--set", "engine=vllm", "--set", "model=m"]
_SIM = ["simulate", "--engine", "static", "--workload"]  # no engine constants needed


@dataclass(frozen=True)
class Case:
    """One malformed input: its file (if any) and the argv that reads it."""

    name: str
    fmt: str
    argv: tuple[str, ...]
    path: Path | None = None
    expect: str | None = None  # what the refusal must name (default: the file)

    def command(self, cluster: Path) -> list[str]:
        """The argv with ``{path}`` and ``{cluster}`` filled in."""
        return [a.replace("{path}", str(self.path)).replace("{cluster}", str(cluster))
                for a in self.argv]


class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: list[Case] = []

    def add(self, name: str, fmt: str, content: str | bytes | Callable[[Path], None] | None,
            argv: list[str], suffix: str = "", expect: str | None = None) -> None:
        path = None
        if content is not None:
            path = self.root / f"{len(self.cases):03d}-{name}{suffix}"
            if callable(content):
                content(path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if any(c.name == name for c in self.cases):
            raise ValueError(f"duplicate case name {name!r}")
        self.cases.append(Case(name, fmt, tuple(argv), path, expect))


# ---------------------------------------------------------------------------------- vllm-bench
def _vllm(**changes) -> dict:
    doc = {"date": "20251103-141502", "backend": "vllm", "model_id": "org/model",
           "num_prompts": 3, "request_rate": 8.0, "duration": 2.0, "completed": 3, "failed": 0,
           "total_input_tokens": 30, "total_output_tokens": 9, "request_throughput": 1.5,
           "output_throughput": 4.5, "mean_ttft_ms": 10.0, "input_lens": [10, 10, 10],
           "output_lens": [3, 3, 3], "ttfts": [0.01, 0.01, 0.01],
           "itls": [[0.005, 0.005], [0.005, 0.005], [0.005, 0.005]],
           "latencies": [0.02, 0.02, 0.02], "start_times": [0.0, 0.1, 0.2],
           "errors": ["", "", ""]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def _vllm_cases(c: _Corpus) -> None:
    ingest = ["ingest", "--format", "vllm-bench", "{path}"]

    def add(name, text):
        c.add(f"vllm-{name}", "vllm-bench", text, ingest, ".json")

    def doc(**changes):
        return json.dumps(_vllm(**changes))

    add("deep-nested-value", doc(label="@").replace('"@"', "[" * DEEP + "]" * DEEP))
    add("deep-nested-object", doc(label="@").replace('"@"', '{"a":' * DEEP + "1" + "}" * DEEP))
    add("deep-nested-lens", doc(input_lens="@").replace('"@"', "[" * DEEP + "]" * DEEP))
    add("huge-int-completed", doc(completed="@").replace('"@"', HUGE_INT))
    add("huge-int-input-len", doc(input_lens=["@", 1, 1]).replace('"@"', HUGE_INT))
    add("huge-int-label", doc(label="@").replace('"@"', HUGE_INT))
    add("huge-float", doc(duration="@").replace('"@"', "1e999"))
    add("nan-literal", doc(duration="@").replace('"@"', "NaN"))
    add("completed-negative", doc(completed=-1))
    add("completed-over-prompts", doc(completed=7))
    add("failed-over-prompts", doc(failed=9))
    add("completed-plus-failed-over", doc(completed=3, failed=2))
    add("ttft-over-e2e", doc(ttfts=[0.5, 0.01, 0.01]))
    add("duration-string", doc(duration="2s"))
    add("duration-bool", doc(duration=True))
    add("duration-negative", doc(duration=-2.0))
    add("list-length-mismatch", doc(output_lens=[3, 3]))
    add("negative-input-len", doc(input_lens=[10, -1, 10]))
    add("float-input-len", doc(input_lens=[10, 1.5, 10]))
    add("nested-itls", doc(itls=[[[0.1]], [0.1], [0.1]]))
    add("negative-itl", doc(itls=[[-0.1], [0.1], [0.1]]))
    add("string-itl", doc(itls=[["x"], [0.1], [0.1]]))
    add("errors-not-strings", doc(errors=[1, 2, 3]))
    add("model-empty", doc(model_id=""))
    add("model-object", doc(model_id={"a": 1}))
    add("missing-duration", doc(duration=_DROP))
    add("truncated", doc()[:-40])
    add("top-level-array", "[" + doc() + "]")
    add("trailing-garbage", doc() + " }{ garbage")
    add("invalid-utf8", doc().encode()[:200] + b"\xff\xfe" + doc().encode()[200:])
    add("nul-bytes", doc().replace('"vllm"', '"vl\\u0000lm"', 1).replace("org/model", "a\x00b"))
    add("empty", "")
    add("only-whitespace", "   \n\n  ")
    add("num-prompts-negative", doc(num_prompts=-3))
    add("request-rate-word", doc(request_rate="fast"))


# ---------------------------------------------------------------------------------- vLLM logs
_LOG_PREFIX = "(EngineCore_DP0 pid=7) INFO 11-03 14:15:10 [core.py:452] "
_LOG_START = ("(APIServer pid=6) INFO 11-03 14:15:00 [api_utils.py:273] non-default args: "
              "{'model': 'org/model', 'max_num_seqs': 8}\n")


def _iteration(index: int = 0, ctx: str = "1 context requests, 64 context tokens, ",
               gen: str = "2 generation requests, 2 generation tokens, ",
               elapsed: str = "iteration elapsed time: 12.50 ms") -> str:
    """One line as ``vllm/v1/engine/core.py:452`` (vLLM v0.25.0) writes it."""
    return f"{_LOG_PREFIX}Iteration({index}): {ctx}{gen}{elapsed}\n"


def _vllm_log_cases(c: _Corpus) -> None:
    ingest = ["ingest", "--format", "vllm-iteration-log", "{path}"]

    def add(name, text):
        c.add(f"vllm-log-{name}", "vllm-iteration-log", text, ingest, ".log")

    good = _LOG_START + _iteration(0) + _iteration(1)
    add("context-tokens-word", good + _iteration(2, ctx="1 context requests, x context tokens, "))
    add("elapsed-nan", good + _iteration(2, elapsed="iteration elapsed time: nan ms"))
    add("elapsed-missing", good + _iteration(2, elapsed="iteration elapsed time: ms"))
    add("negative-requests", good + _iteration(2, gen="-2 generation requests, 2 generation "
                                                      "tokens, "))
    add("huge-index", good + _iteration(int(HUGE_INT[:40])))
    add("huge-tokens", good + _iteration(2, ctx=f"1 context requests, {HUGE_INT} context "
                                                "tokens, "))
    add("index-goes-back", good + _iteration(1))
    add("trailing-garbage", good.rstrip("\n") + ", and more\n")
    add("bad-kv-usage", good + _iteration(2).rstrip("\n") + ", GPU KV cache usage: lots\n")
    add("invalid-utf8", good.encode() + b"\xff\xfe" + _iteration(2).encode())
    add("nul-bytes", good + _iteration(2).replace("12.50", "12\x00.50"))
    add("no-iterations", _LOG_START)
    add("empty", "")
    add("no-model", _iteration(0) + _iteration(1))


def _vllm_sweep_cases(c: _Corpus) -> None:
    ingest = ["ingest", "--format", "vllm-sweep", "{path}"]
    result = {"date": "20251103-141502", "backend": "vllm", "model_id": "org/model",
              "num_prompts": 3, "duration": 2.0, "completed": 3, "failed": 0,
              "request_throughput": 1.5, "run_number": 0, "max_num_seqs": 8}

    def tree(run: str | None) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            path.parent.mkdir(parents=True)
            path.write_text(",run_number\n0,0\n")
            if run is not None:
                comb = path.parent / "SERVE--max_num_seqs=8-BENCH--request_rate=4"
                comb.mkdir()
                (comb / "run=0.json").write_text(run)
        return write

    def add(name, run):
        c.add(f"vllm-sweep-{name}", "vllm-sweep", tree(run), ingest, "/summary.csv",
              expect=f"vllm-sweep-{name}")

    add("no-combinations", None)
    add("run-truncated", json.dumps(result)[:-20])
    add("run-completed-string", json.dumps({**result, "completed": "x"}))
    add("run-over-prompts", json.dumps({**result, "completed": 9}))
    add("run-two-spellings", json.dumps({**result, "tp": 2, "tensor_parallel_size": 1}))
    add("run-empty", "")


# ---------------------------------------------------------------------------------- parquet
_STEPS = {"run_id": ["r"] * 3, "engine": ["vllm"] * 3, "model": ["m"] * 3,
          "hardware": ["h"] * 3, "source": ["measured"] * 3, "step_index": [0, 1, 2],
          "duration_ms": [1.0, 2.0, 3.0], "num_seqs": [1, 1, 1], "num_prefill_seqs": [1, 0, 0],
          "num_decode_seqs": [0, 1, 1], "prefill_tokens": [8, 0, 0], "decode_tokens": [0, 1, 1]}
_REQUESTS = {"run_id": ["r"] * 3, "engine": ["vllm"] * 3, "model": ["m"] * 3,
             "hardware": ["h"] * 3, "source": ["measured"] * 3, "request_id": ["a", "b", "c"],
             "arrival_s": [0.0, 0.1, 0.2], "input_tokens": [8, 8, 8], "output_tokens": [2, 2, 2],
             "ttft_ms": [5.0, 5.0, 5.0], "e2e_ms": [9.0, 9.0, 9.0], "status": ["ok"] * 3}
_RUNS = {"run_id": ["r"], "engine": ["vllm"], "model": ["m"], "hardware": ["h"],
         "source": ["measured"], "num_requests": [3], "completed": [3], "failed": [0],
         "duration_s": [1.0]}


def _parquet(kind: str, base: dict, changes: dict | None = None,
             metadata: dict | None = None) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        columns = {**base, **(changes or {})}
        columns = {k: v for k, v in columns.items() if v is not _DROP}
        table = pa.table(columns)
        meta = {"servetune.kind": kind} if metadata is None else metadata
        table = table.replace_schema_metadata(meta)
        pq.write_table(table, path)
    return write


def _parquet_cases(c: _Corpus) -> None:
    ingest = ["ingest", "{path}"]

    def add(name, writer):
        c.add(f"parquet-{name}", "servetune-parquet", writer, ingest, ".parquet")

    add("steps-bool-duration", _parquet("steps", _STEPS, {"duration_ms": [True, False, True]}))
    add("steps-string-duration", _parquet("steps", _STEPS, {"duration_ms": ["1", "2", "x"]}))
    add("steps-negative-duration", _parquet("steps", _STEPS, {"duration_ms": [1.0, -2.0, 3.0]}))
    add("steps-inf-duration", _parquet("steps", _STEPS,
                                       {"duration_ms": [1.0, float("inf"), 3.0]}))
    add("steps-nan-duration", _parquet("steps", _STEPS,
                                       {"duration_ms": [1.0, float("nan"), 3.0]}))
    add("steps-missing-duration", _parquet("steps", _STEPS, {"duration_ms": _DROP}))
    add("steps-null-duration", _parquet("steps", _STEPS, {"duration_ms": [1.0, None, 3.0]}))
    add("steps-float-index", _parquet("steps", _STEPS, {"step_index": [0.0, 1.5, 2.0]}))
    add("steps-int-overflow", _parquet("steps", _STEPS, {"num_seqs": [1, 2**40, 1]}))
    add("steps-extra-not-json", _parquet("steps", _STEPS, {"extra": ["{}", "not json", "{}"]}))
    add("steps-extra-array", _parquet("steps", _STEPS, {"extra": ["{}", "[1, 2]", "{}"]}))
    add("steps-bad-source", _parquet("steps", _STEPS, {"source": ["measured", "guessed", "x"]}))
    add("steps-empty-engine", _parquet("steps", _STEPS, {"engine": ["", "", ""]}))
    add("requests-duplicate-ids", _parquet("requests", _REQUESTS,
                                           {"request_id": ["a", "b", "a"]}))
    add("requests-ttft-over-e2e", _parquet("requests", _REQUESTS,
                                           {"ttft_ms": [5.0, 50.0, 5.0]}))
    add("requests-unknown-status", _parquet("requests", _REQUESTS,
                                            {"status": ["ok", "maybe", "ok"]}))
    add("requests-negative-itl", _parquet("requests", _REQUESTS,
                                          {"itl_ms": [[1.0], [-1.0], [1.0]]}))
    add("runs-completed-negative", _parquet("runs", _RUNS, {"completed": [-1]}))
    add("runs-completed-over", _parquet("runs", _RUNS, {"completed": [5]}))
    add("runs-failed-over", _parquet("runs", _RUNS, {"failed": [7]}))
    add("runs-bool-duration", _parquet("runs", _RUNS, {"duration_s": [True]}))
    add("runs-config-not-json", _parquet("runs", _RUNS, {"config": ["{oops"]}))
    add("corrupt", b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    add("truncated", lambda p: (_parquet("steps", _STEPS)(p),
                                p.write_bytes(p.read_bytes()[:-30])))


# ---------------------------------------------------------------------------------- CSV / JSONL
def _csv_cases(c: _Corpus) -> None:
    header = "step,latency_ms,batch_size,num_prefills,num_prefill_tokens,num_decode_tokens"
    good = "0,57.1,2,2,2348,0"

    def steps(name, text):
        c.add(f"steps-csv-{name}", "steps-csv", text,
              ["ingest", "--format", "steps-csv", *IDENTITY, "{path}"], ".csv")

    steps("million-columns", "latency_ms," + ",".join(f"c{i}" for i in range(1_000_000))
          + "\n" + "1" * 1 + ",0" * 1_000_000 + "\n")
    steps("duplicate-header", header + ",step\n" + good + ",1\n")
    steps("empty-column-name", header + ",\n" + good + ",1\n")
    steps("ragged-row", header + "\n" + good + "\n1,2\n")
    steps("text-duration", header + "\n0,fast,2,2,2348,0\n")
    steps("bool-duration", header + "\n0,true,2,2,2348,0\n")
    steps("negative-duration", header + "\n0,-5,2,2,2348,0\n")
    steps("nan-duration", header + "\n0,nan,2,2,2348,0\n")
    steps("inf-duration", header + "\n0,inf,2,2,2348,0\n")
    steps("huge-int", header + f"\n{HUGE_INT},57.1,2,2,2348,0\n")
    steps("huge-int-tokens", header + f"\n0,57.1,2,2,{HUGE_INT},0\n")
    steps("fractional-int", header + "\n0,57.1,2.5,2,2348,0\n")
    steps("header-only", header + "\n")
    steps("empty", "")
    steps("invalid-utf8", (header + "\n").encode() + b"0,\xff\xfe,2,2,2348,0\n")
    steps("nul-byte", header + "\n0,5\x007,2,2,2348,0\n")
    steps("huge-field", header + "\n0,57.1,2,2,2348,\"" + "1" * 300_000 + "\"\n")
    steps("unclosed-quote", header + '\n0,"57.1,2,2,2348,0\n')
    steps("extra-not-json", header + ",extra\n" + good + ",not json\n")
    steps("missing-engine", header + "\n" + good + "\n")  # replaced below (no --set)
    c.cases[-1] = Case(c.cases[-1].name, "steps-csv",
                       ("ingest", "--format", "steps-csv", "{path}"), c.cases[-1].path)

    rheader = "req_id,arrival_time,prompt_tokens,completion_tokens,ttft_ms,e2e_ms,status"

    def requests(name, text):
        c.add(f"requests-csv-{name}", "requests-csv", text,
              ["ingest", "--format", "requests-csv", *IDENTITY, "{path}"], ".csv")

    requests("duplicate-ids", rheader + "\nr0,0.1,10,5,10,50,ok\nr0,0.2,10,5,10,50,ok\n")
    requests("ttft-over-e2e", rheader + "\nr0,0.1,10,5,90,50,ok\n")
    requests("unknown-status", rheader + "\nr0,0.1,10,5,10,50,exploded\n")
    requests("negative-ttft", rheader + "\nr0,0.1,10,5,-10,50,ok\n")
    requests("itl-nested", "req_id,ttft_ms,itl_ms\nr0,1,\"[[1.0]]\"\n")
    requests("itl-negative", "req_id,ttft_ms,itl_ms\nr0,1,1;-2\n")
    requests("itl-deep-json", "req_id,ttft_ms,itl_ms\nr0,1,\"" + "[" * DEEP + "]" * DEEP
             + "\"\n")
    requests("itl-huge-int", f"req_id,ttft_ms,itl_ms\nr0,1,\"[{HUGE_INT}]\"\n")
    requests("itl-words", "req_id,ttft_ms,itl_ms\nr0,1,a;b\n")
    requests("itl-huge-exponent", "req_id,ttft_ms,itl_ms\nr0,1,1e999\n")

    def jsonl(kind, name, text):
        c.add(f"{kind}-jsonl-{name}", f"{kind}-jsonl", text,
              ["ingest", "--format", f"{kind}-jsonl", *IDENTITY, "{path}"], ".jsonl")

    line = {"step_index": 0, "duration_ms": 5.0, "num_prefill_seqs": 1, "num_decode_seqs": 0,
            "prefill_tokens": 8, "decode_tokens": 0}
    jsonl("steps", "deep-nested", json.dumps(line) + "\n"
          + '{"duration_ms": ' + "[" * DEEP + "]" * DEEP + "}\n")
    jsonl("steps", "deep-nested-extra", '{"duration_ms": 1, "num_seqs": 1, "num_prefill_seqs": 1,'
          ' "prefill_tokens": 1, "decode_tokens": 0, "junk": ' + "{\"a\":" * DEEP + "1"
          + "}" * DEEP + "}\n")
    jsonl("steps", "huge-int", json.dumps(line).replace("5.0", HUGE_INT) + "\n")
    jsonl("steps", "huge-int-extra", json.dumps({**line, "junk": 1}).replace(
        '"junk": 1', f'"junk": {HUGE_INT}') + "\n")
    jsonl("steps", "bool-duration", json.dumps({**line, "duration_ms": True}) + "\n")
    jsonl("steps", "string-duration", json.dumps({**line, "duration_ms": "5"}) + "\n")
    jsonl("steps", "array-line", "[1, 2, 3]\n")
    jsonl("steps", "invalid-json", json.dumps(line) + "\n{\"duration_ms\": }\n")
    jsonl("steps", "nan", json.dumps(line).replace("5.0", "NaN") + "\n")
    jsonl("steps", "infinity", json.dumps(line).replace("5.0", "Infinity") + "\n")
    jsonl("steps", "extra-string", json.dumps({**line, "extra": "not json"}) + "\n")
    jsonl("steps", "extra-number", json.dumps({**line, "extra": 5}) + "\n")
    jsonl("steps", "empty", "\n\n")
    rline = {"request_id": "a", "ttft_ms": 5.0, "e2e_ms": 9.0, "status": "ok"}
    jsonl("requests", "duplicate-ids", json.dumps(rline) + "\n" + json.dumps(rline) + "\n")
    jsonl("requests", "ttft-over-e2e", json.dumps({**rline, "ttft_ms": 20.0}) + "\n")
    jsonl("requests", "unknown-status", json.dumps({**rline, "status": "lost"}) + "\n")
    jsonl("requests", "status-number", json.dumps({**rline, "status": 3}) + "\n")
    jsonl("requests", "id-object", json.dumps({**rline, "request_id": {"x": 1}}) + "\n")
    jsonl("requests", "itl-nested", json.dumps({**rline, "itl_ms": [[1.0]]}) + "\n")
    jsonl("requests", "itl-deep", '{"request_id": "a", "itl_ms": ' + "[" * DEEP + "]" * DEEP
          + "}\n")


# ---------------------------------------------------------------------------------- workloads
def _workload_cases(c: _Corpus) -> None:
    def add(name, text, suffix):
        c.add(f"workload-{name}", "workload", text, [*_SIM, "{path}"], suffix)

    split = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
    add("splitwise-negative", split + "0,10,5\n-1,10,5\n", ".csv")
    add("splitwise-text", split + "0,ten,5\n", ".csv")
    add("splitwise-huge-output", split + "0,10,100000000000\n", ".csv")
    add("splitwise-huge-int", split + f"0,{HUGE_INT},5\n", ".csv")
    add("splitwise-zero-tokens", split + "0,0,5\n", ".csv")
    add("splitwise-header-only", split, ".csv")
    add("splitwise-million-columns", split.rstrip("\n") + ","
        + ",".join(f"c{i}" for i in range(1_000_000)) + "\n0,1,1" + ",0" * 1_000_000 + "\n",
        ".csv")
    add("splitwise-inf", split + "inf,10,5\n", ".csv")
    azure = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
    add("azure-bad-date", azure + "yesterday,10,5\n", ".csv")
    add("azure-huge-output", azure + "2023-11-16 18:15:46,10,99999999999999\n", ".csv")
    add("azure-year-99999", azure + "99999-11-16 18:15:46,10,5\n", ".csv")
    mooncake = '{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
    add("mooncake-deep-nested", mooncake + '{"timestamp": ' + "[" * DEEP + "]" * DEEP + "}\n",
        ".jsonl")
    add("mooncake-deep-hash-ids", mooncake + '{"timestamp": 1, "input_length": 1, '
        '"output_length": 1, "hash_ids": ' + "[" * DEEP + "]" * DEEP + "}\n", ".jsonl")
    add("mooncake-huge-int", mooncake.replace('"input_length": 10', f'"input_length": {HUGE_INT}'),
        ".jsonl")
    add("mooncake-huge-output", mooncake.replace("5}", "1e15}"), ".jsonl")
    add("mooncake-bool", mooncake.replace("10", "true"), ".jsonl")
    add("mooncake-array-line", mooncake + "[1]\n", ".jsonl")
    add("mooncake-invalid", mooncake + "{\n", ".jsonl")
    burst = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    add("burstgpt-all-failed", burst + "0,GPT-4,10,0,10,API log\n", ".csv")
    add("burstgpt-negative", burst + "0,GPT-4,-10,5,10,API log\n", ".csv")
    add("unknown-header", "a,b,c\n1,2,3\n", ".csv")
    for name, spec in (("spec-n-1e11", "poisson:rate=1,n=100000000000"),
                       ("spec-huge-output", "poisson:rate=1,n=10,output=const:1e15"),
                       ("spec-huge-input", "poisson:rate=1,n=10,input=uniform:1:1e30"),
                       ("spec-n-huge-int", f"poisson:rate=1,n={HUGE_INT}"),
                       ("spec-rate-inf", "poisson:rate=inf"),
                       ("spec-cv-huge", "gamma:rate=1,n=10,cv=1e200"),
                       ("spec-lognormal-sigma", "poisson:rate=1,n=10,output=lognormal:100:1e300")):
        c.add(f"workload-{name}", "workload-spec", None, [*_SIM, spec])


# ---------------------------------------------------------------------------------- spaces
_SPACE = """name = "fuzz"
engine = "vllm"
[params.max_num_seqs]
type = "int"
low = 16
high = 512
"""


def _space_cases(c: _Corpus) -> None:
    def add(name, text, *extra):
        c.add(f"space-{name}", "space", text, ["tune", "--space", "{path}", "--no-mlflow",
                                               *extra], ".toml")

    add("pow-tower", _SPACE + '[derived]\nx = "10 ** 10 ** 10"\n')
    add("pow-big", _SPACE + '[derived]\nx = "max_num_seqs ** 999999999"\n')
    add("pow-constraint", _SPACE + '[[constraints]]\nexpr = "2 ** 2 ** 40 > max_num_seqs"\n')
    add("string-repeat", _SPACE + "[derived]\nx = \"'a' * 10000000000\"\n")
    add("many-terms", _SPACE + '[derived]\nx = "' + " + ".join(["1"] * 50_000) + '"\n')
    add("deep-parens", _SPACE + '[derived]\nx = "' + "(" * 5000 + "1" + ")" * 5000 + '"\n')
    add("deep-unary", _SPACE + '[derived]\nx = "' + "-" * 100_000 + '1"\n')
    add("attribute", _SPACE + '[derived]\nx = "max_num_seqs.__class__"\n')
    add("lambda", _SPACE + '[derived]\nx = "(lambda: 1)()"\n')
    add("unknown-function", _SPACE + '[derived]\nx = "open(1)"\n')
    add("unknown-name", _SPACE + '[derived]\nx = "gpus * 2"\n')
    add("divide-by-zero", _SPACE + '[derived]\nx = "max_num_seqs // 0"\n')
    add("log-negative", _SPACE + '[derived]\nx = "log2(0 - max_num_seqs)"\n')
    add("int-of-text", _SPACE + "[derived]\nx = \"int('abc')\"\n")
    add("max-no-args", _SPACE + '[derived]\nx = "max()"\n')
    add("compare-str-int", _SPACE + "[[constraints]]\nexpr = \"max_num_seqs < 'a'\"\n")
    add("expr-not-string", _SPACE + "[[constraints]]\nexpr = 5\n")
    add("grid-tiny-step", 'name = "fuzz"\nengine = "vllm"\n[params.gpu_memory_utilization]\n'
        'type = "float"\nlow = 0.5\nhigh = 0.9\nstep = 1e-10\n', "--optimizer", "grid")
    add("int-step-huge-range", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "int"\n'
        'low = 0\nhigh = 1000000000000\nstep = 1\n', "--optimizer", "grid")
    add("bounds-text", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "int"\n'
        'low = "a"\nhigh = "b"\n')
    add("bounds-mixed", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "float"\n'
        'low = 1\nhigh = "9"\n')
    add("bounds-nan", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "float"\n'
        "low = nan\nhigh = 1.0\n")
    add("bounds-inf", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "float"\n'
        "low = 0.0\nhigh = inf\n")
    add("bounds-bool", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "int"\n'
        "low = false\nhigh = true\n")
    add("bounds-huge", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "int"\n'
        "low = 0\nhigh = 9223372036854775807\n")
    add("step-text", _SPACE.replace("high = 512", 'high = 512\nstep = "big"'))
    add("choices-string", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "enum"\n'
        'choices = "abc"\n')
    add("choices-tables", 'name = "fuzz"\nengine = "vllm"\n[params.x]\ntype = "enum"\n'
        "choices = [{a = 1}, {a = 2}]\n")
    add("type-missing", 'name = "fuzz"\nengine = "vllm"\n[params.x]\nlow = 1\nhigh = 2\n')
    add("low-over-high", _SPACE.replace("low = 16", "low = 1000"))
    add("infeasible", _SPACE + '[[constraints]]\nexpr = "max_num_seqs > 10000"\n'
        'on_violation = "penalise"\n')
    add("infeasible-repair", _SPACE + '[[constraints]]\nexpr = "max_num_seqs < 0"\n')
    add("invalid-toml", _SPACE + "[params\n")
    add("deep-toml", _SPACE + "[fixed]\nx = " + "[" * 10_000 + "]" * 10_000 + "\n")
    add("hostile-name", 'name = "fuzz"\nengine = "vllm"\n[params."env.-Sid #"]\ntype = "int"\n'
        "low = 1\nhigh = 2\n")
    add("params-array", 'name = "fuzz"\nengine = "vllm"\nparams = [1, 2]\n')
    add("derived-table", _SPACE + "[derived.x]\na = 1\n")
    add("help-table", _SPACE + "help = {a = 1}\n")
    add("invalid-utf8", _SPACE.encode() + b"\xff\xfe\n")
    c.add("tune-particles-2e6", "tune-size", None, ["tune", "--no-mlflow", "--particles",
                                                    "2000000"])
    c.add("tune-iterations-1e9", "tune-size", None, ["tune", "--no-mlflow", "--iterations",
                                                     "1000000000"])


# ---------------------------------------------------------------------------------- candidates
def _candidate_cases(c: _Corpus) -> None:
    def add(name, text):
        def write(path: Path) -> None:
            path.mkdir(exist_ok=True)
            target = path / "candidates.json"
            target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)
        c.add(f"candidates-{name}", "candidates", write,
              ["validate", "--cluster", "{cluster}", "--candidates", "{path}", "--workload",
               "poisson:rate=1,n=2,input=const:4,output=const:2"])

    good = {"name": "a", "config": {"max_num_seqs": 8}}
    add("deep-nested", '{"candidates": ' + "[" * DEEP + "]" * DEEP + "}")
    add("huge-int", json.dumps([{**good, "config": {"max_num_seqs": "@"}}]).replace('"@"',
                                                                                   HUGE_INT))
    add("not-json", "{candidates: nope}")
    add("empty-list", "[]")
    add("scalar", "42")
    add("config-list", json.dumps([{"name": "a", "config": [1, 2]}]))
    add("duplicate-names", json.dumps([good, good]))
    add("hostile-knob", json.dumps([{"name": "a", "config": {"env.-Sid #": "1"}}]))
    c.cases[-1] = Case(**{**c.cases[-1].__dict__, "expect": "env.-Sid #"})
    add("hostile-name", json.dumps([{"name": "../../etc/x", "config": {"max_num_seqs": "$(id)"},
                                     "predicted": "nope"}]))
    add("invalid-utf8", b'[{"name": "a\xff", "config": {}}]')
    add("int-huge-config", '[{"name": "a", "config": {"max_num_seqs": ' + HUGE_INT + '}}]')


# ---------------------------------------------------------------------------------- cluster
def _cluster_cases(c: _Corpus) -> None:
    def add(name, text):
        c.add(f"cluster-{name}", "cluster", text,
              ["validate", "--cluster", "{path}", "--set", "max_num_seqs=8", "--workload",
               "poisson:rate=1,n=2,input=const:4,output=const:2"], ".toml")

    node = 'engine = "vllm"\n[[service_groups]]\nnodes = [{ host = "127.0.0.1", port = 1 }]\n'
    add("invalid-toml", "[[service_groups]\n")
    add("deep-nested", "x = " + "[" * 10_000 + "]" * 10_000 + "\n" + node)
    add("no-groups", 'engine = "vllm"\n')
    add("port-text", '[[service_groups]]\nnodes = [{ host = "n0", port = "x" }]\n')
    add("port-huge", '[[service_groups]]\nnodes = [{ host = "n0", port = 99999999999 }]\n')
    add("host-option", '[[service_groups]]\nnodes = [{ host = "-oProxyCommand=id" }]\n')
    add("env-hostile", '[[service_groups]]\nenv = { "-Sid #" = "x" }\n'
        'nodes = [{ host = "n0" }]\n')
    add("timeout-negative", "candidate_timeout_s = -5\n" + node)
    add("timeout-nan", "candidate_timeout_s = nan\n" + node)
    add("retries-huge", "retries = 9223372036854775807\n" + node)
    add("groups-table", "service_groups = 5\n")
    add("nodes-strings", '[[service_groups]]\nnodes = "n0"\n')


def make_corpus(root: str | Path) -> list[Case]:
    """Write every malformed file under ``root`` and return the cases that read them."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    corpus = _Corpus(root)
    for build in (_vllm_cases, _vllm_log_cases, _vllm_sweep_cases, _parquet_cases, _csv_cases, _workload_cases, _space_cases,
                  _candidate_cases, _cluster_cases):
        build(corpus)
    return corpus.cases


def write_cluster(root: str | Path) -> Path:
    """A valid cluster file whose one host is never reached (a refusal must come first)."""
    path = Path(root) / "cluster-unreachable.toml"
    path.write_text('engine = "vllm"\nmodel = "m"\n[ssh]\nconnect_timeout_s = 1\n'
                    '[[service_groups]]\nnodes = [{ host = "127.0.0.1", port = 1 }]\n')
    return path


if __name__ == "__main__":  # pragma: no cover
    out = io.StringIO()
    for case in make_corpus(sys.argv[1] if len(sys.argv) > 1 else "fuzz-corpus"):
        out.write(f"{case.fmt:18s} {case.name}\n")
    sys.stdout.write(out.getvalue())
