"""Shared state layout of the simulation kernel: parameter indices, request and replica columns,
the small queue / block helpers every policy uses, seeded noise, and the no-op step hook of
policies without one (all ``numba.njit``).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["ROUTER_ROUND_ROBIN", "ROUTER_LEAST_PENDING", "P_NAMES", "N_PARAMS", "STEP_COLUMNS",
           "no_hook_init", "no_step_hook"]

ROUTER_ROUND_ROBIN = 0
ROUTER_LEAST_PENDING = 1

# Indices of the float64 parameter vector every policy reads from.
P_NAMES = (
    "block_size",            # 0  tokens per KV block
    "num_blocks",            # 1  KV blocks per replica
    "max_tokens",            # 2  token budget per step (max_batch_tokens / max_num_batched_tokens)
    "max_seqs",              # 3  sequences per step (max_requests_per_batch / max_num_seqs)
    "safety_margin",         # 4  transformers: free-block fraction below which prefills stop;
                             #    vLLM: watermark fraction kept free when admitting new requests
    "async_batching",        # 5  a step's tokens are read back when the next step is launched
                             #    (transformers async batching: finished requests take one more
                             #    step slot); any policy may set it
    "max_blocks_per_request",  # 6 transformers decode fast path (0 disables it)
    "prefill_first",         # 7  transformers: PrefillFirstScheduler instead of FIFO
    "long_prefill_threshold",  # 8 vLLM: cap on one request's prefill chunk (0 = none)
    "max_partial_prefills",  # 9  vLLM: sequences with a partial prefill per step (0 = no limit)
    "chunked_prefill",       # 10 vLLM: split prompts over steps
    "min_step_ms",           # 11 floor on a predicted step time
    "step_overhead_ms",      # 12 constant added to every predicted step
    "cuda_graph",            # 13 transformers: CUDA graphs, captured the first time a padded
                             #    batch shape is seen (per IO pair with async batching)
    "q_padding",             # 14 transformers: query padding interval (tokens)
    "kv_padding",            # 15 transformers: KV read padding interval (tokens)
    "graph_capture_ms",      # 16 transformers: cost of one graph capture ...
    "graph_capture_ms_per_token",  # 17 ... plus this per padded query token
    "graph_capture_ms_per_kv_token",  # 18 ... plus this per padded KV token read (varlen path)
    "graph_capture_repeat_factor",  # 19 ... times this when its query/KV shape was captured
    "graph_capture_noise_cv",  # 20 seeded log-normal noise on each capture's cost (CV; 0: none)
    "graph_capture_run_cv",  # 21 seeded log-normal factor on all of a replica's captures (CV)
)
N_PARAMS = len(P_NAMES)
_BS, _NB, _MAXTOK, _MAXSEQ, _SAFETY, _ASYNC, _MAXBPR, _PFIRST, _LONGTHR, _MAXPART, _CHUNKED = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
_MINSTEP, _OVERHEAD = 11, 12
_GRAPHS, _QPAD, _KVPAD, _CAPMS, _CAPTOK, _CAPKV, _CAPREP = 13, 14, 15, 16, 17, 18, 19
_CAPCV, _CAPRUNCV = 20, 21
_GRAPH_SLOTS = 1 << 13  # graph shapes remembered per replica (open addressing)

# Per-request integer state columns.
_REP, _INP, _OUT, _KNOWN, _COMP, _GEN, _BLOCKS, _STATE, _TSTAT, _PREEMPT, _PTGT = range(11)
_NCOL = 11
# _STATE values
_NOT_ARRIVED, _WAITING, _RUNNING, _DONE, _FAILED, _ZOMBIE = 0, 1, 2, 3, 4, 5
# _TSTAT values (transformers RequestStatus)
_PENDING, _PREFILLING, _DECODING = 0, 1, 2

# Per-replica integer state columns.
_FREE, _BUSY, _RUNCNT, _WHEAD, _WTAIL, _BLOCKNEW, _BATCHCNT, _PENDTOK, _NSTEPS, _FASTPATH = (
    range(10))
_NRCOL = 10

# Recorded step columns (float64): replica, start_s, duration_ms, then RAW_COLUMNS.
STEP_COLUMNS = ("dp_rank", "start_s", "duration_ms", "num_seqs", "num_prefill_seqs",
                "num_decode_seqs", "prefill_tokens", "decode_tokens", "kv_tokens_sum",
                "kv_tokens_max", "prefill_attn_work")


@numba.njit(cache=True)
def _cdiv(a, b):
    return (a + b - 1) // b


@numba.njit(cache=True)
def _push_back(wq, rs, r, i):
    """Append request ``i`` to replica ``r``'s waiting queue (its window ``[head, tail)`` of row
    ``r``, which starts in the middle so that requests can also be put back at the front)."""
    if rs[r, _WTAIL] == wq.shape[1]:
        _rebase_waiting(wq, rs, r)
    wq[r, rs[r, _WTAIL]] = i
    rs[r, _WTAIL] += 1


@numba.njit(cache=True)
def _rebase_waiting(wq, rs, r):
    """Move replica ``r``'s waiting window back to the middle of its row, order kept.

    Requests re-queued at the back (transformers offloading) walk the window towards the row's
    end; it holds at most one entry per request, so it always fits again.
    """
    head = rs[r, _WHEAD]
    length = rs[r, _WTAIL] - head
    new_head = min(wq.shape[1] // 2, wq.shape[1] - 1 - length)
    if new_head >= head:
        raise RuntimeError("waiting queue overflow: more entries than requests")
    for k in range(length):
        wq[r, new_head + k] = wq[r, head + k]
    rs[r, _WHEAD] = new_head
    rs[r, _WTAIL] = new_head + length


@numba.njit(cache=True)
def _push_front(wq, rs, r, i):
    rs[r, _WHEAD] -= 1
    wq[r, rs[r, _WHEAD]] = i


@numba.njit(cache=True)
def _compact_waiting(wq, rs, r, st):
    """Drop entries of replica ``r``'s waiting queue that are no longer waiting (order kept)."""
    h = rs[r, _WHEAD]
    w = h
    for k in range(h, rs[r, _WTAIL]):
        i = wq[r, k]
        if st[i, _STATE] == _WAITING:
            wq[r, w] = i
            w += 1
    rs[r, _WTAIL] = w


