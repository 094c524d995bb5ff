"""A client of the simulator's `/_sim/` control API, for tests, the demo and benchmarks that
drive a simulator running elsewhere (another process). In-process, use the Population directly.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from app import errors


class ControlError(errors.SnapsyncError):
    """The simulator refused a control request."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"simulator control API answered {status}: {body}")
        self.status = status
        self.body = body


class SimulatorControl:
    """Scripted control of a running simulator at `base_url`, over a session the caller owns."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = base_url.rstrip("/") + "/_sim"
        self._session = session

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self._session.request(method, self._base + path, json=body) as response:
            text = await response.text()
            if response.status >= 400:
                raise ControlError(response.status, text)
            return await response.json(content_type=None)

    async def projects(self) -> list[dict[str, Any]]:
        """Every project: project_id, snapshot_count, forbidden."""
        answer = await self._call("GET", "/projects")
        projects: list[dict[str, Any]] = answer["projects"]
        return projects

    async def add_project(self, region: str, *, workspace: bool = True) -> str:
        """A new project of the account in `region` (without `workspace`: listed by IAM only,
        Workspace answers 404); returns its id."""
        answer = await self._call("POST", "/projects", {"region": region, "workspace": workspace})
        project_id: str = answer["project_id"]
        return project_id

    async def remove_project(self, project_id: str) -> None:
        """Make a project vanish from Workspace and IAM."""
        await self._call("DELETE", f"/projects/{project_id}")

    async def snapshots(self, project_id: str) -> list[dict[str, Any]]:
        """A project's whole current list, as the API renders items."""
        answer = await self._call("GET", f"/projects/{project_id}/snapshots")
        items: list[dict[str, Any]] = answer["desktop_snapshots"]
        return items

    async def get(self, project_id: str, snapshot_id: str) -> dict[str, Any]:
        """One snapshot."""
        item: dict[str, Any] = await self._call(
            "GET", f"/projects/{project_id}/snapshots/{snapshot_id}"
        )
        return item

    async def add(self, project_id: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add a snapshot with these fields (the rest generated); returns it."""
        item: dict[str, Any] = await self._call(
            "POST", f"/projects/{project_id}/snapshots", fields or {}
        )
        return item

    async def patch(
        self, project_id: str, snapshot_id: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Set fields of one snapshot; returns it."""
        item: dict[str, Any] = await self._call(
            "PATCH", f"/projects/{project_id}/snapshots/{snapshot_id}", fields
        )
        return item

    async def delete(self, project_id: str, snapshot_id: str) -> dict[str, Any]:
        """Delete one snapshot; returns it."""
        answer = await self._call("DELETE", f"/projects/{project_id}/snapshots/{snapshot_id}")
        item: dict[str, Any] = answer["deleted"]
        return item

    async def tick(self, n: int = 1) -> dict[str, Any]:
        """Run `n` evolution steps now; returns the counts of what changed."""
        report: dict[str, Any] = await self._call("POST", "/tick", {"n": n})
        return report

    async def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Change fault options (fault_429, fault_500, fault_502_html, latency,
        latency_per_item, forbidden_projects, iam_projects_status) and/or unstable_ties,
        change_rate, legacy_filters (400 to the list filters); returns the current ones."""
        current: dict[str, Any] = await self._call("POST", "/faults", changes)
        return current

    async def revoke_tokens(self, *, expire: bool = False) -> int:
        """Revoke (or, with `expire`, expire) every issued IAM token; returns how many."""
        answer = await self._call("POST", "/revoke-tokens", {"expire": expire})
        count: int = answer["expired" if expire else "revoked"]
        return count

    async def queue_raw_pages(self, project_id: str, pages: list[dict[str, Any]]) -> int:
        """Queue canned answers ({"status", "body", "content_type", "headers"?}) for the next
        API requests of a project; returns how many are pending."""
        answer = await self._call("POST", f"/projects/{project_id}/raw-pages", pages)
        pending: int = answer["pending"]
        return pending

    async def stats(self) -> dict[str, Any]:
        """Requests by status, logins per project, faults, ticks."""
        stats: dict[str, Any] = await self._call("GET", "/stats")
        return stats
