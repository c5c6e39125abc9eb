"""Static shapes, each launch-bound forward shape captured once as a CUDA graph and replayed.

The KV cache is allocated once at its final length, one slot per absolute position; a forward
writes its keys into its positions' slots and attends to the slots [0, window). Positions,
write slots, rows, lengths and masks are device tensors copied in before a replay, so one graph
serves every call of its shape. The decoder layers run as fused.py's steps (compiled on CUDA)
around this module's attention, which stays on fused kernels:
- where the window is exact, SDPA with no mask (flash or cuDNN);
- a decode step in half precision (one query per row over a growing context), decode_attention.py's
  split-KV kernels over the whole cache, told each row's valid length: no mask, one graph;
- other decode steps (fp32) attend to a window rounded up to WINDOW_BUCKET slots under a length mask,
  so a generation captures a handful of decode graphs instead of one per step; SDPA's fused
  kernels take a mask only without `enable_gqa`, so grouped query heads are folded into rows.

A forward of more than CAPTURE_MAX_TOKENS tokens (batch x positions) runs the same static code
uncaptured: its device time dwarfs its launches, and a graph would hold its activations and
logits in the graph pool for the rest of the point, where eager frees them after the forward (at
batch 64 that pool is gigabytes: the graphs runtime would run out of memory at batches eager fits).

On the CPU the same static code runs without capture (and without split-KV, which runs on CUDA):
the tests prove it equal to eager.
"""

from __future__ import annotations

import functools
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.device import is_cuda
from pytest_dlmbench.integrations.transformers import attention_implementation
from pytest_dlmbench.runtimes.base import block_causal_mask, cache_keyword, check_attention
from pytest_dlmbench.runtimes.decode_attention import decode_attention, split_count
from pytest_dlmbench.runtimes.fused import check_architecture, fused_layers, layer_weights

if TYPE_CHECKING:
    from collections.abc import Iterator

    import torch
    from transformers import PreTrainedModel

ATTENTION_NAME = "dlmbench_window"  # not a mask interface of transformers': the model builds no mask
COMPILE = True  # captured graphs run the fused layer steps compiled (False: as written, for comparison)
WINDOW_BUCKET = 256  # masked decode windows are multiples of this many slots
# Larger forwards run uncaptured: 1024 tokens of an 8B model are ~16 TFLOP, >20 ms of device time
# against a few ms of launches that the host issues ahead of the device.
CAPTURE_MAX_TOKENS = 1024


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, folded_mask: torch.Tensor | None,
           scale: float, is_causal: bool) -> torch.Tensor:
    """query (B, n, H, D), key/value (B, k, KVH, D), folded_mask (1, 1, groups * n, k) additive -> (B, n, H, D)."""
    import torch.nn.functional as F

    batch, n, heads, dim = query.shape
    kv_heads = key.shape[2]
    groups = heads // kv_heads
    query, key, value = (part.transpose(1, 2) for part in (query, key, value))  # heads before positions
    if folded_mask is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale,
                                             enable_gqa=groups > 1)
    else:  # each KV head's `groups` query heads become groups * n rows of one head
        folded = query.reshape(batch, kv_heads, groups * n, dim)  # (B, KVH, groups * n, D)
        out = F.scaled_dot_product_attention(folded, key, value, attn_mask=folded_mask, scale=scale).reshape(
            batch, heads, n, dim)
    return out.transpose(1, 2)


@dataclass(frozen=True)
class SplitKV:
    """A decode step's split-KV inputs: each row's valid slots, set before each replay, and the
    splits a (row, KV head) gets."""

    lengths: torch.Tensor  # (B,) int32
    splits: int

    @classmethod
    def for_batch(cls, batch: int, kv_heads: int, device: torch.device) -> SplitKV:
        import torch

        multiprocessors = torch.cuda.get_device_properties(device).multi_processor_count
        return cls(torch.zeros(batch, dtype=torch.int32, device=device), split_count(batch * kv_heads, multiprocessors))


