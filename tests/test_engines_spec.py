"""Engine specs: every launch command parses with the engine's real argument parser, every alias
round-trips to the same model features, and each knob's flag is declared in one module only."""

from __future__ import annotations

import argparse
import ast
import itertools
import json
from pathlib import Path

import click
import pytest

from servetune import ConfigError
from servetune.data.engines import ENGINES, engine_names, get_engine
from servetune.features import knob_vector
from servetune.tuner import SearchSpace, launch_args
from servetune.tuner._candidates import build_candidates, write_candidates
from servetune.tuner.hardware import (
    NodeSpec,
    ServiceGroupSpec,
    launcher_for,
    load_study_candidates,
    study_engine,
)

ROOT = Path(__file__).resolve().parents[1]


def _space_points(name: str):
    """The default and, for every knob of the built-in space, each of its extreme values."""
    space = SearchSpace.builtin(name)
    base = space.default_tunables()
    yield space.resolve(base).config
    for param in space.params:
        if param.kind == "enum":
            values = list(param.choices)
        elif param.kind == "bool":
            values = [True, False]
        else:
            values = [param.low, param.high]
        for value in values:
            yield space.resolve({**base, param.name: value}).config


def _transformers_serve():
    """The installed ``transformers serve`` click command (transformers 5.17, typer-built)."""
    pytest.importorskip("transformers")
    from transformers.cli.transformers import app

    return app.commands["serve"]


def test_transformers_launch_of_every_space_knob_parses_with_the_real_serve_parser():
    serve = _transformers_serve()
    spec = get_engine("transformers-cb")
    checked = 0
    for config in [spec.default_config(), *_space_points("transformers-cb")]:
        argv = launch_args("transformers-cb", config, model="m")["command"].split()
        assert argv[:2] == ["transformers", "serve"]
        params = serve.make_context("serve", argv[2:]).params
        assert params["continuous_batching"] is True and params["force_model"] == "m"
        for knob in spec.knobs:
            value = spec.canonical(config, strict=False).get(knob.name)
            if knob.has_flag and value is not None:
                parsed = params[knob.flag.lstrip("-").replace("-", "_")]
                assert parsed == value, (knob.name, parsed, value)
                checked += 1
    assert checked > 20


def test_transformers_serve_refuses_a_flag_the_spec_does_not_declare():
    with pytest.raises(click.UsageError):
        _transformers_serve().make_context("serve", ["m", "--cb-scheduler-type", "fifo"])


# vLLM's `vllm serve` engine arguments, as declared in vllm/engine/arg_utils.py
# (EngineArgs.add_cli_args) at vllm-project/vllm commit 99d7eb5d6a51, the v0.11 line: fields typed
# bool get argparse.BooleanOptionalAction (--x / --no-x), `int | None` fields an optional int,
# block_size the Literal choices of vllm/config/cache.py BlockSize.
_VLLM_ARGS = {
    "--max-num-batched-tokens": {"type": int},
    "--max-num-seqs": {"type": int},
    "--block-size": {"type": int, "choices": [1, 8, 16, 32, 64, 128]},
    "--enable-chunked-prefill": {"action": argparse.BooleanOptionalAction},
    "--long-prefill-token-threshold": {"type": int},
    "--max-num-partial-prefills": {"type": int},
    "--num-gpu-blocks-override": {"type": int},
    "--gpu-memory-utilization": {"type": float},
    "--async-scheduling": {"action": argparse.BooleanOptionalAction},
    "--enforce-eager": {"action": argparse.BooleanOptionalAction},
    "--enable-prefix-caching": {"action": argparse.BooleanOptionalAction},
    "--tensor-parallel-size": {"type": int},
    "--pipeline-parallel-size": {"type": int},
    "--data-parallel-size": {"type": int},
    "--kv-cache-dtype": {"type": str},
    "--max-model-len": {"type": int},
    "--host": {"type": str},
    "--port": {"type": int},
}


