"""Bounded tables of values shared by every target.

Why: targets of one vLLM build answer the same label sets, layouts, histogram bounds and cache
configs, so each is kept once instead of once per target (most of the sidecar's memory at
thousands of targets). A table is bounded by entries and, where a value can be large, by a cost
its caller counts (about bytes): a target that answers something new every scrape starts the
table afresh instead of growing it. Sharing is only an optimisation: a cleared table loses
nothing but the sharing.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SharedTable(Generic[K, V]):
    """``key -> value`` for values shared across targets; emptied when a new entry would pass
    ``max_entries`` or ``max_cost``.

    ``get`` is the dict's own method (the hot path); :meth:`add` stores, :meth:`share` returns
    the stored value for an equal key or stores this one.
    """

    __slots__ = ("table", "get", "max_entries", "max_cost", "cost")

    def __init__(self, max_entries: int, max_cost: int | None = None) -> None:
        self.table: dict[K, V] = {}
        self.get = self.table.get
        self.max_entries = max_entries
        self.max_cost = max_cost
        self.cost = 0  # the costs callers gave the entries held

    def add(self, key: K, value: V, cost: int = 0) -> V:
        """Store ``value`` under ``key`` (emptying the table first when it would pass a bound)."""
        if len(self.table) >= self.max_entries or (
            self.max_cost is not None and self.cost + cost > self.max_cost
        ):
            self.clear()
        self.table[key] = value
        self.cost += cost
        return value

    def share(self, key: K, value: V, cost: int = 0) -> V:
        """The value kept for ``key``, or ``value`` once stored."""
        found = self.table.get(key)
        return found if found is not None else self.add(key, value, cost)

    def clear(self) -> None:
        self.table.clear()
        self.cost = 0

    def __len__(self) -> int:
        return len(self.table)