def attend_split_kv(split: SplitKV, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    folded_mask: None, scale: float, is_causal: bool) -> torch.Tensor:
    """query (B, 1, H, D), key/value (B, capacity, KVH, D), the whole cache -> (B, 1, H, D).

    decode_attention.py's kernels split each row's valid slots over the multiprocessors and read
    nothing past them, so the step needs neither a mask nor a window that grows. A layer of
    llama's decode at 984 of 1024 slots took 6.3, 7.5 and 9.5 us at batch 1, 2 and 4 on the H200,
    where flash's split-KV kernel (varlen, `seqused_k`) took 12.7, 22.2 and 24.7
    (results/graph-runtime/h200/decode-attention-2.txt); its combine kernel alone took 5.6."""
    return decode_attention(query[:, 0], key, value, split.lengths, scale, split.splits)[:, None]


def runs_split_kv(model: PreTrainedModel) -> bool:
    """Whether the model's decode steps run the split-KV kernels: they need CUDA and half precision
    (their dots would round fp32 to TF32). Where they run, they beat SDPA over the folded, masked
    window at every batch measured, 1 to 16 (results/graph-runtime/h200/decode-attention-2.txt:
    21.2 against 31.3 us a layer at batch 16 and 984 of 1024 slots)."""
    import torch

    return is_cuda(model.device) and model.dtype in (torch.float16, torch.bfloat16)


