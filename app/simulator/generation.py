"""How the simulated snapshots are made up: desktops, the history a project starts with, new
snapshots and their names, the random choices of what to change. Deterministic by the random
generator handed in.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence

from app.simulator.model import (
    IN_FLIGHT,
    TIME_KEY,
    Desktop,
    ProjectSnapshots,
    Snapshot,
    format_time,
    project_id_for,
)

SNAPSHOTS_PER_DESKTOP = 5
HISTORY_DAYS = 28
MAX_BATCH = 100
_DAY = 86_400
# Hours (UTC) at which the scheduled snapshot policies of a project fire.
_SCHEDULE_HOURS = (1, 2, 3, 12, 18, 22)

_DESKTOP_PREFIXES = ("xzx", "dev", "ops", "fin", "hr", "lab", "AA", "sales", "qa")
# A few names outside ASCII, as real tenants have, so clients meet them in tests.
_UNICODE_PREFIXES = ("研发-", "财务-")
_DESCRIPTIONS_AUTO = ("", "Description.", "Created by the scheduled snapshot policy.")
_DESCRIPTIONS_MANUAL = ("", "Description.", "before patch", "manual backup", "升级前备份")
RESTORE_FAIL_REASONS = (
    "The desktop is not in the stopped state.",
    "Insufficient EVS disk quota.",
    "The snapshot is being used by another task.",
    "Internal error. Contact technical support.",
    "还原失败：磁盘状态异常。",  # noqa: RUF001 - real Chinese punctuation, on purpose
)

CREATE_FAIL_RATE = 0.07
RESTORE_FAIL_RATE = 0.12


def _uuid4(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def _stochastic_round(rng: random.Random, value: float) -> int:
    # Rounds 0.3 up three times in ten, so small populations still get their share on average.
    return int(value + rng.random())


def batch_cap(snapshots_per_project: int) -> int:
    """The largest scheduled batch in a population of this size."""
    # A batch of 100 in a project of 50 would swamp it; scale batches to the population.
    return max(1, min(MAX_BATCH, snapshots_per_project // 10))


def build_project(
    seed: int,
    index: int,
    size: int,
    start: float,
    start_task: Callable[[ProjectSnapshots, Snapshot, int, bool], None],
) -> ProjectSnapshots:
    """The `index`-th project of a seed with `size` settled and in-flight snapshots, as at
    `start`; `start_task` is told of each creation or restoration running then."""
    # One generator per project: a project's snapshots do not depend on how many exist.
    rng = random.Random(f"{seed}:project:{index}")
    desktops = _make_desktops(rng, max(1, math.ceil(size / SNAPSHOTS_PER_DESKTOP)))
    project = ProjectSnapshots(project_id_for(seed, index), index, desktops)
    creating = min(size, _stochastic_round(rng, size * 0.002))
    items: list[Snapshot] = []
    cap = batch_cap(size)
    auto = 0
    while len(items) < size - creating:
        remaining = size - creating - len(items)
        # About 70% of a tenant's snapshots come from scheduled policies.
        scheduled = cap > 1 and auto <= 0.7 * len(items)
        event = _history_event(rng, desktops, start, min(remaining, cap), scheduled=scheduled)
        auto += len(event) if scheduled else 0
        items.extend(event)
    for _ in range(creating):
        desktop = rng.choice(desktops)
        epoch = start - rng.randint(1, 900)
        snap = new_snapshot(
            rng,
            desktop,
            is_system=rng.random() < 0.7,
            epoch=epoch,
            create_type="MANUALLY",
            name=None,
            status="creating",
        )
        snap.process = rng.randint(0, 90)
        total = rng.randint(5, 60)
        left = max(1, round(total * (100 - snap.process) / 100))
        items.append(snap)
        start_task(project, snap, total, rng.random() < CREATE_FAIL_RATE)
        snap.task_left = left
    items.sort(key=TIME_KEY)
    for _ in range(_stochastic_round(rng, size * 0.001)):
        chosen = pick_settled(rng, items, oldest=False)
        if chosen is not None and chosen.status != "create_failed":
            chosen.status = "restoring"
            chosen.process = rng.randint(0, 90)
            total = rng.randint(3, 30)
            start_task(project, chosen, total, rng.random() < RESTORE_FAIL_RATE)
            chosen.task_left = max(1, round(total * (100 - chosen.process) / 100))
    project.by_time = items
    project.by_id = {snap.snapshot_id: snap for snap in items}
    return project


def make_desktop(rng: random.Random, number: int) -> Desktop:
    prefixes = _UNICODE_PREFIXES if rng.random() < 0.02 else _DESKTOP_PREFIXES
    return Desktop(
        desktop_id=_uuid4(rng),
        desktop_name=f"{rng.choice(prefixes)}{number:04d}",
        desktop_sid=_uuid4(rng),
        desktop_pool_id=None,
        has_data_disk=rng.random() < 0.6,
    )


def _make_desktops(rng: random.Random, count: int) -> list[Desktop]:
    pools = [_uuid4(rng) for _ in range(max(1, count // 40))]
    desktops = []
    for number in range(count):
        desktop = make_desktop(rng, number)
        # Pooled desktops report their pool; personal desktops have none (field omitted).
        if rng.random() < 0.5:
            desktop = Desktop(
                desktop_id=desktop.desktop_id,
                desktop_name=desktop.desktop_name,
                desktop_sid=desktop.desktop_sid,
                desktop_pool_id=rng.choice(pools),
                has_data_disk=desktop.has_data_disk,
            )
        desktops.append(desktop)
    return desktops


def batch_disks(
    rng: random.Random, desktops: Sequence[Desktop], size: int
) -> list[tuple[Desktop, bool]]:
    """Up to `size` (desktop, is_system_disk) pairs of a scheduled batch, distinct desktops."""
    chosen = rng.sample(desktops, min(len(desktops), size))
    pairs: list[tuple[Desktop, bool]] = []
    for desktop in chosen:
        pairs.append((desktop, True))
        if desktop.has_data_disk:
            pairs.append((desktop, False))
        if len(pairs) >= size:
            break
    return pairs[:size]


def event_names(
    rng: random.Random, pairs: Iterable[tuple[Desktop, bool]], epoch: float, create_type: str
) -> dict[str, str]:
    """One record name per desktop of an event: its disks' snapshots share it, as in Workspace."""
    names: dict[str, str] = {}
    disks: dict[str, set[bool]] = {}
    for desktop, is_system in pairs:
        disks.setdefault(desktop.desktop_id, set()).add(is_system)
    for desktop, _ in pairs:
        if desktop.desktop_id in names:
            continue
        millis = int(epoch) * 1000 + rng.randrange(1000)
        if create_type == "AUTO":
            names[desktop.desktop_id] = f"AUTOCREATED_{desktop.desktop_name}_{millis}"
        else:
            kinds = disks[desktop.desktop_id]
            prefix = "snap" if len(kinds) == 2 else ("sys" if True in kinds else "data")
            day = time.strftime("%m%d", time.gmtime(epoch))
            names[desktop.desktop_id] = f"{prefix}{day}_{desktop.desktop_name}_{millis}"
    return names


