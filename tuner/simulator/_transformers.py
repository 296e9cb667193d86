"""transformers continuous batching (transformers 5.x): FIFOScheduler / PrefillFirstScheduler,
soft-reset offloading when blocks run out, and the CUDA graph shapes the engine captures.

Mirrors ``transformers/generation/continuous_batching/scheduler.py`` (``_process_candidates``),
``offloading_manager.py`` (``offload_requests`` without a CPU pool) and ``input_outputs.py``
(``_get_graph_key``) of transformers 5.17.

The policy's functions for the event loop: :func:`schedule_transformers`, and the step hook
:func:`transformers_step_hook` (with :func:`transformers_hook_init`) that charges a CUDA graph
capture the first time a padded batch shape is seen.
"""

from __future__ import annotations

import numba
import numpy as np

from servetune.tuner.simulator._state import (
    _ASYNC,
    _BATCHCNT,
    _BLOCKNEW,
    _BLOCKS,
    _BS,
    _CAPCV,
    _CAPKV,
    _CAPMS,
    _CAPREP,
    _CAPRUNCV,
    _CAPTOK,
    _COMP,
    _DECODING,
    _FASTPATH,
    _FREE,
    _GRAPHS,
    _GRAPH_SLOTS,
    _KNOWN,
    _KVPAD,
    _MAXBPR,
    _MAXSEQ,
    _MAXTOK,
    _NB,
    _NSTEPS,
    _PFIRST,
    _PREFILLING,
    _QPAD,
    _RUNCNT,
    _RUNNING,
    _SAFETY,
    _STATE,
    _TSTAT,
    _WAITING,
    _WHEAD,
    _WTAIL,
    _add_to_batch,
    _cdiv,
    _compact_running,
    _compact_waiting,
    _lognormal_factor,
    _push_back,
    _reset_for_recompute,
    _seeded_state,
)

__all__ = ["schedule_transformers", "transformers_hook_init", "transformers_step_hook"]

# Not ``cache=True``: these read ``_state``'s helpers and column constants, and numba would not
# notice a change there. They are compiled into the simulation loop, which is cached whole
# (``_kernel.run_kernel``).

# ---------------------------------------------------------------------------------------------
# transformers continuous batching (FIFOScheduler / PrefillFirstScheduler, transformers 5.x)
# ---------------------------------------------------------------------------------------------

