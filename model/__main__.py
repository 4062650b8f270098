"""`python -m model [PROMPT ...]`: chat with a model from the command line (no server).

python -m model "What is the capital of France?"
python -m model --model path/to/model.gguf --max-tokens 64 "Tell me a joke"
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model", description="Generate a chat answer with kvserve's engine.")
    ap.add_argument("prompt", nargs="*", default=["What is the capital of France?"])
    ap.add_argument("--model", default=None, help="HF directory or GGUF file (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args(argv)

    from model import LLM, ModelLoadError, SamplingParams

    try:
        llm = LLM(args.model, dtype=args.dtype, device=args.device)
        params = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens)
        t0 = time.perf_counter()
        out = llm.chat([{"role": "user", "content": " ".join(args.prompt)}], params)[0]
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    print(out.text)
    print(f"[{len(out.token_ids)} tokens in {dt:.2f}s, finish_reason={out.finish_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
