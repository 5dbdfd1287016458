from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from spo_cli import extras, presets, validate
from spo_cli.cli import app, loading, options as opts
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape
from spo_cli.errors import UsageError

EXAMPLES = """[bold]Examples[/]

  spo serve                                   # http://127.0.0.1:7860, the model loaded once

  spo serve --models spo,base                 # both, for the page's compare toggle

  spo serve --host 0.0.0.0 --port 8000 --token-file ~/.spo-token --allow-host gpu-box   # a GPU box for a team

  spo serve --devices all                     # a worker per visible GPU, one queue, one port (cuda:0,cuda:1 …)

  curl -s localhost:7860/v1/images/generations -H 'Content-Type: application/json' \\
       -d '{"prompt":"a red fox","n":2,"size":"1024x1024"}'

  curl -s localhost:7860/sdapi/v1/txt2img -H 'Content-Type: application/json' \\
       -d '{"prompt":"a red fox","steps":30,"cfg_scale":5,"seed":42}'

[bold]Endpoints[/]: / (the page), /v1/images/generations, /v1/models (OpenAI), /sdapi/v1/txt2img, sd-models,
samplers, schedulers, loras, upscalers, options, progress, interrupt (AUTOMATIC1111), /health, /metrics
(Prometheus), /outputs/<file>, and /openapi.json and /docs (every endpoint and body; no token needed).
Bodies are JSON sent as 'Content-Type: application/json'; pages of other sites and Host names other than
loopback, --host and --allow-host are refused (see the README's Server section).
Ctrl-C (or SIGTERM) stops taking requests, finishes the call in flight and answers queued requests with
503; a second Ctrl-C abandons the call in flight, answers its requests 503 and exits 130.
One line per request on stderr (client, method, path, status, seconds; never the query, token or
prompt); --quiet turns it off.
"""
JSON_HELP = "Print one JSON line on stdout once listening (url, models, out, devices), nothing else."

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}
CONNECTIONS_MAX = 512
HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?")
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")  # scheme://host[:port]


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: str | None) -> str | None:
    """The token from --token-file, else SPO_TOKEN; None when neither is given."""
    hint = "Write the token on the file's first line: e.g. `openssl rand -hex 24 > ~/.spo-token`."
    if token_file is not None:
        token, where = _small_file(token_file, "--token-file", hint, "a token"), f"--token-file {token_file}"
    else:
        token, where = os.environ.get("SPO_TOKEN", "").strip(), "SPO_TOKEN"
        if not token:
            return None
    # Printable ASCII: HTTP clients encode a header as they please beyond it (curl sends UTF-8, browsers
    # Latin-1), so any other character would work for some clients and not others.
    if len(token) < validate.TOKEN_MIN_CHARS or not all("!" <= c <= "~" for c in token):
        raise UsageError(f"The server token ({where}) must be at least {validate.TOKEN_MIN_CHARS} printable "
                         "ASCII characters (letters, digits, punctuation) with no spaces.",
                         "E.g. `openssl rand -hex 24 > ~/.spo-token`.")
    return token


def read_api_auth(auth_file: str | None) -> tuple[tuple[str, str], ...]:
    """A1111's --api-auth credentials, `user:password[,user2:password2]` (commas or lines), from
    --api-auth-file, else SPO_API_AUTH; read from a file, not the command line, where any user of the
    machine could read them. Each password is held to the token's rules: it opens the same doors."""
    hint = ("Write user:password pairs, comma- or line-separated: e.g. "
            "`echo \"me:$(openssl rand -hex 12)\" > ~/.spo-auth`.")
    if auth_file is not None:
        text, where = (_small_file(auth_file, "--api-auth-file", hint, "a list of credentials"),
                       f"--api-auth-file {auth_file}")
    else:
        text, where = os.environ.get("SPO_API_AUTH", ""), "SPO_API_AUTH"
    entries = [e.strip() for e in text.replace("\n", ",").split(",") if e.strip()]
    if not entries:
        if auth_file is None:
            return ()
        raise UsageError(f"{where} holds no user:password pair.", hint)
    pairs: dict[str, str] = {}
    for n, entry in enumerate(entries, 1):
        user, colon, password = entry.partition(":")
        if not colon or not user or not all("!" <= c <= "~" for c in user):
            raise UsageError(f"{where}: entry {n} is not user:password (a user name of printable ASCII, a colon, "
                             "then the password).", hint)
        if user in pairs:
            raise UsageError(f"{where}: the user {user!r} is given twice.", hint)
        if len(password) < validate.TOKEN_MIN_CHARS or not all("!" <= c <= "~" for c in password):
            # Not echoed: the message may end up in a log.
            raise UsageError(f"{where}: the password of {user!r} must be at least {validate.TOKEN_MIN_CHARS} "
                             "printable ASCII characters (letters, digits, punctuation) with no spaces or commas.",
                             hint)
        pairs[user] = password
    return tuple(pairs.items())


