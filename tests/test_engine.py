"""The Python API on tiny synthetic models: errors users can cause, generation options, chat templates."""
import gguf
import numpy as np
import pytest

import localllm
from localllm.errors import (ChatTemplateError, ContextOverflowError, GGUFError, InvalidTokenError, LocalLLMError,
                             ModelNotFoundError, UnsupportedArchitectureError, UnsupportedTensorTypeError)
from localllm.sampling import Sampler, SamplingParams
from tinymodel import write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_ctx_train=128)


@pytest.fixture(scope="module")
def llm(tiny):
    return localllm.load(tiny, n_ctx=64)


# -- bad input ------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="nope.gguf"):
        localllm.load(tmp_path / "nope.gguf")


def test_not_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(GGUFError, match=r"model\.gguf: not a GGUF"):
        localllm.load(p)


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.97])
def test_truncated(tiny, tmp_path, keep):
    data = tiny.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(GGUFError, match="cut.gguf: truncated"):
        localllm.load(p)


def test_unknown_architecture(tmp_path):
    p = write_tiny_llama(tmp_path / "m.gguf", arch="mamba9")
    with pytest.raises(UnsupportedArchitectureError, match=r"'mamba9' is not supported \(supported: .*gemma3.*llama.*qwen2"):
        localllm.load(p)


def test_unsupported_tensor_type(tmp_path):
    p = write_tiny_llama(tmp_path / "iq.gguf", qtype="Q4_0")
    data = bytearray(p.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)
    n_dims = int.from_bytes(data[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    assert int.from_bytes(data[type_at:type_at + 4], "little") == 2        # Q4_0
    data[type_at:type_at + 4] = (20).to_bytes(4, "little")                  # IQ4_NL: same block size
    p.write_bytes(bytes(data))
    with pytest.raises(UnsupportedTensorTypeError, match="'blk.0.attn_q.weight' uses ggml type IQ4_NL"):
        localllm.load(p)


def test_context_overflow(llm):
    with pytest.raises(ContextOverflowError, match="prompt is 70 tokens but the context holds 64"):
        llm.generate([1] * 70, max_tokens=4)
    with pytest.raises(ContextOverflowError):
        llm.logits([1] * 65)


def test_token_ids_outside_the_vocabulary(llm):
    """Ids given to the API directly are checked before the embedding is read (one past its end would
    read memory that is not the model's): a clear error, and the context is left usable."""
    n = llm.n_vocab
    with pytest.raises(InvalidTokenError, match=rf"token id {n} is outside this model's vocabulary \(ids 0..{n - 1}\); "
                                                r"1 of the 3 ids given is out of range"):
        llm.generate([1, 2, n], max_tokens=2)
    with pytest.raises(InvalidTokenError, match="token id -1 .*; 2 of the 3 ids given are out of range"):
        llm.logits([5, -1, n])
    with pytest.raises(InvalidTokenError):
        list(llm.stream([n + 1000], max_tokens=2))
    assert llm.logits([1, 2, n - 1]).shape == (3, n)      # the last id is fine, and nothing was broken
    assert isinstance(InvalidTokenError("x"), ValueError)


def test_load_pauses_the_collector_and_leaves_no_cycles(tiny):
    """load() runs with the cyclic collector off and freezes what it built when nothing compiled
    (_runtime.collector_paused), so it must hand the collector back on, after a failed load too; and a
    model must be freed by reference counts alone, or the freeze would keep a dropped model alive."""
    import gc
    import weakref

    localllm.load(tiny, n_ctx=32)                 # compiles whatever this process has not yet
    frozen = gc.get_freeze_count()
    llm = localllm.load(tiny, n_ctx=32)           # nothing left to compile: paused, then frozen
    assert gc.isenabled() and gc.get_freeze_count() > frozen
    list(llm.stream("the cat", max_tokens=3, temperature=0))
    refs = [weakref.ref(o) for o in (llm, llm.model, llm.cache, llm.tokenizer, llm.gguf)]
    gc.disable()
    try:
        del llm
        assert all(r() is None for r in refs), "a reference cycle keeps a dropped model alive"
    finally:
        gc.enable()
    with pytest.raises(ModelNotFoundError):
        localllm.load(tiny.parent / "missing.gguf")
    assert gc.isenabled()


def test_errors_are_localllm_errors():
    for cls in (GGUFError, ContextOverflowError, ChatTemplateError, UnsupportedArchitectureError,
                UnsupportedTensorTypeError, ModelNotFoundError, InvalidTokenError):
        assert issubclass(cls, LocalLLMError)


# -- generation -----------------------------------------------------------------------------------
def test_greedy_is_argmax(llm):
    ids = llm.tokenize("the cat")
    chunks = list(llm.stream(ids, max_tokens=5, temperature=0))
    toks = [c.token for c in chunks if c.token is not None]
    want = []
    for _ in range(len(toks)):
        want.append(int(llm.logits(ids + want)[-1].argmax()))
    assert toks == want


def test_seed_gives_same_text_and_max_tokens(llm):
    a = list(llm.stream("the", max_tokens=12, temperature=1.5, top_k=0, top_p=1, min_p=0, seed=7))
    b = list(llm.stream("the", max_tokens=12, temperature=1.5, top_k=0, top_p=1, min_p=0, seed=7))
    assert [c.token for c in a] == [c.token for c in b]
    assert a[-1].completion_tokens <= 12
    if a[-1].completion_tokens == 12:
        assert a[-1].finish_reason == "length"


def test_stop_strings(llm):
    full = llm.generate("the", max_tokens=16, temperature=0)
    if len(full) < 4:
        pytest.skip("tiny model ended early")
    stop = full[2:4]
    cut = llm.generate("the", max_tokens=16, temperature=0, stop=[stop])
    assert cut == full[:full.find(stop)]


def test_stream_reports_timings(llm):
    chunks = list(llm.stream("the cat", max_tokens=6, temperature=0))
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert last.prompt_tokens == len(llm.tokenize("the cat", parse_special=True))
    assert last.ttft_s > 0 and last.prompt_tps > 0


# -- sampling -------------------------------------------------------------------------------------
def test_sampler_filters():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    draw = lambda **kw: {Sampler(SamplingParams(seed=s, **kw))(logits) for s in range(200)}
    assert draw(temperature=1.0, top_k=1, top_p=1.0, min_p=0) == {0}
    assert draw(temperature=1.0, top_k=0, top_p=0.75, min_p=0) == {0, 1}
    assert draw(temperature=1.0, top_k=0, top_p=1.0, min_p=0.2) == {0, 1, 2}
    assert draw(temperature=0.0) == {0}
    assert draw(temperature=1.0, top_k=0, top_p=1.0, min_p=0) == {0, 1, 2, 3}


def test_repetition_penalty():
    logits = np.array([2.0, 1.9, -1.0], np.float32)
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=1.5))
    assert s(logits, history=[0]) == 1
    assert s(logits, history=[]) == 0


