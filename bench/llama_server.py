"""Find llama.cpp's `llama-server` for the speed comparison, or build it outside the repository.

    LLAMA_SERVER=$(python -m bench.llama_server)           # find it: $LLAMA_SERVER, PATH, or the cache
    LLAMA_SERVER=$(python -m bench.llama_server --build)   # find it, else build it (~10-25 min on 2 cores)

The build takes the llama.cpp sources vendored in PyPI's `llama-cpp-python` sdist (pinned below, the
version issue 11's figures used), unpacks them into `$KVSERVE_CACHE/llama.cpp` (default
`~/.cache/kvserve/llama.cpp`) and runs `cmake -B build -G Ninja -DGGML_NATIVE=ON -DLLAMA_CURL=OFF` and
`cmake --build build --target llama-server`. Nothing of llama.cpp enters this repository. Prints the
binary's path on stdout; progress and errors go to stderr (exit 1 if it cannot be found or built).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"


def cache_root() -> Path:
    root = os.environ.get("KVSERVE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "kvserve") / "llama.cpp"


def _built(root: Path) -> Path | None:
    for binary in sorted(root.glob("*/vendor/llama.cpp/build/bin/llama-server")):
        if os.access(binary, os.X_OK):
            return binary
    return None


def find() -> Path | None:
    """$LLAMA_SERVER, then `llama-server` on PATH, then a build in the cache."""
    env = os.environ.get("LLAMA_SERVER")
    if env and os.access(env, os.X_OK):
        return Path(env)
    on_path = shutil.which("llama-server")
    return Path(on_path) if on_path else _built(cache_root())


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True, stdout=sys.stderr)


def build() -> Path:
    """Download the sdist, unpack it into the cache and build llama-server (needs cmake, ninja, a C++ compiler)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp])
        archive = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    source = next(p for p in sorted(root.glob("*/vendor/llama.cpp")) if (p / "CMakeLists.txt").is_file())
    _run(["cmake", "-B", "build", "-G", "Ninja", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF"], cwd=source)
    _run(["cmake", "--build", "build", "--target", "llama-server"], cwd=source)
    binary = _built(root)
    if binary is None:
        raise RuntimeError(f"the build finished but no llama-server is under {root}")
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="build it when it cannot be found")
    args = parser.parse_args()
    binary = find()
    if binary is None and args.build:
        try:
            binary = build()
        except (OSError, RuntimeError, StopIteration, subprocess.CalledProcessError) as exc:
            print(f"llama-server: the build failed: {exc}", file=sys.stderr)
            return 1
    if binary is None:
        print("llama-server: not found ($LLAMA_SERVER, PATH, the cache); run with --build", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
