"""llama.cpp's tokenizer (through llama-cpp-python) on the inputs of moa's tokenizer bench
(crates/moa-local/benches/tokenizer.rs), for the peer column of docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_llamacpp_tokenizer.py target/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import sys
import time

from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
english = ("The quick brown fox jumps over the lazy dog, and then it writes a short essay "
           "about why the sky is blue, citing Rayleigh scattering and the eye's response. ")
special = "<|im_start|>"
inputs = [("English prose, 1 MiB", english * ((1 << 20) // len(english)))]
inputs += [(f"one word of {n} letters", "a" * n) for n in (2_000, 16_000, 128_000)]
inputs += [(f"{n} bytes of `{special}`", special * (n // len(special))) for n in (60_000, 480_000)]
inputs += [("1 MiB of mixed scripts and emoji", "héllo мир 世界 😀 " * ((1 << 20) // 28))]

print("| input | bytes | tokens | time (best of 5) | MB/s |")
print("|---|---|---|---|---|")
for name, text in inputs:
    data = text.encode()
    best, ids = float("inf"), []
    for _ in range(5):
        started = time.perf_counter()
        ids = llm.tokenize(data, add_bos=False, special=True)
        best = min(best, time.perf_counter() - started)
    print(f"| {name} | {len(data)} | {len(ids)} | {best * 1e3:.2f} ms | {len(data) / best / 1e6:.1f} |")
