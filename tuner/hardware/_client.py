"""An async OpenAI-compatible streaming load generator that replays a workload.

Each request is sent at its arrival time (seconds after the replay starts) to ``/v1/completions``
or ``/v1/chat/completions`` with ``stream: true`` and ``max_tokens`` = its output length; the
prompt is ``input_tokens`` common words (one token each in usual BPE vocabularies; the server's
``usage.prompt_tokens`` records the real count). Per request it measures the time to first token
(TTFT), the inter-token latencies (ITL) between streamed chunks, the time per output token (TPOT
= (e2e - TTFT) / (output tokens - 1)) and the end-to-end latency.

Example:
    >>> opts = ClientOptions(model="m", api="chat")
    >>> len(make_prompt(5, request_index=0, seed=1).split())
    5
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import numpy as np

from servetune.data import Workload

__all__ = ["ClientOptions", "RequestResult", "BenchmarkResult", "replay", "make_prompt"]

log = logging.getLogger(__name__)

_WORDS = ("the time people year way day man thing woman life child world school state family "
          "student group country problem hand part place case week company system program "
          "question work government number night point home water room mother area money story "
          "fact month lot right study book eye job word business issue side kind head house "
          "service friend father power hour game line end member law car city community name "
          "president team minute idea kid body information back parent face others level office "
          "door health person art war history party result change morning reason research girl "
          "guy moment air teacher force education").split()


def make_prompt(num_tokens: int, *, request_index: int, seed: int) -> str:
    """``num_tokens`` words, different per request (so no prefix cache can serve them)."""
    rng = np.random.default_rng([seed, request_index])
    return " ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=int(num_tokens)))


@dataclass(frozen=True)
class ClientOptions:
    """How the benchmark client talks to the server.

    Attributes:
        model: the ``model`` field of every request.
        api: ``completions`` or ``chat``.
        extra_body: extra JSON fields of every request (``{"ignore_eos": true}`` for vLLM).
        request_timeout_s: read timeout of one request's stream.
        seed: seed of the prompt words.
    """

    model: str
    api: str = "completions"
    extra_body: Mapping[str, object] = field(default_factory=dict)
    request_timeout_s: float = 600.0
    seed: int = 0


@dataclass
class RequestResult:
    """One replayed request."""

    request_id: str
    arrival_s: float
    sent_s: float
    input_tokens: int
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    ttft_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    status: str = "error"
    error: str | None = None


@dataclass
class BenchmarkResult:
    """A finished replay: per-request results, when it started, how long it ran."""

    requests: list[RequestResult]
    started_at: datetime
    duration_s: float
    base_url: str
    api: str


async def _one(client: httpx.AsyncClient, url: str, body: dict, result: RequestResult,
               t0: float) -> None:
    sent = time.perf_counter()
    result.sent_s = sent - t0
    stamps: list[float] = []
    usage: dict = {}
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", "replace")[:300]
                result.error = f"HTTP {response.status_code}: {text}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = json.loads(payload)
                except ValueError:
                    result.error = f"malformed stream event {payload[:100]!r}"
                    return
                if "error" in event:
                    result.error = f"server error: {str(event['error'])[:300]}"
                    return
                now = time.perf_counter()
                for choice in event.get("choices") or []:
                    text = choice.get("text")
                    if text is None:
                        text = (choice.get("delta") or {}).get("content")
                    if text:
                        stamps.append(now)
                        break
                usage = event.get("usage") or usage
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
        return
    end = time.perf_counter()
    if not stamps:
        result.error = "the stream ended without any token"
        return
    result.ttft_ms = (stamps[0] - sent) * 1e3
    result.itl_ms = [float(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
    result.e2e_ms = (max(end, stamps[-1]) - sent) * 1e3
    result.output_tokens = int(usage.get("completion_tokens") or len(stamps))
    result.prompt_tokens = usage.get("prompt_tokens")
    if result.output_tokens > 1:
        result.tpot_ms = (result.e2e_ms - result.ttft_ms) / (result.output_tokens - 1)
    result.status = "ok"


async def replay(base_url: str, workload: Workload, options: ClientOptions, *,
                 watchdog: Callable[[], Awaitable[None]] | None = None,
                 watchdog_interval_s: float = 1.0,
                 on_request_done: Callable[[RequestResult], None] | None = None,
                 verify: ssl.SSLContext | bool = True) -> BenchmarkResult:
    """Replay ``workload`` against ``base_url`` and measure every request.

    ``watchdog`` is awaited every ``watchdog_interval_s`` while requests are in flight; an
    exception it raises (the service died) cancels the replay and propagates. Cancelling the
    coroutine (a timeout) cancels every request. ``verify`` is httpx's TLS setting (pass a
    prepared ``SSLContext`` to save building one per replay).
    """
    path = "/v1/chat/completions" if options.api == "chat" else "/v1/completions"
    url = base_url.rstrip("/") + path
    timeout = httpx.Timeout(connect=10.0, read=options.request_timeout_s, write=30.0, pool=None)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    results = [RequestResult(request_id=f"r{i}", arrival_s=float(workload.arrival_s[i]),
                             sent_s=float("nan"), input_tokens=int(workload.input_tokens[i]))
               for i in range(len(workload))]
    started_at = datetime.now(timezone.utc)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False,
                                 verify=verify) as client:
        t0 = time.perf_counter()

        async def fire(i: int) -> None:
            delay = results[i].arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            prompt = make_prompt(results[i].input_tokens, request_index=i, seed=options.seed)
            body = {"model": options.model, "stream": True,
                    "max_tokens": int(workload.output_tokens[i]),
                    "stream_options": {"include_usage": True}, **options.extra_body}
            if options.api == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            await _one(client, url, body, results[i], t0)
            if on_request_done is not None:
                on_request_done(results[i])

        tasks = [asyncio.create_task(fire(i)) for i in range(len(results))]
        guard = asyncio.create_task(_watch(watchdog, watchdog_interval_s)) if watchdog else None
        try:
            pending = set(tasks) | ({guard} if guard else set())
            while any(not t.done() for t in tasks):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if guard in done:
                    guard.result()  # raises what the watchdog raised
                    guard = None
        finally:
            for task in tasks + ([guard] if guard else []):
                task.cancel()
            await asyncio.gather(*tasks, *([guard] if guard else []), return_exceptions=True)
        duration = time.perf_counter() - t0
    return BenchmarkResult(results, started_at, duration, base_url, options.api)


async def _watch(watchdog: Callable[[], Awaitable[None]], interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        await watchdog()
