"""The hourly rollup of the status history (migration 0008): per project, UTC hour and status,
counts that the statements writing or deleting history rows keep exact in the same statement, so
the reporting queries over long windows read hours instead of history rows.

Two tables:
- `snapshot_status_hours` (project_id, hour, status): for the hour point `hour` (the top of a UTC
  hour), what happened in (hour - 1 h, hour]: history rows entered (observed_at), rows left
  (left_by), and the statistics of the periods left then (snapshot_status_intervals' durations
  of a closed row). A period counts at an hour point `at` when entered_by <= at < left_by: it
  starts counting at the hour point its entry is rounded up to and stops at that of its exit.
- `snapshot_status_change_hours` (project_id, hour, from_status, to_status): history rows by
  the UTC hour their observed_at falls in, [hour, hour + 1 h); from_status '' stands for NULL
  (a first sighting; the API's status is never empty: items.py rejects it).

Written by app/store.py's UPSERT_PAGE and MARK_MISSING (ROLLUP_CTES, after `history` and
`closed`) and decremented by app/retention.py's PRUNE_DELETED (UNROLL_CTES). Each statement
sends one input row per key, in key order, hours table first: writers of one project (a full
sync's page, the deletion update, the hot lane, a prune) lock the rollup's rows in one order.
"""

from __future__ import annotations

from sqlalchemy import text

# The hour points of a time, in UTC whatever the session's time zone: the top of its hour, and
# the first hour point at or after it (an instant on the hour is its own).
HOUR_OF = "date_trunc('hour', {t}, 'UTC')"
HOUR_BY = "(date_trunc('hour', {t} - interval '1 microsecond', 'UTC') + interval '1 hour')"


def hour_of(t: str) -> str:
    return HOUR_OF.format(t=t)


def hour_by(t: str) -> str:
    return HOUR_BY.format(t=t)


def _nonneg(interval: str) -> str:
    """snapshot_status_intervals' durations: zero when clocks disagree (0002's nonneg)."""
    return f"CASE WHEN {interval} < interval '0' THEN interval '0' ELSE {interval} END"


MEASURES = ("entered", "exited", "periods", "min_periods", "min_seconds", "max_seconds")


def period_measures(h: str) -> str:
    """(periods, min_periods, min_seconds, max_seconds) of a closed history row `h`: the
    doc query "How long snapshots stay in each status" reads periods whose start snapsync saw
    (previous_observed_at), min_seconds where it is known (left_after), exactly (numeric)."""
    known = f"{h}.previous_observed_at IS NOT NULL"
    with_min = f"{known} AND {h}.left_after IS NOT NULL"
    min_s = f"extract(epoch FROM {_nonneg(f'{h}.left_after - {h}.observed_at')})"
    max_s = f"extract(epoch FROM {_nonneg(f'{h}.left_by - {h}.previous_observed_at')})"
    return (
        f"CASE WHEN {known} THEN 1 ELSE 0 END, CASE WHEN {with_min} THEN 1 ELSE 0 END, "
        f"CASE WHEN {with_min} THEN {min_s} ELSE 0 END, CASE WHEN {known} THEN {max_s} ELSE 0 END"
    )


def hour_rows(entered: str, left: str, project: str = "h.project_id") -> str:
    """One row per event (project_id, hour, status, measures...): `entered` and `left` are FROM
    clauses over history rows (alias h): every row enters; the closed ones leave."""
    return f"""SELECT {project} AS project_id, {hour_by("h.observed_at")} AS hour,
           h.to_status AS status, 1 AS entered, 0 AS exited, 0 AS periods, 0 AS min_periods,
           CAST(0 AS numeric) AS min_seconds, CAST(0 AS numeric) AS max_seconds
    FROM {entered}
    UNION ALL
    SELECT {project}, {hour_by("h.left_by")}, h.to_status, 0, 1, {period_measures("h")}
    FROM {left}"""


def hour_sums(rows: str, sign: str = "") -> str:
    """The event rows summed per key, in key order (`sign` '-' to decrement)."""
    sums = ", ".join(f"{sign}sum(e.{m})" for m in MEASURES)
    return f"""SELECT e.project_id, e.hour, e.status, {sums}
    FROM ({rows}) AS e
    GROUP BY e.project_id, e.hour, e.status
    ORDER BY e.project_id, e.hour, e.status"""


def change_sums(rows: str, sign: str = "") -> str:
    """History rows (FROM clause `rows`, alias h) counted per change key, in key order."""
    return f"""SELECT h.project_id, {hour_of("h.observed_at")} AS hour,
           COALESCE(h.from_status, '') AS from_status, h.to_status, {sign}count(*)
    FROM {rows}
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4"""


