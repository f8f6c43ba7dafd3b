#!/usr/bin/env python
"""Write llama.cpp reference data as small test fixtures: tests/fixtures/ref_<model>.npz.

Reference tool only -- run it with the llama-cpp-python venv, never from the
engine or its tests:

    /work/refenv/bin/python scripts/reference/make_logits.py --model all

For each model it records (see tests/fidelity.py for the key layout):
  1. greedy paths: 8 prompts (raw text and the model's chat format), a
     32-token greedy continuation each (prompt eval, then one token at a time),
     with the logit lead in nats of the chosen token over the runner-up;
  2. real-text log-probabilities: scripts/reference/corpus_prose.txt (public
     domain, Pride and Prejudice ch. 1), first PROSE_TOKENS tokens, evaluated in
     ONE batched eval with logits_all; top-64 ids/log-probs per position plus
     the log of the mass outside the top 64;
  3. for scale, llama.cpp against itself: the one-token-at-a-time path vs the
     batched path on the same text (argmax agreement, mean coarse-grained KL),
     and the batched teacher-forced argmax vs the greedy paths.

Model files are found via models/<name>.json ("file", "sha256") in
$LOCALLLM_REF_MODEL_DIR, /work/mc or ~/.cache/localllm-tests.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import fidelity  # noqa: E402  (metric helpers shared with the tests)

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

TOP_K = 64
GREEDY_STEPS = 32
PROSE_TOKENS = 640
N_CTX = 1024
N_THREADS = 2

MODELS = {
    "smollm2": {"manifest": "smollm2.json", "chat": "chatml"},
    "qwen2": {"manifest": "qwen2.5-coder.json", "chat": "chatml"},
    "gemma3": {"manifest": "gemma3.json", "chat": "gemma"},
}

RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5, 6,",
    "Monday, Tuesday, Wednesday,",
    "Once upon a time, in a small village by the sea,",
]
CHAT_PROMPTS = [
    (None, "What is the tallest mountain in the world? Explain briefly."),
    (None, "Write a Python function that reverses a string."),
    ("You are a helpful assistant.", "Give me three tips for staying healthy."),
]


def chat(fmt: str, system: str | None, user: str) -> str:
    if fmt == "chatml":
        s = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return s + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if fmt == "gemma":  # Gemma folds the system prompt into the first user turn
        u = f"{system}\n\n{user}" if system else user
        return f"<start_of_turn>user\n{u}<end_of_turn>\n<start_of_turn>model\n"
    raise ValueError(fmt)


def find_model(manifest: dict) -> Path:
    dirs = [os.environ.get("LOCALLLM_REF_MODEL_DIR"), "/work/mc",
            str(Path.home() / ".cache" / "localllm-tests")]
    for d in dirs:
        if d and (Path(d) / manifest["file"]).exists():
            return Path(d) / manifest["file"]
    raise SystemExit(f"model file {manifest['file']} not found in {dirs}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def top2_lead(row: np.ndarray) -> tuple[int, float]:
    lp = fidelity.log_softmax(row)
    i1, i2 = np.argsort(lp)[::-1][:2]
    return int(i1), float(lp[i1] - lp[i2])


def make(name: str) -> Path:
    spec = MODELS[name]
    manifest = json.loads((ROOT / "models" / spec["manifest"]).read_text())
    path = find_model(manifest)
    digest = sha256(path)
    if digest != manifest["sha256"]:
        print(f"WARNING: {path} sha256 {digest} differs from manifest", file=sys.stderr)
    t0 = time.time()
    llm = Llama(model_path=str(path), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=True,
                verbose=False)

    def tok(text: str) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=True, special=True)

    def batched(ids: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)

    # 1. greedy paths
    prompts = RAW_PROMPTS + [chat(spec["chat"], s, u) for s, u in CHAT_PROMPTS]
    p_ids, offsets, conts, leads = [], [0], [], []
    for text in prompts:
        ids = tok(text)
        llm.reset()
        llm.eval(ids)
        cont, ld = [], []
        for _ in range(GREEDY_STEPS):
            t, lead = top2_lead(llm.scores[llm.n_tokens - 1])
            cont.append(t)
            ld.append(lead)
            llm.eval([t])
        p_ids += ids
        offsets.append(len(p_ids))
        conts.append(cont)
        leads.append(ld)
        shown = llm.detokenize(cont).decode(errors="replace")
        print(f"[{name}] {text!r} -> {shown!r}  min lead {min(ld):.3f}")

    # 2. prose, one batched eval
    prose_text = (ROOT / "scripts" / "reference" / "corpus_prose.txt").read_text()
    prose = tok(prose_text)
    if len(prose) < PROSE_TOKENS:
        raise SystemExit(f"{name}: prose has only {len(prose)} tokens")
    prose = prose[:PROSE_TOKENS]
    scores = batched(prose)
    topk = fidelity.topk_reference(scores, TOP_K)

    data = {
        "greedy_prompts": np.array(prompts),
        "greedy_prompt_ids": np.array(p_ids, np.int32),
        "greedy_prompt_offsets": np.array(offsets, np.int64),
        "greedy_cont_ids": np.array(conts, np.int32),
        "greedy_leads": np.array(leads, np.float32),
        "prose_ids": np.array(prose, np.int32),
        **topk,
    }

    # 3. llama.cpp against itself: one token at a time vs the batched eval
    llm.reset()
    for t in prose:
        llm.eval([t])
    single = np.array(llm.scores[: len(prose)], dtype=np.float32)
    agree = fidelity.argmax_agreement(single, data)
    kl = fidelity.mean_kl(single, data)
    kl_full = 0.0  # exact KL over the whole vocabulary, to show the bound is tight
    for i in range(len(prose)):
        lp, lq = fidelity.log_softmax(scores[i]), fidelity.log_softmax(single[i])
        kl_full += float(np.sum(np.exp(lp) * (lp - lq))) / len(prose)
    tf = [batched(ids) for ids in fidelity.teacher_forced_inputs(data)]
    viol = fidelity.greedy_violations(tf, data)
    any_diff = len(fidelity.greedy_violations(tf, data, min_lead=-1.0))

    data.update({
        "self_argmax_agreement": np.float64(agree),
        "self_mean_kl": np.float64(kl),
        "self_mean_kl_full": np.float64(kl_full),
        "self_greedy_violations": np.int64(len(viol)),
        "self_greedy_argmax_diffs": np.int64(any_diff),
        "model_file": np.array(manifest["file"]),
        "model_sha256": np.array(digest),
        "llama_cpp_python_version": np.array(llama_cpp.__version__),
    })
    out = ROOT / "tests" / "fixtures" / f"ref_{name}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **data)
    print(f"[{name}] prose {len(prose)} tokens; llama.cpp one-token vs batched: "
          f"argmax agreement {agree:.4f}, mean KL {kl:.5f} (top-64+rest; full {kl_full:.5f}); "
          f"greedy: batched teacher-forced argmax differs at {any_diff} steps, "
          f"{len(viol)} with lead >= {fidelity.MIN_LEAD}; "
          f"mean p_rest {np.exp(topk['prose_rest_logp']).mean():.2e}")
    print(f"[{name}] wrote {out} ({out.stat().st_size / 1024:.0f} KiB) in {time.time() - t0:.0f}s")
    del llm
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=[*MODELS, "all"], default="all")
    args = ap.parse_args()
    for name in (MODELS if args.model == "all" else [args.model]):
        make(name)


if __name__ == "__main__":
    main()
