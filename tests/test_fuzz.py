"""schemathesis against the server's own OpenAPI document (/openapi.json), every route: generated
requests (schema-valid and schema-violating, bounded in number, fixed seed) must never get a 5xx, every
answer must match the documented statuses, content types and schemas (SSE events included), a
schema-violating request must be refused, and the server must be healthy and idle afterwards.
`positive_data_acceptance` is left out: value ranges (temperature >= 0, n <= 16, ...) live in the engine's
checks, not in the schema, so a "schema-valid" request may rightly get a 400 naming its field."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from http_server import TINY_ARGS, TINY_NAME, ServerProcess

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tiny_llama_dir):
    server = ServerProcess([tiny_llama_dir, "--served-model-name", TINY_NAME, *TINY_ARGS])
    try:
        server.wait_ready()
        st = os.path.join(os.path.dirname(sys.executable), "st")
        cmd = [st, "run", server.base_url + "/openapi.json", "--checks", "all", "--exclude-checks",
               "positive_data_acceptance", "--max-examples", "12", "--seed", "20261201", "--request-timeout",
               "60", "--no-color"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert "passed" in done.stdout
        server.wait_idle(timeout=30)  # nothing left running, every KV block free
        assert "Traceback" not in server.output()  # no request made the server log an internal error
    finally:
        server.stop()
