"""The exact block-quantized GEMM kernels (model/kernels): weights bit-identical to the loader's dequantization,
results against float64 and F.linear, row-alone == row-in-batch bitwise, bias, the three ISA builds agreeing
bit for bit, one OpenMP runtime, and the build-failure path (None and one log line)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.kernels import build_quant_kernels, load_quant_kernels
from model.kernels.build import ISA_FLAGS
from model.kernels.quant_linear import BlockQuantLinear, dequantize_blocks

BLOCK_BYTES = {"Q8_0": 34, "Q4_1": 20}
# (N, K): the default model's K (576, 1536) and its N reduced for speed, plus odd N and a single block
SHAPES = [(576, 576), (192, 576), (960, 576), (576, 1536), (3072, 576), (1000, 576), (37, 64), (1, 32), (17, 96)]
ROWS = (1, 3, 8, 32, 33)


@pytest.fixture(scope="session")
def kernels():
    """The native build (cached on disk across sessions); the tests skip where it cannot be built."""
    module = load_quant_kernels()
    if module is None:
        pytest.skip("the quantized kernels cannot be built here")
    return module


def random_blocks(rng: np.random.Generator, qtype: str, n: int, k: int) -> np.ndarray:
    """Valid random blocks: fp16 scales of both signs, including subnormal, zero and large ones."""
    nb, size = k // 32, BLOCK_BYTES[qtype]
    blocks = rng.integers(0, 256, (n, nb, size), dtype=np.uint8)

    def scales() -> np.ndarray:
        d = rng.standard_normal((n, nb)) * 0.01
        pick = rng.random((n, nb))
        d = np.where(pick < 0.1, rng.standard_normal((n, nb)) * 3e-6, d)  # fp16 subnormals (< 6.1e-5)
        d = np.where(pick > 0.97, rng.standard_normal((n, nb)) * 100.0, d)
        d = np.where((pick > 0.5) & (pick < 0.51), 0.0, d)
        return d.astype(np.float16)[..., None].view(np.uint8)

    blocks[..., 0:2] = scales()
    if qtype == "Q4_1":
        blocks[..., 2:4] = scales()
    return blocks.reshape(n, nb * size)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_rebuilt_weights_are_the_dequantized_ones_bit_for_bit(kernels, qtype, n, k):
    rng = np.random.default_rng(n * 7 + k)
    blocks = random_blocks(rng, qtype, n, k)
    layer = BlockQuantLinear(blocks, qtype, n, k, kernels=kernels)
    ref = dequantize_blocks(blocks, qtype, n, k)
    assert torch.equal(_bits(layer.rebuilt_weight()), _bits(ref))
    # the GEMM itself against unit vectors: fma(w, 1, +0) = w, the other k add +-0 * w (only -0 -> +0 may differ)
    eye = torch.eye(k)
    for rows in (eye, eye[: min(k, 8)], eye[5:6] if k > 5 else eye[:1]):  # buffered and fused paths
        picked = torch.nonzero(rows)[:, 1]
        assert torch.equal(layer(rows), ref[:, picked].T)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_gemm_matches_float64_and_f_linear(kernels, qtype, n, k):
    rng = np.random.default_rng(n + k * 3)
    blocks = random_blocks(rng, qtype, n, k)
    w = dequantize_blocks(blocks, qtype, n, k)
    layer = BlockQuantLinear(blocks, qtype, n, k, kernels=kernels)
    torch.manual_seed(n + k)
    for m in ROWS:
        x = torch.randn(m, k)
        out = layer(x)
        assert out.shape == (m, n) and out.dtype == torch.float32
        ref = x.double() @ w.double().T
        scale = x.double().abs() @ w.double().abs().T  # the error of a K-term fp32 sum is relative to this
        assert ((out.double() - ref).abs() <= 1e-5 * scale + 1e-30).all(), f"M={m}"
        assert torch.allclose(out, F.linear(x, w), rtol=1e-4, atol=1e-5 * scale.max().item())


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
@pytest.mark.parametrize("n,k", [(576, 576), (1000, 1536), (37, 64)])
def test_a_row_alone_equals_the_row_in_any_batch_bitwise(kernels, qtype, n, k):
    rng = np.random.default_rng(1)
    layer = BlockQuantLinear(random_blocks(rng, qtype, n, k), qtype, n, k, kernels=kernels)
    torch.manual_seed(0)
    x = torch.randn(max(ROWS), k)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(x.shape[0])])
    for m in ROWS:
        for start in {0, 1, max(ROWS) - m}:  # the same rows at different positions in the batch
            batch = layer(x[start : start + m])
            assert torch.equal(_bits(batch), _bits(alone[start : start + m])), f"M={m} start={start}"


def test_prefill_sized_batches_keep_every_row_bitwise(kernels):
    """Past 256 rows the kernel works in row chunks: rows on either side of a chunk edge equal their solo runs."""
    n, k = 100, 576
    blocks = random_blocks(np.random.default_rng(7), "Q4_1", n, k)
    bias = torch.randn(n)
    layer = BlockQuantLinear(blocks, "Q4_1", n, k, bias=bias, kernels=kernels)
    x = torch.randn(530, k)
    out = layer(x)
    for i in (0, 7, 8, 255, 256, 263, 511, 512, 529):
        assert torch.equal(_bits(out[i : i + 1]), _bits(layer(x[i : i + 1]))), i
    w = dequantize_blocks(blocks, "Q4_1", n, k).double()
    scale = x.double().abs() @ w.abs().T
    assert ((out.double() - bias.double() - x.double() @ w.T).abs() <= 1e-5 * scale + 1e-6).all()


def test_the_gil_is_released_while_the_kernel_runs(kernels):
    import threading
    import time

    rng = np.random.default_rng(8)
    layer = BlockQuantLinear(random_blocks(rng, "Q8_0", 8192, 576), "Q8_0", 8192, 576, kernels=kernels)
    x = torch.randn(64, 576)
    ticks = []
    done = threading.Event()

    def ticker() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.3:
            layer(x)
    finally:
        done.set()
        thread.join()
    assert len(ticks) > 150  # ~530 here; ~60 when the calls hold the GIL (one tick per 5 ms switch interval)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_bias_and_leading_dims(kernels, qtype):
    rng = np.random.default_rng(2)
    n, k = 200, 160
    blocks = random_blocks(rng, qtype, n, k)
    bias = torch.randn(n)
    layer = BlockQuantLinear(blocks, qtype, n, k, bias=bias, kernels=kernels)
    plain = BlockQuantLinear(blocks, qtype, n, k, kernels=kernels)
    x = torch.randn(2, 5, k)
    out = layer(x)
    assert out.shape == (2, 5, n)
    assert torch.equal(out, plain(x) + bias)  # the bias is one fp32 add after the sum
    assert torch.allclose(out, F.linear(x, dequantize_blocks(blocks, qtype, n, k), bias), rtol=1e-4, atol=1e-4)
    assert torch.equal(layer(x.double()), out)  # other dtypes are computed in fp32
    assert torch.equal(layer(x.transpose(0, 1)).transpose(0, 1), out)  # non-contiguous input
    assert layer(torch.randn(0, k)).shape == (0, n)
    with pytest.raises(ValueError):
        layer(torch.randn(3, k + 32))


def test_invalid_arguments(kernels):
    blocks = random_blocks(np.random.default_rng(3), "Q4_1", 16, 64)
    with pytest.raises(ValueError):
        BlockQuantLinear(blocks, "Q4_1", 16, 48)  # K not a multiple of 32
    with pytest.raises(ValueError):
        BlockQuantLinear(blocks, "Q8_0", 16, 64)  # wrong byte count for the type
    with pytest.raises(ValueError):
        BlockQuantLinear(blocks, "Q4_0", 16, 64)  # unsupported type
    with pytest.raises(ValueError):
        BlockQuantLinear(blocks, "Q4_1", 16, 64, bias=torch.zeros(15))
    layer = BlockQuantLinear(blocks, "Q4_1", 16, 64, kernels=kernels)
    with pytest.raises(RuntimeError):
        kernels.gemm(torch.randn(2, 96), layer.packed, 3, 16)  # K does not match the packed weight


def test_one_openmp_runtime_and_torch_threads(kernels):
    """The library's libgomp is torch's own copy (one thread pool), and it follows torch.set_num_threads."""
    with open("/proc/self/maps", encoding="utf-8") as f:  # other wheels bundle renamed copies (libgomp-<hash>)
        gomp = {line.split()[-1] for line in f if line.rstrip().rsplit("/", 1)[-1].startswith("libgomp.so")}
    assert len(gomp) <= 1, gomp
    layer = BlockQuantLinear(random_blocks(np.random.default_rng(4), "Q4_1", 512, 576), "Q4_1", 512, 576)
    x = torch.randn(33, 576)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(_bits(one), _bits(layer(x)))  # the thread split does not change a bit


@pytest.mark.slow
@pytest.mark.parametrize("isa", [i for i in ISA_FLAGS if i != "native"])
def test_isa_builds_agree_bit_for_bit(kernels, isa):
    """AVX2 and scalar builds (built once, cached) give the native build's results bit for bit."""
    other = load_quant_kernels(isa)
    if other is None:
        pytest.skip(f"the {isa} build is not available")
    rng = np.random.default_rng(5)
    for qtype, (n, k) in [("Q4_1", (100, 576)), ("Q8_0", (37, 1536))]:
        blocks = random_blocks(rng, qtype, n, k)
        bias = torch.randn(n)
        mine, theirs = (BlockQuantLinear(blocks, qtype, n, k, bias=bias, kernels=m) for m in (kernels, other))
        assert torch.equal(_bits(mine.rebuilt_weight()), _bits(theirs.rebuilt_weight()))
        for m in (1, 5, 33):
            x = torch.randn(m, k)
            assert torch.equal(_bits(mine(x)), _bits(theirs(x))), f"{isa} {qtype} M={m}"


