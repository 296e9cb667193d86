"""``resolve_transformers_config`` against the installed transformers (5.17.0) itself.

Every comparison calls transformers' own code on the CPU with the same inputs: the config
resolution (``resolve_continuous_batching_config``), the cache sizing
(``PagedAttentionMemoryHandler``, subclassed only to give it a fixed free memory instead of
reading the device's), the layer grouping, and the static IO tensors async batching copies
(``ContinuousBatchingIOs`` built on the CPU). The CUDA-only branches (CUDA graphs and async
batching on by default for flash attention) are checked against the configurations the engine
resolved on an H200 (``benchmarks/data/async_cache/runs.parquet``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from servetune import ConfigError
from servetune.data.engines._transformers_resolve import (
    CB_CONFIG_FIELDS,
    ModelShape,
    h2d_bytes_per_step,
    mask_copy_bytes_per_step,
    resolve_transformers_config,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(transformers.__version__ != "5.17.0",
                                reason="the resolution is that of transformers 5.17.0")

from transformers import ContinuousBatchingConfig, LlamaConfig  # noqa: E402
from transformers.generation.continuous_batching import cache as tf_cache  # noqa: E402
from transformers.generation.continuous_batching import initialization as tf_init  # noqa: E402
from transformers.generation.continuous_batching.utils import WorkloadHints  # noqa: E402

RUNS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "async_cache" / "runs.parquet"
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                tie_word_embeddings=True)
GiB = 2**30


def llama(attn: str = "paged|sdpa", **overrides) -> LlamaConfig:
    config = LlamaConfig(**{**LLAMA_1B, **overrides})
    config._attn_implementation = attn
    return config


def shape_of(config) -> ModelShape:
    return ModelShape.from_config(config.to_dict(), dtype_bytes=2, weights_bytes=0)


class FixedMemoryHandler(tf_cache.PagedAttentionMemoryHandler):
    """transformers' handler with a given free memory (on a CPU it would read the host RAM)."""

    free_bytes = 0

    def get_available_memory(self) -> int:
        return int(self.free_bytes * self.cb_config.max_memory_percent)


def real_sizing(config, knobs: dict, free_bytes: int) -> tuple[int, int]:
    cb = tf_init.resolve_continuous_batching_config(config, ContinuousBatchingConfig(**knobs),
                                                    None, False)
    groups, types = tf_cache.group_layers_by_attn_type(config)
    handler = type("H", (FixedMemoryHandler,), {"free_bytes": free_bytes})(
        config=config, continuous_batching_config=cb, dtype=torch.bfloat16, group_types=types,
        group_size=len(groups[0]))
    return handler.infer_max_batch_tokens_and_num_blocks()


def comparable(value):
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: value[k] for k in ("mode", "fullgraph", "dynamic") if k in value}
    return value


# -- the fields and their defaults -----------------------------------------------------------

def test_fields_and_defaults_are_the_installed_dataclass():
    fields = dataclasses.fields(ContinuousBatchingConfig)
    assert CB_CONFIG_FIELDS == tuple(f.name for f in fields)
    mine = resolve_transformers_config({}, cuda_available=False)
    real = ContinuousBatchingConfig()
    for name in ("block_size", "allow_block_sharing", "default_compile_level", "scheduler_type",
                 "return_logprobs", "cpu_offload_space", "cpu_offload_space_safety_threshold",
                 "max_queue_size", "per_request_processors", "drop_unsupported_processors",
                 "disable_nccl_graph_mixing", "cpu_group_timeout", "safety_margin", "seed"):
        assert mine[name] == getattr(real, name), name


def test_unknown_knob_is_a_config_error_listing_the_fields():
    with pytest.raises(ConfigError, match="max_num_seqs.*expected some of block_size"):
        resolve_transformers_config({"max_num_seqs": 8})


# -- resolve_continuous_batching_config, field by field (CPU: no CUDA) -------------------------

CASES = [
    ("paged|sdpa", {}, None, False),
    ("paged|sdpa", {}, None, True),
    ("paged|eager", {"use_cuda_graph": True, "use_async_batching": True}, None, False),
    ("paged|sdpa", {"q_padding_interval_size": 128}, None, False),
    ("paged|sdpa", {"max_blocks_per_request": 16, "default_compile_level": 2}, None, False),
    ("paged|sdpa", {"default_compile_level": 3, "max_memory_percent": 0.5}, None, True),
    ("paged|flash_attention_2", {"default_compile_level": 1}, None, False),
    ("paged|flash_attention_2", {"max_blocks_per_request": 0}, None, False),
    ("paged|sdpa", {"block_size": 64}, {"max_prompt_length": 1000, "max_generated_length": 200,
                                        "num_requests": 50}, False),
    ("paged|sdpa", {"max_requests_per_batch": 8}, {"max_prompt_length": 10,
                                                   "max_generated_length": 0,
                                                   "num_requests": 0}, False),
    ("paged|sdpa", {"use_default_compile_configs": True}, None, False),
]


