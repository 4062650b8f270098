"""`serve run app.ray_entry:build key=value ...`: kvserve as a Ray Serve application from Ray's own CLI.

Any `kvserve serve` flag as key=value (dashes or underscores), the model as `model=`:

    serve run app.ray_entry:build model=/models/x num_replicas=2 ray_cpus_per_replica=2
"""

from __future__ import annotations

from typing import Any

from .cli_args import parse_settings
from .main import create_app
from .ray_serve import application


def build(args: dict[str, str]) -> Any:
    argv: list[str] = []
    for key, value in args.items():
        if key == "model":
            argv.insert(0, value)
        else:
            argv += [f"--{key.replace('_', '-')}", value]
    return application(parse_settings(argv), create_app)