@numba.njit(cache=True)
def _compact_running(run, rs, r, st):
    """Drop entries of replica ``r``'s active list that are not running (order kept)."""
    w = 0
    for k in range(rs[r, _RUNCNT]):
        i = run[r, k]
        s = st[i, _STATE]
        if s == _RUNNING or s == _ZOMBIE:
            run[r, w] = i
            w += 1
    rs[r, _RUNCNT] = w


@numba.njit(cache=True)
def _add_to_batch(bq, bl, rs, r, i, length):
    k = rs[r, _BATCHCNT]
    bq[r, k] = i
    bl[r, k] = length
    rs[r, _BATCHCNT] = k + 1


@numba.njit(cache=True)
def _release(st, rs, i):
    """Free request ``i``'s KV blocks."""
    r = st[i, _REP]
    rs[r, _FREE] += st[i, _BLOCKS]
    st[i, _BLOCKS] = 0


@numba.njit(cache=True)
def _reset_for_recompute(st, rs, i):
    """Preemption by recompute: drop the KV cache; prompt + generated tokens are prefilled again."""
    _release(st, rs, i)
    r = st[i, _REP]
    rs[r, _PENDTOK] += st[i, _COMP]
    st[i, _COMP] = 0
    st[i, _PTGT] = st[i, _KNOWN]
    st[i, _STATE] = _WAITING
    st[i, _TSTAT] = _PENDING
    st[i, _PREEMPT] += 1


@numba.njit(cache=True)
def _admit_head(st, rs, run, wq, r, need):
    """Move replica ``r``'s first waiting request to its running list with ``need`` more blocks;
    returns the request."""
    i = wq[r, rs[r, _WHEAD]]
    rs[r, _FREE] -= need
    st[i, _BLOCKS] += need
    rs[r, _WHEAD] += 1
    st[i, _STATE] = _RUNNING
    run[r, rs[r, _RUNCNT]] = i
    rs[r, _RUNCNT] += 1
    return i


# ---------------------------------------------------------------------------------------------
# seeded noise (xorshift; one state array per stream)
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _xorshift(state):
    x = state[0]
    x ^= (x << np.uint64(13)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(7)
    x ^= (x << np.uint64(17)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    state[0] = x
    return (x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True)
def _lognormal_factor(state, sigma):
    """A seeded log-normal factor of mean 1 and log-sd ``sigma`` (Box-Muller on ``state``)."""
    u1 = _xorshift(state)
    u2 = _xorshift(state)
    z = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
    return np.exp(sigma * z - 0.5 * sigma * sigma)


@numba.njit(cache=True)
def _seeded_state(seed, stream):
    """An xorshift state for ``seed``; ``stream`` keeps independent draws apart."""
    state = np.zeros(1, dtype=np.uint64)
    state[0] = (np.uint64(seed) * np.uint64(2654435761) + np.uint64(88172645463325252)
                + np.uint64(stream) * np.uint64(0x9E3779B97F4A7C15))
    if state[0] == 0:
        state[0] = np.uint64(1)
    return state


# ---------------------------------------------------------------------------------------------
# the step hook of a policy without one
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def no_hook_init(p, n_rep, seed):
    """A policy's step-hook state for one run (this one: none)."""
    return np.zeros(1)


@numba.njit(cache=True)
def no_step_hook(hs, r, p, rs, n_seq, q_tokens, kv_read, kv_max):
    """Cost beyond the predicted step time of the step replica ``r`` is about to run:
    ``(captured, extra_ms)``; ``captured`` marks the step in the features' previous-step
    columns and counts as a graph capture. This one: nothing."""
    return False, 0.0