def _small_file(name: str, option: str, hint: str, what: str) -> str:
    """A secret's file (--token-file, --api-auth-file): Latin-1, stripped. Non-blocking, bounded, with a
    deadline: a pipe (`--token-file <(pass spo)`) is fine, a FIFO nobody writes reads as empty, and
    /dev/zero is a device, refused before a byte is read."""
    from spo_cli.outputs import reader

    try:
        with reader.Source(Path(os.path.expanduser(name)), hint) as src:
            data = src.read(validate.TOKEN_FILE_MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{option} {name} cannot be read ({e.strerror or type(e).__name__}).", hint) from None
    if len(data) > validate.TOKEN_FILE_MAX_BYTES:
        raise UsageError(f"{option} {name} holds more than {validate.TOKEN_FILE_MAX_BYTES:,} bytes, so it is not "
                         f"{what}.", hint)
    return data.decode("latin-1").strip()


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def serve(
    ui: UI,
    host: Annotated[str, typer.Option(
        help="Address to listen on. Anything but loopback needs a token (or --api-auth-file).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 7860,
    token_file: Annotated[Optional[str], typer.Option(
        help="File holding the token clients send as 'Authorization: Bearer …' (or set SPO_TOKEN).",
        show_default=False)] = None,
    api_auth_file: Annotated[Optional[str], typer.Option(
        help="File holding A1111's --api-auth credentials, user:password[,user2:password2] (or set SPO_API_AUTH): "
        "clients may send HTTP Basic auth (webuiapi's username/password) instead of the token.",
        show_default=False)] = None,
    models: Annotated[str, typer.Option(
        help=f"Models to load, comma-separated: presets ({', '.join(presets.PRESETS)}), Hub repos or folders. "
        "The first is the default; requests pick another by name.")] = presets.DEFAULT_PRESET,
    out: opts.Out = "outputs",
    no_save: Annotated[bool, typer.Option("--no-save", help="Keep images only in the responses; write no files.")] = False,
    no_provenance: opts.NoProvenance = False,
    max_queue: Annotated[int, typer.Option(help="Images that may wait for the GPU; more get 429 with Retry-After.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Most images per pipeline call, gathered across requests of the "
                                            "same shape (same pixels as alone).")] = 1,
    batch_wait_ms: Annotated[int, typer.Option(help="How long the GPU waits for requests to batch with.")] = 20,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        help="Allow a browser page from this origin to call the API (repeatable). Default: none.",
        show_default=False)] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        help="Also answer requests that name this server so in their Host header (repeatable): a name on "
        "your network or a proxy's. Default: loopback and the --host address only, against DNS rebinding.",
        show_default=False)] = None,
    no_size_limit: opts.NoSizeLimit = False,
    vae: opts.Vae = None,
    device: opts.Device = "auto",
    devices: Annotated[Optional[str], typer.Option(
        help="A worker per device, each with its own copy of the models, fed from the one queue: all (every "
        "visible GPU), or a list such as cuda:0,cuda:1, or cpu,cpu (two CPU workers). /health and /metrics "
        "list each device. Instead of --device.", rich_help_panel=opts.MODEL_PANEL, show_default=False)] = None,
    dtype: opts.Dtype = "auto",
    quantize: opts.Quantize = None,
    fast: opts.Fast = False,
    offload: opts.Offload = None,
    sign: opts.Sign = False,
    sign_key: opts.SignKey = None,
    sign_cert: opts.SignCert = None,
    watermark: Annotated[bool, typer.Option(
        "--watermark", help="Mark every image this server makes with SDXL's invisible watermark, whichever API asks "
        "(A1111's has no field for it); without it, spo's and OpenAI's APIs mark an image whose request says "
        "\"watermark\": true. Needs spo-cli\\[watermark].", show_default=False)] = False,
) -> None:
    """Keep SPO-SDXL loaded and serve it over HTTP: OpenAI- and A1111-compatible APIs, and a page."""
    extras.require("serve", "spo serve", "fastapi", "uvicorn", "prometheus_client", "python_multipart")
    if watermark:
        from spo_cli import watermark as marks

        marks.require("spo serve --watermark")
    validate.integer(port, "port", low=0, high=validate.PORT_MAX)
    validate.integer(max_queue, "max_queue", low=1, high=validate.NUM_IMAGES_MAX)
    validate.integer(batch_wait_ms, "batch_wait_ms", low=0, high=validate.BATCH_WAIT_MS_MAX)
    workers = None
    if devices is not None:
        from spo_cli import devices as machine_devices

        if device != "auto":
            raise UsageError(f"--device {device} and --devices {devices} both say where to run.",
                             "Give one: --devices for a worker per device, --device for one.")
        workers = machine_devices.serve_devices(devices, machine_devices.installed())
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise UsageError(f"--host {host} is not an address of this machine.", "E.g. 127.0.0.1 or 0.0.0.0.") from None
    token = read_token(token_file)
    api_auth = read_api_auth(api_auth_file)
    if not is_loopback(host) and token is None and not api_auth:
        raise UsageError(f"--host {host} would let anyone on the network use this GPU and read its outputs.",
                         "Give a token with --token-file FILE or SPO_TOKEN (clients send 'Authorization: Bearer "
                         "<token>') or user names and passwords with --api-auth-file FILE, or keep the default "
                         "--host 127.0.0.1.")
    labels = [m.strip() for m in models.split(",") if m.strip()]
    if not labels or len(set(labels)) != len(labels):
        raise UsageError(f"--models {models!r} must name each model once.", "E.g. --models spo,base.")
    for origin in cors_origin or []:
        if origin != "*" and not ORIGIN.fullmatch(origin):
            raise UsageError(f"--cors-origin {origin!r} is not an origin such as https://example.org.")
    for name in allow_host or []:
        if not HOST_NAME.fullmatch(name):
            raise UsageError(f"--allow-host {name!r} is not a host name such as gpu-box.lan (no scheme, port "
                             "or path; addresses of this machine need none).")
    server = build(ui, labels, host=host, port=port, token=token, out=out, save=not no_save, max_queue=max_queue,
                   batch_size=batch_size, batch_wait_ms=batch_wait_ms, cors_origins=list(cors_origin or []),
                   allow_hosts=list(allow_host or []), size_limit=not no_size_limit, vae=vae, device=device,
                   devices=workers, dtype=dtype, quantize=quantize, fast=fast, offload=offload, api_auth=api_auth,
                   access_log=not ui.quiet, provenance=not no_provenance, signer=opts.signer(sign, sign_key, sign_cert),
                   watermark=watermark)
    if ui.json_mode:
        ui.emit_json({"url": server.url, "models": labels, "out": str(server.settings.out) if not no_save else None,
                      "devices": [lane.name for lane in server.worker.lanes]}, one_line=True)
    else:
        ui.info(f"Serving on {escape(server.url)} (the page is at /; /health says when the model is loaded). "
                "Ctrl-C stops.")
        if not ui.quiet:
            typer.echo(server.url)
    server.worker.start()
    run_server(server, debug=ui.debug)


