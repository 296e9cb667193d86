"""The simulation loop: every replica, scheduler, KV cache and step-time model in one numba function.

Nothing here is Python at run time: arrivals, routing, scheduling, block allocation, preemption,
the step composition, the feature kernel and the forest are all evaluated inside
:func:`run_kernel`, one simulated step at a time. The policies are plain ``@njit`` functions chosen
by an integer code; :mod:`servetune.tuner.simulator._policies` documents their knobs.

Time is in seconds (float64). Ties between events break deterministically: an arrival at the same
instant as a step end is routed first (so the next schedule sees it), and replicas finishing at
the same instant are handled in index order.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["run_kernel", "POLICY_TRANSFORMERS", "POLICY_VLLM", "POLICY_STATIC", "ROUTER_ROUND_ROBIN",
           "ROUTER_LEAST_PENDING", "P_NAMES", "N_PARAMS", "STEP_COLUMNS"]

POLICY_TRANSFORMERS = 0
POLICY_VLLM = 1
POLICY_STATIC = 2

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
    "async_batching",        # 5  transformers: finished requests take one more step slot
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
)
N_PARAMS = len(P_NAMES)
_BS, _NB, _MAXTOK, _MAXSEQ, _SAFETY, _ASYNC, _MAXBPR, _PFIRST, _LONGTHR, _MAXPART, _CHUNKED = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
_MINSTEP, _OVERHEAD = 11, 12
_GRAPHS, _QPAD, _KVPAD, _CAPMS, _CAPTOK = 13, 14, 15, 16, 17
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
    wq[r, rs[r, _WTAIL]] = i
    rs[r, _WTAIL] += 1


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


# ---------------------------------------------------------------------------------------------
# transformers continuous batching (FIFOScheduler / PrefillFirstScheduler, transformers 5.x)
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand, arrival, cutoff):
    """One ``schedule_batch`` call; returns (scheduled count, one_allocation_failed, n_starved).

    Mirrors ``Scheduler._process_candidates``: candidates are active DECODING then PREFILLING
    requests (FIFO) or the reverse (prefill-first), then waiting requests unless new requests are
    blocked; the safety margin stops non-decoding candidates once a batch has started; a failed
    block allocation skips the candidate (or stops at a waiting one when no block is free).
    Waiting requests that arrived after ``cutoff`` are not seen yet: with async batching the
    engine schedules batch N+1 while batch N runs, so it sees arrivals up to N's start.
    """
    bs = np.int64(p[_BS])
    nb = np.int64(p[_NB])
    rs[r, _BATCHCNT] = 0
    n_cand = 0
    first = _DECODING if p[_PFIRST] == 0.0 else _PREFILLING
    second = _PREFILLING if first == _DECODING else _DECODING
    for k in range(rs[r, _RUNCNT]):
        i = run[r, k]
        if st[i, _TSTAT] == first:
            cand[n_cand] = i
            n_cand += 1
    for k in range(rs[r, _RUNCNT]):
        i = run[r, k]
        if st[i, _TSTAT] == second:
            cand[n_cand] = i
            n_cand += 1
    n_active = n_cand
    if rs[r, _BLOCKNEW] == 0:
        n_cand += rs[r, _WTAIL] - rs[r, _WHEAD]
    w_head = rs[r, _WHEAD]

    token_budget = np.int64(p[_MAXTOK])
    cache_budget = nb * bs
    request_budget = np.int64(p[_MAXSEQ])
    max_bpr = np.int64(p[_MAXBPR])
    fast_path = max_bpr > 0
    fast_len = max_bpr * bs
    margin = p[_SAFETY] * nb
    n_sched = 0
    failed = False
    n_starved = 0
    n_taken = 0
    prefix = True  # the waiting requests taken so far are a prefix of the queue
    for c in range(n_cand):
        i = cand[c] if c < n_active else wq[r, w_head + c - n_active]
        if c >= n_active and arrival[i] > cutoff:
            prefix = False  # arrived after this schedule ran (async: during the last step)
            continue
        num_free = rs[r, _FREE]
        if num_free < margin and n_sched > 0 and st[i, _TSTAT] != _DECODING:
            break
        if st[i, _TSTAT] == _DECODING:
            req_tokens = 1
        else:
            req_tokens = st[i, _KNOWN] - st[i, _COMP]
        request_len = min(req_tokens, token_budget)
        past = st[i, _COMP]
        eligible = request_len == 1 and past < fast_len
        if not (fast_path and eligible) and cache_budget < past:
            if c >= n_active:
                prefix = False
            continue
        # _allocate_blocks_if_needed
        occupancy = st[i, _BLOCKS] * bs - past
        if occupancy < request_len or st[i, _BLOCKS] == 0:
            needed = ((request_len - occupancy + 1) // bs) + 1
            if needed > rs[r, _FREE]:
                failed = True
                if st[i, _STATE] == _WAITING:
                    if num_free == 0:
                        break
                    prefix = False
                elif st[i, _STATE] == _RUNNING:
                    starved[n_starved, 0] = i
                    starved[n_starved, 1] = needed
                    n_starved += 1
                continue
            rs[r, _FREE] -= needed
            st[i, _BLOCKS] += needed
        # _schedule_request
        if st[i, _STATE] == _WAITING:
            st[i, _STATE] = _RUNNING
            run[r, rs[r, _RUNCNT]] = i
            rs[r, _RUNCNT] += 1
            n_taken += 1
        if req_tokens <= token_budget:
            length = req_tokens
            if st[i, _TSTAT] != _DECODING:
                st[i, _TSTAT] = _DECODING
        else:
            length = token_budget
            st[i, _TSTAT] = _PREFILLING
        _add_to_batch(bq, bl, rs, r, i, length)
        n_sched += 1
        fast_path = fast_path and length == 1 and past < fast_len
        token_budget -= length
        cache_budget -= past
        request_budget -= 1
        if token_budget == 0 or (cache_budget <= 0 and not fast_path) or request_budget <= 0:
            break
    rs[r, _FASTPATH] = 1 if fast_path else 0
    if n_taken > 0:
        if prefix:
            rs[r, _WHEAD] += n_taken
        else:
            _compact_waiting(wq, rs, r, st)
    return n_sched, failed, n_starved


@numba.njit(cache=True)
def _tf_offload(r, st, rs, run, wq, starved, n_starved):
    """``OffloadingManager.offload_requests`` without a CPU pool: soft-reset starved requests,
    newest first, until the rest fit; never the last active one. Returns the number evicted."""
    free_blocks = rs[r, _FREE]
    demand = 0
    for k in range(n_starved):
        demand += starved[k, 1]
    num_active = rs[r, _RUNCNT]
    n_victims = 0
    while demand > free_blocks and n_starved > 0 and num_active - n_victims > 1:
        n_starved -= 1
        n_victims += 1
        demand -= starved[n_starved, 1]
        free_blocks += st[starved[n_starved, 0], _BLOCKS]
    if n_victims == 0:
        return 0
    # victims are starved[n_starved : n_starved + n_victims], requeued oldest first
    for k in range(n_starved, n_starved + n_victims):
        i = starved[k, 0]
        _reset_for_recompute(st, rs, i)
        _push_back(wq, rs, r, i)
    _compact_running(run, rs, r, st)
    rs[r, _BLOCKNEW] = 1
    return n_victims


@numba.njit(cache=True)
def _schedule_transformers(r, p, st, rs, run, wq, bq, bl, starved, cand, arrival, cutoff):
    n_sched, failed, n_starved = _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand, arrival,
                                          cutoff)
    while n_sched == 0 and failed:
        if _tf_offload(r, st, rs, run, wq, starved, n_starved) == 0:
            return -1  # the engine raises "No requests can be scheduled and no requests can be offloaded"
        n_sched, failed, n_starved = _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand, arrival,
                                          cutoff)
    if n_sched > 0 and n_starved > 0:
        _tf_offload(r, st, rs, run, wq, starved, n_starved)
    return n_sched


# ---------------------------------------------------------------------------------------------
# vLLM V1 scheduler (chunked prefill, FCFS, preemption by recompute)
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _schedule_vllm(r, p, st, rs, run, wq, bq, bl):
    """Running requests first (preempting the newest running one when blocks run out), then
    waiting requests in FCFS order while seats, tokens and blocks last (none after a preemption)."""
    bs = np.int64(p[_BS])
    nb = np.int64(p[_NB])
    budget = np.int64(p[_MAXTOK])
    max_seqs = np.int64(p[_MAXSEQ])
    thr = np.int64(p[_LONGTHR])
    max_partial = np.int64(p[_MAXPART])
    chunked = p[_CHUNKED] != 0.0
    watermark = np.int64(p[_SAFETY] * nb)
    rs[r, _BATCHCNT] = 0
    n_prefills = 0
    preempted = False
    k = 0
    while k < rs[r, _RUNCNT] and budget > 0:
        i = run[r, k]
        new = st[i, _KNOWN] - st[i, _COMP]
        if st[i, _STATE] == _ZOMBIE:
            new = 0
        if 0 < thr < new:
            new = thr
        new = min(new, budget)
        is_prefill = st[i, _COMP] < st[i, _PTGT]
        if new <= 0 or (is_prefill and max_partial > 0 and n_prefills >= max_partial):
            k += 1
            continue
        scheduled = True
        while True:
            need = _cdiv(st[i, _COMP] + new, bs) - st[i, _BLOCKS]
            if need <= rs[r, _FREE]:
                if need > 0:
                    rs[r, _FREE] -= need
                    st[i, _BLOCKS] += need
                break
            victim = run[r, rs[r, _RUNCNT] - 1]
            rs[r, _RUNCNT] -= 1
            _reset_for_recompute(st, rs, victim)
            _push_front(wq, rs, r, victim)
            preempted = True
            if victim == i:
                scheduled = False
                break
        if not scheduled:
            break
        _add_to_batch(bq, bl, rs, r, i, new)
        if is_prefill:
            n_prefills += 1
        budget -= new
        k += 1
    if not preempted:
        while rs[r, _WHEAD] < rs[r, _WTAIL] and budget > 0:
            if rs[r, _RUNCNT] >= max_seqs:
                break
            i = wq[r, rs[r, _WHEAD]]
            new = st[i, _KNOWN] - st[i, _COMP]
            if 0 < thr < new:
                new = thr
            if not chunked and new > budget:
                break
            new = min(new, budget)
            if max_partial > 0 and n_prefills >= max_partial:
                break
            need = _cdiv(st[i, _COMP] + new, bs) - st[i, _BLOCKS]
            if need > rs[r, _FREE] - watermark:
                break
            rs[r, _FREE] -= need
            st[i, _BLOCKS] += need
            rs[r, _WHEAD] += 1
            st[i, _STATE] = _RUNNING
            run[r, rs[r, _RUNCNT]] = i
            rs[r, _RUNCNT] += 1
            _add_to_batch(bq, bl, rs, r, i, new)
            n_prefills += 1
            budget -= new
    return rs[r, _BATCHCNT]


# ---------------------------------------------------------------------------------------------
# static batching
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _schedule_static(r, p, st, rs, run, wq, bq, bl):
    """Whole requests in fixed batches: a new batch of up to ``max_seqs`` waiting requests starts
    only when the previous one has finished; each is given the blocks of its whole sequence up
    front, prefilled in one step, then decoded one token per step."""
    bs = np.int64(p[_BS])
    max_seqs = np.int64(p[_MAXSEQ])
    rs[r, _BATCHCNT] = 0
    if rs[r, _RUNCNT] == 0:
        while rs[r, _WHEAD] < rs[r, _WTAIL] and rs[r, _RUNCNT] < max_seqs:
            i = wq[r, rs[r, _WHEAD]]
            need = _cdiv(st[i, _INP] + st[i, _OUT], bs) - st[i, _BLOCKS]
            if need > rs[r, _FREE]:
                break
            rs[r, _FREE] -= need
            st[i, _BLOCKS] += need
            rs[r, _WHEAD] += 1
            st[i, _STATE] = _RUNNING
            run[r, rs[r, _RUNCNT]] = i
            rs[r, _RUNCNT] += 1
    for k in range(rs[r, _RUNCNT]):
        i = run[r, k]
        new = st[i, _KNOWN] - st[i, _COMP]
        if new > 0:
            _add_to_batch(bq, bl, rs, r, i, new)
    return rs[r, _BATCHCNT]


# ---------------------------------------------------------------------------------------------
# transformers CUDA graphs: padded batch shapes, captured once each
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _pad_to_interval(size, interval, max_value):
    if interval <= 0:
        return max_value
    padded = _cdiv(size, interval) * interval if size > 0 else interval
    return min(padded, max_value)


@numba.njit(cache=True)
def _pad_to_pow2(value, max_value, min_value):
    value = max(value, max(1, min_value))
    padded = 1
    while padded < value:
        padded *= 2
    return min(padded, max_value)


@numba.njit(cache=True)
def _graph_key(p, n_seq, num_q, kv_read, kv_max, fast_path, pair):
    """The engine's graph key (``ContinuousBatchingIOs._get_graph_key``) of a step, hashed:
    decode fast path: padded request count; varlen path: padded query tokens, padded KV read,
    padded longest key length; with async batching each IO pair has its own graphs."""
    if fast_path:
        q = _pad_to_pow2(n_seq, np.int64(p[_MAXSEQ]), 0)
        key = q * np.int64(1000003) + np.int64(7)
    else:
        pages = np.int64(p[_NB]) * np.int64(p[_BS])
        q = _pad_to_interval(num_q, np.int64(p[_QPAD]), np.int64(p[_MAXTOK]))
        kv = _pad_to_interval(kv_read, np.int64(p[_KVPAD]), pages)
        sk = _pad_to_pow2(kv_max, pages, 1024)
        key = (q * np.int64(2654435761) + kv) * np.int64(40503) + sk
    key = key * 2 + pair
    if key < 0:
        key = -key
    return key, q


@numba.njit(cache=True)
def _graph_seen(graphs, r, key):
    """True if replica ``r`` already captured ``key``; otherwise remember it and return False."""
    slot = key % _GRAPH_SLOTS
    for _ in range(_GRAPH_SLOTS):
        k = graphs[r, slot]
        if k == key:
            return True
        if k == -1:
            graphs[r, slot] = key
            return False
        slot = (slot + 1) % _GRAPH_SLOTS
    return True  # table full: treat further shapes as captured


# ---------------------------------------------------------------------------------------------
# branchless forest evaluation
# ---------------------------------------------------------------------------------------------

_GROUP = 16  # trees walked side by side, so their dependent loads overlap


@numba.njit(cache=True)
def fast_forest_margin(feat, thr, left, value, roots, max_depth, base_margin, x, nodes):
    """The forest's raw margin, equal bit for bit to ``models.forest_predict_row`` for a row
    without NaN, on the layout of ``_simulate.pack_forest`` (children at ``left`` and
    ``left + 1``, leaves loop onto themselves): every tree takes ``max_depth`` branch-free steps,
    16 trees at a time, and leaf values are added in tree order as the reference does."""
    total = base_margin
    n_trees = roots.shape[0]
    for g0 in range(0, n_trees, _GROUP):
        m = min(_GROUP, n_trees - g0)
        for j in range(m):
            nodes[j] = roots[g0 + j]
        for _ in range(max_depth):
            for j in range(m):
                nd = nodes[j]
                nodes[j] = left[nd] + (x[feat[nd]] >= thr[nd])
        for j in range(m):
            total += value[nodes[j]]
    return total


@numba.njit(cache=True)
def fast_forest_margin_box(feat, thr, left, value, roots, max_depth, base_margin, x, nodes, lo,
                           hi):
    """:func:`fast_forest_margin`, also narrowing ``lo``/``hi`` (reset by the caller to -inf/+inf)
    to the box of inputs that take exactly the same path through every tree: any ``y`` with
    ``lo <= y < hi`` feature-wise gets the same margin, bit for bit, without a walk."""
    total = base_margin
    n_trees = roots.shape[0]
    for g0 in range(0, n_trees, _GROUP):
        m = min(_GROUP, n_trees - g0)
        for j in range(m):
            nodes[j] = roots[g0 + j]
        for _ in range(max_depth):
            for j in range(m):
                nd = nodes[j]
                f = feat[nd]
                t = thr[nd]
                if x[f] >= t:
                    nodes[j] = left[nd] + 1
                    if t > lo[f]:
                        lo[f] = t
                else:
                    nodes[j] = left[nd]
                    if t < hi[f]:
                        hi[f] = t
        for j in range(m):
            total += value[nodes[j]]
    return total


# ---------------------------------------------------------------------------------------------
# the event loop
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _xorshift(state):
    x = state[0]
    x ^= (x << np.uint64(13)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x ^= x >> np.uint64(7)
    x ^= (x << np.uint64(17)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    state[0] = x
    return (x >> np.uint64(11)) * (1.0 / 9007199254740992.0)


# Not cached: its signature holds the feature set's kernel (a dispatcher type), and numba's
# on-disk index would pickle that function by reference and fail to load once features change.
@numba.njit
def run_kernel(policy, router, n_replicas, p, arrival, inp, out, knobs, feat_kernel, n_features,
               feature, threshold, left, right, default_left, value, roots, base_margin,
               log_target, predict_row, fast_feat, fast_thr, fast_left, max_depth, use_fast,
               fold_mask, step_noise_cv, seed, record_steps):
    """Simulate one deployment; returns per-request arrays, token times and (optionally) steps.

    Returns:
        ``(req_int, first_sched_s, first_token_s, finish_s, token_s, token_offset, steps,
        n_steps, total_steps)``: ``req_int`` (n, 4) = replica, status (3 ok, 4 failed),
        preemptions, generated tokens; ``token_s`` every output token's time, request ``i``'s at
        ``token_offset[i]:token_offset[i+1]``; ``steps`` (n_steps, 11) when recorded.
    """
    n = arrival.shape[0]
    n_rep = n_replicas
    st = np.zeros((n, _NCOL), dtype=np.int64)
    for i in range(n):
        st[i, _INP] = inp[i]
        st[i, _OUT] = out[i]
        st[i, _KNOWN] = inp[i]
        st[i, _PTGT] = inp[i]
        st[i, _REP] = -1
    token_offset = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        token_offset[i + 1] = token_offset[i] + out[i]
    token_s = np.full(token_offset[n], np.nan)
    first_sched = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)

    rs = np.zeros((n_rep, _NRCOL), dtype=np.int64)
    for r in range(n_rep):
        rs[r, _FREE] = np.int64(p[_NB])
        rs[r, _WHEAD] = n + 1
        rs[r, _WTAIL] = n + 1
    t_end = np.zeros(n_rep)
    t_start = np.zeros(n_rep)
    run = np.zeros((n_rep, n + 1), dtype=np.int64)
    wq = np.zeros((n_rep, 2 * n + 2), dtype=np.int64)
    bq = np.zeros((n_rep, n + 1), dtype=np.int64)
    bl = np.zeros((n_rep, n + 1), dtype=np.int64)
    starved = np.zeros((n + 1, 2), dtype=np.int64)
    cand = np.zeros(2 * n + 2, dtype=np.int64)
    raw = np.zeros(8)
    fbuf = np.zeros(n_features, dtype=np.float32)
    nodebuf = np.zeros(_GROUP, dtype=np.int64)
    use_graphs = policy == POLICY_TRANSFORMERS and p[_GRAPHS] != 0.0
    graphs = np.full((n_rep if use_graphs else 1, _GRAPH_SLOTS), -1, dtype=np.int64)
    n_captures = 0
    # per replica: the input box of the last walked step, inside which the margin is the same
    box_lo = np.zeros((n_rep, n_features), dtype=np.float32)
    box_hi = np.zeros((n_rep, n_features), dtype=np.float32)
    box_margin = np.zeros(n_rep)
    box_valid = np.zeros(n_rep, dtype=np.bool_)
    box_uses = np.zeros(n_rep, dtype=np.int64)
    box_skip = np.zeros(n_rep, dtype=np.int64)
    box_hits = 0
    rng = np.zeros(1, dtype=np.uint64)
    rng[0] = np.uint64(seed) * np.uint64(2654435761) + np.uint64(88172645463325252)
    if rng[0] == 0:
        rng[0] = np.uint64(1)
    cap = 1024 if record_steps else 1
    steps = np.zeros((cap, len(STEP_COLUMNS)))
    n_steps = 0
    total_steps = 0
    rr_next = 0
    nxt = 0
    kick = np.zeros(n_rep, dtype=np.int64)
    kicked = np.zeros(n_rep, dtype=np.int64)
    n_kicked = 0
    t_now = 0.0
    from_step = False
    min_step_s = p[_MINSTEP] / 1e3
    overhead_ms = p[_OVERHEAD]
    sigma = np.sqrt(np.log(1.0 + step_noise_cv * step_noise_cv)) if step_noise_cv > 0 else 0.0

    while True:
        # next step end among busy replicas (lowest index on ties)
        r_min = -1
        t_min = np.inf
        for r in range(n_rep):
            if rs[r, _BUSY] == 1 and t_end[r] < t_min:
                t_min = t_end[r]
                r_min = r
        if nxt < n and arrival[nxt] <= t_min:
            # route the arrival
            i = nxt
            nxt += 1
            now = arrival[i]
            if router == ROUTER_ROUND_ROBIN:
                r = rr_next
                rr_next = (rr_next + 1) % n_rep
            else:
                r = 0
                for q in range(1, n_rep):
                    if rs[q, _PENDTOK] < rs[r, _PENDTOK]:
                        r = q
            st[i, _REP] = r
            st[i, _STATE] = _WAITING
            rs[r, _PENDTOK] += inp[i] + 1
            _push_back(wq, rs, r, i)
            if rs[r, _BUSY] == 0 and kick[r] == 0:
                kick[r] = 1
                kicked[n_kicked] = r
                n_kicked += 1
            if n_kicked == 0 or (nxt < n and arrival[nxt] <= now):
                continue  # route every arrival of this instant before scheduling
            t_now = now
            from_step = False
        elif r_min >= 0:
            # finish replica r_min's step
            r = r_min
            t_now = t_end[r]
            # async batching: requests that finished in the previous step are freed now (the
            # engine learns of the finish after it scheduled this step)
            for k in range(rs[r, _RUNCNT]):
                i = run[r, k]
                if st[i, _STATE] == _ZOMBIE:
                    st[i, _STATE] = _DONE
                    _release(st, rs, i)
                    rs[r, _BLOCKNEW] = 0
            for k in range(rs[r, _BATCHCNT]):
                i = bq[r, k]
                length = bl[r, k]
                if st[i, _STATE] != _RUNNING:
                    continue
                st[i, _COMP] += length
                rs[r, _PENDTOK] -= length
                if st[i, _COMP] == st[i, _KNOWN]:
                    g = st[i, _GEN]
                    token_s[token_offset[i] + g] = t_now
                    if g == 0:
                        first_tok[i] = t_now
                    st[i, _GEN] = g + 1
                    if g + 1 >= st[i, _OUT]:
                        finish[i] = t_now
                        rs[r, _PENDTOK] -= 1
                        if policy == POLICY_TRANSFORMERS and p[_ASYNC] != 0.0:
                            st[i, _STATE] = _ZOMBIE  # still in the batch scheduled before we knew
                        else:
                            st[i, _STATE] = _DONE
                            _release(st, rs, i)
                            rs[r, _BLOCKNEW] = 0
                    else:
                        st[i, _KNOWN] += 1
                        rs[r, _PENDTOK] += 1
            _compact_running(run, rs, r, st)
            rs[r, _BUSY] = 0
            kicked[0] = r
            n_kicked = 1
            from_step = True
        else:
            break

        for q in range(n_kicked):
            r = kicked[q]
            kick[r] = 0
            cutoff = t_now
            if p[_ASYNC] != 0.0 and from_step:
                cutoff = t_start[r]
            while True:
                if policy == POLICY_TRANSFORMERS:
                    got = _schedule_transformers(r, p, st, rs, run, wq, bq, bl, starved, cand,
                                                 arrival, cutoff)
                elif policy == POLICY_VLLM:
                    got = _schedule_vllm(r, p, st, rs, run, wq, bq, bl)
                else:
                    got = _schedule_static(r, p, st, rs, run, wq, bq, bl)
                if got > 0:
                    break
                if cutoff < t_now:
                    cutoff = t_now  # an empty batch: the engine loops and sees the new arrivals
                    continue
                # nothing schedulable although requests wait: a request larger than the whole cache
                # (the engine would raise or stall forever); fail it and try again
                if rs[r, _RUNCNT] > 0:
                    victim = run[r, 0]
                elif rs[r, _WHEAD] < rs[r, _WTAIL]:
                    victim = wq[r, rs[r, _WHEAD]]
                else:
                    got = 0
                    break
                if st[victim, _STATE] != _WAITING:
                    _release(st, rs, victim)
                rs[r, _PENDTOK] -= st[victim, _KNOWN] - st[victim, _COMP] + 1
                st[victim, _STATE] = _FAILED
                finish[victim] = t_now
                _compact_running(run, rs, r, st)
                _compact_waiting(wq, rs, r, st)
            if got <= 0:
                continue

            # composition of the step and its predicted duration
            n_pf = 0
            pf_tok = 0
            dc_tok = 0
            kv_sum = 0
            kv_max = 0
            attn = 0
            for k in range(rs[r, _BATCHCNT]):
                i = bq[r, k]
                length = bl[r, k]
                past = st[i, _COMP]
                ctx = past + length
                kv_sum += ctx
                if ctx > kv_max:
                    kv_max = ctx
                if past < st[i, _PTGT]:
                    n_pf += 1
                    pf_tok += length
                    attn += length * ctx
                else:
                    dc_tok += length
                if np.isnan(first_sched[i]):
                    first_sched[i] = t_now
            n_seq = rs[r, _BATCHCNT]
            raw[0] = n_seq
            raw[1] = n_pf
            raw[2] = n_seq - n_pf
            raw[3] = pf_tok
            raw[4] = dc_tok
            raw[5] = kv_sum
            raw[6] = kv_max
            raw[7] = attn
            feat_kernel(raw, knobs, fbuf)
            finite = use_fast
            if finite:
                for c in range(n_features):
                    # the folded forest is exact while exactly the folded features are NaN
                    if np.isnan(fbuf[c]) != (fold_mask[c] != 0):
                        finite = False
                        break
                if finite:
                    # features that are NaN for the whole run (an unknown engine knob): their
                    # splits were folded to the missing-value direction, any value walks them
                    for c in range(n_features):
                        if fold_mask[c] != 0:
                            fbuf[c] = 0.0
            if finite:
                inside = box_valid[r]
                if inside:
                    for c in range(n_features):
                        if not (box_lo[r, c] <= fbuf[c] < box_hi[r, c]):
                            inside = False
                            break
                if inside:
                    margin = box_margin[r]
                    box_hits += 1
                    box_uses[r] += 1
                elif box_skip[r] > 0:
                    # recent boxes were never reused: walk without building one for a while
                    box_skip[r] -= 1
                    margin = fast_forest_margin(fast_feat, fast_thr, fast_left, value, roots,
                                                max_depth, base_margin, fbuf, nodebuf)
                else:
                    if box_valid[r] and box_uses[r] == 0:
                        box_skip[r] = 8
                    box_uses[r] = 0
                    for c in range(n_features):
                        box_lo[r, c] = -np.inf
                        box_hi[r, c] = np.inf
                    margin = fast_forest_margin_box(fast_feat, fast_thr, fast_left, value, roots,
                                                    max_depth, base_margin, fbuf, nodebuf,
                                                    box_lo[r], box_hi[r])
                    box_margin[r] = margin
                    box_valid[r] = True
            else:
                margin = predict_row(feature, threshold, left, right, default_left, value,
                                     roots, base_margin, fbuf)
            ms = np.exp(margin) if log_target else margin
            ms += overhead_ms
            if use_graphs:
                pair = rs[r, _NSTEPS] % 2 if p[_ASYNC] != 0.0 else 0
                key, q_pad = _graph_key(p, n_seq, pf_tok + dc_tok, kv_sum - pf_tok - dc_tok,
                                        kv_max, rs[r, _FASTPATH] == 1, pair)
                if not _graph_seen(graphs, r, key):
                    ms += p[_CAPMS] + p[_CAPTOK] * q_pad
                    n_captures += 1
            if sigma > 0.0:
                u1 = _xorshift(rng)
                u2 = _xorshift(rng)
                z = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
                ms *= np.exp(sigma * z - 0.5 * sigma * sigma)
            dur = ms / 1e3
            if not dur >= min_step_s:
                dur = min_step_s
            t_start[r] = t_now
            t_end[r] = t_now + dur
            rs[r, _BUSY] = 1
            rs[r, _NSTEPS] += 1
            total_steps += 1
            if record_steps:
                if n_steps == steps.shape[0]:
                    grown = np.zeros((2 * n_steps, len(STEP_COLUMNS)))
                    grown[:n_steps] = steps
                    steps = grown
                steps[n_steps, 0] = r
                steps[n_steps, 1] = t_now
                steps[n_steps, 2] = dur * 1e3
                for c in range(8):
                    steps[n_steps, 3 + c] = raw[c]
                n_steps += 1
        n_kicked = 0

    req = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        req[i, 0] = st[i, _REP]
        req[i, 1] = st[i, _STATE]
        req[i, 2] = st[i, _PREEMPT]
        req[i, 3] = st[i, _GEN]
    return (req, first_sched, first_tok, finish, token_s, token_offset, steps[:n_steps], n_steps,
            total_steps, box_hits, n_captures)
