"""Decoders against references, token for token, on tiny fp32 models."""

from __future__ import annotations

import pytest
import torch

from helpers import Recorder, new_log, on, prompt, reference_block_diffusion, reference_llada
from pytest_dlmbench.core import FIDELITY_NAMES
from pytest_dlmbench.paradigms import DecodeError, DecodeOptions, make_paradigm
from pytest_dlmbench.paradigms.acceptance import linear_schedule
from pytest_dlmbench.runtimes import RUNTIMES


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("batch", "prompt_len", "gen_len"), [(1, 7, 20), (3, 40, 33)])
def test_ar_equals_transformers_generate(tiny_ar, batch, prompt_len, gen_len, runtime):
    spec, model = tiny_ar
    ids = prompt(spec, batch, prompt_len)
    result = make_paradigm("ar", DecodeOptions()).generate(on(model, runtime), spec, ids, gen_len, new_log())
    expected = model.generate(ids, max_new_tokens=gen_len, min_new_tokens=gen_len, do_sample=False)
    assert torch.equal(result.tokens, expected[:, prompt_len:])
    assert result.nfe == gen_len
    assert len(result.forward_ms["prefill"]) == 1 and len(result.forward_ms["decode"]) == gen_len - 1


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("batch", "gen_len", "block_len", "steps"), [(1, 32, 32, 32), (2, 64, 16, 24), (2, 32, 8, 8)])
@pytest.mark.parametrize("fidelity", FIDELITY_NAMES)
def test_dlm_equals_reference_sampler(tiny_dlm, batch, gen_len, block_len, steps, runtime, fidelity):
    spec, model = tiny_dlm
    ids = prompt(spec, batch, 12)
    decoder = make_paradigm("dlm", DecodeOptions(block_len=block_len, steps=steps), fidelity=fidelity)
    with torch.inference_mode():
        result = decoder.generate(on(model, runtime), spec, ids, gen_len, new_log())
        expected = reference_llada(model, ids, gen_len, block_len, steps, spec.mask_token_id)
    assert torch.equal(result.tokens, expected)
    assert not (result.tokens == spec.mask_token_id).any()
    assert result.nfe == steps


def test_dlm_commits_the_scheduled_count_in_the_current_block_only(tiny_dlm):
    spec, model = tiny_dlm
    gen_len, block_len, steps, prompt_len = 64, 16, 20, 10
    ids = prompt(spec, 2, prompt_len)
    recorder = Recorder(model)
    with torch.inference_mode():
        result = make_paradigm("dlm", DecodeOptions(block_len=block_len, steps=steps)).generate(
            on(recorder), spec, ids, gen_len, new_log()
        )
    states = [x[:, prompt_len:] for x in recorder.inputs] + [result.tokens]
    steps_per_block = steps // (gen_len // block_len)
    schedule = linear_schedule(block_len, steps_per_block)
    assert schedule == [4, 3, 3, 3, 3]
    for step, (before, after) in enumerate(zip(states, states[1:])):
        block = step // steps_per_block
        changed = before != after  # (batch, gen_len)
        assert (changed.sum(dim=1) == schedule[step % steps_per_block]).all()
        outside = torch.ones(gen_len, dtype=torch.bool)
        outside[block * block_len : (block + 1) * block_len] = False
        assert not changed[:, outside].any(), "a position outside the current block was committed"
        assert (before[changed] == spec.mask_token_id).all(), "a committed token was changed again"


def test_linear_schedule_gives_the_remainder_to_the_earliest_steps():
    assert linear_schedule(32, 32) == [1] * 32
    assert linear_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(linear_schedule(17, 5)) == 17


def test_dlm_attention_is_bidirectional(tiny_dlm):
    spec, model = tiny_dlm
    ids = prompt(spec, 1, 16)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % spec.prompt_vocab_limit
    with torch.inference_mode():
        first, second = model(ids).logits[0, 0], model(changed).logits[0, 0]
    assert not torch.allclose(first, second), "position 0 did not see a change at the last position"


@pytest.mark.parametrize("fidelity", FIDELITY_NAMES)
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("batch", "prompt_len", "gen_len"), [(1, 40, 64), (2, 32, 40), (2, 5, 30), (1, 64, 8)])
def test_block_equals_no_cache_reference(tiny_block, batch, prompt_len, gen_len, runtime, fidelity):
    spec, model = tiny_block
    ids = prompt(spec, batch, prompt_len)
    with torch.inference_mode():
        result = make_paradigm("block", DecodeOptions(), fidelity=fidelity).generate(on(model, runtime), spec, ids,
                                                                                     gen_len, new_log())
        expected = reference_block_diffusion(model, ids, gen_len, spec.block_size, spec.subblock_size,
                                             spec.mask_token_id, pad_last_block=fidelity == "reference")
    assert torch.equal(result.tokens, expected)
    assert not (result.tokens == spec.mask_token_id).any()


def test_block_forward_count_matches_the_algorithm(tiny_block):
    spec, model = tiny_block
    prompt_len, gen_len, size = 40, 64, spec.block_size
    with torch.inference_mode():
        result = make_paradigm("block", DecodeOptions(), fidelity="lean").generate(
            on(model), spec, prompt(spec, 1, prompt_len), gen_len, new_log())
    block_starts = range(prompt_len // size * size, prompt_len + gen_len, size)
    shifted = sum(1 for start in block_starts if start >= prompt_len)  # first tokens from the previous forward
    commits = len(block_starts) - 1
    assert result.nfe == 1 + (gen_len - shifted) + commits
    assert len(result.forward_ms["commit"]) == commits


@pytest.mark.parametrize(
    ("paradigm", "model_name", "options", "prompt_len", "gen_len", "batch", "message"),
    [
        ("dlm", "tiny-dlm", DecodeOptions(block_len=32), 8, 48, 1, "multiple of block_len=32"),
        ("dlm", "tiny-dlm", DecodeOptions(block_len=16, steps=30), 8, 64, 1, "steps=30 must be a multiple"),
        ("ar", "tiny-ar", DecodeOptions(), 8, 16, 0, "batch_size=0"),
        ("block", "tiny-block", DecodeOptions(), 2000, 64, 1, "exceeds tiny-block's 2048 positions"),
        ("dlm", "tiny-ar", DecodeOptions(), 8, 32, 1, "no mask token"),
        ("block", "tiny-dlm", DecodeOptions(), 8, 32, 1, "not a block-diffusion model"),
    ],
)
def test_invalid_requests_are_clear_errors(paradigm, model_name, options, prompt_len, gen_len, batch, message):
    from pytest_dlmbench.models import get_spec

    with pytest.raises(DecodeError, match=message):
        make_paradigm(paradigm, options).validate(get_spec(model_name), prompt_len, gen_len, batch)


def test_unknown_paradigm_lists_the_known_ones():
    with pytest.raises(DecodeError, match="known paradigms: ar, block, dlm"):
        make_paradigm("beam", DecodeOptions())
