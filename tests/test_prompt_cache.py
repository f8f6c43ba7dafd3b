"""The prompt cache: a chat prompt's start read from disk gives exactly what evaluating it gives."""
import numpy as np
import pytest

import localllm
from localllm import prompt_cache

QUESTIONS = ["Why is the sky blue?", "Name three prime numbers."]


def _chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALLLM_PACK_CACHE", "0")
    return tmp_path


def _first_logits(llm, q: str) -> np.ndarray:
    ids, prefix = llm.chat_split(_chat(q))
    return llm._eval(ids, prefix)


def _count_evaluated(llm, monkeypatch) -> list[int]:
    """Record how many tokens each batch evaluation of llm gets."""
    seen = []
    forward = llm._forward

    def spy(ids, pos0, all_logits):
        seen.append(len(ids))
        return forward(ids, pos0, all_logits)

    monkeypatch.setattr(llm, "_forward", spy)
    return seen


def test_chat_split_ends_before_the_user_text(smollm2_path, home):
    llm = localllm.load(smollm2_path, n_ctx=256)
    ids, prefix = llm.chat_split(_chat(QUESTIONS[0]))
    other, other_prefix = llm.chat_split(_chat(QUESTIONS[1]))
    assert prefix == other_prefix >= prompt_cache.MIN_TOKENS    # SmolLM2's default system prompt
    assert ids[:prefix] == other[:prefix] and ids[prefix] != other[prefix]
    assert llm.detokenize(ids[prefix:]).startswith(QUESTIONS[0])
    assert llm.chat_split([{"role": "assistant", "content": "hi"}])[1] == 0       # no user text last


def test_a_cached_prefix_gives_the_same_logits(smollm2_path, home, monkeypatch):
    want = [_first_logits(localllm.load(smollm2_path, n_ctx=256, prompt_cache=False), q) for q in QUESTIONS]
    assert not (home / "prompts").exists()

    first = localllm.load(smollm2_path, n_ctx=256)                 # evaluates the prefix, keeps it
    np.testing.assert_array_equal(_first_logits(first, QUESTIONS[0]), want[0])
    assert len(list((home / "prompts").glob("*/*/k.npy"))) == 1

    second = localllm.load(smollm2_path, n_ctx=256)                # a new process, a new question
    seen = _count_evaluated(second, monkeypatch)
    np.testing.assert_array_equal(_first_logits(second, QUESTIONS[1]), want[1])
    ids, prefix = second.chat_split(_chat(QUESTIONS[1]))
    assert seen == [len(ids) - prefix]                             # the prefix came from disk


def test_the_reply_does_not_depend_on_the_cache(smollm2_path, home):
    kw = dict(max_tokens=12, temperature=0)
    plain = localllm.load(smollm2_path, n_ctx=256, prompt_cache=False).chat(_chat(QUESTIONS[1]), **kw)
    localllm.load(smollm2_path, n_ctx=256).chat(_chat(QUESTIONS[0]), **kw)
    assert localllm.load(smollm2_path, n_ctx=256).chat(_chat(QUESTIONS[1]), **kw) == plain


def test_a_damaged_entry_is_evaluated_again(smollm2_path, home, monkeypatch):
    want = _first_logits(localllm.load(smollm2_path, n_ctx=256, prompt_cache=False), QUESTIONS[0])
    _first_logits(localllm.load(smollm2_path, n_ctx=256), QUESTIONS[0])
    (k,) = (home / "prompts").glob("*/*/k.npy")
    k.write_bytes(k.read_bytes()[:1000])                           # truncated
    llm = localllm.load(smollm2_path, n_ctx=256)
    seen = _count_evaluated(llm, monkeypatch)
    np.testing.assert_array_equal(_first_logits(llm, QUESTIONS[0]), want)
    assert len(seen) == 2                                          # prefix, then the rest


def test_a_conversation_goes_on_from_memory(smollm2_path, home, monkeypatch):
    llm = localllm.load(smollm2_path, n_ctx=512)
    history = _chat(QUESTIONS[0])
    reply = llm.chat(history, max_tokens=8, temperature=0)
    seen = _count_evaluated(llm, monkeypatch)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": QUESTIONS[1]}]
    ids, prefix = llm.chat_split(history)
    llm.chat(history, max_tokens=1, temperature=0)
    assert len(seen) == 1 and seen[0] < len(ids) - prompt_cache.MIN_TOKENS   # only the new turn


def test_entries_are_capped(smollm2_path, home, monkeypatch):
    monkeypatch.setattr(prompt_cache, "MAX_ENTRIES", 2)
    llm = localllm.load(smollm2_path, n_ctx=256)
    for system in ("You are terse.", "You are a pirate.", "You answer in French."):
        llm._ids = []
        ids, prefix = llm.chat_split([{"role": "system", "content": system}, *_chat(QUESTIONS[0])])
        llm._eval(ids, prefix)
    assert len(list((home / "prompts").glob("*/*/k.npy"))) == 2


def test_off_switch(smollm2_path, home, monkeypatch):
    monkeypatch.setenv("LOCALLLM_PROMPT_CACHE", "0")
    llm = localllm.load(smollm2_path, n_ctx=256)
    assert llm._prompts is None
    _first_logits(llm, QUESTIONS[0])
    assert not (home / "prompts").exists()
