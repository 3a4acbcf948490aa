"""llama.cpp (through llama-cpp-python) on the measures of moa's local bench
(crates/moa-local/benches/local.rs): prefill of the same 256-token prompt and 128 greedy tokens
after it, on the same GGUF file, two threads, best of three. Run it beside the bench, in turns,
for the peer rows of docs/BENCHMARKS.md; never quote its figures from another run or machine.

    .venv/bin/python scripts/bench_llamacpp_local.py target/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import sys
import time

from llama_cpp import Llama

PROMPT_TOKENS, GENERATED, REPEATS = 256, 128, 3

llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=2, n_threads_batch=2,
            n_batch=512, verbose=False)
text = "The quick brown fox jumps over the lazy dog. " * (PROMPT_TOKENS // 8)
prompt = llm.tokenize(text.encode(), add_bos=False, special=False)[:PROMPT_TOKENS]

prefill_best = decode_best = 0.0
for _ in range(REPEATS):
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    prefill_best = max(prefill_best, len(prompt) / (time.perf_counter() - started))
    started = time.perf_counter()
    for _ in range(GENERATED):
        # Greedy, as the moa bench: the most likely token of the last position.
        logits = llm.scores[llm.n_tokens - 1]
        llm.eval([int(logits.argmax())])
    decode_best = max(decode_best, GENERATED / (time.perf_counter() - started))

print("| measure | llama.cpp |")
print("|---|---|")
print(f"| prefill, {len(prompt)} tokens | {prefill_best:.0f} tokens/s |")
print(f"| generation, {GENERATED} tokens after the prompt | {decode_best:.1f} tokens/s |")
