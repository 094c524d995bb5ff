"""`NOTIFY snapsync_transitions`: the announcement of each batch of history rows, the last
column of the statements that write them (app/store.py's UPSERT_PAGE and MARK_MISSING), so it is
sent at their commit. The payload's format is documented in docs/reporting.md."""

from __future__ import annotations

# The last column of UPSERT_PAGE and MARK_MISSING: when the statement wrote history rows,
# announce them with NOTIFY snapsync_transitions (sent at commit, so only for rows that exist).
# `fetch` names the batch by run, observed_at and id range: re-checks of one run write batches
# concurrently, so an id range alone may hold another batch's rows.
# The payload stays under PostgreSQL's 8000-byte limit whatever the statuses: each is cut to 64
# characters and the counts list to 5000 bytes (`counts_complete` says whether it was cut).
# The format is documented in docs/reporting.md.
ANNOUNCE_TRANSITIONS = """(SELECT count(*) FROM (
    SELECT pg_notify('snapsync_transitions', json_build_object(
        'project_id', CAST(:project_id AS text),
        'sync_run_id', CAST(:run_id AS bigint),
        'observed_at', CAST(:observed_at AS timestamptz),
        'transitions', t.n,
        'first_id', t.first_id,
        'last_id', t.last_id,
        'counts', COALESCE(c.counts, CAST('[]' AS json)),
        'counts_complete', c.kept = c.groups,
        'fetch', 'SELECT * FROM snapshot_status_history WHERE sync_run_id = '
                 || CAST(:run_id AS bigint) || ' AND observed_at = '
                 || quote_literal(to_char(CAST(:observed_at AS timestamptz) AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD HH24:MI:SS.US') || '+00')
                 || ' AND id BETWEEN ' || t.first_id || ' AND ' || t.last_id || ' ORDER BY id'
    )::text)
    FROM (SELECT count(*) AS n, min(id) AS first_id, max(id) AS last_id FROM history) AS t
    CROSS JOIN LATERAL (
        SELECT json_agg(g.entry ORDER BY g.rank) FILTER (WHERE g.bytes <= 5000) AS counts,
               count(*) FILTER (WHERE g.bytes <= 5000) AS kept,
               count(*) AS groups
        FROM (
            SELECT e.entry,
                   row_number() OVER w AS rank,
                   sum(octet_length(e.entry::text) + 2) OVER w AS bytes
            FROM (
                SELECT json_build_object('from', x.from_status, 'to', x.to_status, 'n', x.n)
                           AS entry,
                       x.n, x.from_status, x.to_status
                FROM (
                    SELECT left(from_status, 64) AS from_status,
                           left(to_status, 64) AS to_status, count(*) AS n
                    FROM history GROUP BY 1, 2
                ) AS x
            ) AS e
            WINDOW w AS (ORDER BY e.n DESC, e.from_status NULLS FIRST, e.to_status
                         ROWS UNBOUNDED PRECEDING)
        ) AS g
    ) AS c
    WHERE t.n > 0
) AS sent)"""