def new_snapshot(
    rng: random.Random,
    desktop: Desktop,
    *,
    is_system: bool,
    epoch: float,
    create_type: str,
    name: str | None,
    status: str,
) -> Snapshot:
    if name is None:
        name = event_names(rng, [(desktop, is_system)], epoch, create_type)[desktop.desktop_id]
    descriptions = _DESCRIPTIONS_AUTO if create_type == "AUTO" else _DESCRIPTIONS_MANUAL
    return Snapshot(
        snapshot_id=_uuid4(rng),
        snapshot_name=name,
        desktop_id=desktop.desktop_id,
        desktop_name=desktop.desktop_name,
        desktop_sid=desktop.desktop_sid,
        desktop_pool_id=desktop.desktop_pool_id,
        is_system_disk=is_system,
        status=status,
        process=None,
        description=rng.choice(descriptions),
        create_time=format_time(epoch),
        create_type=create_type,
    )


def _history_event(
    rng: random.Random, desktops: Sequence[Desktop], start: float, cap: int, *, scheduled: bool
) -> list[Snapshot]:
    """Settled snapshots of one past event: a scheduled batch (one second) or a manual one."""
    if scheduled:
        create_type = "AUTO"
        day = math.floor(start / _DAY) - rng.randint(1, HISTORY_DAYS)
        epoch = float(day * _DAY + rng.choice(_SCHEDULE_HOURS) * 3600 + rng.randrange(3600))
        pairs = batch_disks(rng, desktops, rng.randint(1, cap))
    else:
        create_type = "MANUALLY"
        epoch = float(int(start - rng.uniform(600, HISTORY_DAYS * _DAY)))
        desktop = rng.choice(desktops)
        pairs = [(desktop, rng.random() < 0.7)]
        if cap > 1 and desktop.has_data_disk and rng.random() < 0.25:
            pairs = [(desktop, True), (desktop, False)]
    names = event_names(rng, pairs, epoch, create_type)
    items = []
    for desktop, is_system in pairs:
        snap = new_snapshot(
            rng,
            desktop,
            is_system=is_system,
            epoch=epoch,
            create_type=create_type,
            name=names[desktop.desktop_id],
            status="create_success",
        )
        _settle(rng, snap, epoch, start)
        items.append(snap)
    return items


def _settle(rng: random.Random, snap: Snapshot, created: float, start: float) -> None:
    """Give a past snapshot the status its history would have left."""
    roll = rng.random()
    if roll < 0.86:
        return
    if roll < 0.90:
        snap.status = "create_failed"
        return
    restored = format_time(rng.uniform(created + 60, max(created + 61, start - 1)))
    if roll < 0.97:
        snap.status = "restore_success"
        snap.last_restore_time = restored
    else:
        snap.status = "restore_failed"
        snap.restore_fail_reason = rng.choice(RESTORE_FAIL_REASONS)
        if rng.random() < 0.3:
            snap.last_restore_time = restored


def pick_settled(rng: random.Random, items: Sequence[Snapshot], *, oldest: bool) -> Snapshot | None:
    """A random snapshot with no task, not pinned; among the oldest 5% when `oldest`."""
    if not items:
        return None
    span = max(1, len(items) // 20) if oldest else len(items)
    for _ in range(6):
        snap = items[rng.randrange(span)]
        if not snap.pinned and not snap.in_task and snap.status not in IN_FLIGHT:
            return snap
    return None