def fold(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """mask (1, 1, n, k) bool -> (1, 1, groups * n, k) additive (0 or -inf) in `dtype`: row g n + i is
    row i, as `attend` folds the queries. Additive, because SDPA turns a bool mask into one with
    three kernels in every layer."""
    import torch

    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return additive.repeat(1, 1, groups, 1)


def static_cache_class() -> type:
    """A transformers Cache (so type checks pass) whose layers are slices of preallocated slots."""
    from transformers import Cache

    class StaticKV(Cache):
        def __init__(self, model: PreTrainedModel, batch: int, capacity: int) -> None:
            import torch

            config = model.config
            shape = (batch, capacity, config.num_key_value_heads, config.head_dim)  # (B, slots, KVH, D)
            self.keys = [torch.zeros(shape, dtype=model.dtype, device=model.device)
                         for _ in range(config.num_hidden_layers)]
            self.values = [torch.zeros_like(keys) for keys in self.keys]
            self.capacity = capacity
            self.layers: list[Any] = []  # transformers' per-layer objects: none, the slots are above
            self.held: list[tuple[int, int]] = []  # cached position ranges, sorted
            self.slots: torch.Tensor | None = None  # (n,) where the running forward writes
            self.window = 0  # the running forward attends to slots [0, window)

        def window_of(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
            """The keys and values (B, window, KVH, D) the running forward attends to; its own were
            written at `slots` by the layer's step. Positions before heads, as the layer's GEMM
            writes them, so no copy transposes."""
            return self.keys[layer][:, : self.window], self.values[layer][:, : self.window]

        def get_seq_length(self, layer_idx: int = 0) -> int:
            return self.window

        def cached(self) -> int:
            return sum(end - start for start, end in self.held)

        def keep(self, start: int, end: int) -> None:
            self.held = merge([*self.held, (start, end)])

        def truncate(self, length: int) -> None:
            self.held = [(start, min(end, length)) for start, end in self.held if start < length]

        def drop(self, start: int, end: int) -> None:
            self.held = [(a, b) for held in self.held for a, b in ((held[0], min(held[1], start)),
                                                                   (max(held[0], end), held[1])) if a < b]

        def extend(self, length: int) -> None:
            self.keep(0, length)

        def context_end(self, start: int, end: int) -> int:
            """The end of what a forward over [start, end) sees, which must be [0, that end)."""
            seen = merge([*self.held, (start, end)])
            if seen[0][0] != 0 or len(seen) > 1:
                raise ValueError(f"a forward over [{start}, {end}) would see positions {seen}, not one span from 0")
            return seen[0][1]

    return StaticKV


@functools.cache
def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream this process captures on, per device: cuBLAS keeps a workspace (32 MiB
    on Hopper) for every stream it has run on until the process ends, so a fresh stream per capture
    left one more behind each time a runtime was rebuilt (after an OOM, the next point peaked
    64 MiB higher on an H100)."""
    import torch

    return torch.cuda.Stream(device=device)


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass
class Captured:
    """One captured forward shape: its input buffers and the graph that reads them."""

    ids: torch.Tensor  # (B, n)
    slots: torch.Tensor  # (n,) positions
    rows: torch.Tensor | int
    mask: torch.Tensor | None  # (1, 1, n, window) bool
    offsets: torch.Tensor  # (n,) 0..n-1: slots = start + offsets
    window_slots: torch.Tensor  # (window,) 0..window-1: a decode mask is window_slots < valid
    split: SplitKV | None  # a split-KV decode step's inputs
    logits: torch.Tensor | None = None  # (B, rows, vocab), written by the graph
    graph: Any = None


class GraphRuntime:
    """Static-shape forwards through this module's attention; on CUDA each shape is a CUDA graph."""

    name: ClassVar[str] = "graphs"
    concatenates: ClassVar[bool] = False  # static slots, written in place

    def __init__(self, model: PreTrainedModel) -> None:
        import torch

        self.model = model
        layer_weights(model)  # joined before any point's measurement starts
        self.keyword = cache_keyword(model)
        self.capture = is_cuda(model.device)
        self.capture_s: float | None = 0.0 if self.capture else None
        self.split_kv = runs_split_kv(model)
        self.graphs: dict[tuple[Any, ...], Captured] = {}
        self.caches: dict[tuple[int, int], Any] = {}  # by (batch, slots)
        self.outputs: dict[tuple[Any, ...], torch.Tensor] = {}  # logits buffers, by shape and dtype
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.skip_seen = False  # see skipping_seen_shapes
        self._cache_class = static_cache_class()

    @classmethod
    def check_model(cls, config: Any) -> None:
        """Refuse, naming the part, an architecture whose layers fused.py does not implement."""
        check_architecture(config)

    def new_cache(self, batch: int, capacity: int) -> Any:
        """The runtime's one cache of this size, emptied: captured graphs hold its slots' addresses.
        Where decode steps attend to masked windows, whole windows of slots."""
        bucketed = self.capture and not self.split_kv
        slots = -(-capacity // WINDOW_BUCKET) * WINDOW_BUCKET if bucketed else capacity
        if (batch, slots) not in self.caches:
            self.caches[batch, slots] = self._cache_class(self.model, batch, slots)
        cache = self.caches[batch, slots]
        cache.held = []
        return cache

    def forward(self, ids: torch.Tensor, start: int, rows: torch.Tensor | int, cache: Any = None,
                keep: bool = False, attention: str = "full", block_size: int | None = None) -> torch.Tensor:
        import torch

        n = ids.shape[1]
        cached = cache.cached() if cache is not None else 0
        check_attention(attention, cached, block_size)
        window = valid = cache.context_end(start, start + n) if cache is not None else n
        # a causal span over a cache (draft-and-verify) attends under a mask by slot: slot <= position
        over_cache = attention == "causal" and cached > 0 and n > 1
        masked, split = attention == "block_causal" or over_cache, False
        if cache is not None and n == 1:  # a decode step: split-KV over the whole cache, or a masked window
            split = self.split_kv
            window, masked = (cache.capacity, False) if split else (
                min(cache.capacity, -(-valid // WINDOW_BUCKET) * WINDOW_BUCKET), True)
        key = (tuple(ids.shape), window, masked, split, attention, rows if isinstance(rows, int) else len(rows),
               id(cache))
        captured = self.graphs.get(key)
        if captured is None:  # the buffers of a new shape (uncaptured: of every call)
            mask = block_causal_mask(n, block_size or n, ids.device) if attention == "block_causal" else (
                torch.empty(1, 1, n, window, dtype=torch.bool, device=ids.device) if masked else None)
            captured = Captured(ids.clone(), torch.empty(n, dtype=torch.long, device=ids.device),
                                rows if isinstance(rows, int) else rows.clone(), mask,
                                torch.arange(n, device=ids.device), torch.arange(window, device=ids.device),
                                SplitKV.for_batch(ids.shape[0], self.model.config.num_key_value_heads,
                                                  ids.device) if split else None)
        captured.ids.copy_(ids)
        torch.add(captured.offsets, start, out=captured.slots)  # (n,) positions
        if not isinstance(rows, int) and isinstance(captured.rows, torch.Tensor):  # rows as indices (in the key)
            captured.rows.copy_(rows)
        if over_cache:
            assert captured.mask is not None  # a masked shape has its mask buffer
            torch.le(captured.window_slots[None], captured.slots[:, None], out=captured.mask[0, 0])
        elif masked and attention != "block_causal":
            assert captured.mask is not None
            torch.lt(captured.window_slots, valid, out=captured.mask[0, 0, 0])
        if captured.split is not None:
            captured.split.lengths.fill_(valid)
        if cache is not None:
            cache.slots, cache.window = captured.slots, window
        if not self.capture or ids.shape[0] * n > CAPTURE_MAX_TOKENS:
            logits = self._run(captured, cache, attention)
        else:
            seen = captured.graph is not None
            if not seen:
                self._capture(captured, cache, attention)
                self.graphs[key] = captured
            if not (seen and self.skip_seen):  # a new graph runs once, so its logits are real ones
                captured.graph.replay()
            assert captured.logits is not None  # written by the capture
            logits = captured.logits
        if cache is not None and keep:
            cache.keep(start, start + n)
        return logits

    @contextmanager
    def skipping_seen_shapes(self) -> Iterator[None]:
        self.skip_seen = True
        try:
            yield
        finally:
            self.skip_seen = False

    def _run(self, captured: Captured, cache: Any, attention: str) -> torch.Tensor:
        """transformers' model forward on the captured inputs, its layers run as fused.py's steps."""
        groups = self.model.config.num_attention_heads // self.model.config.num_key_value_heads
        # folded once, for every layer
        mask = fold(captured.mask, groups, self.model.dtype) if captured.mask is not None else None
        kwargs: dict[str, Any] = {"is_causal": attention == "causal" and mask is None, "window_mask": mask}
        if cache is not None:
            kwargs[self.keyword] = cache
        attention_call = functools.partial(attend_split_kv, captured.split) if captured.split else attend
        with attention_implementation(self.model, ATTENTION_NAME), fused_layers(self.model, attention_call,
                                                                                 self.capture and COMPILE):
            return self.model(captured.ids, position_ids=captured.slots[None], use_cache=cache is not None,
                              logits_to_keep=captured.rows, **kwargs).logits

    def _capture(self, captured: Captured, cache: Any, attention: str) -> None:
        """Warm up once on a side stream (it writes the keys the replay will), then record the
        forward into `captured.graph`, writing a logits buffer shared by the graphs of its shape."""
        import torch

        began = time.perf_counter()
        side = capture_stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            logits = self._run(captured, cache, attention)
        torch.cuda.current_stream().wait_stream(side)
        shape = (tuple(logits.shape), logits.dtype)
        if shape not in self.outputs:
            self.outputs[shape] = torch.empty_like(logits)
        captured.logits = self.outputs[shape]
        captured.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured.graph, pool=self.pool, stream=side):
            captured.logits.copy_(self._run(captured, cache, attention))
        torch.cuda.synchronize()
        self.capture_s = (self.capture_s or 0.0) + time.perf_counter() - began
