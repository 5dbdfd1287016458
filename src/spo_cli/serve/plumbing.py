"""What every endpoint that makes images shares: the server's state, its settings, reading a body
within its limit, queueing a job and waiting for it (dropping it if the client leaves), and JSON
refusals. The routers (`serve/routes/`) hold only what is particular to their dialect.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from spo_cli.serve import api, uploads
from spo_cli.serve.metrics import Metrics
from spo_cli.serve.worker import QueueFull, ShuttingDown, Ticket, Worker

CLIENT_GONE = 499  # nginx's code for a client that closed the connection: nobody reads the answer
DRAIN_FACTOR = 4  # bodies up to this many times the limit are read to the end before the 413
# Bodies with images (api.EDIT_PATHS) read, parsed and decoded at once. Each holds its body (up to
# uploads.EDIT_BODY_BYTES) and its decoded copies: some 150 MB at worst. Without a bound, a client
# opening the server's 512 connections would make it hold tens of GB; the others wait, unread.
EDIT_READS_MAX = 4


@dataclass
class Settings:
    out: Path
    context: api.Context
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body: int = api.MAX_BODY_BYTES
    max_edit_body: int = uploads.EDIT_BODY_BYTES  # api.EDIT_PATHS: bodies that carry images
    poll_s: float = 0.25  # how often a waiting request checks that its client is still there
    allow_hosts: list[str] = field(default_factory=list)  # Host names served besides loopback (--allow-host)
    bound: str | None = None  # the address the socket is bound to (its Host is served too)
    api_auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs for HTTP Basic (--api-auth-file)
    access_log: bool = False  # one line per request on stderr (serve/guard.py access_line)


@dataclass
class State:
    """What the routes reach through `request.app.state.spo`."""

    worker: Worker
    settings: Settings
    metrics: Metrics
    started: int = field(default_factory=lambda: int(time.time()))  # OpenAI's `created` of the served models
    edit_reads: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(EDIT_READS_MAX))


def _state(request: Request) -> State:
    return request.app.state.spo


Spo = Annotated[State, Depends(_state)]  # a route's parameter: `spo: Spo`


def error(status: int, message: str, field: str | None = None, headers: dict | None = None,
          path: str = "") -> JSONResponse:
    return refuse(api.BadRequest(message, field, status), headers, path)


def refuse(e: api.BadRequest, headers: dict | None = None, path: str = "") -> JSONResponse:
    """`e` as the answer to a request for `path` (its dialect decides the body's shape)."""
    if headers is None and e.status in (429, 503):
        headers = {"Retry-After": "1"}
    return JSONResponse(e.body(path), status_code=e.status, headers=headers)


async def read_body(request: Request, limit: int):
    """The body's JSON, read in chunks and never past DRAIN_FACTOR × `limit` bytes."""
    return api.parse_json(await read_bytes(request, limit))


async def read_bytes(request: Request, limit: int) -> bytes:
    """The body, read in chunks and never past DRAIN_FACTOR × `limit` bytes."""
    too_big = api.BadRequest(f"The request body is over {limit:,} bytes.", None, 413)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > DRAIN_FACTOR * limit):
        raise too_big  # not even read: the client may see the connection close before the answer
    data, seen = bytearray(), 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen <= limit:
                data += chunk
            elif seen > DRAIN_FACTOR * limit:
                raise too_big
    except ClientDisconnect:
        raise api.BadRequest("The client closed the connection before its request was complete.", None,
                             CLIENT_GONE) from None
    # A body somewhat over the limit is read to its end (and dropped), so that the client, still
    # sending, gets the 413 rather than a reset connection.
    if seen > limit:
        raise too_big
    return bytes(data)


MAX_FORM_PARTS = 32  # an edit's form: an image, a mask and a dozen text fields


async def read_form(request: Request, limit: int) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart/form-data body, read whole within `limit` first (Starlette's parser would spool a
    file part of any size to disk), then parsed: (text fields, {name: [file bytes, …]})."""
    from starlette.datastructures import UploadFile

    data = await read_bytes(request, limit)
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS,
                                                          max_part_size=limit)
    except Exception as e:  # python-multipart's and Starlette's refusals of a malformed body
        raise api.BadRequest(f"The request body is not multipart/form-data spo can read ({type(e).__name__}: "
                             f"{str(getattr(e, 'detail', e))[:200]}).") from None
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(name, []).append(await value.read())
            elif name in fields:
                raise api.BadRequest(f"request: the field {api.validate.shown(name)} is given twice.", name)
            else:
                fields[name] = value
    finally:
        await form.close()
    return fields, files


def submit(spo: State, job: api.Job) -> tuple[Ticket, asyncio.Future]:
    """Queue `job`: its ticket, and a future set when its images are done."""
    worker = spo.worker
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def on_done():
        try:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
        except RuntimeError:  # the loop has closed: a call abandoned at shutdown, answered already
            pass

    try:
        return worker.submit(job, on_done), finished
    except QueueFull as e:
        raise api.BadRequest(f"The server is busy: {e}. Try again shortly.", None, 429) from None
    except ShuttingDown as e:
        raise api.BadRequest(f"The server cannot take work: {str(e).rstrip('.')}.", None,
                             500 if worker.load_error else 503) from None


async def wait(request: Request, spo: State, ticket: Ticket, finished: asyncio.Future) -> Ticket:
    """Wait for `ticket`'s images; a client that goes away has its queued images dropped."""
    worker = spo.worker
    while True:
        done, _ = await asyncio.wait({finished}, timeout=spo.settings.poll_s)
        if done:
            return ticket
        if await request.is_disconnected():
            worker.cancel(ticket)
            raise api.BadRequest("The client closed the connection; its queued images were dropped.", None,
                                 CLIENT_GONE)


async def take(request: Request, spo: State, parse, *, form: bool = False) -> tuple[object, Ticket] | JSONResponse:
    """Read the body, check it with `parse` (→ a job, or a job and more), queue it, wait for it; or the
    refusal. Bodies of api.EDIT_PATHS may be larger, and hold images: they are decoded and written in
    a thread, off the event loop. `form`: a multipart body, parsed as parse(fields, files, context)."""
    try:
        settings = spo.settings
        with uploads.provisional():  # a request refused before its job is queued leaves no upload behind
            if request.url.path in api.EDIT_PATHS:
                async with spo.edit_reads:
                    if form:
                        fields, files = await read_form(request, settings.max_edit_body)
                        parsed = await asyncio.to_thread(parse, fields, files, settings.context)
                    else:
                        parsed = await asyncio.to_thread(parse, await read_body(request, settings.max_edit_body),
                                                         settings.context)
            else:
                parsed = parse(await read_body(request, settings.max_body), settings.context)
            job = parsed[0] if isinstance(parsed, tuple) else parsed
            ticket, finished = submit(spo, job)
        return parsed, await wait(request, spo, ticket, finished)
    except api.BadRequest as e:
        return refuse(e, path=request.url.path)


def stopped(path: str = "") -> JSONResponse:
    return error(503, "The server stopped before these images were made.", headers={"Retry-After": "5"}, path=path)


def outcome(ticket: Ticket, path: str = "") -> JSONResponse | None:
    """The refusal owed when no image of `ticket` was made (the first image's reason); None otherwise."""
    if ticket.status == 503:
        return stopped(path)
    if all(img.error for img in ticket.images):
        first = ticket.images[0]
        return error(first.status, f"No image was made: {first.error}", first.field, path=path)
    return None
