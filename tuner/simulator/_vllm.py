"""vLLM V1 scheduler: running requests first with chunked prefill under the token budget,
preemption of the newest running request by recompute, then waiting requests FCFS.

Mirrors ``vllm/v1/core/sched/scheduler.py`` (``Scheduler.schedule``) without prefix caching,
speculative decoding or encoders.
"""

from __future__ import annotations

import numba
import numpy as np

from servetune.tuner.simulator._state import (
    _BATCHCNT,
    _BLOCKS,
    _BS,
    _CHUNKED,
    _COMP,
    _FREE,
    _KNOWN,
    _LONGTHR,
    _MAXPART,
    _MAXSEQ,
    _MAXTOK,
    _NB,
    _PTGT,
    _RUNCNT,
    _SAFETY,
    _STATE,
    _WHEAD,
    _WTAIL,
    _ZOMBIE,
    _add_to_batch,
    _admit_head,
    _cdiv,
    _push_front,
    _reset_for_recompute,
    no_hook_init,
    no_step_hook,
)

# the policy's step hook: none (``no_hook_init``/``no_step_hook`` are re-exported for its entry)
__all__ = ["schedule_vllm", "no_hook_init", "no_step_hook"]

# Not ``cache=True``: these read ``_state``'s helpers and column constants, and numba would not
# notice a change there. They are compiled into the simulation loop, which is cached whole
# (``_kernel.run_kernel``).

# ---------------------------------------------------------------------------------------------
# vLLM V1 scheduler (chunked prefill, FCFS, preemption by recompute)
# ---------------------------------------------------------------------------------------------

@numba.njit
def schedule_vllm(r, p, st, rs, run, wq, bq, bl, starved, cand):
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
            _admit_head(st, rs, run, wq, r, need)
            _add_to_batch(bq, bl, rs, r, i, new)
            n_prefills += 1
            budget -= new
    return rs[r, _BATCHCNT]