_ADD_HOURS = ", ".join(f"{m} = t.{m} + EXCLUDED.{m}" for m in MEASURES)
_INSERT_HOURS = (
    f"INSERT INTO snapshot_status_hours AS t (project_id, hour, status, {', '.join(MEASURES)})"
)
_INSERT_CHANGES = (
    "INSERT INTO snapshot_status_change_hours AS t "
    "(project_id, hour, from_status, to_status, changes)"
)
_HOURS_EMPTY = " AND ".join(f"t.{m} = 0" for m in MEASURES)


def _upsert(sign: str, hours_returning: str, changes_returning: str) -> str:
    """The CTEs `hours` and `changes` adding (with sign '-', subtracting) the rows of the CTEs
    `history` (rows written, or deleted) and `closed` (rows closed, or deleted closed rows)."""
    hours = hour_sums(hour_rows("history AS h", "closed AS h"), sign)
    changes = change_sums("history AS h", sign)
    return f"""hours AS (
    {_INSERT_HOURS}
    {hours}
    ON CONFLICT (project_id, hour, status) DO UPDATE SET {_ADD_HOURS}
    RETURNING {hours_returning}
),
changes AS (
    {_INSERT_CHANGES}
    SELECT c.* FROM ({changes}) AS c
    -- After `hours` (its rows are locked first): one lock order for every writer.
    WHERE (SELECT count(*) FROM hours) >= 0
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (project_id, hour, from_status, to_status)
        DO UPDATE SET changes = t.changes + EXCLUDED.changes
    RETURNING {changes_returning}
)"""


# The CTEs of UPSERT_PAGE and MARK_MISSING, after `history` and CLOSE_HISTORY's `closed` (both
# return the columns hour_rows reads): the rollup counts the rows written and the rows closed.
ROLLUP_CTES = _upsert("", "1", "1")

# The CTEs of retention's PRUNE_DELETED, after its `history` (DELETE ... RETURNING the columns
# hour_rows reads): the counts of the deleted rows go. All the rows of a pruned snapshot go, so
# no kept row was closed by one. `emptied` lists the rollup rows left all zero, as JSON, for
# DROP_EMPTIED (a second statement: one statement cannot update a row and then delete it).
UNROLL_CTES = "closed AS (SELECT * FROM history WHERE left_by IS NOT NULL),\n" + _upsert(
    "-",
    f"t.project_id, t.hour, t.status, {_HOURS_EMPTY} AS empty",
    "t.project_id, t.hour, t.from_status, t.to_status, t.changes = 0 AS empty",
)
EMPTIED = """json_build_object(
    'hours', (SELECT COALESCE(json_agg(json_build_object('p', project_id, 'h', hour,
                                                         's', status)), '[]')
              FROM hours WHERE empty),
    'changes', (SELECT COALESCE(json_agg(json_build_object('p', project_id, 'h', hour,
                                                           'f', from_status, 't', to_status)), '[]')
                FROM changes WHERE empty)
)::text"""

# Rollup rows a prune left at zero go (retention, in the batch's transaction, which holds their
# row locks): zero rows would otherwise pile up for the hours whose history was pruned.
DROP_EMPTIED = text(
    f"""
WITH hours AS (
    DELETE FROM snapshot_status_hours AS t
    USING json_to_recordset(CAST(:emptied AS json) -> 'hours') AS k(p text, h timestamptz, s text)
    WHERE t.project_id = k.p AND t.hour = k.h AND t.status = k.s AND {_HOURS_EMPTY}
    RETURNING 1
),
changes AS (
    DELETE FROM snapshot_status_change_hours AS t
    USING json_to_recordset(CAST(:emptied AS json) -> 'changes')
        AS k(p text, h timestamptz, f text, t text)
    WHERE t.project_id = k.p AND t.hour = k.h AND t.from_status = k.f AND t.to_status = k.t
      AND t.changes = 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM hours) + (SELECT count(*) FROM changes)
"""
)

# The rollup recounted from the history (what the tables must hold, zero rows aside): the fill
# of benchmarks/reporting.py's generator (BACKFILL_STATEMENTS) and the tests' oracle.
RECOUNT_HOURS = hour_sums(
    hour_rows(
        "snapshot_status_history AS h", "snapshot_status_history AS h WHERE h.left_by IS NOT NULL"
    )
)
RECOUNT_CHANGES = change_sums("snapshot_status_history AS h")

FILL_HOURS = f"{_INSERT_HOURS}\n{RECOUNT_HOURS}"
FILL_CHANGES = f"{_INSERT_CHANGES}\n{RECOUNT_CHANGES}"
BACKFILL_STATEMENTS = (FILL_HOURS, FILL_CHANGES)
