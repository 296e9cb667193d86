"""The simulation loop: every replica, scheduler, KV cache and step-time model in one numba function.

Nothing here is Python at run time: arrivals, routing, scheduling, block allocation, preemption,
the step composition, the feature kernel and the forest are all evaluated inside
:func:`run_kernel`, one simulated step at a time. The policy comes in as functions, like the
feature kernel and the forest evaluator: its ``schedule`` fills a replica's next batch and its
``step_hook`` (state from ``hook_init``) adds what a step costs beyond the predicted time (a
CUDA graph capture); ``_transformers``, ``_vllm`` and ``_static`` hold the shipped ones, over the
shared state layout of ``_state``; ``_forest`` walks the trees; ``_policies`` documents every
configuration key and how to add a policy.

Time is in seconds (float64). Ties between events break deterministically: an arrival at the same
instant as a step end is routed first (so the next schedule sees it), and replicas finishing at
the same instant are handled in index order.

Compilation is cached on disk: :func:`run_kernel` compiles the policy's functions, the feature
set's kernel and the forest evaluator it is given into the loop
(``models._jit_cache.bind_cached``), one loop per policy and feature set, so a process loads the
machine code an earlier one stored, and a changed formula or policy compiles anew.
Helpers keep numba's own ``cache=True`` only when everything they read is in their own module
(numba checks the timestamp of that one file).
"""

from __future__ import annotations

import numba
import numpy as np

from servetune.models._compiled import linear_base_margin
from servetune.models._jit_cache import bind_cached
from servetune.tuner.simulator._state import (
    N_PARAMS,
    P_NAMES,
    ROUTER_LEAST_PENDING,
    ROUTER_ROUND_ROBIN,
    STEP_COLUMNS,
    _ASYNC,
    _BATCHCNT,
    _BLOCKNEW,
    _BUSY,
    _COMP,
    _DONE,
    _FAILED,
    _FREE,
    _GEN,
    _INP,
    _KNOWN,
    _MINSTEP,
    _NB,
    _NCOL,
    _NRCOL,
    _NSTEPS,
    _OUT,
    _OVERHEAD,
    _PENDTOK,
    _PREEMPT,
    _PTGT,
    _REP,
    _RUNCNT,
    _RUNNING,
    _STATE,
    _WAITING,
    _WHEAD,
    _WTAIL,
    _ZOMBIE,
    _compact_running,
    _compact_waiting,
    _lognormal_factor,
    _push_back,
    _release,
    _seeded_state,
)
from servetune.tuner.simulator._forest import (
    _GROUP,
    fast_forest_margin,
    fast_forest_margin_box,
)

__all__ = ["run_kernel", "ROUTER_ROUND_ROBIN", "ROUTER_LEAST_PENDING", "P_NAMES", "N_PARAMS",
           "STEP_COLUMNS"]


# ---------------------------------------------------------------------------------------------
# the event loop
# ---------------------------------------------------------------------------------------------

@numba.njit(cache=True)
def _stamp_pending(pend_req, pend_tok, pend_cnt, r, t, token_s, token_offset, out, first_tok,
                   finish):
    """Give replica ``r``'s pending tokens the time ``t`` (first token and finish included)."""
    for k in range(pend_cnt[r]):
        i = pend_req[r, k]
        j = pend_tok[r, k]
        token_s[j] = t
        if j == token_offset[i]:
            first_tok[i] = t
        if j == token_offset[i] + out[i] - 1:
            finish[i] = t
    pend_cnt[r] = 0


