"""The server's life cycle as one value (a leaf module: metrics, logs and state all read it).

    LOADING -> SERVING -> DRAINING -> ABORTING -> STOPPED      (FAILED: the model did not load)

The phase only moves forward (`Phase.advance`). Engine death is not a phase: the engine reports it
(`AsyncEngine.is_dead`) and the state turns it into 503 engine_dead.
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    LOADING = "loading"  # the model loads in the background; API calls get 503 model_loading
    SERVING = "serving"
    DRAINING = "draining"  # after SIGTERM: new requests get 503, requests in flight may finish
    ABORTING = "aborting"  # drain timeout or second signal: requests still running are aborted
    STOPPED = "stopped"  # the engine is shut down
    FAILED = "failed"  # the model failed to load; the server exits

    @property
    def shutting_down(self) -> bool:
        """Draining, aborting or stopped: new requests get 503 draining."""
        return self in (Phase.DRAINING, Phase.ABORTING, Phase.STOPPED)

    @property
    def refuses_streams(self) -> bool:
        """No new engine stream may start (the drain has aborted the requests in flight)."""
        return self in (Phase.ABORTING, Phase.STOPPED)

    def advance(self, to: Phase) -> Phase:
        """`to` if it comes later in the life cycle than this phase, else this phase."""
        return to if _RANK[to] > _RANK[self] else self


_RANK = {Phase.LOADING: 0, Phase.SERVING: 1, Phase.DRAINING: 2, Phase.ABORTING: 3, Phase.STOPPED: 4, Phase.FAILED: 5}
