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


def test_desktops_are_batched_while_their_answer_fits_one_page_and_the_url_stays_short() -> None:
    from app.deletion import batch_rechecks, group_filters

    keys = [("s1", "d1", None), ("s2", "d2", None), ("s3", None, "n3"), ("s4", "d3", None)]
    plan = plan_rechecks(keys)
    # d1 and d2 fit together (400 + 500); d3 (100) would make 1000 > 950: a new request.
    groups = batch_rechecks(plan.queries, {"d1": 400, "d2": 500, "d3": 100})
    assert groups == [[0, 1], [3], [2]]
    assert group_filters(plan.queries, groups[0]) == [("desktop_ids", "d1"), ("desktop_ids", "d2")]
    assert group_filters(plan.queries, groups[1]) == [("desktop_id", "d3")]
    assert group_filters(plan.queries, groups[2]) == [("snapshot_name", "n3")]
    # Unknown sizes count the missing ids; a desktop bigger than a page goes alone.
    assert batch_rechecks(plan.queries, {}) == [[0, 1, 3], [2]]
    assert batch_rechecks(plan.queries, {"d2": 5000}) == [[0], [1], [3], [2]]
    # The URL budget: each pair costs "&desktop_ids=" and the quoted id.
    many = plan_rechecks([(f"s{i}", f"desk/{i:04d}", None) for i in range(100)])
    pair = len("&desktop_ids=") + len("desk%2F0000")
    groups = batch_rechecks(many.queries, {}, url_bytes=10 * pair)
    assert [len(g) for g in groups] == [10] * 10
    assert sorted(i for g in groups for i in g) == list(range(100))


def test_a_batch_proves_absence_for_every_desktop_it_covered() -> None:
    from app.deletion import batch_rechecks

    plan = plan_rechecks([("s1", "d1", None), ("s2", "d2", None), ("s3", "d3", None)])
    assert batch_rechecks(plan.queries, {}) == [[0, 1, 2]]
    # One complete page for the batch shows s2: the same set stands for each desktop.
    shown = {"s2"}
    assert decide(plan, [shown, shown, shown], trusted=False) == ["s1", "s3"]
    # A batch that failed proves nothing for any of its desktops.
    assert decide(plan, [None, None, None], trusted=True) == []
