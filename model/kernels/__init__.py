"""Native CPU kernels built on first use (see build.py): exact block-quantized GEMM for GGUF weights."""

from .build import build_quant_kernels, load_quant_kernels

__all__ = ["build_quant_kernels", "load_quant_kernels"]
