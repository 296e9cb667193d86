"""A scripted OpenAI-compatible streaming server, and a stand-in for ``vllm bench serve``.

Test and benchmark tool, not product code. Used where the behaviour under test needs a server
that misbehaves on purpose (hangs, never gets healthy) or where CPU must not be the bottleneck
(the parallel-dispatch benchmark): it streams ``max_tokens`` chunks at a fixed pace and does no
model computation. ``fake-vllm-bench`` as first argument makes it a stand-in for
``vllm bench serve`` (see :func:`fake_vllm_bench`).

Usage:
    python -m servetune.testing.scripted_server [--port P] [--mode ok|hang|never-healthy]
        [--ttft-ms 20] [--token-ms 5] [--record FILE]
    python -m servetune.testing.scripted_server fake-vllm-bench --result-dir D
        --result-filename F [--metadata K=V ...]

``--port`` defaults to ``$SERVETUNE_PORT``; unknown arguments are accepted (and recorded), so
the server takes any engine's flags. With ``SERVETUNE_NODE_RANK`` other than 0 it is a worker
node of a multi-node group: it stays up and serves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: this file, for ``(sys.executable, SCRIPTED_SERVER, ...)`` start commands
SCRIPTED_SERVER = str(Path(__file__).resolve())


def serve(argv: list[str]) -> None:
    """Run the scripted server with command-line arguments ``argv`` (never returns)."""
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


def fake_vllm_bench(argv: list[str], template: Path | None = None) -> None:
    """Stand-in for ``vllm bench serve`` (for machines where vLLM cannot be installed).

    Writes a ``vllm bench serve --save-detailed`` result for 60 requests (one failed) to
    ``--result-dir/--result-filename``, with ``--metadata`` keys added at the top level as vLLM
    does, and records its argv beside it (``.argv.json``). The result is ``template`` (a real
    result file) when given, else generated by :func:`~servetune.testing.write_vllm_result`.
    """
    parser = argparse.ArgumentParser()
    parser.add_argument("--result-dir", required=True)
    parser.add_argument("--result-filename", required=True)
    parser.add_argument("--metadata", nargs="*", default=[])
    args, _ = parser.parse_known_args(argv)
    out = Path(args.result_dir) / args.result_filename
    if template is None:
        from servetune.testing._vllm_results import write_vllm_result

        write_vllm_result(out, 60, seed=7, failed=(17,))
        template = out
    result = json.loads(Path(template).read_text())
    result.update(dict(item.split("=", 1) for item in args.metadata))
    out.write_text(json.dumps(result))
    out.with_suffix(".argv.json").write_text(json.dumps(argv))


def main(argv: list[str] | None = None, *, bench_template: Path | None = None) -> None:
    """The command line: ``fake-vllm-bench ARGS`` or the server's ``ARGS``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-vllm-bench"]:
        fake_vllm_bench(argv[1:], bench_template)
    else:
        serve(argv)


if __name__ == "__main__":
    main()
