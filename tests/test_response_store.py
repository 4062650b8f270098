"""app/response_store.py: bounded by count (oldest out first) and by age, delete, no cross-talk."""

from __future__ import annotations

from app.response_store import ResponseStore


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _put(store: ResponseStore, rid: str) -> None:
    store.put({"id": rid}, [{"id": f"in-{rid}"}], [{"role": "user", "content": rid}])


def test_count_bound_drops_the_oldest():
    store = ResponseStore(2, 60.0, Clock())
    for rid in ("a", "b", "c"):
        _put(store, rid)
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    assert len(store) == 2


def test_age_bound_and_delete():
    clock = Clock()
    store = ResponseStore(10, 60.0, clock)
    _put(store, "a")
    clock.t = 30.0
    _put(store, "b")
    clock.t = 61.0
    assert store.get("a") is None and store.get("b").conversation == [{"role": "user", "content": "b"}]
    assert store.delete("b") and not store.delete("b") and len(store) == 0
