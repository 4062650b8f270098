"""Value parsers for `kvserve serve` flags and KVSERVE_* env vars: each takes the text and returns the
value or raises argparse.ArgumentTypeError with a message that says what was expected."""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def bounded(cast: Callable[[str], N], expected: str, ok: Callable[[N], bool]) -> Callable[[str], N]:
    """A parser: `cast(text)`, which must satisfy `ok`; otherwise 'expected <expected>, got <text>'."""

    def parse(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = bounded(int, "a positive integer", lambda v: v >= 1)
port = bounded(int, "a port number between 0 and 65535", lambda v: 0 <= v <= 65535)
positive_float = bounded(float, "a positive number", lambda v: 0.0 < v < math.inf)
fraction = bounded(float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)
seconds = bounded(float, "a number of seconds >= 0", lambda v: 0.0 <= v < math.inf)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Bytes from '536870912', '512MiB', '0.5GiB', '2G' (k/m/g are powers of 1000, KiB/MiB/GiB of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 536870912, 512MiB or 2GiB, got {text!r}")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def format_size(value: int) -> str:
    """The shortest exact spelling of `value` bytes that parse_size reads back: 2MiB, 1500, 3GiB."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


class choice:
    """A parser that accepts one of `choices` (kept on the object, for the flag's metavar)."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.metavar = "{" + ",".join(choices) + "}"

    def __call__(self, text: str) -> str:
        if text not in self.choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(self.choices)}, got {text!r}")
        return text


def device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