# Not cached itself: its signature holds the policy's functions, the feature set's kernel and the
# forest evaluator (dispatcher types, which numba's index compares by object identity, so every
# process would miss). ``run_kernel`` below binds them and caches that on disk, keyed by a hash
# of all the code.
@numba.njit
def _run_kernel(schedule, hook_init, step_hook, router, n_replicas, p, arrival, inp, out, knobs,
               feat_kernel, n_features, feature, threshold, left, right, default_left, value,
               roots, base_margin, base_coef, base_intercept, log_target, predict_row, fast_feat,
               fast_thr, fast_left, max_depth, use_fast, fold_mask, step_noise_cv, seed,
               record_steps):
    """Simulate one deployment; returns per-request arrays, token times and (optionally) steps.

    ``schedule(r, p, st, rs, run, wq, bq, bl, starved, cand)`` fills replica ``r``'s next batch
    and returns its size (0: nothing schedulable, -1: the engine would fail); ``hook_init(p,
    n_replicas, seed)`` makes the run's step-hook state ``hs``, and ``step_hook(hs, r, p, rs,
    n_seq, q_tokens, kv_read, kv_max)`` returns ``(captured, extra_ms)`` for each step.

    Returns:
        ``(req_int, first_sched_s, first_token_s, finish_s, token_s, token_offset, steps,
        n_steps, total_steps)``: ``req_int`` (n, 4) = replica, status (3 ok, 4 failed),
        preemptions, generated tokens; ``token_s`` every output token's time, request ``i``'s at
        ``token_offset[i]:token_offset[i+1]``; ``steps`` (n_steps, 11) when recorded:
        ``record_steps`` is 0 (none) or a stride k (every k-th step, 1: all).
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
    # async batching (transformers): a batch's tokens are read back while the next batch is being
    # launched, so they are timestamped at the end of the next step (launch to launch), or at
    # once when no next step follows; until then they wait here per replica
    tf_async = p[_ASYNC] != 0.0
    pend_req = np.zeros((n_rep if tf_async else 1, n + 1), dtype=np.int64)
    pend_tok = np.zeros((n_rep if tf_async else 1, n + 1), dtype=np.int64)
    pend_cnt = np.zeros(n_rep, dtype=np.int64)
    run = np.zeros((n_rep, n + 1), dtype=np.int64)
    wq = np.zeros((n_rep, 2 * n + 2), dtype=np.int64)
    bq = np.zeros((n_rep, n + 1), dtype=np.int64)
    bl = np.zeros((n_rep, n + 1), dtype=np.int64)
    starved = np.zeros((n + 1, 2), dtype=np.int64)
    cand = np.zeros(2 * n + 2, dtype=np.int64)
    # this step's composition (RAW_COLUMNS), then the previous step's and whether that one
    # captured a CUDA graph (features.PREV_COLUMNS)
    raw = np.zeros(17)
    prev_raw = np.zeros((n_rep, 9))  # per replica: its last step's composition and capture flag
    fbuf = np.zeros(n_features, dtype=np.float32)
    nodebuf = np.zeros(_GROUP, dtype=np.int64)
    hs = hook_init(p, n_rep, seed)
    n_captures = 0
    # per replica: the input box of the last walked step, inside which the margin is the same
    box_lo = np.zeros((n_rep, n_features), dtype=np.float32)
    box_hi = np.zeros((n_rep, n_features), dtype=np.float32)
    box_margin = np.zeros(n_rep)
    box_valid = np.zeros(n_rep, dtype=np.bool_)
    box_uses = np.zeros(n_rep, dtype=np.int64)
    box_skip = np.zeros(n_rep, dtype=np.int64)
    box_hits = 0
    rng = _seeded_state(seed, 0)  # a step hook's noise draws from streams of its own
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
            if tf_async:
                _stamp_pending(pend_req, pend_tok, pend_cnt, r, t_now, token_s, token_offset,
                               out, first_tok, finish)
            for k in range(rs[r, _BATCHCNT]):
                i = bq[r, k]
                length = bl[r, k]
                if st[i, _STATE] != _RUNNING:
                    continue
                st[i, _COMP] += length
                rs[r, _PENDTOK] -= length
                if st[i, _COMP] == st[i, _KNOWN]:
                    g = st[i, _GEN]
                    if tf_async:
                        pend_req[r, pend_cnt[r]] = i
                        pend_tok[r, pend_cnt[r]] = token_offset[i] + g
                        pend_cnt[r] += 1
                    else:
                        token_s[token_offset[i] + g] = t_now
                        if g == 0:
                            first_tok[i] = t_now
                    st[i, _GEN] = g + 1
                    if g + 1 >= st[i, _OUT]:
                        if not tf_async:
                            finish[i] = t_now
                        rs[r, _PENDTOK] -= 1
                        if tf_async:
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
        else:
            break

        for q in range(n_kicked):
            r = kicked[q]
            kick[r] = 0
            # a step's batch is scheduled when its loop iteration begins, in both batching modes:
            # every request that arrived by now is seen (async overlaps the GPU work, not this)
            while True:
                got = schedule(r, p, st, rs, run, wq, bq, bl, starved, cand)
                if got > 0:
                    break
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
                if tf_async:  # no next step: the engine reads the last batch back at once
                    _stamp_pending(pend_req, pend_tok, pend_cnt, r, t_now, token_s,
                                   token_offset, out, first_tok, finish)
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
            for c in range(9):
                raw[8 + c] = prev_raw[r, c]
            for c in range(8):
                prev_raw[r, c] = raw[c]
            prev_raw[r, 8] = 0.0
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
            margin += linear_base_margin(base_coef, base_intercept, log_target, fbuf)
            ms = np.exp(margin) if log_target else margin
            ms += overhead_ms
            captured, extra_ms = step_hook(hs, r, p, rs, n_seq, pf_tok + dc_tok,
                                           kv_sum - pf_tok - dc_tok, kv_max)
            if captured:
                ms += extra_ms
                n_captures += 1
                prev_raw[r, 8] = 1.0
            if sigma > 0.0:
                ms *= _lognormal_factor(rng, sigma)
            dur = ms / 1e3
            if not dur >= min_step_s:
                dur = min_step_s
            t_end[r] = t_now + dur
            rs[r, _BUSY] = 1
            rs[r, _NSTEPS] += 1
            total_steps += 1
            if record_steps > 0 and (total_steps - 1) % record_steps == 0:
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
    for r in range(n_rep):
        if pend_cnt[r] > 0:
            _stamp_pending(pend_req, pend_tok, pend_cnt, r, t_end[r], token_s, token_offset, out,
                           first_tok, finish)

    req = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        req[i, 0] = st[i, _REP]
        req[i, 1] = st[i, _STATE]
        req[i, 2] = st[i, _PREEMPT]
        req[i, 3] = st[i, _GEN]
    return (req, first_sched, first_tok, finish, token_s, token_offset, steps[:n_steps], n_steps,
            total_steps, box_hits, n_captures)


run_kernel = bind_cached(_run_kernel, ("schedule", "hook_init", "step_hook", "feat_kernel",
                                      "predict_row"))
