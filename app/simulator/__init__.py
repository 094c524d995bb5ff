"""The Workspace simulator behind `snapsync simulate`: a stand-in for the real cloud.

`population` holds the simulated snapshots and their evolution (pure, deterministic by seed),
`query` parses and answers the documented list query, `auth` and `faults` model the gateway,
`server` serves it all over HTTP, `control` is a client of its `/_sim/` control API and
`command` is the click command.
"""

from __future__ import annotations