@pytest.mark.parametrize("attn,knobs,hints,processors", CASES)
def test_matches_resolve_continuous_batching_config_on_cpu(attn, knobs, hints, processors):
    real = tf_init.resolve_continuous_batching_config(
        llama(attn), ContinuousBatchingConfig(**knobs),
        WorkloadHints(**hints) if hints is not None else None, processors)
    mine = resolve_transformers_config(knobs, attn_implementation=attn, workload_hints=hints,
                                       has_logit_processors=processors, cuda_available=False)
    for name in CB_CONFIG_FIELDS:
        if name in ("num_blocks", "max_batch_tokens"):
            continue  # sized at cache creation, below
        assert comparable(mine[name]) == comparable(getattr(real, name)), name


def test_without_memory_the_cache_stays_unresolved_with_a_reason():
    cfg = resolve_transformers_config({"block_size": 128})
    assert cfg["num_blocks"] is None and cfg["max_batch_tokens"] is None
    assert "free GPU memory" in cfg["unresolved"]["num_blocks"]
    assert "model shape" in cfg["unresolved"]["num_blocks"]
    with pytest.raises(ConfigError, match="num_blocks"):
        mask_copy_bytes_per_step({**cfg, "use_async_batching": True})


# -- the CUDA branches, against what the engine resolved on an H200 ----------------------------

#: "Memory available for cache allocation: N MB" that transformers logged for the runs that
#: left num_blocks unset (the sweep's device log); the engine prints int(bytes / 2**20).
LOGGED_AVAILABLE_MIB = {"a-g-auto90": 125866, "a-e-auto90": 122960, "s-g-auto90": 122919,
                        "s-e-auto90": 122860}
LOGGED_DEFAULT_MIB = {"poisson12": 126159, "long4": 125457}


def _measured_runs():
    pd = pytest.importorskip("pandas")
    if not RUNS.exists():
        pytest.skip("no measured runs")
    runs = pd.read_parquet(RUNS)
    return [(json.loads(r.extra), json.loads(r.config), json.loads(r.provenance),
             json.loads(r.workload)["name"]) for r in runs.itertuples()]


