"""dtype `auto`: fp32 on the CPU unless AMX is usable and a start-up measurement finds bf16 faster."""

from __future__ import annotations

import logging

import pytest
import torch

from model.engine import runtime
from model.engine.runtime import (
    BF16_MIN_SPEEDUP,
    MatmulTiming,
    choose_cpu_dtype,
    cpu_amx_usable,
    measure_cpu_matmuls,
    resolve_dtype,
)

CPU = torch.device("cpu")
XEON_NO_AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16"})
XEON_AMX = XEON_NO_AMX | {"amx_bf16", "amx_tile", "amx_int8"}


def never_measure() -> MatmulTiming:
    raise AssertionError("nothing should be measured without AMX")


def timing(speedup: float) -> MatmulTiming:
    return MatmulTiming(fp32_s=1e-3 * speedup, bf16_s=1e-3)


def test_amx_needs_the_flags_and_torch():
    assert not cpu_amx_usable(XEON_NO_AMX, torch_view=lambda: True)  # avx512_bf16 alone is not AMX
    assert not cpu_amx_usable(frozenset({"amx_bf16"}), torch_view=lambda: True)  # tiles missing
    assert not cpu_amx_usable(XEON_AMX, torch_view=lambda: False)  # torch / the kernel says no
    assert cpu_amx_usable(XEON_AMX, torch_view=lambda: True)


def test_no_amx_is_float32_without_measuring():
    # AVX512-BF16 without AMX: bf16 is slower at batch 32 and breaks batch invariance.
    amx = cpu_amx_usable(XEON_NO_AMX, torch_view=lambda: True)
    assert choose_cpu_dtype(amx, measure=never_measure) == (torch.float32, "no AMX")


def test_amx_and_bf16_measured_faster_is_bfloat16():
    amx = cpu_amx_usable(XEON_AMX, torch_view=lambda: True)
    dtype, why = choose_cpu_dtype(amx, measure=lambda: timing(2.5))
    assert dtype == torch.bfloat16
    assert "AMX" in why and "2.50x" in why
    assert choose_cpu_dtype(True, measure=lambda: timing(BF16_MIN_SPEEDUP))[0] == torch.bfloat16


@pytest.mark.parametrize("speedup", [0.8, 1.0, BF16_MIN_SPEEDUP - 0.01])
def test_amx_but_bf16_not_clearly_faster_is_float32(speedup):
    dtype, why = choose_cpu_dtype(True, measure=lambda: timing(speedup))
    assert dtype == torch.float32
    assert f"{speedup:.2f}x" in why


def test_resolve_dtype_auto_logs_the_decision(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_auto_cpu_dtype", lambda: (torch.float32, "no AMX"))
    with caplog.at_level(logging.INFO, logger="kvserve.engine"):
        assert resolve_dtype("auto", CPU) == torch.float32
    assert "dtype auto -> float32 (no AMX)" in caplog.text
    monkeypatch.setattr(runtime, "_auto_cpu_dtype", lambda: (torch.bfloat16, "AMX; bf16 matmul 3.00x fp32"))
    with caplog.at_level(logging.INFO, logger="kvserve.engine"):
        assert resolve_dtype("auto", CPU) == torch.bfloat16
    assert "dtype auto -> bfloat16 (AMX; bf16 matmul 3.00x fp32" in caplog.text


def test_explicit_dtypes_are_kept():
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("float16", CPU) == torch.float16


def test_auto_on_this_machine_follows_the_rule():
    dtype = resolve_dtype("auto", CPU)
    if not cpu_amx_usable():
        assert dtype == torch.float32
    assert dtype in (torch.float32, torch.bfloat16)


def test_the_measurement_is_short_and_sane():
    t = measure_cpu_matmuls(num_weights=2)
    assert t.fp32_s > 0 and t.bf16_s > 0 and t.shape == (32, 576, 1536)
    assert t.bf16_speedup == pytest.approx(t.fp32_s / t.bf16_s)
    assert "per [32x576]@[576x1536]" in t.describe()
