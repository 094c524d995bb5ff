"""snapsync: a PostgreSQL mirror of Huawei Cloud Workspace desktop snapshots and their history."""

from __future__ import annotations

__version__ = "0.1.0"