@dataclass
class Server:
    app: object
    worker: object
    settings: object
    sock: socket.socket
    url: str


def build(ui: UI, labels: list[str], *, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
          out: str = "outputs", save: bool = True, max_queue: int = 64, batch_size: int = 1, batch_wait_ms: int = 20,
          cors_origins: list[str] = (), allow_hosts: list[str] = (), size_limit: bool = True, vae: str | None = None,
          device: str = "auto", devices: list[str] | None = None, dtype: str = "auto", fast: bool = False,
          offload: str | None = None, api_auth: tuple[tuple[str, str], ...] = (), quantize: str | None = None,
          access_log: bool = False, provenance: bool = True, signer=None, watermark: bool = False) -> Server:
    """Everything but running: checked requests, the output folder, the bound socket, the worker (not
    started: each device loads the models in its own thread) and the app. `devices`: --devices, checked
    (devices.serve_devices); None: the one --device."""
    import threading

    devices = list(devices) if devices else [device]
    options = opts.run_options(fast=fast, offload=offload, vae_tiling=False, vae_slicing=False, batch_size=batch_size)
    plans: list[list] = []  # per device, its model requests (the same models, on that device)
    for d in devices:
        requests = []
        for label in labels:
            request, warnings = opts.model_request(model=label, vae=vae, dtype=dtype, device="auto" if d == "all" else d,
                                                   quantize=quantize)
            requests.append(request)
            for w in warnings if d is devices[0] else ():
                ui.warn(w)
        plans.append(requests)
    for request in plans[0]:
        loading.precheck(request, options)
    if plans[0][0].quantize:
        # Whether this machine's GPU has float8 tensor cores is torch's to say: asked before the port is
        # bound, so that a machine without one is refused as `spo generate` refuses it, not after
        # "Serving on ..." (each device's load checks its own GPU again).
        from spo_cli import engine
        from spo_cli import quantize as fp8

        for requests in plans:
            picked, _ = engine.pick_device(requests[0].device)
            fp8.check_machine(requests[0].quantize, picked, engine.pick_dtype(picked, requests[0].dtype)[0])
    folder = validate.output_folder(out) if save else Path(out)
    sock = listen(host, port)
    if any(d == "all" or d.startswith("cuda:") for d in devices):
        # How many GPUs there are is torch's to say: `all` becomes them, and cuda:7 on a machine of two
        # is refused now rather than left to fail as a degraded device.
        from spo_cli import devices as machine_devices
        from spo_cli import engine

        try:
            devices = machine_devices.count_all(devices, engine.machine())
        except BaseException:
            sock.close()
            raise
        plans = [[opts.model_request(model=label, vae=vae, dtype=dtype, device=d, quantize=quantize)[0]
                  for label in labels]
                 for d in devices]

    from spo_cli.serve import api
    from spo_cli.serve.app import Settings, create_app
    from spo_cli.serve.worker import Worker, lane_names

    names = lane_names(devices)
    several = len(devices) > 1
    # diffusers and transformers patch torch.nn process-wide while they build a model (accelerate's
    # init_empty_weights), so two devices loading at once could corrupt each other's weights: the
    # devices load one after another, and a model's files are found once for them all.
    loading_lock = threading.Lock()
    found: dict = {}

    def loader(name: str, requests: list):
        def load() -> dict:
            try:
                runtime = loading.start_torch(ui, requests[0], options)
                if runtime.device.startswith("cuda:"):
                    import torch  # imported by start_torch; as distributed.init does for a rank's GPU

                    # This thread's current GPU (CUDA keeps one per thread): a request's
                    # --generator-device cuda draws its noise there, and CUDA graphs (--fast) and the
                    # caching allocator follow it, rather than cuda:0 for every device.
                    torch.cuda.set_device(torch.device(runtime.device))
                loaded = {}
                for label, request in zip(labels, requests):
                    with loading_lock:
                        if (label, runtime.dtype) not in found:
                            found[label, runtime.dtype] = loading.find_model(ui, request, runtime.dtype)
                        resolved = found[label, runtime.dtype]
                        loaded[label] = (loading.load(ui, runtime, resolved, options), resolved)
            except Exception as e:
                if several and any(lane.state != "failed" for lane in worker.lanes if lane.name != name):
                    # the others may serve: say which device is left out, and why (when none is left,
                    # the server's own error says it)
                    from spo_cli.errors import SpoError

                    why = e.paragraph() if isinstance(e, SpoError) else f"{type(e).__name__}: {e}"
                    ui.warn(f"{name} failed to load its models and is left out; the other devices go on: "
                            f"{escape(why)}")
                raise
            ui.info(f"[green]✓[/] Ready: {', '.join(labels)} on {runtime.device} ({runtime.dtype})"
                    + (f" as {name}" if several and name != runtime.device else ""))
            return loaded

        return load

    worker = Worker({name: loader(name, requests) for name, requests in zip(names, plans)}, folder,
                    batch_size=batch_size, batch_wait_s=batch_wait_ms * 1e-3, max_queue=max_queue,
                    debug=ui.debug, provenance=provenance, signer=signer)
    from spo_cli.serve import uploads

    context = api.Context(tuple(labels), size_limit=size_limit, max_images=max_queue, save=save, watermark=watermark,
                          uploads=uploads.folder(folder, save))
    bound_host, bound_port = sock.getsockname()[:2]
    settings = Settings(folder, context, token, list(cors_origins), allow_hosts=list(allow_hosts), bound=bound_host,
                        api_auth=tuple(api_auth), access_log=access_log)
    url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
    return Server(create_app(worker, settings), worker, settings, sock, url)


