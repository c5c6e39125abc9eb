"""On CUDA: the graphs runtime's compiled layer steps, captured, give eager's tokens in fp32 for
every paradigm and strategy (the models keep their real shapes with two layers). In bf16 the two
runtimes' kernels round differently; the benchmarks save that share as `runtime_agreement`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pytest_dlmbench.core import DecodeOptions
from pytest_dlmbench.models import build_model, get_spec
from pytest_dlmbench.paradigms import PARADIGMS, ForwardLog, make_paradigm
from pytest_dlmbench.prompts import synthetic_prompts
from pytest_dlmbench.runtimes import make_runtime
from pytest_dlmbench.timing import RegionTimer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

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
