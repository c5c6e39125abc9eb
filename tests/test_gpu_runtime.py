"""On CUDA: the graphs runtime's compiled layer steps, captured, give eager's tokens in fp32 for
every paradigm and strategy (the models keep their real shapes with two layers). In bf16 the two
runtimes' kernels round differently; the benchmarks save that share as `runtime_agreement`."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from pytest_dlmbench.core import DecodeOptions
from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.paradigms import PARADIGMS, ForwardLog, make_paradigm
from pytest_dlmbench.prompts import synthetic_prompts
from pytest_dlmbench.runtimes import make_runtime
from pytest_dlmbench.timing import RegionTimer

pytestmark = pytest.mark.cuda

MODELS = {"ar": "llama-3.1-8b", "dlm": "llada-8b", "block": "fast-dllm-v2-7b"}


@pytest.fixture(scope="module", params=list(MODELS))
def built(request):
    spec = dataclasses.replace(get_spec(MODELS[request.param]), num_layers=2)
    yield spec, build_model(spec, torch.device("cuda"), torch.float32)
    torch.cuda.empty_cache()


def test_graphs_gives_eager_tokens_in_fp32(built):
    spec, network = built
    prompt = synthetic_prompts(spec.prompt_vocab_limit, 2, 40, 0, torch.device("cuda"))
    for strategy in PARADIGMS[spec.paradigm].strategies:
        paradigm = make_paradigm(spec.paradigm, DecodeOptions(), strategy)
        with torch.inference_mode():
            runs = {runtime: paradigm.generate(make_runtime(runtime, network), spec, prompt, 64,
                                               ForwardLog(RegionTimer(torch.device("cuda"))))
                    for runtime in ("eager", "graphs")}
        assert torch.equal(runs["eager"].tokens, runs["graphs"].tokens), strategy
        assert runs["eager"].nfe == runs["graphs"].nfe, strategy


@pytest.mark.parametrize("batch", [1, 3])
def test_split_kv_decode_attends_to_the_valid_slots_only(batch):
    """The split-KV kernels over the whole cache, in bf16, equal SDPA over each row's valid slots,
    whatever the slots past them hold."""
    from pytest_dlmbench.runtimes.graphs import SplitKV, attend_split_kv

    capacity, valid, heads, kv_heads, dim = 512, 300, 32, 8, 128
    generator = torch.Generator("cuda").manual_seed(0)
    query = torch.randn(batch, 1, heads, dim, device="cuda", dtype=torch.bfloat16, generator=generator)
    key, value = (torch.randn(batch, capacity, kv_heads, dim, device="cuda", dtype=torch.bfloat16,
                              generator=generator) for _ in range(2))
    key[:, valid:], value[:, valid:] = 1e3, 1e3  # unwritten slots: would dominate if read
    split = SplitKV.for_batch(batch, kv_heads, torch.device("cuda"))
    split.lengths.fill_(valid)
    got = attend_split_kv(split, query, key, value, None, dim**-0.5, False)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key[:, :valid].transpose(1, 2), value[:, :valid].transpose(1, 2), scale=dim**-0.5,
        enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(("batch", "dtype", "split"), [(1, torch.bfloat16, True), (16, torch.bfloat16, True),
                                                      (16, torch.float32, False)])
def test_decode_runs_split_kv_in_half_precision(batch, dtype, split):
    """llama's bf16 decode steps run the split-KV kernels at any batch; fp32 ones, whose dots the
    kernels would round to TF32, the masked window."""
    from torch.profiler import ProfilerActivity, profile

    spec = dataclasses.replace(get_spec("llama-3.1-8b"), num_layers=2)
    network = build_model(spec, torch.device("cuda"), dtype)
    paradigm = make_paradigm("ar", DecodeOptions(), "baseline")
    prompt = synthetic_prompts(spec.prompt_vocab_limit, batch, 40, 0, torch.device("cuda"))
    executor = make_runtime("graphs", network)
    with torch.inference_mode():
        paradigm.generate(executor, spec, prompt, 16, ForwardLog(RegionTimer(torch.device("cuda"))))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            paradigm.generate(executor, spec, prompt, 16, ForwardLog(RegionTimer(torch.device("cuda"))))
            torch.cuda.synchronize()
    names = [event.key for event in prof.key_averages() if event.device_time_total > 0]
    assert any("split_kv_attention_kernel" in name for name in names) == split, names


class SyncsUntilResult(ForwardLog):
    """A log that stops CUDA's synchronisation warnings where the generation reads its result."""

    def result(self, tokens, decoded_len=None):
        torch.cuda.set_sync_debug_mode(0)
        return super().result(tokens, decoded_len)


def test_a_fixed_rule_generation_never_waits_for_the_device(built):
    """Replayed graphs and the commit ops of a generation whose acceptance rule fixes its step
    count (simulated per-row commits included) are queued without one host synchronisation."""
    spec, network = built
    prompt = synthetic_prompts(spec.prompt_vocab_limit, 2, 40, 0, torch.device("cuda"))
    executor = make_runtime("graphs", network)
    for strategy in PARADIGMS[spec.paradigm].strategies:
        if strategy == "parallel+subblock_cache":  # its refresh waits on the sub-block's first position
            continue
        paradigm = make_paradigm(spec.paradigm, DecodeOptions(tpf=3.0), strategy)
        with torch.inference_mode():
            paradigm.generate(executor, spec, prompt, 64, ForwardLog(RegionTimer(torch.device("cuda"))))  # captures
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    paradigm.generate(executor, spec, prompt, 64, SyncsUntilResult(RegionTimer(torch.device("cuda"))))
                finally:
                    torch.cuda.set_sync_debug_mode(0)
            assert [str(w.message) for w in caught if "called a synchronizing" in str(w.message)] == [], strategy


def test_a_capture_run_skipping_seen_shapes_captures_them_all(built):
    """Where a paradigm's shapes are fixed, the untimed capture run replays each graph only once;
    the generation after it captures nothing new and decodes what a runtime never skipped does."""
    spec, network = built
    prompt = synthetic_prompts(spec.prompt_vocab_limit, 2, 40, 0, torch.device("cuda"))
    for strategy in PARADIGMS[spec.paradigm].strategies:
        paradigm = make_paradigm(spec.paradigm, DecodeOptions(tpf=3.0), strategy)
        if not paradigm.fixed_shapes(spec, 64):
            continue
        skipping, plain = make_runtime("graphs", network), make_runtime("graphs", network)
        with torch.inference_mode():
            with skipping.skipping_seen_shapes():
                paradigm.generate(skipping, spec, prompt, 64, ForwardLog(RegionTimer(torch.device("cuda"))))
            shapes = len(skipping.graphs)
            tokens = paradigm.generate(skipping, spec, prompt, 64, ForwardLog(RegionTimer(torch.device("cuda")))).tokens
            expected = paradigm.generate(plain, spec, prompt, 64, ForwardLog(RegionTimer(torch.device("cuda")))).tokens
        assert len(skipping.graphs) == shapes, strategy
        assert torch.equal(tokens, expected), strategy
