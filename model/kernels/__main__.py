"""`python -m model.kernels --prebuild avx512 avx2 scalar`: build portable kernels into $KVSERVE_CACHE (Docker)."""

from __future__ import annotations

import argparse

from .build import PORTABLE, prebuild

parser = argparse.ArgumentParser(prog="python -m model.kernels", description=__doc__)
parser.add_argument("--prebuild", nargs="+", choices=PORTABLE, required=True, metavar="ISA", help=", ".join(PORTABLE))
raise SystemExit(prebuild(parser.parse_args().prebuild))
