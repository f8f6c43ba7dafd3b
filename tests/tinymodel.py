"""Tiny synthetic GGUF models written with gguf.GGUFWriter: random weights, real tokenizer metadata."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _byte_vocab() -> list[str]:
    """GPT-2's printable mapping of the 256 bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def write_tiny_llama(path: Path, arch: str = "llama", n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
                     n_kv_head: int = 2, n_ff: int = 96, qtype: str = "Q8_0", tied: bool = True,
                     biases: bool = False, seed: int = 0, n_ctx_train: int = 256,
                     chat_template: str | None = CHATML) -> Path:
    """A llama-shaped model with a byte-level BPE vocabulary of 256 bytes + a few merges + specials."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    tokens = _byte_vocab()
    merges = ["Ġ t", "h e", "Ġt he", "i n", "e r"]
    for m in merges:
        tokens.append(m.replace(" ", ""))
    tokens += SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)
    n_vocab = len(tokens)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    if chat_template:
        w.add_chat_template(chat_template)
    qt = gguf.GGMLQuantizationType[qtype]

    def mat(name, rows, cols, scale=0.08):
        x = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        else:
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qt)

    def vec(name, n, base=1.0):
        w.add_tensor(name, (base + 0.1 * rng.standard_normal(n)).astype(np.float32))

    hd = n_embd // n_head
    mat("token_embd.weight", n_vocab, n_embd, 0.5)
    for i in range(n_layer):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", n_embd)
        mat(p + "attn_q.weight", n_head * hd, n_embd)
        mat(p + "attn_k.weight", n_kv_head * hd, n_embd)
        mat(p + "attn_v.weight", n_kv_head * hd, n_embd)
        if biases:
            vec(p + "attn_q.bias", n_head * hd, 0.0)
            vec(p + "attn_k.bias", n_kv_head * hd, 0.0)
            vec(p + "attn_v.bias", n_kv_head * hd, 0.0)
        mat(p + "attn_output.weight", n_embd, n_head * hd)
        vec(p + "ffn_norm.weight", n_embd)
        mat(p + "ffn_gate.weight", n_ff, n_embd)
        mat(p + "ffn_up.weight", n_ff, n_embd)
        mat(p + "ffn_down.weight", n_embd, n_ff)
    vec("output_norm.weight", n_embd)
    if not tied:
        mat("output.weight", n_vocab, n_embd)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
