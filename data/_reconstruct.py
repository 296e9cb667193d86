"""Engine steps rebuilt from per-token timings: ``requests`` rows in, ``steps`` rows out.

An engine emits the tokens of one step together, so the emission instants of all requests
(``arrival_s + ttft``, then the cumulative inter-token gaps) cluster into one instant per step.
A cluster's members are that step's batch: a request emitting its first token finished its
prompt there, the others decoded. Steps that emit nothing (prefill chunks that finish no prompt
while no sequence decodes, or while prefill-first starves the decodes) are inserted where the
prompts placed by the engine's policy need more budget than the visible steps had; the gap they
fall in is split by a per-run linear step cost fitted on the steps whose both ends show, and they
get a low confidence. With CUDA graphs, the steps that captured one are those the engine
policy's step hook (the simulator's) calls new graph keys, replayed over the rebuilt batches.

Assumes no preemption (a recomputed request decodes again, which the timings cannot show).

Example:
    >>> import pandas as pd
    >>> from servetune.data import reconstruct_steps
    >>> requests = pd.DataFrame({"request_id": ["a", "b"], "arrival_s": [0.0, 0.0],
    ...     "input_tokens": [10, 20], "output_tokens": [3, 3], "ttft_ms": [10.0, 10.0],
    ...     "itl_ms": [[5.0, 5.0], [5.0, 5.0]]})
    >>> run = {"run_id": "r", "engine": "vllm", "model": "m", "hardware": "h",
    ...        "max_batch_tokens": 512}
    >>> reconstruct_steps(requests, run)[["num_decode_seqs", "prefill_tokens"]].values.tolist()
    [[0, 30], [2, 0], [2, 0]]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from servetune import InputError
from servetune.data._schemas import conform
from servetune.data.engines import EngineSpec, get_engine

__all__ = ["reconstruct_steps", "compare_reconstruction", "match_steps", "ReconstructionPolicy",
           "RECONSTRUCTED_SOURCE"]

RECONSTRUCTED_SOURCE = "reconstructed"
_REQUIRED = ("arrival_s", "input_tokens", "ttft_ms", "itl_ms")
_PREFILL_FIRST = "prefill_first"  # transformers-cb's PrefillFirstScheduler (a knob value)
_SPLIT_PENALTY, _PLACE_PENALTY, _COALESCED_PENALTY = 0.8, 0.7, 0.9
_INVISIBLE_CONFIDENCE = 0.4
_CAPTURE_WINDOW, _CAPTURE_FACTOR = 9, 3.0  # a step 3x its 9-step local median: a capture
# what a step's cost is fitted on, per run, to split a gap between steps that emitted nothing
_COST_COLUMNS = ("prefill_tokens", "decode_tokens", "prefill_attn_work", "kv_tokens_sum")
_MIN_COST_FIT = 20


@dataclass(frozen=True)
class ReconstructionPolicy:
    """What of the engine's scheduler the placement of prefill chunks needs.

    Attributes:
        token_budget: query tokens per step (``max_batch_tokens``); ``None``: unknown, no cap.
        max_seqs: sequences per step (``max_num_seqs``); ``None``: no cap.
        async_batching: a step's tokens are read back when the next step ends, and every
            request decodes one extra (discarded) slot after its last token.
        prefill_first: partial prefills take the budget before decodes (decodes may starve).
        cuda_graph: the engine captures CUDA graphs (one-off slow steps are marked as captures).
    """

    token_budget: int | None
    max_seqs: int | None = None
    async_batching: bool = False
    prefill_first: bool = False
    cuda_graph: bool = False

    @classmethod
    def from_run(cls, run: Mapping, spec: EngineSpec) -> ReconstructionPolicy:
        """The policy of a ``runs`` row (its normalised knob columns) for engine ``spec``."""
        scheduler = run.get("scheduler")
        return cls(token_budget=_positive_int(run.get("max_batch_tokens")),
                   max_seqs=_positive_int(run.get("max_num_seqs")),
                   async_batching=bool(_known(run.get("async_batching")) and run["async_batching"]),
                   prefill_first=scheduler == _PREFILL_FIRST and _has_choice(spec, _PREFILL_FIRST),
                   cuda_graph=bool(_known(run.get("cuda_graph")) and run["cuda_graph"]))


def reconstruct_steps(requests: pd.DataFrame, run: Mapping | pd.Series, *,
                      engine: str | EngineSpec | None = None,
                      tolerance_ms: float | None = None) -> pd.DataFrame:
    """Rebuild one run's ``steps`` rows from its ``requests`` rows' token timings.

    Args:
        requests: one run's requests (``arrival_s``, ``input_tokens``, ``ttft_ms``, ``itl_ms``;
            ``output_tokens`` and ``status`` used when present).
        run: the run's ``runs`` row (identity, ``max_batch_tokens``, ``max_num_seqs``,
            ``scheduler``, ``async_batching``, ``block_size``, ...).
        engine: the engine (name or spec); default: the run's ``engine``.
        tolerance_ms: emissions closer than this belong to one step; default: a quarter of the
            median inter-token gap, at least 0.5 ms.

    Returns:
        ``steps`` rows (the schema's columns and dtypes), ``source = "reconstructed"``, with
        ``{"confidence": ..., "emitting": ..., "invisible": ..., "flags": [...]}`` in ``extra``.

    Raises:
        InputError: a missing column, or a row with a negative or non-finite timing.
    """
    run = dict(run.items()) if isinstance(run, pd.Series) else dict(run)
    spec = engine if isinstance(engine, EngineSpec) else get_engine(engine or _identity(run, "engine"))
    policy = ReconstructionPolicy.from_run(run, spec)
    timings = _token_timings(requests)
    clusters = _cluster(timings, tolerance_ms)
    batches = _place_prefills(timings, clusters, policy)
    steps = _compose(timings, clusters, batches, policy)
    captured = _replayed_captures(steps, run, spec) if policy.cuda_graph else None
    steps["start_s"], steps["duration_ms"] = _timing(batches[0], clusters, steps, policy,
                                                     captured)
    if policy.cuda_graph:
        if captured is None:  # no policy to replay: steps far slower than their neighbours
            captured = _slow_steps(steps["duration_ms"])
        steps["extra"] = _mark_captures(steps, captured)
    return _steps_frame(steps, run, spec)


# ---------------------------------------------------------------------------------------------
# input: per-request emission instants
# ---------------------------------------------------------------------------------------------

@dataclass
class _Timings:
    """All emissions (request index, instant, token index), plus per-request facts."""

    req: np.ndarray          # emission -> request index (only requests with a first token)
    time: np.ndarray         # emission instant, s since the run clock
    token: np.ndarray        # emission index within its request (0 = first token)
    arrival: np.ndarray      # per request
    input_tokens: np.ndarray
    coalesced: np.ndarray    # per request: fewer emissions than output tokens
    n_requests: int
    unplaced: int            # requests with no token (errors, empty streams)


def _token_timings(requests: pd.DataFrame) -> _Timings:
    if not isinstance(requests, pd.DataFrame):
        raise InputError(f"expected a requests DataFrame, got {type(requests).__name__}")
    missing = [name for name in _REQUIRED if name not in requests.columns]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} of the requests; token "
                         f"timings need all of {', '.join(_REQUIRED)}", field=missing[0])
    arrival = _floats(requests, "arrival_s")
    ttft = _floats(requests, "ttft_ms")
    inputs = _floats(requests, "input_tokens")
    outputs = (_floats(requests, "output_tokens") if "output_tokens" in requests.columns
               else np.full(len(requests), np.nan))
    has_token = np.isfinite(ttft)
    _check_non_negative(ttft, "ttft_ms")
    _check_non_negative(np.where(has_token, arrival, 0.0), "arrival_s", finite=True)
    _check_non_negative(np.where(has_token, inputs, 0.0), "input_tokens", finite=True)
    reqs, times, tokens, coalesced = [], [], [], np.zeros(len(requests), dtype=bool)
    for row, (itl, first) in enumerate(zip(requests["itl_ms"].to_numpy(), arrival + ttft / 1e3)):
        if not has_token[row]:
            continue
        gaps = _gaps(itl, row)
        instants = first + np.concatenate(([0.0], np.cumsum(gaps) / 1e3))
        reqs.append(np.full(len(instants), row))
        times.append(instants)
        tokens.append(np.arange(len(instants)))
        coalesced[row] = np.isfinite(outputs[row]) and len(instants) != outputs[row]
    if not reqs:
        raise InputError("no request has a first token (ttft_ms); nothing to reconstruct",
                         field="ttft_ms")
    return _Timings(np.concatenate(reqs), np.concatenate(times), np.concatenate(tokens),
                    arrival, np.nan_to_num(inputs).astype(np.int64), coalesced, len(requests),
                    int((~has_token).sum()))


def _floats(df: pd.DataFrame, name: str) -> np.ndarray:
    try:
        return pd.to_numeric(df[name], errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected numbers ({exc})", field=name) from None


def _check_non_negative(values: np.ndarray, name: str, *, finite: bool = False) -> None:
    bad = (values < 0) | (~np.isfinite(values) if finite else np.isinf(values))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"expected a finite value >= 0, got {values[row]!r}", row=row + 1,
                         field=name)


def _gaps(itl, row: int) -> np.ndarray:
    if itl is None or (isinstance(itl, float) and math.isnan(itl)):
        return np.empty(0)
    try:
        gaps = np.asarray(itl, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"expected a list of inter-token gaps in ms, got {itl!r}", row=row + 1,
                         field="itl_ms") from None
    bad = ~np.isfinite(gaps) | (gaps < 0)
    if bad.any():
        raise InputError(f"token instants must not go back in time: gap {int(np.argmax(bad))} "
                         f"is {gaps[bad][0]!r} ms (expected a finite value >= 0)", row=row + 1,
                         field="itl_ms")
    return gaps


# ---------------------------------------------------------------------------------------------
# emission instants -> steps (clusters)
# ---------------------------------------------------------------------------------------------

@dataclass
class _Clusters:
    """Per emission its cluster; per cluster its instant, spread and whether it was split."""

    of_emission: np.ndarray
    time: np.ndarray
    spread: np.ndarray
    split: np.ndarray


def _cluster(timings: _Timings, tolerance_ms: float | None) -> _Clusters:
    order = np.lexsort((timings.req, timings.time))
    times, reqs = timings.time[order], timings.req[order]
    tol = _tolerance_s(timings, tolerance_ms)
    starts = np.flatnonzero(np.concatenate(([True], np.diff(times) > tol)))
    bounds, split = _split_duplicates(times, reqs, starts)
    label = np.zeros(len(times), dtype=np.int64)
    label[bounds[1:]] = 1
    label = np.cumsum(label)
    of_emission = np.empty_like(label)
    of_emission[order] = label
    count = np.bincount(label)
    first, last = times[bounds], times[np.concatenate((bounds[1:], [len(times)])) - 1]
    median = np.array([np.median(t) for t in np.split(times, bounds[1:])]) \
        if np.any(count > 2) else (first + last) / 2
    return _Clusters(of_emission, median, last - first, split)


def _tolerance_s(timings: _Timings, tolerance_ms: float | None) -> float:
    if tolerance_ms is not None:
        return tolerance_ms / 1e3
    same = timings.req[1:] == timings.req[:-1]
    gaps = np.diff(timings.time)[same]
    gaps = gaps[gaps > 0]
    median = float(np.median(gaps)) if len(gaps) else 0.0
    return max(0.5e-3, 0.25 * median)


def _split_duplicates(times: np.ndarray, reqs: np.ndarray, starts: np.ndarray):
    """Cluster starts where no request emits twice in one cluster: a cluster holding two
    emissions of a request is two steps, split at its widest inner gap (repeatedly)."""
    ends = np.concatenate((starts[1:], [len(times)]))
    out, split = [], []
    for lo, hi in zip(starts.tolist(), ends.tolist()):
        pieces = _split_range(times, reqs, lo, hi)
        out.extend(pieces)
        split.extend([len(pieces) > 1] * len(pieces))
    return np.asarray(out, dtype=np.int64), np.asarray(split, dtype=bool)


def _split_range(times, reqs, lo: int, hi: int) -> list[int]:
    if hi - lo < 2 or len(np.unique(reqs[lo:hi])) == hi - lo:
        return [lo]
    cut = lo + 1 + int(np.argmax(np.diff(times[lo:hi])))
    return _split_range(times, reqs, lo, cut) + _split_range(times, reqs, cut, hi)


# ---------------------------------------------------------------------------------------------
# prefill placement: replay the policy over the visible steps, insert the invisible ones
# ---------------------------------------------------------------------------------------------

@dataclass
class _Batch:
    """One engine step: the cluster it emitted in (-1: none), prefill chunks, flags."""

    cluster: int
    start: float
    chunks: list = field(default_factory=list)  # (request, past, chunk)
    flags: list = field(default_factory=list)


@dataclass
class _Requests:
    """Per request: first/last emitting cluster; per cluster: decode counts."""

    first: np.ndarray
    last: np.ndarray
    decodes: np.ndarray
    extras: np.ndarray  # async: discarded slots due in the step after each cluster's
    members: tuple  # (request, cluster) decode memberships


def _request_clusters(timings: _Timings, clusters: _Clusters, policy) -> _Requests:
    n, n_c = timings.n_requests, len(clusters.time)
    label = clusters.of_emission
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last, timings.req, label)
    first[timings.req[timings.token == 0]] = label[timings.token == 0]
    direct = (timings.token > 0) & ~timings.coalesced[timings.req]
    req, clu = [timings.req[direct]], [label[direct]]
    for i in np.flatnonzero(timings.coalesced & (first >= 0)):
        span = np.arange(first[i] + 1, last[i] + 1)  # every step of its life, one token each
        req.append(np.full(len(span), i))
        clu.append(span)
    req, clu = np.concatenate(req), np.concatenate(clu)
    decodes = np.bincount(clu, minlength=n_c + 1)[:n_c + 1]
    extras = np.zeros(n_c + 1, dtype=np.int64)
    if policy.async_batching:  # the discarded slot in the step after a request's last token
        extras = np.bincount(last[first >= 0] + 1, minlength=n_c + 1)[:n_c + 1]
    return _Requests(first, last, decodes, extras, (req, clu))


def _place_prefills(timings: _Timings, clusters: _Clusters, policy) -> tuple:
    """The steps in order (visible and invisible) with their prefill chunks."""
    rq = _request_clusters(timings, clusters, policy)
    placed = np.flatnonzero(rq.first >= 0)
    order = placed[np.lexsort((timings.arrival[placed], rq.first[placed]))]
    rem = timings.input_tokens.copy()
    past = np.zeros_like(rem)
    budget = policy.token_budget or int(rem.sum()) + int(rq.decodes.max()) + 1
    seqs = policy.max_seqs or len(order) + int(rq.decodes.max()) + 1
    arrival, f_of = timings.arrival, rq.first
    batches: list[_Batch] = []
    lag = 1 if policy.async_batching else 0
    head, first_arrival = 0, float(arrival[order].min())
    prev_start = first_arrival
    times = clusters.time
    for c in range(len(times)):
        n_first = _count_from(order, head, f_of, c)
        start = max(first_arrival, float(times[c - lag - 1])) if c > lag else first_arrival
        start = max(start, prev_start)
        nd, due = int(rq.decodes[c]), int(rq.extras[c])
        if due and not nd and not _any_arrived(order, head, rem, arrival, start):
            # async: the last tokens' discarded slots ran alone in a step that emitted nothing
            batches.append(_Batch(-1, start, flags=["invisible", "extra_slots"]))
            due = 0
        nd += due
        restart = nd == 0 and not _any_arrived(order, head, rem, arrival, start)
        if restart:  # the engine was idle: this step starts when its first request arrives
            start = max(start, float(arrival[order[head]]) if head < len(order) else start)
        need = int(rem[order[head:head + n_first]].sum())
        cap = max(budget - nd, 0)
        n_hidden = math.ceil((need - cap) / budget) if need > cap else 0
        # hidden steps share the gap to this emission: each admits what arrived by its start
        step_starts = start + (float(times[c]) - start) * np.arange(n_hidden + 1) / (n_hidden + 1)
        for k in range(n_hidden):
            batch = _Batch(-1, start, flags=["invisible"])
            _fill(batch, order, head, n_first, rem, past, arrival, step_starts[k], budget, seqs,
                  hold=True)
            batches.append(batch)
        batch = _Batch(c, start, flags=["idle_restart"] if restart and c else [])
        admit_by = float(step_starts[-1])
        used = _take_all(batch, order[head:head + n_first], rem, past)
        if used > cap:
            batch.flags.append("over_budget")
        if any(arrival[i] > start + 1e-3 for i in order[head:head + n_first]) and nd > 0:
            batch.flags.append("late_arrival")
        _fill(batch, order, head + n_first, 0, rem, past, arrival, admit_by, cap - used,
              seqs - nd - n_first, hold=True)
        if n_hidden:
            # prefill-first starves decodes behind a long prompt; FIFO runs them first, so a
            # hidden step beside decoding sequences means the timings missed a step
            batch.flags.append("after_invisible" if policy.prefill_first or nd == 0
                               else "missed_step")
        batches.append(batch)
        head += n_first
        prev_start = start
    return batches, rq


def _count_from(order, head: int, first, c: int) -> int:
    n = 0
    while head + n < len(order) and first[order[head + n]] == c:
        n += 1
    return n


def _any_arrived(order, head: int, rem, arrival, t: float) -> bool:
    return any(rem[i] > 0 and arrival[i] <= t for i in order[head:head + 64])


def _take_all(batch: _Batch, members, rem, past) -> int:
    used = 0
    for i in members:
        chunk = int(rem[i])
        if chunk > 0:
            batch.chunks.append((int(i), int(past[i]), chunk))
            past[i] += chunk
            rem[i] = 0
            used += chunk
        else:  # its prompt went entirely into earlier steps: the engine still ran it here
            batch.flags.append("held_prefill")
    return used


def _fill(batch: _Batch, order, head: int, n_first: int, rem, past, arrival, start: float,
          budget: int, seqs: int, *, hold: bool) -> None:
    """FIFO chunks from ``order[head:]`` (arrived requests only) within ``budget`` tokens and
    ``seqs`` sequences, leaving each request one token (its prompt ends at its first token)."""
    k = head
    while budget > 0 and seqs > 0 and k < min(len(order), head + max(n_first, 64)):
        i = order[k]
        k += 1
        room = int(rem[i]) - (1 if hold else 0)
        if room <= 0 or arrival[i] > start:
            continue
        chunk = min(room, budget)
        batch.chunks.append((int(i), int(past[i]), chunk))
        past[i] += chunk
        rem[i] -= chunk
        budget -= chunk
        seqs -= 1
        if k - head > n_first and "held_prefill" not in batch.flags and chunk == room and hold:
            batch.flags.append("held_prefill")


# ---------------------------------------------------------------------------------------------
# steps: composition, timing, confidence
# ---------------------------------------------------------------------------------------------

def _compose(timings: _Timings, clusters: _Clusters, placed: tuple, policy) -> dict:
    batches, rq = placed
    n_b = len(batches)
    cluster = np.array([b.cluster for b in batches])
    batch_of_cluster = np.flatnonzero(cluster >= 0)
    cols = {name: np.zeros(n_b, dtype=np.int64) for name in (
        "num_prefill_seqs", "num_decode_seqs", "prefill_tokens", "decode_tokens",
        "kv_tokens_sum", "kv_tokens_max", "prefill_attn_work")}
    _add_decodes(cols, timings, rq, batch_of_cluster, n_b, policy)
    _add_prefills(cols, batches)
    cols["num_seqs"] = cols["num_prefill_seqs"] + cols["num_decode_seqs"]
    cols["extra"] = _extras(batches, clusters, timings, rq, policy)
    return cols


def _add_decodes(cols, timings: _Timings, rq: _Requests, batch_of_cluster, n_b: int,
                 policy) -> None:
    req, clu = rq.members
    batch = batch_of_cluster[clu]
    if policy.async_batching:  # one discarded slot in the step after the last token
        done = np.flatnonzero(rq.first >= 0)
        extra = batch_of_cluster[rq.last[done]] + 1
        keep = extra < n_b
        req, batch = np.concatenate((req, done[keep])), np.concatenate((batch, extra[keep]))
    order = np.lexsort((batch, req))
    req, batch = req[order], batch[order]
    starts = np.flatnonzero(np.concatenate(([True], req[1:] != req[:-1])))
    rank = np.arange(len(req)) - np.repeat(starts, np.diff(np.append(starts, len(req))))
    context = timings.input_tokens[req] + rank + 1
    cols["num_decode_seqs"] += np.bincount(batch, minlength=n_b)
    cols["decode_tokens"] += np.bincount(batch, minlength=n_b)
    cols["kv_tokens_sum"] += np.bincount(batch, weights=context, minlength=n_b).astype(np.int64)
    np.maximum.at(cols["kv_tokens_max"], batch, context)


def _add_prefills(cols, batches: list[_Batch]) -> None:
    rows = [(b, past, chunk) for b, batch in enumerate(batches) for _, past, chunk in batch.chunks]
    if not rows:
        return
    b, past, chunk = (np.array(x, dtype=np.int64) for x in zip(*rows))
    n_b = len(batches)
    context = past + chunk
    cols["num_prefill_seqs"] += np.bincount(b, minlength=n_b)
    cols["prefill_tokens"] += np.bincount(b, weights=chunk, minlength=n_b).astype(np.int64)
    cols["kv_tokens_sum"] += np.bincount(b, weights=context, minlength=n_b).astype(np.int64)
    cols["prefill_attn_work"] += np.bincount(b, weights=chunk * context,
                                             minlength=n_b).astype(np.int64)
    np.maximum.at(cols["kv_tokens_max"], b, context)


def _timing(batches: list[_Batch], clusters: _Clusters, cols, policy, captured):
    """Start (s) and duration (ms) per step. A step ends at its batch's emission (sync) or at
    the previous batch's (async: the step that launches batch N+1 reads batch N back); ends no
    emission shows are spread over their gap in proportion to the steps' expected costs
    (:func:`_step_cost`; ``captured``: the graph-capture steps, or ``None``)."""
    n_b = len(batches)
    emitted = np.array([clusters.time[b.cluster] if b.cluster >= 0 else np.nan for b in batches])
    lag = 1 if policy.async_batching else 0
    end = np.concatenate((np.full(lag, np.nan), emitted[:n_b - lag]))
    floor = np.array([b.start for b in batches])
    captured = np.zeros(n_b, dtype=bool) if captured is None else captured
    weight = _step_cost(cols, _held_batches(batches, lag, captured), captured, end, floor)
    end = _fill_ends(end, weight, floor)
    start = np.maximum(np.concatenate(([floor[0]], end[:-1])), floor)
    start = np.minimum(start, end)
    return start, (end - start) * 1e3


def _held_batches(batches: list[_Batch], lag: int, captured: np.ndarray) -> np.ndarray:
    """Per step, the batch whose GPU work its duration holds (-1: only a launch). Async steps
    run launch to launch and hold the previous batch's work, unless they follow an idle engine
    (they then hold their own, and the next step only its launch) or a graph capture (whose
    step ran its batch: the next one holds only its launch)."""
    rows = np.arange(len(batches))
    if not lag:
        return rows
    restart = np.array([b == 0 or "idle_restart" in batch.flags
                        for b, batch in enumerate(batches)])
    after = np.concatenate(([False], restart[:-1] | captured[:-1]))
    return np.where(restart, rows, np.where(after, -1, rows - 1))


def _step_cost(cols, held: np.ndarray, captured: np.ndarray, end: np.ndarray,
               floor: np.ndarray) -> np.ndarray:
    """Per step, its expected duration (relative units): a linear cost of the batch it holds
    (``_COST_COLUMNS``) plus a graph-capture term, fitted by non-negative least squares in
    relative error on the steps whose start and end both show in the timings; tokens plus the
    median step's tokens where fewer than ``_MIN_COST_FIT`` steps show both."""
    from scipy.optimize import nnls

    own = np.column_stack([np.ones(len(held))] + [cols[c] for c in _COST_COLUMNS]).astype(float)
    x = np.where(held[:, None] >= 0, own[np.maximum(held, 0)], 0.0)
    x[:, 0] = 1.0
    x = np.column_stack((x, captured.astype(float)))
    duration = np.diff(end, prepend=np.nan)
    previous = np.concatenate(([np.nan], end[:-1]))
    known = np.isfinite(duration) & (duration > 0) & (held >= 0) & (previous >= floor - 1e-9)
    if known.sum() >= _MIN_COST_FIT:
        scale = np.maximum(np.abs(x[known]).max(axis=0), 1.0)
        a = x[known] / scale / duration[known, None]
        coef, _ = nnls(a, np.ones(int(known.sum())))
        cost = x @ (coef / scale)
        if np.all(np.isfinite(cost)) and cost.max() > 0:
            return np.maximum(cost, cost.max() * 1e-6)
    tokens = x[:, 1] + x[:, 2]
    return np.where(held >= 0, tokens + max(float(np.median(tokens)), 1.0), 1.0)


def _fill_ends(end: np.ndarray, weight: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Unknown step ends placed between the known ones in proportion to ``weight``."""
    end = end.copy()
    known = np.flatnonzero(np.isfinite(end))
    last_known = floor[0]
    prev = -1
    for k in known.tolist() + [len(end)]:
        if k - prev > 1:
            lo = end[prev] if prev >= 0 else max(last_known, floor[prev + 1])
            hi = end[k] if k < len(end) else np.nan
            seg = weight[prev + 1:k + 1] if k < len(end) else weight[prev + 1:k]
            if np.isnan(hi):  # trailing steps with no emission after them: their own weight
                hi = lo + 1e-3 * seg.sum() / max(seg.mean(), 1.0) * 10.0
            share = np.cumsum(seg) / seg.sum() * (hi - lo)
            end[prev + 1:k] = lo + share[:k - prev - 1]
        prev = k
    return end


# ---------------------------------------------------------------------------------------------
# CUDA-graph captures: the engine policy's step hook replayed over the rebuilt batches
# ---------------------------------------------------------------------------------------------

def _replayed_captures(cols: dict, run: Mapping, spec: EngineSpec) -> np.ndarray | None:
    """Per step, whether it captured a CUDA graph: the first step of each graph key, as the
    simulator policy's step hook keys them (padded query tokens, KV read, ...) for the run's
    configuration; ``None`` where the engine has no policy or the run no usable configuration."""
    replay = _capture_replay(run, spec)
    if replay is None:
        return None
    hook, params, state, replica = replay
    n_steps, fast_path = _replica_columns()
    q = cols["prefill_tokens"] + cols["decode_tokens"]
    kv_read = cols["kv_tokens_sum"] - q
    out = np.zeros(len(q), dtype=bool)
    for k in range(len(q)):
        replica[0, n_steps] = k  # the engine's step count (async IO pair = its parity)
        replica[0, fast_path] = 0  # the decode fast path is not visible in the timings
        out[k] = hook(state, 0, params, replica, cols["num_seqs"][k], q[k], kv_read[k],
                      cols["kv_tokens_max"][k])[0]
    return out


def _capture_replay(run: Mapping, spec: EngineSpec):
    """(step hook, kernel parameters, hook state, replica state) of the run's engine policy,
    or ``None`` when the engine has no simulator policy or the configuration does not resolve."""
    from servetune import ConfigError
    from servetune.tuner.simulator._policies import get_policy
    from servetune.tuner.simulator._state import _NRCOL, no_step_hook

    if spec.policy is None:
        return None
    sim = get_policy(spec.policy)
    if sim.step_hook is no_step_hook:
        return None
    try:
        params = sim.params(sim.resolve(_policy_config(run, spec, sim)))
    except (ConfigError, InputError, KeyError, TypeError, ValueError):
        return None
    return sim.step_hook, params, sim.hook_init(params, 1, 0), np.zeros((1, _NRCOL), np.int64)


def _replica_columns() -> tuple[int, int]:
    from servetune.tuner.simulator._state import _FASTPATH, _NSTEPS
    return _NSTEPS, _FASTPATH


def _policy_config(run: Mapping, spec: EngineSpec, sim) -> dict:
    """The simulator configuration of a ``runs`` row: its JSON ``config`` (the keys the policy
    accepts, in a form its knobs take), overlaid with the row's knob columns; simulation-only
    keys left unset take their least valid value (costs and hardware sizes do not change
    which step captures)."""
    config = _json_config(run.get("config"))
    accepted = set(sim.keys()) | set(sim.aliases)
    knobs = {k.name: k for k in spec.knobs}
    out = {}
    for key, value in config.items():
        name = spec.spellings.get(key, key)
        if key in accepted and value is not None and _coerces(knobs.get(name), value, spec):
            out[name] = value
    for knob in spec.knobs:
        if knob.runs_column and knob.name in accepted and _known(run.get(knob.runs_column)):
            value = run[knob.runs_column]
            out[knob.name] = value.item() if hasattr(value, "item") else value
    unset = {k.name: k.minimum for k in sim.knobs
             if k.default is None and k.minimum is not None and k.name not in out}
    return {**unset, **out}


def _json_config(value) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _coerces(knob, value, spec: EngineSpec) -> bool:
    if knob is None:
        return True
    try:
        knob.coerce(value, spec.name)
    except Exception:  # noqa: BLE001 - a value the knob refuses is left to the runs columns
        return False
    return True


def _slow_steps(duration_ms: np.ndarray) -> np.ndarray:
    """Steps far slower than their neighbours: suspected one-off graph captures."""
    local = pd.Series(duration_ms).rolling(_CAPTURE_WINDOW, center=True, min_periods=1).median()
    return duration_ms > _CAPTURE_FACTOR * local.to_numpy()


def _mark_captures(cols: dict, captured: np.ndarray) -> list:
    """The steps' ``extra`` with ``graph_captured`` set as the collector sets it (training
    leaves these steps out; the next step reads ``prev_graph_captured``)."""
    out = list(cols["extra"])
    for k in np.flatnonzero(captured):
        record = json.loads(out[k])
        record["graph_captured"] = True
        out[k] = json.dumps(record, separators=(",", ":"))
    return out


def _extras(batches, clusters: _Clusters, timings: _Timings, rq: _Requests, policy):
    n_c = len(clusters.time)
    emitting = np.bincount(clusters.of_emission, minlength=n_c)
    gap_prev = np.diff(clusters.time, prepend=-np.inf)
    gap_next = np.diff(clusters.time, append=np.inf)
    clarity = 1.0 - 0.5 * np.clip(clusters.spread / np.minimum(gap_prev, gap_next), 0.0, 1.0)
    coalesced_clusters = np.zeros(n_c + 1, dtype=bool)
    req, clu = rq.members
    coalesced_clusters[clu[timings.coalesced[req]]] = True
    lag = 1 if policy.async_batching else 0
    out = []
    for b, batch in enumerate(batches):
        c = batch.cluster
        flags = list(dict.fromkeys(batch.flags))
        if c >= 0:
            conf = float(clarity[c])
            if clusters.split[c]:
                flags.append("split_cluster")
                conf *= _SPLIT_PENALTY
            if coalesced_clusters[c]:
                flags.append("coalesced")
                conf *= _COALESCED_PENALTY
        else:
            conf = _INVISIBLE_CONFIDENCE
        if b < lag or (b >= lag and batches[b - lag].cluster < 0 and c >= 0):
            flags.append("end_interpolated")
            conf = min(conf, 0.5)
        conf *= _PLACE_PENALTY ** sum(f in ("over_budget", "late_arrival", "held_prefill",
                                              "after_invisible", "missed_step") for f in flags)
        record = {"confidence": round(conf, 3), "emitting": int(emitting[c]) if c >= 0 else 0,
                  "invisible": c < 0, "flags": flags}
        out.append(json.dumps(record, separators=(",", ":")))
    return out


def _steps_frame(cols: dict, run: dict, spec: EngineSpec) -> pd.DataFrame:
    n = len(cols["start_s"])
    frame = pd.DataFrame({
        "run_id": _identity(run, "run_id"), "engine": spec.name,
        "model": _identity(run, "model"), "hardware": _identity(run, "hardware"),
        "engine_version": run.get("engine_version"), "source": RECONSTRUCTED_SOURCE,
        "gpu_count": run.get("gpu_count"), "tp_size": run.get("tp_size"),
        "pp_size": run.get("pp_size"), "dp_rank": 0, "step_index": np.arange(n),
        **cols, "block_size": run.get("block_size")}, index=pd.RangeIndex(n))
    return conform(frame, "steps").to_pandas()


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------

def _identity(run: Mapping, name: str) -> str:
    value = run.get(name)
    if not _known(value) or value == "":
        raise InputError(f"the run has no {name}; reconstructed steps need the run's identity",
                         field=name)
    return str(value)


def _known(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) \
        and value is not pd.NA


def _positive_int(value) -> int | None:
    if not _known(value):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"expected a whole number of tokens or sequences, got {value!r}"
                         ) from None
    return number if number > 0 else None


def _has_choice(spec: EngineSpec, value: str) -> bool:
    return any(value in (knob.choices or ()) for knob in spec.knobs)


def match_steps(real: pd.DataFrame, rebuilt: pd.DataFrame, *,
                tolerance_ms: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Positions of matched step pairs: each recorded step and the rebuilt step whose end is
    nearest, where that is within ``tolerance_ms``. Returns ``(real_rows, rebuilt_rows)``."""
    real_end = (real["start_s"] + real["duration_ms"] / 1e3).to_numpy()
    rebuilt_end = (rebuilt["start_s"] + rebuilt["duration_ms"] / 1e3).to_numpy()
    if not len(real_end) or not len(rebuilt_end):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.argsort(rebuilt_end, kind="stable")
    sorted_end = rebuilt_end[order]
    pos = np.clip(np.searchsorted(sorted_end, real_end), 1, max(len(sorted_end) - 1, 1))
    left, right = pos - 1, np.minimum(pos, len(sorted_end) - 1)
    nearest = np.where(np.abs(sorted_end[left] - real_end)
                       <= np.abs(sorted_end[right] - real_end), left, right)
    matched = np.abs(sorted_end[nearest] - real_end) <= tolerance_ms / 1e3
    return np.flatnonzero(matched), order[nearest[matched]]


def compare_reconstruction(real: pd.DataFrame, rebuilt: pd.DataFrame, *,
                           tolerance_ms: float = 1.0) -> dict:
    """How well one run's rebuilt steps match its recorded ones, matched by step end time.

    Steps are paired by :func:`match_steps`. Returns the step count ratio, the matched share,
    the median and p90 relative duration error of matched steps, the share of matched steps
    with the same number of decode sequences, and both prefill token totals.
    """
    rows, twin = match_steps(real, rebuilt, tolerance_ms=tolerance_ms)
    true_ms = real["duration_ms"].to_numpy()[rows]
    error = np.abs(rebuilt["duration_ms"].to_numpy()[twin] - true_ms) / true_ms
    same_decodes = (rebuilt["num_decode_seqs"].to_numpy()[twin]
                    == real["num_decode_seqs"].to_numpy()[rows])
    return {"real_steps": len(real), "rebuilt_steps": len(rebuilt),
            "count_ratio": len(rebuilt) / max(len(real), 1),
            "matched_share": len(rows) / len(real) if len(real) else 0.0,
            "duration_error_p50": float(np.median(error)) if len(error) else float("nan"),
            "duration_error_p90": float(np.percentile(error, 90)) if len(error) else float("nan"),
            "decode_exact_share": float(same_decodes.mean()) if len(error) else float("nan"),
            "real_prefill_tokens": int(real["prefill_tokens"].sum()),
            "rebuilt_prefill_tokens": int(rebuilt["prefill_tokens"].sum())}