def _vllm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm serve", exit_on_error=False)
    parser.add_argument("model")
    for flag, kwargs in _VLLM_ARGS.items():
        parser.add_argument(flag, **kwargs)
    return parser


def test_vllm_launch_of_every_space_knob_parses_with_the_pinned_flag_list():
    parser = _vllm_parser()
    spec = get_engine("vllm")
    group = ServiceGroupSpec("g", (NodeSpec("n0"),))
    points = list(_space_points("vllm"))
    assert len(points) > 10
    for config in [spec.default_config(), *points]:
        knobs = {k: v for k, v in config.items() if k != "gpus"}  # the space's bookkeeping
        (launch,) = launcher_for("vllm").render(knobs, group, model="m")
        assert launch.argv[:2] == ("vllm", "serve")
        parsed = vars(parser.parse_args(list(launch.argv[2:])))
        for key, value in spec.canonical(knobs).items():
            knob = spec.knob(key)
            if value is not None:
                assert parsed[knob.flag.lstrip("-").replace("-", "_")] == value, key
        # vLLM's SchedulerConfig refuses max_num_partial_prefills < 1
        assert (parsed["max_num_partial_prefills"] or 1) >= 1


def test_a_knob_the_engine_cannot_take_is_refused_with_what_it_can_take():
    with pytest.raises(ConfigError, match=r"cannot take scheduler_type; it can take: block_size"):
        get_engine("transformers-cb").launch_argv({"scheduler": "fifo"}, model="m")
    with pytest.raises(ConfigError, match="vllm has no knob 'max_requests_per_batch'"):
        get_engine("vllm").coerce({"max_requests_per_batch": 8})


def test_validate_candidates_of_a_transformers_study_launch_transformers_serve(tmp_path):
    space = SearchSpace.builtin("transformers-cb")
    config = space.resolve(space.default_tunables() | {"cuda_graph": True}).config

    class _Study:  # the two attributes build_candidates reads
        def __init__(self):
            self.space = space

        def top(self, k):
            return [type("R", (), {"config": config, "score": 1.0, "metrics": {},
                                   "index": 0})()]

    write_candidates(tmp_path, build_candidates(_Study(), 1, baseline=(
        space.resolve(space.default_tunables()).config, {}, 0.5)))
    assert study_engine(tmp_path) == "transformers-cb"
    from servetune.tuner import engine_to_launch

    engine = engine_to_launch(None, tmp_path)
    launcher = launcher_for(engine, unsupported="record")
    group = ServiceGroupSpec("g", (NodeSpec("n0"),))
    for candidate in load_study_candidates(tmp_path):
        (launch,) = launcher.render(candidate.config, group, model="m")
        assert launch.argv[:2] == ("transformers", "serve"), launch.argv
        assert "vllm" not in launch.argv
    with pytest.raises(Exception, match="the study tuned transformers-cb but vllm"):
        engine_to_launch("vllm", tmp_path)


_CANONICAL = {
    "transformers-cb": {"scheduler_type": "prefill_first", "block_size": 64,
                        "max_batch_tokens": 1024, "max_requests_per_batch": 64,
                        "use_async_batching": True, "use_cuda_graph": True,
                        "max_memory_percent": 0.75, "num_blocks": 4096},
    "vllm": {"max_num_batched_tokens": 2048, "max_num_seqs": 128, "block_size": 32,
             "enable_chunked_prefill": True, "async_scheduling": True, "enforce_eager": True,
             "tensor_parallel_size": 2, "gpu_memory_utilization": 0.85},
    "sglang": {"chunked_prefill_size": 4096, "max_running_requests": 64, "page_size": 16,
               "disable_cuda_graph": False, "tp_size": 2, "mem_fraction_static": 0.8},
}


