"""llama.cpp (through llama-cpp-python) as the peer of moa's local bench.

crates/moa-local/benches/local.rs starts this script and sends it one JSON command per line on
stdin; it answers one JSON line per command on stdout. The bench times moa and this peer in
turns, in one run, on the same file, token ids and requests, so the ratios it prints compare
like with like on the machine at hand. It is not meant to be run by hand.

    {"op": "load"}                                   -> {"seconds": s}
    {"op": "prefill", "tokens": [...]}               -> {"seconds": s}
    {"op": "decode", "tokens": [...], "generate": n} -> {"seconds": s}  (greedy, after the prompt)
    {"op": "batch", "tokens": [...], "sequences": k, "generate": n} -> {"seconds": s}
    {"op": "chat", "messages": [...], "temperature": t, "top_p": p, "max_tokens": n, "seed": s}
        -> {"seconds": s, "first_token": s, "text": "...", "completion_tokens": n}

Threads: 2 (this machine's cores), batches of 512 tokens, the context sized for the longest
measure (4096).
"""
import json
import sys
import time

import llama_cpp
import numpy
from llama_cpp import Llama

MODEL = sys.argv[1]
THREADS, N_BATCH, N_CTX, SEQUENCES = 2, 512, 4096, 3


def load():
    return Llama(model_path=MODEL, n_ctx=N_CTX, n_threads=THREADS, n_threads_batch=THREADS,
                 n_batch=N_BATCH, verbose=False)


llm = load()
# A context of our own for the token-level measures: up to three sequences at once.
params = llama_cpp.llama_context_default_params()
params.n_ctx, params.n_batch, params.n_ubatch = N_CTX, N_BATCH, N_BATCH
params.n_seq_max, params.n_threads, params.n_threads_batch = SEQUENCES, THREADS, THREADS
params.no_perf, params.kv_unified = True, True
ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
memory = llama_cpp.llama_get_memory(ctx)
n_vocab = llm.n_vocab()
batch = llama_cpp.llama_batch_init(N_BATCH, 0, SEQUENCES)


def submit(entries):
    """Decodes (token, position, sequence, wants_logits) entries, N_BATCH at a time."""
    for start in range(0, len(entries), N_BATCH):
        part = entries[start:start + N_BATCH]
        batch.n_tokens = len(part)
        for i, (token, pos, seq, logits) in enumerate(part):
            batch.token[i], batch.pos[i] = token, pos
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, seq
            batch.logits[i] = 1 if logits else 0
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")


def argmax(i):
    """The most likely next token after the `i`-th output row of the last decode."""
    row = llama_cpp.llama_get_logits_ith(ctx, i)
    return int(numpy.ctypeslib.as_array(row, shape=(n_vocab,)).argmax())


def prompt_entries(tokens, seq=0):
    last = len(tokens) - 1
    return [(t, p, seq, p == last) for p, t in enumerate(tokens)]


def run(command):
    op = command["op"]
    if op == "load":
        # A second instance, closed again: the measures' context lives on the first one's model.
        started = time.perf_counter()
        other = load()
        seconds = time.perf_counter() - started
        other.close()
        return {"seconds": seconds}
    if op == "prefill":
        llama_cpp.llama_memory_clear(memory, True)
        started = time.perf_counter()
        submit(prompt_entries(command["tokens"]))
        return {"seconds": time.perf_counter() - started}
    if op == "decode":
        tokens = command["tokens"]
        llama_cpp.llama_memory_clear(memory, True)
        submit(prompt_entries(tokens))
        next_token, pos = argmax(-1), len(tokens)
        started = time.perf_counter()
        for _ in range(command["generate"]):
            submit([(next_token, pos, 0, True)])
            next_token, pos = argmax(-1), pos + 1
        return {"seconds": time.perf_counter() - started}
    if op == "batch":
        tokens, k = command["tokens"], command["sequences"]
        llama_cpp.llama_memory_clear(memory, True)
        submit(prompt_entries(tokens))
        for seq in range(1, k):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, -1, -1)
        first = argmax(-1)
        nexts, pos = [first] * k, len(tokens)
        started = time.perf_counter()
        for _ in range(command["generate"]):
            submit([(nexts[s], pos, s, True) for s in range(k)])
            nexts, pos = [argmax(s) for s in range(k)], pos + 1
        return {"seconds": time.perf_counter() - started}
    if op == "chat":
        started = time.perf_counter()
        first, text, count = None, [], 0
        banned = {int(t): float("-inf") for t in command.get("banned") or []}
        for chunk in llm.create_chat_completion(
                messages=command["messages"], temperature=command["temperature"],
                top_p=command["top_p"], max_tokens=command["max_tokens"],
                seed=command["seed"], logit_bias=banned or None, stream=True):
            delta = chunk["choices"][0]["delta"].get("content")
            if delta:
                if first is None:
                    first = time.perf_counter() - started
                text.append(delta)
                count += 1
        return {"seconds": time.perf_counter() - started, "first_token": first or 0.0,
                "text": "".join(text), "completion_tokens": count}
    raise ValueError(f"unknown op {op}")


print(json.dumps({"ready": llama_cpp.__version__}), flush=True)
for line in sys.stdin:
    try:
        answer = run(json.loads(line))
    except Exception as e:  # the bench prints it and goes on without the peer
        answer = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
