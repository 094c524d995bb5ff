"""The deletion rule's pure parts: the bookkeeping of one listing (first sightings, duplicates,
the candidates, the signs of a shifting listing), the re-check plan and the decision."""

from __future__ import annotations

from app.deletion import Listing, decide, plan_rechecks


def test_a_listing_counts_first_sightings_duplicates_and_what_stayed_unseen() -> None:
    known: dict[str, int | None] = {"a": 1, "b": 2, "c": None, "gone": 4}
    listing = Listing(known)
    # Page 1: two stored ids (one twice) and a new one.
    assert listing.see(["a", "new1", "a", "b"], [], known) == 3
    assert listing.duplicates == 1
    known["new1"] = 9  # written after the page
    # Page 2: the new id again (shifted), a stored id whose row must be rewritten, a repeated
    # new id, and an item rejected for its content.
    assert listing.see(["new1", "c", "new2", "new2"], ["bad"], known) == 2
    assert listing.duplicates == 3
    # Page 3: the rejected id comes back valid: already listed, so a duplicate.
    assert listing.see(["bad"], [], known) == 0
    assert listing.duplicates == 4
    assert listing.distinct == 6  # a, b, c, new1, new2, bad
    assert listing.unseen == {"gone"}  # the only candidate for the deletion rule


def test_a_new_id_that_could_not_be_written_is_still_seen_once() -> None:
    known: dict[str, int | None] = {}
    listing = Listing(known)
    assert listing.see(["x"], [], known) == 1
    # "x" was refused by PostgreSQL, so it never reached `known`; listed again it is a repeat.
    assert listing.see(["x"], [], known) == 0
    assert listing.duplicates == 1 and listing.distinct == 1 and not listing.unseen


def test_a_listing_that_shifted_says_how() -> None:
    known: dict[str, int | None] = {"a": 1, "b": 2}
    listing = Listing(known)
    listing.listed(3)
    listing.see(["a", "b"], [], known)
    listing.listed(2)
    listing.see(["b"], [], known)
    assert listing.signals() == [
        "total_count changed while paging ([2, 3])",
        "1 snapshot(s) appeared on two pages",
    ]
    steady = Listing(known)
    steady.listed(2)
    steady.see(["a"], ["b"], known)
    assert steady.signals() == []
    short = Listing(known)
    short.listed(2)
    short.see(["a"], [], known)
    assert short.signals() == ["1 distinct snapshots seen, total_count 2"]


def test_missing_rows_are_rechecked_by_desktop_else_by_name() -> None:
    keys = [
        ("s1", "d1", "n1"),
        ("s2", "d1", None),
        ("s3", None, "n3"),
        ("s4", None, None),
        ("s5", "d2", None),
    ]
    plan = plan_rechecks(keys)
    assert plan.queries == [
        (("desktop_id", "d1"), ["s1", "s2"]),
        (("snapshot_name", "n3"), ["s3"]),
        (("desktop_id", "d2"), ["s5"]),
    ]
    assert plan.unverifiable == ["s4"] and plan.needed == 3
    capped = plan_rechecks(keys, limit=1)
    assert capped.queries == plan.queries[:1] and capped.needed == 3


def test_only_what_a_recheck_did_not_show_counts_as_missed() -> None:
    plan = plan_rechecks([("s1", "d1", None), ("s2", "d1", None), ("s3", "d2", None)])
    # d1's listing still shows s2; d2's listing failed, which proves nothing.
    assert decide(plan, [{"s2", "other"}, None], trusted=True) == ["s1"]
    assert decide(plan, [set(), {"s3"}], trusted=True) == ["s1", "s2"]


def test_rows_no_listing_can_find_count_only_after_a_listing_that_did_not_shift() -> None:
    plan = plan_rechecks([("s1", None, None), ("s2", "d1", None)])
    assert decide(plan, [set()], trusted=True) == ["s1", "s2"]
    assert decide(plan, [set()], trusted=False) == ["s2"]