def test_matches_the_configurations_resolved_on_an_h200():
    shape = ModelShape.from_config(llama().to_dict())
    checked = 0
    for extra, measured, provenance, workload in _measured_runs():
        name, knobs = extra["config_name"], extra["knobs"]
        mib = LOGGED_AVAILABLE_MIB.get(name) or (LOGGED_DEFAULT_MIB.get(workload)
                                                 if name == "default" else None)
        free = None if mib is None else -(-mib * 2**20 * 10 // 9)  # ceil(bytes / 0.9)
        mine = resolve_transformers_config(
            knobs, attn_implementation=provenance["attn_implementation"],
            free_memory_bytes=free, model=shape if free else None)
        for field in CB_CONFIG_FIELDS:
            if field in ("num_blocks", "max_batch_tokens") and free is not None:
                continue
            if field == "max_batch_tokens" and mine[field] is None:
                continue
            assert comparable(mine[field]) == comparable(measured[field]), (name, field)
        if free is not None:  # the logged MiB is rounded down: bracket the measured size
            high = resolve_transformers_config(knobs, free_memory_bytes=free + 2**21, model=shape)
            assert mine["num_blocks"] <= measured["num_blocks"] <= high["num_blocks"], name
            assert mine["max_batch_tokens"] <= measured["max_batch_tokens"]
            assert measured["max_batch_tokens"] <= high["max_batch_tokens"]
        checked += 1
    assert checked == 20


def test_sdpa_defaults_to_eager_sync_and_flash_to_graphs_and_async_on_cuda():
    sdpa = resolve_transformers_config({})
    assert sdpa["use_cuda_graph"] == (False, False) and sdpa["use_async_batching"] is False
    assert sdpa["max_blocks_per_request"] == 0
    flash = resolve_transformers_config({}, attn_implementation="paged|flash_attention_2")
    assert flash["use_cuda_graph"] == (True, True) and flash["use_async_batching"] is True
    assert flash["max_blocks_per_request"] == 32 and not flash["attention_mask"]
    no_kvcache = resolve_transformers_config({}, attn_implementation="flash_attention_2",
                                             flash_kvcache_available=False)
    assert no_kvcache["max_blocks_per_request"] == 0
    reduce_overhead = resolve_transformers_config(
        {"varlen_compile_config": {"mode": "reduce-overhead"}},
        attn_implementation="paged|flash_attention_2")
    assert reduce_overhead["use_cuda_graph"] == (False, True)
    assert resolve_transformers_config({}, attn_implementation="sdpa",
                                       flash_attn_installed=3)["attn_implementation"] == \
        "paged|flash_attention_3"


def test_cudagraph_compile_modes_are_torch_inductors():
    modes = torch._inductor.list_mode_options()
    for mode, options in modes.items():
        cfg = resolve_transformers_config({"varlen_compile_config": {"mode": mode}},
                                          attn_implementation="paged|flash_attention_2")
        assert cfg["use_cuda_graph"][0] is not options.get("triton.cudagraphs", False), mode


# -- cache sizing: PagedAttentionMemoryHandler with the same free memory -----------------------

SIZING = [
    ({"block_size": 128, "max_batch_tokens": 1792, "use_async_batching": True,
      "max_memory_percent": 0.9}, 137 * GiB),
    ({"block_size": 128, "max_batch_tokens": 1792, "use_async_batching": False}, 137 * GiB),
    ({}, 137 * GiB),
    ({"use_async_batching": True}, 70 * GiB),
    ({"block_size": 32, "num_blocks": 4096}, 137 * GiB),
    ({"block_size": 64, "num_blocks": 512, "use_async_batching": True}, 20 * GiB),
    ({"return_logprobs": True, "max_batch_tokens": 512}, 3 * GiB),
    ({}, 2 * GiB),
]


@pytest.mark.parametrize("knobs,free", SIZING)
@pytest.mark.parametrize("attn", ["paged|sdpa", "paged|flash_attention_2"])
def test_cache_sizing_matches_paged_attention_memory_handler(knobs, free, attn):
    config = llama(attn)
    mine = resolve_transformers_config(knobs, attn_implementation=attn, cuda_available=False,
                                       free_memory_bytes=free, model=shape_of(config))
    assert (mine["max_batch_tokens"], mine["num_blocks"]) == real_sizing(config, knobs, free)


def test_cache_sizing_with_sliding_window_layers_matches():
    config = llama(layer_types=["sliding_attention", "full_attention"] * 8, sliding_window=512)
    shape = shape_of(config)
    groups, types = tf_cache.group_layers_by_attn_type(config)
    assert shape.layer_groups() == (len(groups), len(groups[0]), types)
    knobs = {"block_size": 64, "max_batch_tokens": 1024, "use_async_batching": True}
    mine = resolve_transformers_config(knobs, free_memory_bytes=40 * GiB, model=shape,
                                       cuda_available=False)
    assert (mine["max_batch_tokens"], mine["num_blocks"]) == real_sizing(config, knobs, 40 * GiB)
    assert mine["num_attention_masks"] == 2 and mine["num_layer_groups"] == len(groups)


def test_a_config_over_the_memory_is_refused_like_the_engine():
    config = llama()
    knobs = {"block_size": 256, "num_blocks": 100_000, "max_batch_tokens": 8192}
    with pytest.raises(MemoryError):
        real_sizing(config, knobs, 16 * GiB)
    with pytest.raises(ConfigError, match="MemoryError"):
        resolve_transformers_config(knobs, free_memory_bytes=16 * GiB, model=shape_of(config))


def test_free_memory_from_total_minus_weights():
    shape = ModelShape.from_config(llama().to_dict())
    a = resolve_transformers_config({}, gpu_memory_bytes=140 * GiB, model=shape)
    b = resolve_transformers_config({}, free_memory_bytes=140 * GiB - shape.weights_bytes,
                                    model=shape)
    assert a["num_blocks"] == b["num_blocks"] and a["cache_tokens"] == a["num_blocks"] * 256


# -- ModelShape.from_config ----------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False},
                                       {"head_dim": None, "num_key_value_heads": None}])
