"""How transformers 5.17.0 resolves a ``ContinuousBatchingConfig``, as a pure function.

transformers' continuous batching fills most of its knobs itself at start-up, from the attention
implementation, the device and the free GPU memory. :func:`resolve_transformers_config` repeats
that resolution without torch or a GPU, so that the simulator, the tuner and the records know the
configuration the engine really ran, and :func:`mask_copy_bytes_per_step` /
:func:`h2d_bytes_per_step` give the per-step host-to-device traffic that decides the step time of
asynchronous batching with a mask-based attention (``paged|sdpa``, ``paged|eager``).

Every rule cites its source as ``file:line`` of transformers 5.17.0, relative to
``transformers/generation/`` (``cb/`` = ``continuous_batching/``):

Resolution order (``cb/initialization.py:39-81``, called by ``ContinuousBatchingManager.__init__``,
``cb/continuous_api.py:642``; ``init_continuous_batching`` and ``transformers serve`` pass no
workload hints, only ``generate_batch`` does, ``cb/continuous_api.py:1280``):

1. workload hints (``cb/initialization.py:84-99``): ``max_blocks_per_request`` = the even number
   >= ceil((max prompt + max generated) / block_size) + 1; ``max_requests_per_batch`` =
   min(num_requests, 1024).
2. fallbacks (``cb/initialization.py:31-36``, ``:102-111``): ``max_requests_per_batch`` 1024,
   ``max_blocks_per_request`` 32, ``q_padding_interval_size`` 64, ``kv_padding_interval_size``
   16384 (0 means "unset" for the two intervals).
3. decode fast path (``cb/initialization.py:114-146``): ``max_blocks_per_request`` becomes 0
   (fast path off) unless the attention is flash attention 2/3 on CUDA (or FA2 on XPU) and
   ``flash_attn_with_kvcache`` is importable; a model with sliding-window layers also gets 0
   (``cb/cache.py:285-290``).
4. compile configs (``cb/initialization.py:149-198``): only with ``default_compile_level`` > 0 or
   explicit compile configs; flash attention never compiles the varlen path by default.
5. CUDA graphs (``cb/initialization.py:201-249``): off without CUDA; a user value wins; a
   non-zero padding interval *given by the user* turns them on; otherwise they are on only when no
   attention mask is needed, i.e. for flash attention (``is_attn_mask_needed = not flash``,
   ``cb/initialization.py:71``): **``paged|sdpa`` and ``paged|eager`` default to eager**.
6. async batching (``cb/initialization.py:252-267``): a user value wins; otherwise on iff CUDA
   graphs are on for some path *and* no mask is needed: **off for ``paged|sdpa``**.
7. ``max_memory_percent`` (``cb/initialization.py:270-272``): 0.8 with logits processors
   (sampling with temperature/top-k/top-p ...), else 0.9.

Cache sizing (``PagedAttentionMemoryHandler``, ``cb/cache.py:565-814``): the memory the cache
may use is ``int((total - max(allocated, reserved)) * max_memory_percent)``, where ``allocated =
total - free`` from ``cudaMemGetInfo`` after the model is loaded (``cb/cache.py:643-650``,
``cb/requests.py:43-80``), i.e. the free memory times the percentage. The footprint is a
polynomial in M = max_batch_tokens and N = num_blocks x block_size (cache tokens), maximised over
two activation peaks (``cb/cache.py:620-641``): the LM head (``M x (hidden x a + vocab x 4)``) and
attention (``M x a x (hidden + heads x head_dim + 2 x page)`` and ``N x 2 x page x a``), with page =
kv_heads x head_dim and a = the model dtype's bytes. The static tensors add
(``cb/cache.py:762-802``; k = 2 for async batching, which keeps two IO pairs, else 1):

* per cache token: ``2 x group_size x page x a`` (K and V) + ``k x groups x 8`` (read index)
* per batch token: ``k x (7 x 4 + out_rows x 4 + groups x max_blocks_per_request x 4 + 2 x groups
  x 8)``
* per batch token x cache token, and per batch token squared: ``k x masks x a``, the attention
  mask ``[M, N + M]`` (masks = 0 for flash, 2 with sliding-window layers, else 1).

Neither M nor N given: M = min(8192, the M of a batch that fills 10 % of the cache), at least 256,
then N from M (``cb/cache.py:652-681``); one given: the other solved from the polynomial; both
given: only checked (a footprint over the memory raises ``MemoryError`` at start-up). After the
cache is built, ``max_requests_per_batch`` is capped at M, and at num_blocks when prefix sharing
is off (``cb/initialization.py:275-290``).

The per-step copy (``cb/input_outputs.py``): with async batching each of the two IO pairs holds a
pinned host copy and a device copy of every static input (``:563-589``, ``:671-681``); the host
copy is built on the CPU and *the whole static tensor* is copied host-to-device before every
forward (``_transfer_inputs``, ``:212-242``, called at ``:736``), whatever the batch holds: the
bulk inputs ``[7 + processor rows, M + 1 rounded up to 32]`` int32, the block table (decode fast
path batches) or the write index ``[groups, M]`` int64 and, when the batch reads the cache, the
read index ``[groups, N + M]`` int64, and for ``paged|sdpa``/``paged|eager``
(``cb/utils.py:54-56``) the attention mask ``[1, 1, M, N + M]`` in the model dtype (``:181-190``,
copied at ``:240-242``). The mask dominates: M x (N + M) x 2 bytes, ~11 GB per step for M = 1792
and a 3.1 M-token cache. Synchronous batching builds its inputs directly in device tensors and
touches only the batch's ``[q, q + kv]`` corner of the mask (``:245-285``, ``:415-460``), so
nothing there scales with the cache size. With CUDA graphs the inputs are padded: queries to a
multiple of ``q_padding_interval_size``, cache reads to a multiple of
``kv_padding_interval_size`` capped at the cache (``cb/model_runner.py:78-91``).

What this module does not model: tensor parallelism (the cache is sized per rank and the ranks
take the minimum, ``cb/cache.py:225-229``), CPU offloading, a compile config carried by the
model's config, and the switch to flash attention that ``switch_to_cb_friendly_attn``
(``cb/continuous_api.py:651-683``) makes when the flash-attn package is installed and the model
was loaded with a non-paged, non-flash implementation (pass ``flash_attn_installed`` for that).

Example:
    >>> shape = ModelShape(num_layers=16, num_kv_heads=8, head_dim=64, hidden_size=2048,
    ...                    vocab_size=128256, dtype_bytes=2, weights_bytes=2_471_628_800,
    ...                    num_attention_heads=32)
    >>> cfg = resolve_transformers_config({})
    >>> cfg["use_cuda_graph"], cfg["use_async_batching"], cfg["max_memory_percent"]
    ((False, False), False, 0.9)
    >>> cfg["num_blocks"] is None, sorted(cfg["unresolved"])
    (True, ['max_batch_tokens', 'num_blocks'])
    >>> cfg = resolve_transformers_config(
    ...     {"max_batch_tokens": 1792, "block_size": 128, "use_async_batching": True,
    ...      "use_cuda_graph": True}, free_memory_bytes=146_650_000_000, model=shape)
    >>> cfg["num_blocks"] * cfg["block_size"]
    3141632
    >>> round(mask_copy_bytes_per_step(cfg) / 1e9, 2)
    11.27
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import ceil, floor, gcd, sqrt

from servetune import ConfigError

__all__ = [
    "CB_CONFIG_FIELDS",
    "DERIVED_KEYS",
    "ModelShape",
    "resolve_transformers_config",
    "mask_copy_bytes_per_step",
    "h2d_bytes_per_step",
]

#: The fields of transformers 5.17.0's ``ContinuousBatchingConfig``
#: (``configuration_utils.py:1674-1885``), in declaration order.
CB_CONFIG_FIELDS: tuple[str, ...] = (
    "block_size", "num_blocks", "max_batch_tokens", "max_memory_percent",
    "max_requests_per_batch", "max_blocks_per_request", "allow_block_sharing",
    "use_async_batching", "use_cuda_graph", "q_padding_interval_size", "kv_padding_interval_size",
    "varlen_compile_config", "decode_compile_config", "default_compile_level", "scheduler_type",
    "safety_margin", "return_logprobs", "seed", "cpu_offload_space",
    "cpu_offload_space_safety_threshold", "max_queue_size", "per_request_processors",
    "drop_unsupported_processors", "disable_nccl_graph_mixing", "cpu_group_timeout",
    "use_default_compile_configs", "max_cached_graphs",
)

#: The dataclass defaults (``configuration_utils.py:1752-1858``).
_FIELD_DEFAULTS: dict[str, object] = {
    "block_size": 256, "num_blocks": None, "max_batch_tokens": None, "max_memory_percent": None,
    "max_requests_per_batch": None, "max_blocks_per_request": None, "allow_block_sharing": True,
    "use_async_batching": None, "use_cuda_graph": None, "q_padding_interval_size": 0,
    "kv_padding_interval_size": 0, "varlen_compile_config": None, "decode_compile_config": None,
    "default_compile_level": 0, "scheduler_type": "fifo", "safety_margin": None,
    "return_logprobs": False, "seed": None, "cpu_offload_space": 0.0,
    "cpu_offload_space_safety_threshold": 0.8, "max_queue_size": 0,
    "per_request_processors": False, "drop_unsupported_processors": True,
    "disable_nccl_graph_mixing": True, "cpu_group_timeout": 300.0,
    "use_default_compile_configs": None, "max_cached_graphs": None,
}

#: Keys of the resolved dict beyond the config fields: what the per-step formulas need.
DERIVED_KEYS: tuple[str, ...] = (
    "attn_implementation",  # after the engine's switch to a paged implementation
    "attention_mask",  # True: static [M, N + M] mask tensors exist (cb/utils.py:54-56)
    "num_attention_masks",  # mask tensors: one per attention layer type (input_outputs.py:181-190)
    "num_layer_groups",  # cache layer groups (cb/cache.py:56-84); 1 when the model is unknown
    "dtype_bytes",  # bytes of the model dtype (activations, cache, mask); None when unknown
    "cache_tokens",  # num_blocks x block_size, None while num_blocks is unresolved
    "unresolved",  # {field: why it stays None}
)

_FALLBACK_MAX_REQUESTS_PER_BATCH = 1024  # cb/initialization.py:32
_FALLBACK_MAX_BLOCKS_PER_REQUEST = 32  # cb/initialization.py:33
_FALLBACK_Q_PADDING = 64  # cb/initialization.py:34
_FALLBACK_KV_PADDING = 64 * 256  # cb/initialization.py:35
_DEFAULT_MAX_BATCH_TOKENS = 8192  # cb/cache.py:579
_MIN_MAX_BATCH_TOKENS = 256  # cb/cache.py:578
_MIN_BLOCK_SIZE = 4  # cb/cache.py:145
_CACHE_FILL_PER_BATCH = 0.1  # cb/cache.py:674
_STATIC_INPUT_ROWS = 7  # input_outputs.py:76
_INT32 = 4
_INT64 = 8
_FP32 = 4
#: torch.compile modes whose inductor options turn on cudagraphs (torch._inductor.list_mode_options)
_CUDAGRAPH_COMPILE_MODES = frozenset({"reduce-overhead", "max-autotune"})
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
                "float8_e4m3fn": 1, "float8_e5m2": 1}
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


@dataclass(frozen=True)
class ModelShape:
    """The model dimensions the engine's cache sizing reads (``cb/cache.py:29-84``, ``:620-641``).

    Attributes:
        num_layers: decoder layers (``num_hidden_layers``).
        num_kv_heads: key/value heads (``num_key_value_heads``, else ``num_attention_heads``).
        head_dim: per-head dimension (``head_dim``, else hidden / attention heads).
        hidden_size: model width.
        vocab_size: vocabulary (the LM-head peak holds ``M x vocab`` fp32 logits).
        dtype_bytes: bytes of the model dtype (the cache, activations and mask use it).
        weights_bytes: bytes of the loaded weights; with ``gpu_memory_bytes`` it gives the free
            memory the cache is sized from.
        num_attention_heads: query heads (the attention peak holds ``M x heads x head_dim``);
            ``None``: ``hidden_size // head_dim``.
        layer_types: per-layer ``"full_attention"``/``"sliding_attention"``; empty: every layer
            full attention, or sliding when ``sliding_window`` is set (``cb/cache.py:65-68``).
        sliding_window: the sliding window, if any.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    dtype_bytes: int = 2
    weights_bytes: int = 0
    num_attention_heads: int | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size",
                     "dtype_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelShape.{name} must be a positive integer; got {value!r}")
        if self.weights_bytes < 0:
            raise ConfigError(f"ModelShape.weights_bytes must be >= 0; got {self.weights_bytes}")
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ConfigError(f"ModelShape.layer_types has {len(self.layer_types)} entries for "
                              f"{self.num_layers} layers")

    @property
    def query_heads(self) -> int:
        return self.num_attention_heads or self.hidden_size // self.head_dim

    @property
    def page_size(self) -> int:
        """Elements of one token's K (or V) in one layer: kv heads x head dim."""
        return self.num_kv_heads * self.head_dim

    def layer_groups(self) -> tuple[int, int, list[str]]:
        """``(num_groups, group_size, group_types)`` as ``group_layers_by_attn_type`` makes them
        (``cb/cache.py:56-84``): groups of one attention type, all of the gcd size."""
        types = list(self.layer_types) or [
            "sliding_attention" if self.sliding_window is not None else "full_attention"
        ] * self.num_layers
        by_type: dict[str, list[int]] = {}
        for i, kind in enumerate(types):
            by_type.setdefault(kind, []).append(i)
        size = gcd(*[len(v) for v in by_type.values()])
        group_types = [kind for kind, idx in by_type.items() for _ in range(0, len(idx), size)]
        return len(group_types), size, group_types

    @classmethod
    def from_config(cls, config: Mapping[str, object], *, dtype_bytes: int | None = None,
                    weights_bytes: int | None = None) -> "ModelShape":
        """The shape of a transformers ``config.json`` dict (a multimodal config's
        ``text_config`` is used when present); the dtype is the config's ``dtype`` (or
        ``torch_dtype``), bfloat16 when it names none, unless ``dtype_bytes`` is given.

        ``weights_bytes`` defaults to an estimate for a dense decoder with a gated MLP
        (Llama, Qwen2, Mistral: embeddings, q/k/v/o, gate/up/down, norms; the LM head unless
        tied); give it explicitly for anything else. A mixture-of-experts config without an
        explicit ``weights_bytes`` is an error.
        """
        text = config.get("text_config")
        cfg = dict(text) if isinstance(text, Mapping) else dict(config)

        def need(key: str) -> int:
            value = cfg.get(key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"model config: expected an integer {key!r}; got {value!r}")
            return value

        layers, hidden, vocab = need("num_hidden_layers"), need("hidden_size"), need("vocab_size")
        heads = cfg.get("num_attention_heads")
        kv_heads = cfg.get("num_key_value_heads") or heads  # cb/cache.py:29-39
        head_dim = cfg.get("head_dim") or (hidden // heads if heads else None)  # cb/cache.py:42-53
        if not kv_heads or not head_dim:
            raise ConfigError("model config: need num_key_value_heads or num_attention_heads, and "
                              "head_dim or hidden_size with num_attention_heads")
        if dtype_bytes is None:
            name = str(cfg.get("dtype") or cfg.get("torch_dtype") or config.get("dtype")
                       or config.get("torch_dtype") or "bfloat16").removeprefix("torch.")
            if name not in _DTYPE_BYTES:
                raise ConfigError(f"model config: unknown dtype {name!r}; pass dtype_bytes "
                                  f"(known: {', '.join(sorted(_DTYPE_BYTES))})")
            dtype_bytes = _DTYPE_BYTES[name]
        if weights_bytes is None:
            if any(cfg.get(k) for k in _EXPERT_KEYS):
                raise ConfigError("model config: a mixture-of-experts model; pass weights_bytes "
                                  "(the dense estimate would be wrong)")
            inter = cfg.get("intermediate_size")
            if not isinstance(inter, int):
                raise ConfigError("model config: no intermediate_size to estimate the weights "
                                  "from; pass weights_bytes")
            q_width = (heads or hidden // head_dim) * head_dim
            per_layer = (hidden * q_width + 2 * hidden * kv_heads * head_dim + q_width * hidden
                         + 3 * hidden * inter + 2 * hidden)
            embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings", False) else 2)
            weights_bytes = (layers * per_layer + embeddings + hidden) * dtype_bytes
        layer_types = cfg.get("layer_types")
        window = cfg.get("sliding_window")
        if cfg.get("use_sliding_window") is False:
            window = None
        return cls(num_layers=layers, num_kv_heads=int(kv_heads), head_dim=int(head_dim),
                   hidden_size=hidden, vocab_size=vocab, dtype_bytes=int(dtype_bytes),
                   weights_bytes=int(weights_bytes),
                   num_attention_heads=int(heads) if heads else None,
                   layer_types=tuple(layer_types) if layer_types else (),
                   sliding_window=int(window) if window else None)


def _is_flash(attn: str, versions: tuple[int, ...] = ()) -> bool:
    """``is_flash_attention_requested`` (``utils/generic.py:269-305``)."""
    import re

    if versions:
        return any(re.match(r".*flash.*" + str(v), attn) is not None for v in versions)
    return "flash" in attn


def _paged_attn(attn: str, flash_attn_installed: int | None) -> str:
    """The implementation after ``switch_to_cb_friendly_attn`` (``cb/continuous_api.py:651-683``):
    a non-paged, non-flash one becomes flash when flash-attn is installed, then gets ``paged|``."""
    target = attn
    if not _is_flash(attn) and "paged|" not in attn and flash_attn_installed in (2, 3):
        target = f"flash_attention_{flash_attn_installed}"
    return target if "paged|" in target else f"paged|{target}"


def _compile_uses_cudagraphs(compile_config: object) -> bool:
    """``options.get("triton.cudagraphs")`` of ``list_mode_options().get(mode, options)``
    (``cb/initialization.py:239-240``); ``CompileConfig.mode`` defaults to ``reduce-overhead``."""
    if isinstance(compile_config, Mapping):
        mode = compile_config.get("mode", "reduce-overhead")
        options = compile_config.get("options") or {}
    else:
        mode = getattr(compile_config, "mode", "reduce-overhead")
        options = getattr(compile_config, "options", None) or {}
    if mode is None:
        return bool(options.get("triton.cudagraphs", False))
    return mode in _CUDAGRAPH_COMPILE_MODES


class _Memory:
    """``PagedAttentionMemoryHandler``'s polynomial (``cb/cache.py:565-814``), torch-free."""

    def __init__(self, model: ModelShape, cfg: dict, available: int) -> None:
        self.model = model
        self.available = available
        self.block_size = cfg["block_size"]
        self.num_groups, self.group_size, group_types = model.layer_groups()
        self.masks = 0 if _is_flash(cfg["attn_implementation"]) else (
            2 if "sliding_attention" in group_types else 1)  # cb/cache.py:606-609
        self.mbpr = cfg["max_blocks_per_request"]  # cb/cache.py:611-613
        self.out_rows = 2 if cfg["return_logprobs"] else 1  # cb/cache.py:615
        self.k = 2 if cfg["use_async_batching"] else 1  # cb/cache.py:617

    def peaks(self) -> list[tuple[int, int, int, int]]:
        m, a = self.model, self.model.dtype_bytes  # cb/cache.py:620-641
        lm_head = (m.hidden_size * a + m.vocab_size * _FP32, 0, 0, 0)
        attention = (a * (m.hidden_size + m.query_heads * m.head_dim + 2 * m.page_size),
                     2 * m.page_size * a, 0, 0)
        return [lm_head, attention]

    def coefficients(self, peak: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        dm, dn, dmm, dmn = peak  # cb/cache.py:762-802
        a = c = self.model.dtype_bytes
        k, g = self.k, self.num_groups
        cn = dn + 2 * self.group_size * self.model.page_size * c + k * g * _INT64
        cm = (dm + k * 7 * _INT32 + k * self.out_rows * _INT32 + k * g * self.mbpr * _INT32
              + k * g * _INT64 + k * g * _INT64)
        cmn = dmn + k * self.masks * a
        cmm = dmm + k * self.masks * a
        return cm, cn, cmn, cmm

    @staticmethod
    def quadratic(a: float, b: float, c: float) -> int:
        if a == 0:  # cb/cache.py:748-759
            return int(-c / b)
        disc = b**2 - 4 * a * c
        if disc < 0:
            raise ConfigError(f"no cache size fits the memory (discriminant {disc})")
        root = (-b + sqrt(disc)) / (2 * a)
        if root < 0:
            raise ConfigError(f"no cache size fits the memory (root {root})")
        return int(floor(root))

    def solve(self, m_tokens: int | None, n_blocks: int | None,
              fill: float | None) -> tuple[int, int]:
        solutions = []  # cb/cache.py:683-735
        for peak in self.peaks():
            cm, cn, cmn, cmm = self.coefficients(peak)
            big_m, nb = m_tokens, n_blocks
            if big_m is None and nb is None:
                pages = self.quadratic(cmn * fill + cmm * fill**2, cn + cm * fill, -self.available)
                big_m, nb = int(pages * fill), int(pages) // self.block_size
            elif nb is None:
                pages = floor((self.available - cm * big_m - cmm * big_m**2) / (cn + cmn * big_m))
                nb = pages // self.block_size
            elif big_m is None:
                pages = nb * self.block_size
                big_m = int(self.quadratic(cmm, cm + cmn * pages, cn * pages - self.available))
            solutions.append((big_m, nb))
        return min(s[0] for s in solutions), min(s[1] for s in solutions)

    def footprint(self, m_tokens: int, n_blocks: int) -> int:
        pages = n_blocks * self.block_size  # cb/cache.py:804-814
        worst = 0
        for peak in self.peaks():
            cm, cn, cmn, cmm = self.coefficients(peak)
            worst = max(worst, cn * pages + cm * m_tokens + cmn * pages * m_tokens
                        + cmm * m_tokens * m_tokens)
        return worst

    def infer(self, m_tokens: int | None, n_blocks: int | None) -> tuple[int, int]:
        if m_tokens is None and n_blocks is None:  # cb/cache.py:652-681
            upper, _ = self.solve(None, None, _CACHE_FILL_PER_BATCH)
            m_tokens = max(min(_DEFAULT_MAX_BATCH_TOKENS, upper), _MIN_MAX_BATCH_TOKENS)
        if m_tokens is None or n_blocks is None:
            m_tokens, n_blocks = self.solve(m_tokens, n_blocks, None)
        return self.check(m_tokens, n_blocks)

    def check(self, m_tokens: int, n_blocks: int) -> tuple[int, int]:
        need = self.footprint(m_tokens, n_blocks)  # cb/cache.py:737-746
        if need > self.available:
            raise ConfigError(
                f"max_batch_tokens={m_tokens} with num_blocks={n_blocks} needs {need} bytes, more "
                f"than the {self.available} bytes the cache may use: transformers raises "
                "MemoryError at start-up; lower them or raise max_memory_percent")
        if m_tokens <= 0 or n_blocks <= 0:
            raise ConfigError(f"no cache fits the memory: max_batch_tokens={m_tokens}, "
                              f"num_blocks={n_blocks}")
        return m_tokens, n_blocks


def resolve_transformers_config(
    knobs: Mapping[str, object],
    *,
    attn_implementation: str = "paged|sdpa",
    gpu_memory_bytes: int | None = None,
    model: ModelShape | None = None,
    free_memory_bytes: int | None = None,
    other_used_bytes: int = 0,
    has_logit_processors: bool = False,
    workload_hints: Mapping[str, int] | None = None,
    cuda_available: bool = True,
    flash_kvcache_available: bool = True,
    flash_attn_installed: int | None = None,
) -> dict:
    """Every ``ContinuousBatchingConfig`` field as transformers 5.17.0 resolves it on start-up.

    Args:
        knobs: the fields the user sets (``ContinuousBatchingConfig(**knobs)``); the rest keep
            their dataclass defaults. An unknown field is a :class:`~servetune.ConfigError`.
        attn_implementation: the model's attention implementation as loaded; a non-paged one
            gets the ``paged|`` prefix the engine adds.
        gpu_memory_bytes: the device's total memory (``cudaMemGetInfo``'s total). With ``model``
            it gives the free memory as total - ``model.weights_bytes`` - ``other_used_bytes``.
        model: the model's shape; needed to size the cache.
        free_memory_bytes: the free device memory after the model is loaded, as the engine reads
            it (``cb/cache.py:643-650``); takes precedence over ``gpu_memory_bytes``.
        other_used_bytes: device memory in use besides the weights (CUDA context, other
            tensors); 0 makes the computed cache an upper bound.
        has_logit_processors: the generation config needs logits processing (temperature,
            top-k, top-p, ...): ``max_memory_percent`` then defaults to 0.8, not 0.9.
        workload_hints: ``max_prompt_length``, ``max_generated_length``, ``num_requests`` as
            ``generate_batch`` passes them; ``None`` as ``init_continuous_batching`` and
            ``transformers serve`` do.
        cuda_available: a CUDA device (False: CUDA graphs are forced off, as on a CPU).
        flash_kvcache_available: ``flash_attn_with_kvcache`` can be imported for the flash
            implementation (the decode fast path needs it).
        flash_attn_installed: 2 or 3 when that flash-attn is installed: a non-paged, non-flash
            implementation is then switched to it.

    Returns:
        ``{field: value}`` for every name in :data:`CB_CONFIG_FIELDS` (``use_cuda_graph`` a
        ``(varlen, decode)`` tuple, compile configs as given or a ``{"mode", "fullgraph",
        "dynamic"}`` dict) plus :data:`DERIVED_KEYS`. ``num_blocks`` and ``max_batch_tokens``
        not given stay ``None`` when the free memory or the model shape is unknown, with the
        reason in ``unresolved``. A configuration the engine would refuse to start with (too
        much memory, block size < 4) raises :class:`~servetune.ConfigError`.
    """
    unknown = sorted(set(knobs) - set(CB_CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown ContinuousBatchingConfig field(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(CB_CONFIG_FIELDS)}")
    cfg: dict = {**_FIELD_DEFAULTS, **knobs}
    if cfg["use_default_compile_configs"] is not None:  # configuration_utils.py:1862-1872
        cfg["default_compile_level"] = 3 if cfg["use_default_compile_configs"] else 0
    if isinstance(cfg["use_cuda_graph"], list):
        cfg["use_cuda_graph"] = tuple(cfg["use_cuda_graph"])
    block_size = cfg["block_size"]
    if not isinstance(block_size, int) or block_size < _MIN_BLOCK_SIZE:
        raise ConfigError(f"block_size must be an integer >= {_MIN_BLOCK_SIZE} "
                          f"(cb/cache.py:170-172); got {block_size!r}")
    attn = _paged_attn(attn_implementation, flash_attn_installed)
    flash = _is_flash(attn)
    unresolved: dict[str, str] = {}

    graphs_requested = bool(cfg["q_padding_interval_size"] or cfg["kv_padding_interval_size"])

    hints = dict(workload_hints or {})  # cb/initialization.py:84-99
    if workload_hints is not None:
        if cfg["max_blocks_per_request"] is None:
            longest = hints.get("max_prompt_length", 0) + hints.get("max_generated_length", 0)
            if longest > 0:
                blocks = int(ceil(longest / block_size)) + 1
                cfg["max_blocks_per_request"] = blocks + (blocks % 2)
        if cfg["max_requests_per_batch"] is None:
            n = hints.get("num_requests", 0)
            cfg["max_requests_per_batch"] = (min(n, _FALLBACK_MAX_REQUESTS_PER_BATCH) if n > 0
                                             else _FALLBACK_MAX_REQUESTS_PER_BATCH)
    if cfg["max_requests_per_batch"] is None:  # cb/initialization.py:102-111
        cfg["max_requests_per_batch"] = _FALLBACK_MAX_REQUESTS_PER_BATCH
    if cfg["max_blocks_per_request"] is None:
        cfg["max_blocks_per_request"] = _FALLBACK_MAX_BLOCKS_PER_REQUEST
    if cfg["q_padding_interval_size"] == 0:
        cfg["q_padding_interval_size"] = _FALLBACK_Q_PADDING
    if cfg["kv_padding_interval_size"] == 0:
        cfg["kv_padding_interval_size"] = _FALLBACK_KV_PADDING

    if cfg["max_blocks_per_request"] != 0:  # cb/initialization.py:114-146 (CUDA; XPU not modelled)
        if not (cuda_available and _is_flash(attn, (2, 3)) and flash_kvcache_available):
            cfg["max_blocks_per_request"] = 0
    num_groups, _, group_types = model.layer_groups() if model else (1, 0, ["full_attention"])
    if "sliding_attention" in group_types:  # cb/cache.py:285-290
        cfg["max_blocks_per_request"] = 0

    level = cfg["default_compile_level"]  # cb/initialization.py:149-198
    mode = "max-autotune-no-cudagraphs" if level >= 2 else "default"
    default_compile = {"mode": mode, "dynamic": level <= 2}
    if cfg["varlen_compile_config"] is None and level > 0 and not flash:
        cfg["varlen_compile_config"] = {**default_compile, "fullgraph": True}
    decode_explicit = cfg["decode_compile_config"] is not None
    if cfg["decode_compile_config"] is None and level > 0:
        cfg["decode_compile_config"] = {**default_compile, "fullgraph": False}
    if cfg["max_blocks_per_request"] == 0 and decode_explicit:
        cfg["decode_compile_config"] = None

    mask_needed = not flash  # cb/initialization.py:71, :201-249
    if not cuda_available:
        cfg["use_cuda_graph"] = (False, False)
    elif cfg["use_cuda_graph"] is not None:
        if isinstance(cfg["use_cuda_graph"], bool):
            cfg["use_cuda_graph"] = (cfg["use_cuda_graph"], cfg["use_cuda_graph"])
    elif graphs_requested:
        cfg["use_cuda_graph"] = (True, True)
    else:
        cfg["use_cuda_graph"] = tuple(
            not mask_needed and (cc is None or not _compile_uses_cudagraphs(cc))
            for cc in (cfg["varlen_compile_config"], cfg["decode_compile_config"]))
    if cfg["use_async_batching"] is None:  # cb/initialization.py:252-267
        cfg["use_async_batching"] = any(cfg["use_cuda_graph"]) and not mask_needed
    if cfg["max_memory_percent"] is None:  # cb/initialization.py:270-272
        cfg["max_memory_percent"] = 0.8 if has_logit_processors else 0.9

    cfg["attn_implementation"] = attn
    free = free_memory_bytes
    if free is None and gpu_memory_bytes is not None and model is not None:
        free = gpu_memory_bytes - model.weights_bytes - other_used_bytes
    if model is not None and free is not None:
        memory = _Memory(model, cfg, int(free * cfg["max_memory_percent"]))
        m_tokens, n_blocks = memory.infer(cfg["max_batch_tokens"], cfg["num_blocks"])
        cfg["max_batch_tokens"], cfg["num_blocks"] = m_tokens, n_blocks
    else:
        missing = " and ".join(x for x, have in (("the free GPU memory", free is not None or
                                                  gpu_memory_bytes is not None),
                                                 ("the model shape", model is not None))
                               if not have)
        for name in ("num_blocks", "max_batch_tokens"):
            if cfg[name] is None:
                unresolved[name] = (f"transformers sizes it from the free GPU memory at start-up "
                                    f"(cb/cache.py:652-681); {missing} unknown")
    if cfg["max_batch_tokens"] is not None:  # cb/initialization.py:275-290
        cfg["max_requests_per_batch"] = min(cfg["max_requests_per_batch"], cfg["max_batch_tokens"])
        prefix_sharing = cfg["allow_block_sharing"] and group_types == ["full_attention"]
        if not prefix_sharing and cfg["num_blocks"] is not None:
            cfg["max_requests_per_batch"] = min(cfg["max_requests_per_batch"], cfg["num_blocks"])

    mask = attn in ("paged|eager", "paged|sdpa")  # cb/utils.py:54-56
    cfg.update({
        "attention_mask": mask,
        "num_attention_masks": (2 if "sliding_attention" in group_types else 1) if mask else 0,
        "num_layer_groups": num_groups,
        "dtype_bytes": model.dtype_bytes if model else None,
        "cache_tokens": (cfg["num_blocks"] * block_size if cfg["num_blocks"] is not None
                         else None),
        "unresolved": unresolved,
    })
    return cfg


def _cache_geometry(resolved: Mapping[str, object], what: str) -> tuple[int, int, int]:
    """``(M, N, dtype bytes)`` of a resolved config, or a ConfigError naming what is missing."""
    missing = [k for k in ("max_batch_tokens", "num_blocks", "block_size")
               if resolved.get(k) is None]
    if missing:
        reasons = resolved.get("unresolved") or {}
        why = "; ".join(f"{k}: {reasons.get(k, 'not set')}" for k in missing)
        raise ConfigError(f"{what} needs {', '.join(missing)} resolved ({why}); pass the GPU "
                          "memory and the model shape to resolve_transformers_config")
    a = resolved.get("dtype_bytes") or 2
    return (int(resolved["max_batch_tokens"]),
            int(resolved["num_blocks"]) * int(resolved["block_size"]), int(a))


def mask_copy_bytes_per_step(resolved: Mapping[str, object]) -> int:
    """Bytes of attention mask the engine copies host-to-device before every forward pass.

    Async batching copies each whole static mask ``[1, 1, M, N + M]`` (M = max_batch_tokens,
    N = cache tokens) from its pinned host buffer whatever the batch holds
    (``cb/input_outputs.py:181-190``, ``:240-242``, ``:736``): ``masks x M x (N + M) x dtype``.
    Synchronous batching, and flash attention (no mask), copy none: 0.

    ``resolved`` is :func:`resolve_transformers_config`'s output (or a run's resolved config
    with ``attn_implementation`` and ``dtype_bytes`` added; dtype defaults to 2 bytes).
    """
    mask = resolved.get("attention_mask")
    if mask is None:
        mask = resolved.get("attn_implementation", "paged|sdpa") in ("paged|eager", "paged|sdpa")
    if not resolved.get("use_async_batching") or not mask:
        return 0
    m_tokens, n_tokens, a = _cache_geometry(resolved, "mask_copy_bytes_per_step")
    masks = int(resolved.get("num_attention_masks") or 1)
    return masks * m_tokens * (n_tokens + m_tokens) * a


def h2d_bytes_per_step(resolved: Mapping[str, object], *, reads_cache: bool = True,
                       decode_fast_path: bool = False, logits_processor_rows: int = 0) -> dict:
    """Every static input async batching copies host-to-device before a forward pass.

    ``_transfer_inputs`` (``cb/input_outputs.py:212-242``) copies whole static tensors: the bulk
    inputs ``[7 + logits_processor_rows, ceil32(M + 1)]`` int32; for a decode-fast-path batch the
    block table ``[groups, max_requests_per_batch, max_blocks_per_request]`` int32, otherwise the
    write index ``[groups, M]`` int64 and, if the batch reads the cache, the read index
    ``[groups, N + M]`` int64; and the attention masks (:func:`mask_copy_bytes_per_step`).
    Synchronous batching writes its inputs straight into device tensors at the batch's size
    (``:436-460``): every entry is 0 then.

    Returns ``{"bulk_inputs", "block_table", "write_index", "read_index", "attention_mask",
    "total"}`` in bytes.
    """
    parts = dict.fromkeys(("bulk_inputs", "block_table", "write_index", "read_index",
                           "attention_mask"), 0)
    if resolved.get("use_async_batching"):
        m_tokens, n_tokens, _ = _cache_geometry(resolved, "h2d_bytes_per_step")
        groups = int(resolved.get("num_layer_groups") or 1)
        columns = -(-(m_tokens + 1) // 32) * 32
        parts["bulk_inputs"] = (_STATIC_INPUT_ROWS + logits_processor_rows) * columns * _INT32
        mbpr = int(resolved.get("max_blocks_per_request") or 0)
        if decode_fast_path and mbpr > 0:
            parts["block_table"] = (groups * int(resolved["max_requests_per_batch"]) * mbpr
                                    * _INT32)
        else:
            parts["write_index"] = groups * m_tokens * _INT64
            if reads_cache:
                parts["read_index"] = groups * (n_tokens + m_tokens) * _INT64
        parts["attention_mask"] = mask_copy_bytes_per_step(resolved)
    parts["total"] = sum(parts.values())
    return parts