def _spellings(engine: str):
    """Every way of writing the canonical config: each knob by its name or any alias."""
    spec = get_engine(engine)
    options = []
    for key, value in _CANONICAL[engine].items():
        knob = spec.knob(key)
        options.append([(name, value) for name in (knob.name, *knob.aliases)]
                       + [(name, not value) for name in knob.negated_aliases])
    for combo in itertools.product(*options):
        yield dict(combo)


@pytest.mark.parametrize("engine", sorted(_CANONICAL))
def test_every_alias_round_trips_to_the_same_runs_columns_and_model_features(engine):
    spec = get_engine(engine)
    expected_columns = spec.runs_columns(_CANONICAL[engine])
    expected_features = knob_vector(expected_columns)
    assert {"block_size", "cuda_graph"} <= set(expected_columns)
    count = 0
    for config in _spellings(engine):
        assert spec.canonical(config) == _CANONICAL[engine]
        columns = spec.runs_columns(config)
        assert columns == expected_columns, config
        assert knob_vector(columns).tobytes() == expected_features.tobytes()
        count += 1
    assert count > 1


def test_measured_run_rows_fill_every_knob_column_under_any_alias():
    from servetune.tuner.hardware._records import _knob_columns

    row = _knob_columns("transformers-cb", {"scheduler": "fifo", "async_batching": True,
                                            "cuda_graph": True, "block_size": 32,
                                            "max_batch_tokens": 512})
    assert row == {"scheduler": "fifo", "async_batching": True, "cuda_graph": True,
                   "block_size": 32, "max_batch_tokens": 512}
    assert _knob_columns("vllm", {"enforce_eager": True, "tp": 2})["cuda_graph"] is False
    assert _knob_columns("vllm", {"enforce_eager": True, "tp": 2})["tp_size"] == 2


def _package_modules():
    """The package's modules, less servetune's own command-line definitions (``cli/``, the
    collector's command), whose options may share a word with an engine flag (``--dtype``)."""
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "benchmarks", ".venv", "build", "cli") \
                or "site-packages" in str(rel) or rel == Path("data/collect/_command.py"):
            continue
        yield rel, {node.value for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_each_flag_is_declared_in_one_module_only():
    modules = dict(_package_modules())
    for spec in {s.name: s for s in ENGINES.values()}.values():
        for knob in spec.knobs:
            for flag in filter(None, (knob.flag, knob.flag_off)):
                holders = [str(rel) for rel, strings in modules.items() if flag in strings]
                assert holders and all(h.startswith("data/engines/") for h in holders), \
                    (flag, holders)
                assert len(holders) == 1, (flag, holders)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_simulator_hardware_and_cli_read_the_engine_specs_not_each_others_tables():
    groups = {"simulator": ["tuner/simulator/_policies.py"],
              "hardware": ["tuner/hardware/_launchers.py", "tuner/hardware/_records.py"],
              "export": ["tuner/_export.py"], "verify": ["tuner/_verify.py"]}
    for files in groups.values():
        for rel in files:
            imports = _imports(ROOT / rel)
            assert "servetune.data.engines" in imports, rel
    for rel in groups["hardware"] + groups["verify"] + groups["export"]:
        imports = _imports(ROOT / rel)
        assert "servetune.tuner.simulator._policies" not in imports, rel
        assert "servetune.tuner._export" not in imports, rel
    for rel in groups["simulator"]:
        assert not any(m.startswith("servetune.tuner.hardware") for m in _imports(ROOT / rel))


def test_engine_names_are_one_per_engine_with_aliases():
    assert engine_names() == ("sglang", "static", "transformers-cb", "vllm")
    assert get_engine("transformers").name == "transformers-cb"
    from servetune.tuner.simulator import get_policy

    assert get_policy("transformers").name == get_policy("transformers-cb").name == \
        "transformers-cb"
    with pytest.raises(ConfigError, match="has no simulator policy"):
        get_policy("sglang")
    assert json.loads(json.dumps(launch_args("transformers", {})))["engine"] == "transformers-cb"