FAILING_CXX = """#!/bin/sh
case "$*" in *--version*|*-dumpversion*) exec c++ "$@";; esac
echo "x.cpp:1:1: error: simulated compile failure" >&2
exit 1
"""


@pytest.mark.parametrize("cxx", ["missing", "false", "compile-error"])
def test_build_failure_returns_none_with_one_log_line(tmp_path, monkeypatch, caplog, cxx):
    """No compiler, one that fails everything, one that passes the version checks and fails the compile."""
    if cxx == "compile-error":
        script = tmp_path / "failing-c++"
        script.write_text(FAILING_CXX)
        script.chmod(0o755)
    path = {"missing": "/nonexistent/c++", "false": "/bin/false", "compile-error": str(tmp_path / "failing-c++")}[cxx]
    monkeypatch.setenv("CXX", path)
    monkeypatch.setenv("KVSERVE_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="kvserve.kernels"):
        assert build_quant_kernels("scalar") is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert lines[0].startswith("kernels: cannot build the quantized kernels (")
    assert lines[0].endswith("); using the float32 path")
    if cxx == "compile-error":
        assert "simulated compile failure" in lines[0]


def test_fallback_without_kernels_is_float32_linear():
    rng = np.random.default_rng(6)
    blocks = random_blocks(rng, "Q4_1", 48, 64)
    bias = torch.randn(48)
    layer = BlockQuantLinear(blocks, "Q4_1", 48, 64, bias=bias, kernels=None)
    assert not layer.quantized
    x = torch.randn(3, 64)
    w = dequantize_blocks(blocks, "Q4_1", 48, 64)
    assert torch.equal(layer(x), F.linear(x, w, bias))
    assert torch.equal(layer.rebuilt_weight(), w)


@pytest.mark.slow
def test_a_prebuilt_portable_build_serves_where_there_is_no_compiler(tmp_path, monkeypatch, caplog):
    """What the Docker image does: `python -m model.kernels --prebuild avx2` at build time; at run time no
    compiler, no native build in the cache: the prebuilt AVX2 library loads, with no warning."""
    import subprocess
    import sys

    from model.kernels.build import cpu_supports

    if not cpu_supports("avx2"):
        pytest.skip("this CPU has no AVX2")  # the scalar fallback is then the only portable build
    env = {**__import__("os").environ, "KVSERVE_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "model.kernels", "--prebuild", "avx2"], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    monkeypatch.setenv("KVSERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level(logging.INFO, logger="kvserve.kernels"):
        module = load_quant_kernels.__wrapped__()
    assert module is not None and module.isa == "avx2"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    rng = np.random.default_rng(9)
    blocks = random_blocks(rng, "Q4_1", 40, 64)
    x = torch.randn(3, 64)
    native = BlockQuantLinear(blocks, "Q4_1", 40, 64, kernels=load_quant_kernels())
    assert torch.equal(_bits(BlockQuantLinear(blocks, "Q4_1", 40, 64, kernels=module)(x)), _bits(native(x)))


def test_prebuild_refuses_unknown_isas():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "model.kernels", "--prebuild", "avx9"], capture_output=True)
    assert done.returncode == 2 and b"invalid choice" in done.stderr
