"""`snapsync simulate`: serve a simulated Workspace API (and IAM) on this machine."""

from __future__ import annotations

import asyncio
import logging

import click

from app.simulator import auth, faults, server, state
from app.simulator import population as pop

_FRACTION = click.FloatRange(0.0, 1.0)


def _regions(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    regions = tuple(part.strip() for part in value.split(",") if part.strip())
    bad = [region for region in regions if not pop.REGION_NAME.fullmatch(region)]
    if not regions or bad:
        raise click.BadParameter(
            f"{', '.join(bad) or 'nothing'}: expected comma-separated region names "
            "such as cn-north-4"
        )
    return regions


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option("--projects", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--snapshots",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Snapshots per project.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same data.")
@click.option(
    "--regions",
    default=",".join(pop.DEFAULT_REGIONS),
    show_default=True,
    callback=_regions,
    help="Regions the projects are spread over, round-robin; IAM names each project after "
    "its region (a second one in a region is a sub-project, REGION_subN).",
)
@click.option(
    "--tick-seconds",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Wall seconds between evolution steps (0: never evolve on its own).",
)
@click.option(
    "--change-rate",
    type=_FRACTION,
    default=0.002,
    show_default=True,
    help="Fraction of all snapshots created, restored or deleted per tick.",
)
@click.option(
    "--unstable-ties",
    is_flag=True,
    help="Shuffle snapshots with equal sort keys on every request, as the real API may.",
)
@click.option(
    "--legacy-filters",
    is_flag=True,
    help="Answer 400 to the list filters desktop_ids, desktop_names and snapshot_names, as an "
    "older API version does.",
)
@click.option(
    "--auth-token",
    default=auth.DEFAULT_AUTH_TOKEN,
    show_default=True,
    help="Static X-Auth-Token accepted ('' disables).",
)
@click.option("--access-key", default=auth.DEFAULT_ACCESS_KEY, show_default=True)
@click.option(
    "--secret-key",
    default=auth.DEFAULT_SECRET_KEY,
    show_default=True,
    help="AK/SK pair accepted for SDK-HMAC-SHA256 signatures ('' disables).",
)
@click.option("--iam-user", default=auth.DEFAULT_IAM_USER, show_default=True)
@click.option("--iam-password", default=auth.DEFAULT_IAM_PASSWORD, show_default=True)
@click.option(
    "--iam-domain",
    default=auth.DEFAULT_IAM_DOMAIN,
    show_default=True,
    help="Credentials POST /v3/auth/tokens accepts ('' disables IAM).",
)
@click.option(
    "--token-ttl",
    type=click.FloatRange(min=1.0),
    default=86_400.0,
    show_default=True,
    help="Lifetime of IAM tokens in seconds.",
)
@click.option("--fault-429", type=_FRACTION, default=0.0, help="Fraction answered 429.")
@click.option("--fault-500", type=_FRACTION, default=0.0, help="Fraction answered 500.")
@click.option(
    "--fault-502-html", type=_FRACTION, default=0.0, help="Fraction answered 502 with HTML."
)
@click.option(
    "--latency",
    type=click.FloatRange(0.0, 600.0),
    default=0.0,
    help="Seconds added to every API request.",
)
@click.option(
    "--latency-per-item",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    help="Seconds added per item of a page (a page of 1000 at 0.00025: 0.25 s more).",
)
@click.option(
    "--forbidden-projects",
    type=click.IntRange(min=0),
    default=0,
    help="The first K projects answer 403.",
)
def simulate(
    *,
    host: str,
    port: int,
    projects: int,
    snapshots: int,
    seed: int,
    regions: tuple[str, ...],
    tick_seconds: float,
    change_rate: float,
    unstable_ties: bool,
    legacy_filters: bool,
    auth_token: str,
    access_key: str,
    secret_key: str,
    iam_user: str,
    iam_password: str,
    iam_domain: str,
    token_ttl: float,
    fault_429: float,
    fault_500: float,
    fault_502_html: float,
    latency: float,
    latency_per_item: float,
    forbidden_projects: int,
) -> None:
    """Serve a simulated Workspace snapshots API (and IAM token endpoint) whose snapshots
    change over time. Prints the settings snapsync needs; stops cleanly on SIGINT/SIGTERM."""
    options = state.SimulatorOptions(
        host=host,
        port=port,
        projects=projects,
        snapshots=snapshots,
        seed=seed,
        regions=regions,
        tick_seconds=tick_seconds,
        change_rate=change_rate,
        unstable_ties=unstable_ties,
        legacy_filters=legacy_filters,
        auth_token=auth_token,
        access_key=access_key,
        secret_key=secret_key,
        iam_user=iam_user,
        iam_password=iam_password,
        iam_domain=iam_domain,
        token_ttl=token_ttl,
        fault_429=fault_429,
        fault_500=fault_500,
        fault_502_html=fault_502_html,
        latency=latency,
        latency_per_item=latency_per_item,
        forbidden_projects=forbidden_projects,
    )
    try:
        options.initial_faults()
    except faults.FaultError as exc:
        raise click.UsageError(str(exc)) from None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(server.serve(options))
    except KeyboardInterrupt:
        pass  # a second Ctrl-C while stopping: still a clean, requested stop
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from None