def test_model_shape_reads_a_config_like_transformers(overrides):
    from transformers import LlamaForCausalLM

    config = llama(**overrides)
    shape = ModelShape.from_config(config.to_dict())
    assert shape.num_kv_heads == tf_cache.find_num_kv_heads(config)
    assert shape.head_dim == tf_cache.find_head_dim(config)
    assert ModelShape.from_config({**config.to_dict(), "dtype": "float32"}).dtype_bytes == 4
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    assert shape.weights_bytes == params * shape.dtype_bytes


def test_model_shape_refuses_to_guess_an_moe_model():
    cfg = {**llama().to_dict(), "num_local_experts": 8}
    with pytest.raises(ConfigError, match="weights_bytes"):
        ModelShape.from_config(cfg)
    assert ModelShape.from_config(cfg, weights_bytes=10).weights_bytes == 10


# -- the per-step copy: the static tensors transformers allocates --------------------------------

def _real_async_io(config, knobs):
    """One real IO pair side of transformers (CPU), with its cache; the tensors it copies."""
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )
    from transformers.generation.continuous_batching.distributed import DistributedHelper
    from transformers.generation.continuous_batching.input_outputs import ContinuousBatchingIOs
    from transformers.generation.logits_process import LogitsProcessorList

    cb = tf_init.resolve_continuous_batching_config(config, ContinuousBatchingConfig(**knobs),
                                                    None, False)
    helper = DistributedHelper(None, cb.cpu_group_timeout)
    cache = tf_cache.PagedAttentionCache(config, cb, "cpu", helper, {}, dtype=torch.bfloat16)
    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(), False, True)
    io = ContinuousBatchingIOs(cache, config, cb, torch.device("cpu"), torch.bfloat16, processors)
    masks = io.attention_mask or {}
    return {"bulk_inputs": io._bulk_input_tensor.nbytes,
            "write_index": io.write_index_storage.nbytes,
            "read_index": io.read_index_storage.nbytes,
            "attention_mask": sum(m.nbytes for m in masks.values())}


@pytest.mark.parametrize("attn,layer_types", [("paged|sdpa", None), ("paged|eager", None),
                                              ("paged|sdpa", ["sliding_attention",
                                                              "full_attention"] * 8)])
def test_h2d_bytes_are_the_static_tensors_transformers_copies(attn, layer_types):
    overrides = {"layer_types": layer_types, "sliding_window": 256} if layer_types else {}
    config = llama(attn, num_hidden_layers=16, **overrides)
    knobs = {"block_size": 32, "num_blocks": 64, "max_batch_tokens": 96,
             "use_async_batching": True}
    real = _real_async_io(config, knobs)
    mine = h2d_bytes_per_step(resolve_transformers_config(
        knobs, attn_implementation=attn, free_memory_bytes=8 * GiB, model=shape_of(config)))
    assert {k: mine[k] for k in real} == real
    assert mine["total"] == sum(real.values())


def test_mask_copy_is_about_11_gb_per_step_for_the_recommendation_at_0_9():
    """max_batch_tokens 1792, block_size 128, num_blocks left to the engine at 0.9 of an H200's
    free memory (~147 GB after the 1B model): ~3.1 M cache tokens, ~11 GB of mask per step."""
    shape = ModelShape.from_config(llama().to_dict())
    knobs = {"max_batch_tokens": 1792, "block_size": 128, "max_memory_percent": 0.9,
             "use_async_batching": True, "use_cuda_graph": True}
    cfg = resolve_transformers_config(knobs, free_memory_bytes=146_650_000_000, model=shape)
    assert 3.0e6 < cfg["cache_tokens"] < 3.2e6
    assert mask_copy_bytes_per_step(cfg) == 1792 * (cfg["cache_tokens"] + 1792) * 2
    assert 10.8e9 < mask_copy_bytes_per_step(cfg) < 11.5e9
    # the same from the configuration transformers resolved on the H200 (num_blocks 24544)
    measured = {**cfg, "num_blocks": 24544}
    assert mask_copy_bytes_per_step(measured) == 1792 * (24544 * 128 + 1792) * 2  # 11.27 GB
    # synchronous batching and flash attention copy no mask
    assert mask_copy_bytes_per_step({**cfg, "use_async_batching": False}) == 0
    assert h2d_bytes_per_step({**cfg, "use_async_batching": False})["total"] == 0
    flash = resolve_transformers_config(knobs, attn_implementation="paged|flash_attention_2",
                                        free_memory_bytes=146_650_000_000, model=shape)
    assert mask_copy_bytes_per_step(flash) == 0
    assert flash["cache_tokens"] > cfg["cache_tokens"]  # no mask in the memory polynomial
