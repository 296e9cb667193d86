"""Search spaces: TOML parsing, encoding, discretisation, derived fields, constraints, errors."""

from __future__ import annotations

import numpy as np
import pytest

from servetune import ConfigError
from servetune.tuner import Expression, SearchSpace, builtin_spaces


def _space(**extra) -> SearchSpace:
    data = {
        "name": "t", "engine": "vllm",
        "fixed": {"gpus": 8},
        "params": {
            "max_num_batched_tokens": {"type": "int", "low": 512, "high": 4096, "step": 512},
            "max_num_seqs": {"type": "int", "low": 64, "high": 8192, "log": True},
            "tp": {"type": "enum", "choices": [1, 2, 4, 8]},
            "policy": {"type": "enum", "choices": ["fcfs", "priority", "lpm"]},
            "chunked": {"type": "bool"},
            "util": {"type": "float", "low": 0.7, "high": 0.95},
        },
        "derived": {"dp": "gpus // tp"},
        "constraints": [
            {"expr": "tp * dp <= gpus", "on_violation": "penalise"},
            {"expr": "max_num_seqs <= max_num_batched_tokens"},
        ],
    }
    data.update(extra)
    return SearchSpace.from_dict(data)


def test_builtin_spaces_load_and_their_grids_are_finite_and_feasible():
    assert {"transformers-cb", "vllm"} <= set(builtin_spaces())
    cb = SearchSpace.builtin("transformers-cb")
    grid = cb.grid()
    assert len(grid) == 16 * 5 * 4 * 3 * 2 * 2 * 2  # ... async batching, CUDA graphs
    assert all(cb.resolve(t).feasible for t in grid[:200])
    vllm = SearchSpace.builtin("vllm")
    point = vllm.resolve(vllm.default_tunables())
    assert point.feasible and point.config["dp"] * point.config["tp"] == 8


def test_encode_decode_round_trips_every_grid_point():
    space = SearchSpace.builtin("transformers-cb")
    for tunables in space.grid()[::37]:
        assert space.decode(space.encode(tunables)) == tunables


def test_unordered_enum_takes_one_hot_dimensions_and_decodes_by_argmax():
    space = _space()
    assert space.dim == 5 + 3  # policy has 3 unordered choices
    u = np.full(space.dim, 0.5)
    offset = 3  # after max_num_batched_tokens, max_num_seqs, tp
    u[offset:offset + 3] = [0.1, 0.2, 0.9]
    assert space.decode(u)["policy"] == "lpm"


def test_log_scaled_int_spends_half_the_range_below_the_geometric_mean():
    space = _space()
    u = np.full(space.dim, 0.5)
    assert space.decode(u)["max_num_seqs"] == round((64 * 8192) ** 0.5)


def test_derived_fields_and_fixed_values_are_in_the_config():
    space = _space()
    tunables = space.decode(np.full(space.dim, 0.99))
    point = space.resolve(tunables)
    assert point.config["gpus"] == 8 and point.config["dp"] == 8 // point.config["tp"]


def test_repairable_constraint_clips_the_left_hand_parameter_onto_its_grid():
    space = _space()
    tunables = space.decode(np.full(space.dim, 0.5))
    tunables.update(max_num_batched_tokens=1024, max_num_seqs=5000)
    point = space.resolve(tunables)
    assert point.feasible and point.repaired
    assert point.config["max_num_seqs"] == 1024


def test_penalised_constraint_marks_the_point_infeasible_with_its_reason():
    space = _space(derived={"dp": "gpus // tp + 1"})
    point = space.resolve(space.decode(np.full(space.dim, 0.5)))
    assert not point.feasible
    assert point.violations == ("tp * dp <= gpus",)


def test_unrepairable_point_stays_infeasible():
    space = _space()
    tunables = space.decode(np.full(space.dim, 0.5))
    # the repair target cannot go below its own low bound
    space2 = SearchSpace.from_dict({**space.to_dict(), "constraints": [
        {"expr": "max_num_seqs <= max_num_batched_tokens - 4000"}]})
    tunables.update(max_num_batched_tokens=512)
    point = space2.resolve(tunables)
    assert not point.feasible and point.violations


def test_space_round_trips_through_to_dict_with_the_same_fingerprint():
    space = _space()
    again = SearchSpace.from_dict(space.to_dict())
    assert again.fingerprint() == space.fingerprint()
    assert again.grid(levels=3) == space.grid(levels=3)


def test_from_toml_reads_a_file_and_reports_the_path_on_errors(tmp_path):
    good = tmp_path / "s.toml"
    good.write_text('name = "s"\nengine = "vllm"\n[params.a]\ntype = "int"\nlow = 1\nhigh = 4\n')
    assert SearchSpace.from_toml(good).grid() == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "s"\nengine = "vllm"\n[params.a]\ntype = "int"\nlow = 5\nhigh = 4\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: params\.a: 'low' must be < 'high'"):
        SearchSpace.from_toml(bad)


@pytest.mark.parametrize("patch, message", [
    ({"params": {"a": {"type": "integer", "low": 1, "high": 2}}}, "type must be one of"),
    ({"params": {"a": {"type": "enum", "choices": [1]}}}, "2 to 10,000"),
    ({"params": {"a": {"type": "float", "low": 0, "high": 1, "log": True}}}, "low > 0"),
    ({"params": {"a": {"type": "int", "low": 1, "high": 9, "colour": 1}}}, "unknown keys"),
    ({"derived": {"b": "a +* 2"}}, "cannot parse expression"),
    ({"derived": {"b": "__import__('os')"}}, "only the functions"),
    ({"derived": {"b": "a.real"}}, "Attribute is not allowed"),
    ({"derived": {"b": "a + nope"}}, r"unknown fields \['nope'\]"),
    ({"constraints": [{"expr": "a < 3", "on_violation": "ignore"}]}, "on_violation"),
    ({"fixed": {"a": 3}}, "declared more than once"),
])
def test_bad_spaces_fail_with_a_message_naming_the_field(patch, message):
    data = {"name": "s", "engine": "e", "params": {"a": {"type": "int", "low": 1, "high": 9}}}
    data.update(patch)
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_dict(data)


def test_unknown_builtin_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="transformers-cb"):
        SearchSpace.builtin("sglang-nope")


def test_expression_evaluates_chained_comparisons_and_functions():
    expr = Expression.parse("1 <= min(a, b) < 10 and log2(c) == 3")
    assert expr.evaluate({"a": 2, "b": 5, "c": 8}) is True
    assert expr.evaluate({"a": 0, "b": 5, "c": 8}) is False
    with pytest.raises(ConfigError, match="divides by zero"):
        Expression.parse("a // b").evaluate({"a": 1, "b": 0})
