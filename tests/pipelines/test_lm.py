"""The language model pieces on their own: exact tokenizer round trips, KV-cache generation equal to
recomputing from scratch, ragged batches equal to one prompt at a time, deterministic perplexity,
artifacts, and clear errors. Models here are random-initialised (no training needed to test these)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from convergence.pipelines import _lm as lm
from convergence.pipelines._corpus import load_corpus
from convergence.platform.errors import InvalidInput


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    corpus = load_corpus(holdout_from_year=2010, max_train_docs=20, reuters=False)
    return lm.train_tokenizer([d.text for d in corpus.train], vocab_size=600, min_frequency=2)


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return lm.build(lm.arch(vocab=600, context=32, d_model=32, layers=2, heads=4)).eval()


def _random_text(rng: random.Random) -> str:
    # Any Unicode scalar value except surrogates, which UTF-8 cannot carry; plus ASCII control characters.
    pools = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(rng.randint(0, 60)):
        lo, hi = rng.choice(pools)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def test_tokenizer_round_trips_arbitrary_utf8(tokenizer) -> None:
    rng = random.Random(1)
    fixed = ["", " ", "  leading and trailing  ", "héllo 世界 🎉\r\n\t", "\x00\x01\x7f", "<|endoftext|> literal",
             "e\u0301 combining", "\U0010ffff", "The Congress shall have Power"]
    for text in fixed + [_random_text(rng) for _ in range(300)]:
        ids = lm.encode(tokenizer, text)
        assert lm.decode(tokenizer, ids) == text, repr(text)
    assert len(lm.encode(tokenizer, "the Government of the United States")) < 20  # merges were learned


def test_documents_are_separated_by_end_of_text(tokenizer) -> None:
    stream = lm.encode_documents(tokenizer, ["one", "two"])
    eos = tokenizer.token_to_id(lm.EOS)
    assert stream.dtype == np.int32 and list(stream).count(eos) == 2 and stream[-1] == eos


def _greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_kv_cache_generation_equals_recomputing(model) -> None:
    prompt = [5, 17, 99, 3, 250]
    assert lm.generate(model, [prompt], max_new_tokens=12) == [_greedy_without_cache(model, prompt, 12)]


def test_ragged_batch_equals_one_prompt_at_a_time(model) -> None:
    prompts = [[1, 2, 3, 4, 5, 6, 7], [42], [300, 301, 302]]
    batched = lm.generate(model, prompts, max_new_tokens=8)
    assert batched == [lm.generate(model, [p], max_new_tokens=8)[0] for p in prompts]


def test_sampling_is_reproducible_for_a_seed(model) -> None:
    a = lm.generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=3)
    b = lm.generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=3)
    c = lm.generate(model, [[1, 2, 3]], max_new_tokens=10, temperature=1.0, seed=4)
    assert a == b and a != c


def test_long_prompts_keep_their_end_and_eos_stops(model) -> None:
    long = list(range(1, 100))  # longer than the 32-token context
    assert lm.generate(model, [long], max_new_tokens=4) == lm.generate(model, [long[-28:]], max_new_tokens=4)
    first = lm.generate(model, [[7, 8]], max_new_tokens=6)[0]
    k = next((i for i in range(1, 6) if first[i] not in first[:i]), 0)  # the first new token seen at position k
    stopped = lm.generate(model, [[7, 8]], max_new_tokens=6, eos_id=first[k])[0]
    assert stopped == first[:k + 1]


@pytest.mark.parametrize("kwargs,fragment", [
    ({"prompts": [[1]], "max_new_tokens": 0}, "max_tokens must be between 1 and 31"),
    ({"prompts": [[1]], "max_new_tokens": 32}, "max_tokens must be between 1 and 31"),
    ({"prompts": [[]], "max_new_tokens": 3}, "at least one token"),
    ({"prompts": [[1]], "max_new_tokens": 3, "temperature": -1.0}, "temperature must be"),
    ({"prompts": [[1]], "max_new_tokens": 3, "temperature": math.nan}, "temperature must be"),
])
def test_generation_input_errors(model, kwargs, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        lm.generate(model, **kwargs)


def test_perplexity_is_deterministic_and_sane(model) -> None:
    tokens = np.random.default_rng(0).integers(0, 600, 2000).astype(np.int32)  # SYNTHETIC tokens
    a, b = lm.perplexity(model, tokens, context=32), lm.perplexity(model, tokens, context=32)
    assert a == b and 300 < a < 1200  # an untrained model is close to uniform over 600 tokens
    with pytest.raises(InvalidInput, match="too short"):
        lm.perplexity(model, tokens[:10], context=32)


def test_too_little_text_for_a_window() -> None:
    with pytest.raises(InvalidInput, match="fewer than one training window"):
        lm.check_stream(np.zeros(10, dtype=np.int32), 32, "training split")


def test_artifact_round_trip(model, tokenizer, tmp_path: Path) -> None:
    spec = lm.arch(vocab=600, context=32, d_model=32, layers=2, heads=4)
    path = lm.save_artifact(tmp_path / "m.safetensors", model=model, spec=spec, tokenizer=tokenizer, role="student",
                            meta={"run_id": 1})
    back, tok, blob = lm.load_artifact(path)
    assert blob["role"] == "student" and blob["meta"] == {"run_id": 1}
    prompt = lm.encode(tok, "We must")
    assert lm.generate(back, [prompt], max_new_tokens=5) == lm.generate(model, [prompt], max_new_tokens=5)
    assert lm.decode(tok, prompt) == "We must"
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="not a safe model artifact"):
        lm.load_artifact(tmp_path / "junk.pt")
    from convergence.governance import artifacts

    declared = artifacts.read_header(path)
    assert declared.family == "language" and set(declared.tensors) == set(model.state_dict())


def test_learning_rate_schedule() -> None:
    assert lm.lr_at(0, total=100, warmup=10, lr=1.0) == pytest.approx(0.1)
    assert lm.lr_at(10, total=100, warmup=10, lr=1.0) == pytest.approx(1.0)
    assert lm.lr_at(100, total=100, warmup=10, lr=1.0) == pytest.approx(0.1)


def test_per_row_temperature_and_seed_do_not_depend_on_the_batch(model) -> None:
    prompts = [[1, 2, 3], [9], [4, 5]]
    batched = lm.generate(model, prompts, max_new_tokens=6, temperature=[0.0, 0.9, 1.3], seed=[5, 6, 7])
    alone = [lm.generate(model, [p], max_new_tokens=6, temperature=t, seed=sd)[0]
             for p, t, sd in zip(prompts, [0.0, 0.9, 1.3], [5, 6, 7], strict=True)]
    assert batched == alone
    with pytest.raises(InvalidInput, match="one temperature and one seed per prompt"):
        lm.generate(model, prompts, max_new_tokens=2, temperature=[0.1])


def test_sampling_draws_from_the_tempered_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20_000, 1)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    for t in (0.5, 1.0, 2.0):
        drawn = lm.sample_rows(logits, torch.full((20_000, 1), t), u)
        freq = torch.bincount(drawn, minlength=4).float() / 20_000
        assert torch.allclose(freq, torch.softmax(logits[0] / t, -1), atol=0.015), (t, freq)
    greedy = lm.sample_rows(logits[:3], torch.zeros(3, 1), u[:3])
    assert greedy.tolist() == [0, 0, 0]
