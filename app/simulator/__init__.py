"""The Workspace simulator behind `snapsync simulate`: a stand-in for the real cloud.

`population` holds the simulated snapshots (pure, deterministic by seed; `model` is their data,
`generation` makes them up, `evolution` moves them on per tick), `query` parses and answers the
documented list query, `auth` and `faults` model the gateway and `iam` the account's IAM.
`server` serves it all over HTTP (`state`: its options and state, `gateway`: what every request
goes through, `control_api`: the `/_sim/` endpoints), `control` is a client of that control API
and `command` is the click command.
"""

from __future__ import annotations
