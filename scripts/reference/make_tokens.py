"""Write llama.cpp's tokenizations of a varied corpus as test fixtures.

Run with a Python that has llama-cpp-python (never a runtime dependency of localllm):

    /work/refenv/bin/python scripts/reference/make_tokens.py [--models-dir /work/mc]

Writes tests/fixtures/tokens_<model>.json, a list of
    {"text", "add_special", "parse_special", "ids", "pieces", "pieces_plain"}
where pieces / pieces_plain are llama_token_to_piece of every id with special=True / False, joined
(llama-cpp-python's detokenize), and tests/fixtures/tokens_<model>_vocab.json with the vocabulary
facts the tokenizer must agree on: special ids, add_bos/add_eos, end-of-generation ids, token
attributes that are not plain NORMAL, and a hash of every token's piece.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
from pathlib import Path

import llama_cpp

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
}
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"

PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
         "of foolishness... She said: \"Don't you think we'll be late?\" I'd say we're fine; they've "
         "left, you're here, it's 5 o'clock. HELLO WORLD'S END! ALL-CAPS'LL DO.")
PYTHON = '''def fibonacci(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out


if __name__ == "__main__":
    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
'''
C_CODE = """#include <stdio.h>

int main(int argc, char **argv) {
\tfor (int i = 0; i < argc; ++i) {
\t\tprintf("%d: %s\\n", i, argv[i]);
\t}
\treturn 0; /* done */
}
"""
TEXTS = [
    "",
    " ",
    "a",
    "Hello world",
    " Hello world",
    "Hello, world! How are you today?",
    PROSE,
    "The quick brown fox jumps over the lazy dog.\nThe end.",
    PYTHON,
    C_CODE,
    "x = [1, 2, 3]; y = {'a': 1, \"b\": 2}; z = x[0] ** 2 // 3 % 4 != 5 <= 6 >= 7 && y || !z",
    "<html><body><div class=\"main\"><p>Hi</p></div></body></html>",
    "3.14159265358979 2.71828 -0.5 +1e-10 1,234,567.89 $100 50% 0x1F 0b1010",
    "12345678901234567890123456789012345678901234567890",
    "Call 555-0123 or 1-800-555-0199 on 2024-01-15 at 10:30:45.",
    "  leading spaces",
    "trailing spaces   ",
    "\n\n\n",
    "line one\nline two\r\nline three\rline four",
    "tabs\there\t\tand\t\t\tmore",
    "mixed \t \n \t\n  whitespace \n\n\n\n end",
    "a    b     c          d" + " " * 40 + "e",
    "\t\t\tdeeply\n\t\t\t\tindented\n",
    "Voilà, l'été à Paris : où est le café ? Ça coûte 5 €.",
    "Größenänderung der Straße über Übermaß — Äpfel, Öl, ß.",
    "Tiếng Việt có nhiều dấu: Hà Nội, Sài Gòn, người Việt Nam.",
    "Ελληνικά, русский язык, עברית, العربية, हिन्दी, ไทย",
    "combining: e\u0301 a\u0300 n\u0303 and precomposed: é à ñ",
    "Emoji: 😀 😃 😄 👍🏽 ❤️ 🎉 🚀",
    "Family 👨‍👩‍👧‍👦 and rainbow flag 🏳️‍🌈 and flags 🇫🇷🇩🇪🇯🇵🇺🇸",
    "😀😀😀😀😀 🫠🫨 🧑🏿‍🚀",
    "中文测试：我爱自然语言处理。今天天气很好！",
    "日本語のテキスト、ひらがなとカタカナと漢字。東京タワー",
    "한국어 텍스트: 안녕하세요, 만나서 반갑습니다.",
    "Mixed: English 中文 日本語 한국어 😀 123 àéî",
    "symbols: © ® ™ ° ± × ÷ µ ¶ § ← → ↑ ↓ ∑ ∫ √ ∞ ≈ ≠ ≤ ≥",
    "math: ∀x∈ℝ, x² ≥ 0; ½ + ¼ = ¾; Ⅻ ⅓",
    "quotes: “double” ‘single’ «guillemets» „low“ — dash – en",
    "nbsp:\u00a0here\u2009thin\u3000ideographic\u200bzero-width",
    "control chars: \x01\x02\x1f\x7f end",
    "I'm, you're, he's, we've, they'll, she'd, IT'S, WE'RE",
    "url: https://example.com/path?query=1&b=2#frag email: a.b@c.de",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "!!!???...,,,;;;:::---___===+++***&&&^^^%%%$$$###@@@",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after<|endoftext|>",
    "<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk> and </s> <s>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "<table><tr><td>cell</td></tr></table> <h1>Title</h1> [multimodal]",
    "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
    "<reponame>x<file_sep>y<|repo_name|>z",
]
LONG_TEXT = "\n\n".join(TEXTS[5:45])


def cases() -> list[tuple[str, bool, bool]]:
    out = []
    for text in TEXTS:
        out.append((text, True, False))
        out.append((text, False, False))
        if "<" in text or "[" in text:
            out.append((text, True, True))
            out.append((text, False, True))
    out.append((LONG_TEXT, True, False))
    out.append((LONG_TEXT, False, True))
    return out


def piece(vocab, token: int, special: bool) -> bytes:
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def vocab_facts(vocab) -> dict:
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    digests = {}
    for special in (True, False):
        h = hashlib.sha256()
        for token in range(n):
            p = piece(vocab, token, special)
            h.update(len(p).to_bytes(4, "little") + p)
        digests["special" if special else "plain"] = h.hexdigest()

    def opt(token: int):
        return None if token < 0 else token

    return {
        "n_vocab": n,
        "bos_id": opt(llama_cpp.llama_vocab_bos(vocab)),
        "eos_id": opt(llama_cpp.llama_vocab_eos(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "attrs_not_normal": {str(t): a for t in range(n)
                             if (a := int(llama_cpp.llama_vocab_get_attr(vocab, t))) != 4},
        "pieces_sha256": digests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/work/mc"))
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name, filename in MODELS.items():
        llm = llama_cpp.Llama(model_path=str(args.models_dir / filename), vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        records = []
        for text, add_special, parse_special in cases():
            ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
            records.append({
                "text": text, "add_special": add_special, "parse_special": parse_special, "ids": ids,
                "pieces": b"".join(piece(vocab, t, True) for t in ids).decode("utf-8", "replace"),
                "pieces_plain": b"".join(piece(vocab, t, False) for t in ids).decode("utf-8", "replace"),
            })
        path = FIXTURES / f"tokens_{name}.json"
        path.write_text(json.dumps(records, ensure_ascii=False, indent=0) + "\n")
        (FIXTURES / f"tokens_{name}_vocab.json").write_text(json.dumps(vocab_facts(vocab), indent=0) + "\n")
        print(f"{path}: {len(records)} cases")


if __name__ == "__main__":
    main()
