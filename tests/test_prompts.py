"""Prompt ids: synthetic ids are exact and repeatable; GSM8K prompts come from local data only."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from helpers import CPU, tiny
from pytest_dlmbench.prompts import PromptError, gsm8k_prompts, load_gsm8k, synthetic_prompts

import transformers.models.llama.modeling_llama  # noqa: F401  (kept loaded across inline pytester runs)

TRAIN = [{"question": f"Tom has {n} apples and buys {n + 2} more. How many now?",
          "answer": f"He has {n} + {n + 2} = {2 * n + 2}. #### {2 * n + 2}"} for n in range(30)]
TEST = [{"question": f"Ann reads {n} pages a day for 3 days. How many pages?", "answer": f"#### {3 * n}"}
        for n in range(5)]


def test_synthetic_prompts_are_exact_repeatable_and_below_the_limit():
    first = synthetic_prompts(100, 3, 17, seed=4, device=CPU)
    assert first.shape == (3, 17) and first.dtype == torch.long
    assert int(first.max()) < 100
    assert torch.equal(first, synthetic_prompts(100, 3, 17, seed=4, device=CPU))
    assert not torch.equal(first, synthetic_prompts(100, 3, 17, seed=5, device=CPU))


@pytest.fixture
def gsm8k_dir(tmp_path):
    path = tmp_path / "gsm8k"
    datasets.DatasetDict(train=datasets.Dataset.from_list(TRAIN), test=datasets.Dataset.from_list(TEST)).save_to_disk(
        str(path))
    return path


@pytest.fixture
def tokenizer_dir(tmp_path):
    words = sorted({w for r in TRAIN + TEST for text in r.values() for w in text.replace("\n", " ").split()}
                   | {"Question:", "Answer:"})
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "checkpoint"
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(path)
    return path


def test_gsm8k_prompts_have_the_exact_length_and_end_with_the_question(gsm8k_dir, tokenizer_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    records = load_gsm8k(str(gsm8k_dir))
    ids = gsm8k_prompts(tokenizer, records, batch_size=2, prompt_len=120, device=CPU)
    assert ids.shape == (2, 120)
    text = tokenizer.decode(ids[1])
    assert text.endswith(f"Question: {TEST[1]['question']} Answer:")
    assert "#### " in text, "worked examples come before the question"


def test_gsm8k_from_data_files(tmp_path, tokenizer_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in TRAIN))
    (tmp_path / "data" / "test.jsonl").write_text("\n".join(json.dumps(r) for r in TEST))
    train, test = load_gsm8k(str(tmp_path / "data"))
    assert len(train) == len(TRAIN) and test[0]["question"] == TEST[0]["question"]


def test_gsm8k_too_short_or_missing_is_a_clear_error(gsm8k_dir, tokenizer_dir, tmp_path):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    with pytest.raises(PromptError, match="too little text for a 100000-token prompt"):
        gsm8k_prompts(tokenizer, load_gsm8k(str(gsm8k_dir)), 1, 100_000, CPU)
    with pytest.raises(PromptError, match="no GSM8K dataset at .*pass --dlm-dataset"):
        load_gsm8k(str(tmp_path / "nothing-here"))


def test_gsm8k_grid_run_with_a_local_checkpoint(pytester, gsm8k_dir, tokenizer_dir):
    _, model = tiny("tiny-ar")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tokenizer_dir / "model.safetensors")
    pytester.makepyfile(test_grid="def test_generation(dlm_bench, dlm_point):\n    dlm_bench(dlm_point)\n")
    result = pytester.runpytest(
        "--dlm-paradigms=ar", "--dlm-prompts=gsm8k", f"--dlm-checkpoint=tiny-ar={tokenizer_dir}",
        f"--dlm-dataset={gsm8k_dir}", "--dlm-prompt=40", "--dlm-gen=32", "--dlm-batch=4", "--dlm-rounds=1",
        "--benchmark-json=out.json", "-p", "no:cacheprovider",
    )
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["weights"] == "checkpoint" and info["prompt_source"] == "gsm8k" and info["batch_size"] == 4
