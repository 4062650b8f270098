"""kvserve's OpenAI-compatible HTTP server (FastAPI + sse-starlette) on the engine in `model/`."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    __version__ = _version("kvserve")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
