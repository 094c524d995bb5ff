"""The simulator as the benchmark serves it: same application, tuned so it is never the bottleneck.

`python benchmarks/sim_server.py --projects P --snapshots N` builds the population, renders every
item's JSON once, and serves `app.simulator.server`'s application unchanged (API, auth, paging,
control API) with one difference: listings filtered by `desktop_id` alone (the deletion rule's
re-checks) are answered from an index instead of a scan of the whole project, which costs the
stock simulator about 19 ms per request at 50,000 snapshots a project. It never ticks. When it
listens it prints `READY <url>` on stdout; it stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import sys
import time
from collections.abc import Sequence

from app.simulator import model, query, server, state
from app.simulator import population as pop


class IndexedSelector(query.Selector):
    """query.Selector, with `desktop_id`-only filters looked up in a per-project index."""

    def __init__(self, population: pop.Population) -> None:
        super().__init__(population)
        self._population = population
        self._indexes: dict[tuple[str, str], tuple[int, dict[str, list[model.Snapshot]]]] = {}

    def _matching(self, project_id: str, wanted: query.SnapshotQuery) -> Sequence[model.Snapshot]:
        others = wanted.filter_key()[1:]
        if wanted.desktop_id is None or any(value is not None for value in others):
            return super()._matching(project_id, wanted)
        return self._index(project_id, wanted.sort_field).get(wanted.desktop_id, [])

    def _index(
        self, project_id: str, sort_field: model.SortField
    ) -> dict[str, list[model.Snapshot]]:
        version = self._population.version(project_id)
        cached = self._indexes.get((project_id, sort_field))
        if cached is not None and cached[0] == version:
            return cached[1]
        # Built from the sorted list, so each desktop's snapshots keep the listing order.
        index: dict[str, list[model.Snapshot]] = {}
        for snap in self._population.ordered(project_id, sort_field):
            index.setdefault(snap.desktop_id, []).append(snap)
        self._indexes[(project_id, sort_field)] = (version, index)
        return index


async def serve(options: state.SimulatorOptions) -> None:
    """Build, pre-render, listen, print READY, and serve until a signal."""
    began = time.monotonic()
    population = state.build_population(options)
    for project_id in population.project_ids:
        for snap in population.snapshots(project_id):
            snap.to_json()
    # A million long-lived objects: keep the collector from walking them on every cycle.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server.running(options, population=population) as sim:
        sim.state.selector = IndexedSelector(population)
        print(
            f"# built and rendered {population.total} snapshots in {time.monotonic() - began:.1f}s",
            file=sys.stderr,
            flush=True,
        )
        print(f"READY {sim.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--snapshots", type=int, default=50_000, help="per project")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--latency-per-item", type=float, default=0.0, help="seconds per item a page holds"
    )
    args = parser.parse_args(argv)
    options = state.SimulatorOptions(
        host=args.host,
        port=args.port,
        projects=args.projects,
        snapshots=args.snapshots,
        seed=args.seed,
        tick_seconds=0,
        latency=args.latency,
        latency_per_item=args.latency_per_item,
    )
    asyncio.run(serve(options))


if __name__ == "__main__":
    main()
