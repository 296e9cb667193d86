"""Synthetic workload specs and ``--workload`` resolution."""

from __future__ import annotations

import numpy as np
import pytest

from servetune import InputError
from servetune.data import parse_workload_spec, resolve_workload, synthetic_workload


def test_same_seed_gives_identical_workload_and_other_seed_differs():
    a = synthetic_workload("poisson:rate=5,n=300", seed=7)
    b = synthetic_workload("poisson:rate=5,n=300", seed=7)
    c = synthetic_workload("poisson:rate=5,n=300", seed=8)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.array_equal(a.input_tokens, b.input_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_gamma_arrivals_have_requested_rate_and_burstiness():
    w = synthetic_workload("gamma:rate=20,cv=3,n=20000,input=const:64,output=uniform:1:9", seed=0)
    gaps = np.diff(w.arrival_s)
    assert w.rate_rps == pytest.approx(20, rel=0.1)
    assert gaps.std() / gaps.mean() == pytest.approx(3, rel=0.1)
    assert set(np.unique(w.input_tokens)) == {64}
    assert w.output_tokens.min() >= 1 and w.output_tokens.max() <= 9


def test_lognormal_lengths_are_clipped_to_max():
    w = synthetic_workload("poisson:rate=1,n=5000,input=lognormal:2000:1.5:4096", seed=1)
    assert w.input_tokens.max() == 4096
    assert w.input_tokens.min() >= 1


@pytest.mark.parametrize("spec, fragment", [
    ("poisson:n=3", "needs rate"),
    ("poisson:rate=-1", "rate > 0"),
    ("poisson:rate=2,cv=2", "gamma arrivals only"),
    ("poisson:rate=2,input=zipf:3", "unknown length distribution"),
    ("poisson:rate=2,output=uniform:9:3", "LO <= HI"),
    ("poisson:rate=2,colour=red", "unknown item"),
    ("burst:rate=2", "expected a file"),
])
def test_bad_specs_are_refused_with_the_reason(spec, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_workload_spec(spec)


def test_resolve_rescales_and_truncates():
    w = resolve_workload("poisson:rate=2,n=1000", seed=3, qps=8.0, limit=500)
    assert len(w) == 500
    assert w.rate_rps == pytest.approx(8.0)
    assert w.descriptor["rate_rps"] == 8.0