@numba.njit
def _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand):
    """One ``schedule_batch`` call; returns (scheduled count, one_allocation_failed, n_starved).

    Mirrors ``Scheduler._process_candidates``: candidates are active DECODING then PREFILLING
    requests (FIFO) or the reverse (prefill-first), then waiting requests unless new requests are
    blocked; the safety margin stops non-decoding candidates once a batch has started; a failed
    block allocation skips the candidate (or stops at a waiting one when no block is free).
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


@numba.njit
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


@numba.njit
def schedule_transformers(r, p, st, rs, run, wq, bq, bl, starved, cand):
    """Fill replica ``r``'s next batch (``bq``/``bl``); returns the number of requests in it, 0
    when nothing is schedulable, -1 when the engine would raise (nothing schedulable, nothing
    to offload). The common schedule signature of every policy (``_policies``)."""
    n_sched, failed, n_starved = _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand)
    while n_sched == 0 and failed:
        if _tf_offload(r, st, rs, run, wq, starved, n_starved) == 0:
            return -1  # the engine raises "No requests can be scheduled and no requests can be offloaded"
        n_sched, failed, n_starved = _tf_pass(r, p, st, rs, run, wq, bq, bl, starved, cand)
    if n_sched > 0 and n_starved > 0:
        _tf_offload(r, st, rs, run, wq, starved, n_starved)
    return n_sched


# ---------------------------------------------------------------------------------------------
# transformers CUDA graphs: padded batch shapes, captured once each
# ---------------------------------------------------------------------------------------------

@numba.njit
def _pad_to_interval(size, interval, max_value):
    if interval <= 0:
        return max_value
    padded = _cdiv(size, interval) * interval if size > 0 else interval
    return min(padded, max_value)


@numba.njit
def _pad_to_pow2(value, max_value, min_value):
    value = max(value, max(1, min_value))
    padded = 1
    while padded < value:
        padded *= 2
    return min(padded, max_value)


@numba.njit
def _graph_key(p, n_seq, num_q, kv_read, kv_max, fast_path, pair):
    """The engine's graph key (``ContinuousBatchingIOs._get_graph_key``) of a step, hashed:
    decode fast path: padded request count; varlen path: padded query tokens, padded KV read,
    padded longest key length; with async batching each IO pair has its own graphs.
    Returns (key, the key of its padded query and KV shape alone (any IO pair, any key length),
    padded query tokens, padded KV read); the decode fast path reads no padded KV."""
    if fast_path:
        q = _pad_to_pow2(n_seq, np.int64(p[_MAXSEQ]), 0)
        kv = np.int64(0)
        shape = q * np.int64(1000003) + np.int64(7)
        key = shape
    else:
        pages = np.int64(p[_NB]) * np.int64(p[_BS])
        q = _pad_to_interval(num_q, np.int64(p[_QPAD]), np.int64(p[_MAXTOK]))
        kv = _pad_to_interval(kv_read, np.int64(p[_KVPAD]), pages)
        sk = _pad_to_pow2(kv_max, pages, 1024)
        shape = q * np.int64(2654435761) + kv
        key = shape * np.int64(40503) + sk
    if key < 0:
        key = -key
    if shape < 0:
        shape = -shape
    return key * 2 + pair, shape, q, kv


@numba.njit
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


@numba.njit
def transformers_hook_init(p, n_rep, seed):
    """The graph-capture state of one run: per replica the graph keys and the padded shapes
    captured so far, its run-level capture cost factor, and the capture-noise stream (its own,
    so step noise is the same with or without it)."""
    rows = n_rep if p[_GRAPHS] != 0.0 else 1
    graphs = np.full((rows, _GRAPH_SLOTS), -1, dtype=np.int64)
    shapes = np.full((rows, _GRAPH_SLOTS), -1, dtype=np.int64)
    cap_rng = _seeded_state(seed, 1)
    run_sigma = np.sqrt(np.log(1.0 + p[_CAPRUNCV] * p[_CAPRUNCV]))
    run_factor = np.ones(n_rep)
    if run_sigma > 0.0:
        for r in range(n_rep):
            run_factor[r] = _lognormal_factor(cap_rng, run_sigma)
    return graphs, shapes, run_factor, cap_rng


@numba.njit
def transformers_step_hook(hs, r, p, rs, n_seq, q_tokens, kv_read, kv_max):
    """With CUDA graphs, a step whose graph key replica ``r`` has not captured yet costs a
    capture: ``graph_capture_ms`` plus per padded query and KV token, times the repeat factor
    when its padded shape was captured before, times the replica's run factor and seeded
    noise. Returns ``(captured, extra_ms)`` (the common step-hook signature)."""
    if p[_GRAPHS] == 0.0:
        return False, 0.0
    graphs, shapes, run_factor, cap_rng = hs
    pair = rs[r, _NSTEPS] % 2 if p[_ASYNC] != 0.0 else 0
    key, shape, q_pad, kv_pad = _graph_key(p, n_seq, q_tokens, kv_read, kv_max,
                                           rs[r, _FASTPATH] == 1, pair)
    if _graph_seen(graphs, r, key):
        return False, 0.0
    capture_ms = p[_CAPMS] + p[_CAPTOK] * q_pad + p[_CAPKV] * kv_pad
    if _graph_seen(shapes, r, shape):
        # its query and KV shape was captured before (by the other async IO pair, or with
        # another padded key length): a cheaper capture
        capture_ms *= p[_CAPREP]
    capture_ms *= run_factor[r]
    cap_sigma = np.sqrt(np.log(1.0 + p[_CAPCV] * p[_CAPCV]))
    if cap_sigma > 0.0:
        capture_ms *= _lognormal_factor(cap_rng, cap_sigma)
    return True, capture_ms
