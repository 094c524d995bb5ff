"""The simulator of the previous demo, saved so that the next one resumes instead of rewinding."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger("app.demo")

FILENAME = "demo-simulator.json"
MAX_RESUME_TICKS = 20_000


@dataclass(frozen=True)
class SavedSimulation:
    """What a demo remembers of its simulator: the population and how far it evolved."""

    seed: int
    projects: int
    snapshots: int
    change_rate: float
    start_time: datetime
    ticks: int

    def matches(self, other: SavedSimulation) -> bool:
        """Same population (ticks and start aside)."""
        return (self.seed, self.projects, self.snapshots, self.change_rate) == (
            other.seed,
            other.projects,
            other.snapshots,
            other.change_rate,
        )

    @classmethod
    def load(cls, path: Path) -> SavedSimulation | None:
        """The saved state, or None when there is none or it is unreadable."""
        try:
            raw = json.loads(path.read_text())
            start_time = datetime.fromisoformat(raw["start_time"])
            if start_time.tzinfo is None:
                raise ValueError("start_time has no time zone")
            return cls(
                seed=int(raw["seed"]),
                projects=int(raw["projects"]),
                snapshots=int(raw["snapshots"]),
                change_rate=float(raw["change_rate"]),
                start_time=start_time,
                ticks=max(0, int(raw["ticks"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None

    def save(self, path: Path, ticks: int) -> None:
        """Save this simulation as evolved to `ticks`; a failure is only worth a warning."""
        state = {**asdict(self), "start_time": self.start_time.isoformat(), "ticks": ticks}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            pending = path.with_name(path.name + ".tmp")
            pending.write_text(json.dumps(state, indent=2))
            pending.replace(path)
        except OSError as exc:
            log.warning("could not save the simulator's state in %s: %s", path, exc)


def resume_state(wanted: SavedSimulation, saved: SavedSimulation | None) -> SavedSimulation:
    """The saved state when it describes the same population, else `wanted` (a fresh start).

    Replaying takes about half a second per thousand ticks; past MAX_RESUME_TICKS (hours of
    demos) a fresh start is quicker, at the cost of one demo that sees the population rewind.
    """
    if saved is not None and saved.matches(wanted) and saved.ticks <= MAX_RESUME_TICKS:
        return saved
    return wanted
