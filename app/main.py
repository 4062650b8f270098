"""The `kvserve` command. The HTTP server lands with the OpenAI API issue; until then `serve` runs a demo."""
from __future__ import annotations

import sys


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    from model.__main__ import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(cli())
