"""Static batching: fixed batches of whole requests, no joining mid-batch."""

from __future__ import annotations

import numba
import numpy as np

from servetune.tuner.simulator._state import (
    _BATCHCNT,
    _BLOCKS,
    _BS,
    _COMP,
    _FREE,
    _INP,
    _KNOWN,
    _MAXSEQ,
    _OUT,
    _RUNCNT,
    _WHEAD,
    _WTAIL,
    _add_to_batch,
    _admit_head,
    _cdiv,
    no_hook_init,
    no_step_hook,
)

# the policy's step hook: none (``no_hook_init``/``no_step_hook`` are re-exported for its entry)
__all__ = ["schedule_static", "no_hook_init", "no_step_hook"]

# Not ``cache=True``: these read ``_state``'s helpers and column constants, and numba would not
# notice a change there. They are compiled into the simulation loop, which is cached whole
# (``_kernel.run_kernel``).

# ---------------------------------------------------------------------------------------------
# static batching
# ---------------------------------------------------------------------------------------------

@numba.njit
def schedule_static(r, p, st, rs, run, wq, bq, bl, starved, cand):
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
            _admit_head(st, rs, run, wq, r, need)
    for k in range(rs[r, _RUNCNT]):
        i = run[r, k]
        new = st[i, _KNOWN] - st[i, _COMP]
        if new > 0:
            _add_to_batch(bq, bl, rs, r, i, new)
    return rs[r, _BATCHCNT]
