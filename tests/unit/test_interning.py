"""The bounded tables that share values across targets (:mod:`sidecar.interning`)."""

from __future__ import annotations

from sidecar.interning import SharedTable


def test_share_returns_the_value_kept_for_an_equal_key() -> None:
    t: SharedTable[tuple[int, ...], tuple[int, ...]] = SharedTable(10)
    first = (1, 2, 3)
    equal = tuple([1, 2, 3])
    assert t.share(first, first) is first
    assert t.share(equal, equal) is first
    assert len(t) == 1 and t.get(equal) is first


def test_a_full_table_starts_afresh_by_entries() -> None:
    t: SharedTable[int, str] = SharedTable(3)
    for i in range(3):
        t.add(i, str(i))
    assert len(t) == 3
    t.add(99, "x")  # the fourth entry empties the table first
    assert len(t) == 1 and t.get(0) is None and t.get(99) == "x"


def test_a_table_starts_afresh_by_cost() -> None:
    t: SharedTable[int, str] = SharedTable(100, max_cost=10)
    t.add(1, "a", 6)
    t.add(2, "b", 4)
    assert (len(t), t.cost) == (2, 10)
    t.add(3, "c", 1)  # 11 would pass 10
    assert (len(t), t.cost) == (1, 1) and t.get(3) == "c"
    t.clear()
    assert (len(t), t.cost) == (0, 0)
    assert t.get(3) is None  # ``get`` stays bound to the (emptied) table
