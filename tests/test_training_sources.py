"""Which steps a model trains on (issue 15 part 4): by default each run's recorded steps, else
the steps rebuilt from its token timings (what ``servetune validate`` stores), never both for
one run; ``--source`` narrows it. Real Parquet store."""

from __future__ import annotations

import pytest
from _helpers_models import synthetic_traces

from servetune import ConfigError
from servetune.data import TraceStore
from servetune.models._training import load_training_frame


@pytest.fixture()
def store(tmp_path):
    store = TraceStore(tmp_path / "traces")
    steps, runs = synthetic_traces(n_runs=3, steps_per_run=50, seed=1)
    rebuilt = steps.assign(source="reconstructed")
    # run 0: recorded only; run 1: rebuilt only; run 2: both (its recorded steps win)
    ids = sorted(runs.run_id)
    store.ingest({"steps": steps[steps.run_id.isin([ids[0], ids[2]])], "runs": runs},
                 source="generated", sha256="recorded", format="test")
    store.ingest({"steps": rebuilt[rebuilt.run_id.isin([ids[1], ids[2]])]},
                 source="generated", sha256="rebuilt", format="test")
    return store, ids


def test_auto_takes_recorded_steps_else_rebuilt_ones(store):
    store, ids = store
    frame, lineage = load_training_frame(store)
    by_run = frame.groupby("run_id").source.agg(set).to_dict()
    assert by_run == {ids[0]: {"measured"}, ids[1]: {"reconstructed"}, ids[2]: {"measured"}}
    assert lineage["runs"] == 3


def test_a_source_narrows_the_steps(store):
    store, ids = store
    rebuilt, _ = load_training_frame(store, source="reconstructed")
    assert set(rebuilt.run_id) == {ids[1], ids[2]} and set(rebuilt.source) == {"reconstructed"}
    recorded, _ = load_training_frame(store, source="measured")
    assert set(recorded.run_id) == {ids[0], ids[2]}
    with pytest.raises(ConfigError, match="unknown step source"):
        load_training_frame(store, source="simulated")
