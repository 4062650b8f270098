"""The Responses API's store: finished responses kept in memory, bounded in count and age.

`store: true` (OpenAI's default) keeps a response for `GET /v1/responses/{id}`, `.../input_items` and
`previous_response_id`; `--responses-store-size` bounds the count (the oldest goes first),
`--responses-store-ttl` the age. Nothing is written to disk; a restart forgets everything. Only the
event loop touches it, so it needs no lock.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the response object as returned
    input_items: list[dict[str, Any]]  # this request's input items, with ids (for .../input_items)
    conversation: list[dict[str, Any]]  # chat messages: earlier turns, this input, this output (no instructions)
    stored_at: float


class ResponseStore:
    def __init__(self, max_items: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(
        self, response: dict[str, Any], input_items: list[dict[str, Any]], conversation: list[dict[str, Any]]
    ) -> None:
        self._expire()
        self._items[response["id"]] = StoredResponse(response, input_items, conversation, self._clock())
        self._items.move_to_end(response["id"])
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        self._expire()
        return self._items.pop(response_id, None) is not None

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._items:
            first = next(iter(self._items.values()))
            if first.stored_at >= cutoff:
                break
            self._items.popitem(last=False)
