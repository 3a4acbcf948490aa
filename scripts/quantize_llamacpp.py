"""Makes GGUF files of other quantization types from one, with llama.cpp's own quantizer
(llama-cpp-python's `llama_model_quantize`), for the local bench and for checking the formats
moa reads. The outputs go where you say (use target/: they are never committed).

    .venv/bin/python scripts/quantize_llamacpp.py SOURCE.gguf OUT_DIR Q4_K_M Q5_K_M Q6_K Q8_0

From SmolLM2's Q4_1 file this requantizes (allow_requantize): the weights lose a little more
precision, which does not matter for speed. Tensors whose rows are not a multiple of 256 (all of
SmolLM2-135M's 576-wide ones) get llama.cpp's fallback types (Q5_0, Q5_1, Q8_0), as they do in
the files people download.
"""
import ctypes
import pathlib
import sys

import llama_cpp

source, out_dir, types = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
out_dir.mkdir(parents=True, exist_ok=True)
stem = pathlib.Path(source).name.split(".")[0]
for name in types:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    params.allow_requantize = True
    params.nthread = 2
    target = out_dir / f"{stem}.{name}.gguf"
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                            ctypes.byref(params))
    if status != 0:
        sys.exit(f"llama_model_quantize failed for {name} (status {status})")
    print(target)
