"""The bookkeeping of one listing: first sightings, duplicates and the deletion candidates."""

from __future__ import annotations

from app.sync import _Listing


def test_a_listing_counts_first_sightings_duplicates_and_what_stayed_unseen() -> None:
    known: dict[str, int | None] = {"a": 1, "b": 2, "c": None, "gone": 4}
    listing = _Listing(known)
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
    listing = _Listing(known)
    assert listing.see(["x"], [], known) == 1
    # "x" was refused by PostgreSQL, so it never reached `known`; listed again it is a repeat.
    assert listing.see(["x"], [], known) == 0
    assert listing.duplicates == 1 and listing.distinct == 1 and not listing.unseen
