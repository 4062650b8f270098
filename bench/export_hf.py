"""Write the embedded default GGUF (or another GGUF) as a Hugging Face directory for baseline servers.

`transformers serve` cannot take the embedded GGUF file directly (its config has no `architectures`),
so the baseline loads a directory written by transformers' own GGUF loader:

    python -m bench.export_hf /tmp/smollm2-hf            # default model, weights in float32
    transformers serve --continuous-batching --dtype bfloat16 --port 8001 /tmp/smollm2-hf

The weights are dequantized exactly as transformers does when it reads the GGUF.
"""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.export_hf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out_dir", help="directory to write (config.json, model.safetensors, tokenizer files)")
    ap.add_argument("--gguf", default=None, help="a GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = args.gguf
    if path is None:
        from model.loader.gguf import default_model_path

        path = default_model_path()
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are plain dequantized tensors now; drop the GGUF "quantizer" so that they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(args.out_dir)
    tok.save_pretrained(args.out_dir)
    print(f"wrote {args.out_dir} ({type(model).__name__} from {path})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
