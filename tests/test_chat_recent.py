"""The bounded least-recently-used mapping the chat clients remember things in."""

from __future__ import annotations

import pytest

from anycode_actors.chat._recent import Recent


def test_beyond_capacity_the_least_recently_put_entry_is_forgotten() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("c", 3)
    assert "a" not in recent
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (None, 2, 3)
    assert len(recent) == 2


def test_a_get_counts_as_a_use_and_keeps_the_entry() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1
    recent.put("c", 3)
    assert "a" in recent
    assert "b" not in recent


def test_a_membership_test_only_looks() -> None:
    recent: Recent[str, None] = Recent(2)
    recent.put("a", None)
    recent.put("b", None)
    assert "a" in recent
    recent.put("c", None)
    assert "a" not in recent
    assert "b" in recent


def test_putting_a_known_key_again_replaces_its_value_and_refreshes_it() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    recent.put("a", 10)
    recent.put("c", 3)
    assert (recent.get("a"), recent.get("b"), recent.get("c")) == (10, None, 3)


def test_a_stored_none_is_remembered() -> None:
    recent: Recent[tuple[str, ...], None] = Recent(1)
    recent.put(("envelope", "1"), None)
    assert ("envelope", "1") in recent
    assert ("envelope", "2") not in recent


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Recent[str, int](0)
