"""The objects a syncing process runs on, built in one place for `sync`, `run` and `demo`:
engine → (schema checked) → HTTP session → authenticator → WorkspaceClient → Syncer, closed in
the reverse order whatever ends the block."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from app import auth, client, db, runs, sync
from app import settings as settings_module


@dataclass(frozen=True)
class Runtime:
    """The engine, the HTTP session, the authenticator, the API client and the Syncer of one
    process."""

    engine: AsyncEngine
    session: aiohttp.ClientSession
    authenticator: auth.Authenticator
    client: client.WorkspaceClient
    syncer: sync.Syncer


@contextlib.asynccontextmanager
async def open_runtime(
    settings: settings_module.Settings,
    *,
    ready: Callable[[AsyncEngine], Awaitable[bool]] | None = None,
    on_request: client.RequestHook | None = None,
    on_retry: client.RequestHook | None = None,
    on_wait: client.WaitHook | None = None,
    on_progress: runs.ProgressHook | None = None,
    on_finished: Callable[[runs.RunResult], None] | None = None,
) -> AsyncIterator[Runtime | None]:
    """The runtime of `settings`, closed on exit.

    Once the engine exists, and before anything talks to the API, `ready` runs (by default the
    schema check, which raises ConfigError): it may wait, as the daemon waits for the database,
    and answers False to give up, in which case the block gets None. The hooks go to the client
    (after every request and retry, before every wait) and to the Syncer (a run's progress, a
    finished run).
    """
    async with contextlib.AsyncExitStack() as stack:
        engine = await stack.enter_async_context(db.open_engine(settings))
        if ready is None:
            await db.check_schema(engine)
        elif not await ready(engine):
            yield None
            return
        session = await stack.enter_async_context(client.new_session(settings))
        authenticator = auth.build_authenticator(settings, session)
        stack.push_async_callback(authenticator.close)
        workspace = client.WorkspaceClient(
            session=session,
            settings=settings,
            authenticator=authenticator,
            on_request=on_request,
            on_retry=on_retry,
            on_wait=on_wait,
        )
        syncer = sync.Syncer(
            engine=engine,
            client=workspace,
            settings=settings,
            on_progress=on_progress,
            on_finished=on_finished,
        )
        yield Runtime(
            engine=engine,
            session=session,
            authenticator=authenticator,
            client=workspace,
            syncer=syncer,
        )