def listen(host: str, port: int) -> socket.socket:
    """Bind before anything loads, so a port in use is said at once (and --port 0 learns its port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise UsageError(f"--host {host} is not an address of this machine.", "E.g. 127.0.0.1 or 0.0.0.0.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port}: {e.strerror or e}.",
                         "Pick another --port (0 takes any free one), or stop what is using it.") from None
    sock.listen(128)
    return sock


ANSWER_GRACE_S = 5.0  # after a second Ctrl-C, how long the requests in progress get to send their answers
STOP_WAIT_S = 5.0  # after the server stops, how long the worker thread gets to end


def run_server(server: Server, *, debug: bool = False) -> None:
    import asyncio

    import uvicorn

    worker = server.worker

    class Uvicorn(uvicorn.Server):
        signalled = False

        def handle_exit(self, sig, frame):
            # First signal: no new work, queued requests answered 503, the call in flight finishes.
            # Second: the call in flight is abandoned too, its requests answered 503 at once.
            (worker.abandon if self.should_exit else worker.drain)()
            self.signalled = True
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None):
            await super().shutdown(sockets)
            # A second Ctrl-C makes uvicorn stop waiting for the requests in progress, and asyncio.run
            # would then cancel them: a plain-text 500 to clients that `abandon` has just answered 503.
            # Their answers are let out first (a request still sending its body waits no longer).
            if self.force_exit and self.server_state.tasks:
                await asyncio.wait(list(self.server_state.tasks), timeout=ANSWER_GRACE_S)

        async def on_tick(self, counter: int) -> bool:
            # uvicorn asks this every 0.1 s whether to stop. The worker's own state is read here, so a
            # model that fails to load at any moment (before uvicorn starts or after) ends the server:
            # a callback set once the worker is running would miss a failure that came first.
            return await super().on_tick(counter) or worker.load_error is not None

    # Requests on connections beyond this many are answered 503 at once rather than taken on. It does
    # not stop connections that never finish their headers (uvicorn has no header timeout): on an open
    # network a reverse proxy belongs in front, as the README says.
    # uvicorn's access lines carry the query string, which may hold what a client meant to keep secret:
    # the guard writes spo's own line instead (serve/guard.py).
    config = uvicorn.Config(server.app, log_level="info" if debug else "warning", access_log=False,
                            log_config=log_config(), timeout_graceful_shutdown=None, lifespan="off",
                            limit_concurrency=CONNECTIONS_MAX)
    uv = Uvicorn(config)
    try:
        uv.run(sockets=[server.sock])  # re-raises the signal that stopped it: Ctrl-C as KeyboardInterrupt
    finally:
        worker.drain()
        # Also a SIGINT that re-raised nothing: a process started with it ignored (a script's `spo serve &`)
        # returns from run() normally, and the interpreter shutting down around a device's thread in
        # torch aborted it (exit 134).
        interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt) or uv.signalled
        if (worker.abandoned or not worker.join(timeout=STOP_WAIT_S)) and interrupted:
            leave(worker, "the call in flight was abandoned and its requests answered 503" if worker.abandoned
                  else "the worker was still busy (loading the models, or writing images)")
    if worker.load_exception is not None:
        raise worker.load_exception


def leave(worker, what: str) -> None:
    """Exit 130 now, the worker thread perhaps inside a pipeline call (an abandoned call stops only at its
    next step, and a decode not at all). The interpreter must not shut down around that thread: Python
    ends a daemon thread that wakes during finalization with pthread_exit, whose unwinding through
    torch's C++ frames aborts the process ('terminate called without an active exception', exit 134).
    So the images being written are finished, and the process ends without finalization."""
    from spo_cli.cli.ui import UI
    from spo_cli.errors import EXIT_INTERRUPTED

    from spo_cli.serve import uploads

    worker.stop_writing()
    uploads.remove_temporary()  # os._exit runs no atexit handler
    UI().error(f"Interrupted: {what}. Files already written are complete; nothing half-written was left behind.")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def log_config() -> dict:
    """uvicorn's logging, every line on stderr: its access lines go to stdout by default, and stdout is
    data (`--json` promises one line)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    return config
