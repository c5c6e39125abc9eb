"""On CUDA: every paradigm's forwards run attention on a fused kernel (flash, cuDNN or memory-
efficient), never PyTorch's math fallback (an fp32 softmax, `softmax_warp_forward`), which ran
1.6x slower where compute dominates, under both runtimes (captured graphs included). The models
keep their real head shapes with two layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pytest_dlmbench.core import DecodeOptions
from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.paradigms import ForwardLog, make_paradigm
from pytest_dlmbench.prompts import synthetic_prompts
from pytest_dlmbench.runtimes import RUNTIMES, make_runtime
from pytest_dlmbench.timing import RegionTimer

pytestmark = pytest.mark.cuda

MATH_FALLBACK = ("softmax_warp_forward",)  # the math path's softmax; fused kernels have none
FUSED = ("flash", "fmha", "cudnn", "efficient_attention", "attention_kernel")


def kernel_names(run) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [event.key for event in prof.key_averages() if event.device_time_total > 0]


def generation_kernels(model: str, strategy: str, runtime: str) -> list[str]:
    """Kernel names of one warm generation (batch 2, prompt 40, gen 64; graphs replayed)."""
    spec = dataclasses.replace(get_spec(model), num_layers=2)
    device = torch.device("cuda")
    network = build_model(spec, device, torch.bfloat16)
    paradigm = make_paradigm(spec.paradigm, DecodeOptions(), strategy)
    prompt = synthetic_prompts(spec.prompt_vocab_limit, 2, 40, 0, device)
    executor = make_runtime(runtime, network)

    def generate() -> None:
        paradigm.generate(executor, spec, prompt, 64, ForwardLog(RegionTimer(device)))

    with torch.inference_mode():
        generate()  # warm: attention plans, library handles, graph captures
        return kernel_names(generate)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("model", "strategy"), [
    ("llama-3.1-8b", "baseline"), ("llada-8b", "baseline"), ("llada-8b", "prefix_cache"), ("llada-8b", "dual_cache"),
    ("fast-dllm-v2-7b", "baseline"), ("fast-dllm-v2-7b", "parallel+subblock_cache"),
])
def test_every_forward_runs_fused_attention(model, strategy, runtime):
    names = generation_kernels(model, strategy, runtime)
    assert [name for name in names if any(math in name for math in MATH_FALLBACK)] == []
    assert any(fused in name.lower() for name in names for fused in FUSED), names


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_check_sees_the_math_fallback(runtime):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        names = generation_kernels("llada-8b", "baseline", runtime)
    assert any(math in name for name in names for math in MATH_FALLBACK)
    assert not any(fused in name.lower() for name in names for fused in FUSED)