# -- chat -----------------------------------------------------------------------------------------
def test_chat_template_renders_and_streams(llm):
    text = llm.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = llm.chat_ids([{"role": "user", "content": "hi"}])
    assert ids[0] == llm.tokenizer.encode("<|im_start|>", add_special=False, parse_special=True)[0]
    out = llm.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    assert isinstance(out, str)


def test_chat_template_errors(tmp_path):
    bad = localllm.load(write_tiny_llama(tmp_path / "b.gguf", chat_template="{% for m in messages %}{{ m.content | nofilter }}{% endfor %}"))
    with pytest.raises(ChatTemplateError, match="chat template"):
        bad.chat([{"role": "user", "content": "hi"}])
    raising = localllm.load(write_tiny_llama(tmp_path / "r.gguf", chat_template="{{ raise_exception('roles must alternate') }}"))
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        raising.chat([{"role": "user", "content": "hi"}])
    none = localllm.load(write_tiny_llama(tmp_path / "n.gguf", chat_template=None))
    with pytest.raises(ChatTemplateError, match="no chat template"):
        none.chat([{"role": "user", "content": "hi"}])
    with pytest.raises(ChatTemplateError, match="role"):
        raising.apply_chat_template([{"text": "hi"}])


def test_sandbox_blocks_attribute_escape(tmp_path):
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    m = localllm.load(write_tiny_llama(tmp_path / "e.gguf", chat_template=evil))
    with pytest.raises(ChatTemplateError):
        m.apply_chat_template([{"role": "user", "content": "hi"}])


def test_compiled_templates_are_cached_and_still_sandboxed(tmp_path, monkeypatch):
    """The second compile of a template (a later process) loads jinja2's bytecode from
    $LOCALLLM_HOME/templates: same text, and the sandbox still refuses what it refused."""
    from localllm import chat_template as ct
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "home"))
    ct._compile.cache_clear()
    good = "{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}{% endfor %}"
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    msgs = [{"role": "user", "content": " hi "}]
    first = ct.render(good, msgs)
    with pytest.raises(ChatTemplateError):
        ct.render(evil, msgs)
    assert len(list((tmp_path / "home" / "templates").iterdir())) == 2
    ct._compile.cache_clear()
    from jinja2 import Environment
    compile_calls = []
    monkeypatch.setattr(Environment, "compile", lambda *a, **k: compile_calls.append(a) or pytest.fail("recompiled"))
    assert ct.render(good, msgs) == first == "<user>hi"
    with pytest.raises(ChatTemplateError):
        ct.render(evil, msgs)
    assert not compile_calls
    ct._compile.cache_clear()


def test_template_cache_folder_unwritable(tmp_path, monkeypatch):
    from localllm import chat_template as ct
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path / "file"))
    ct._compile.cache_clear()
    assert ct.render("{{ messages[0].content }}", [{"role": "user", "content": "x"}]) == "x"
    ct._compile.cache_clear()


def test_template_cache_that_cannot_be_written(tmp_path, monkeypatch):
    """A cache folder that exists but refuses the write: the template is compiled and used all the same."""
    from jinja2 import FileSystemBytecodeCache
    from localllm import chat_template as ct

    def refuse(self, bucket):
        raise PermissionError("read-only")

    monkeypatch.setenv("LOCALLLM_HOME", str(tmp_path))
    monkeypatch.setattr(FileSystemBytecodeCache, "dump_bytecode", refuse)
    ct._compile.cache_clear()
    assert ct.render("<{{ messages[0].content }}>", [{"role": "user", "content": "x"}]) == "<x>"
    assert not list((tmp_path / "templates").iterdir())
    ct._compile.cache_clear()
