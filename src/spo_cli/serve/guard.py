"""Who may talk to the server, decided before any route runs: one plain-ASGI middleware.

Binding 127.0.0.1 does not keep out the web pages the user's own browser opens. Four checks, in order:

1. **Host** (421). DNS rebinding points a name the attacker owns at 127.0.0.1, so that their page is
   "same origin" with this server and can read its answers. Only Host values naming this server are
   served: loopback names and addresses, the bound address, and `--allow-host` names. Any port: a
   rebinding page forges the name, never the port, and an SSH tunnel or a proxy legitimately reaches
   the server on another port (`ssh -L 9000:localhost:7860` sends `Host: localhost:9000`).
2. **Origin** (403). A browser puts `Origin` on every cross-origin request and every POST; one that is
   not this server's own (the page) nor a `--cors-origin` is refused, so another site cannot make
   images even "blind" (no-cors, where it could not read the answer anyway). Without Origin, the
   origin of a `Referer` is checked the same way: a browser that leaves Origin out of a form's POST
   still names the page that sent it there.
3. **Token** (401), when the server has one (a bearer token, or A1111's HTTP Basic user names and
   passwords, `--api-auth-file`: either passes); the page, `/health` and the favicon hold no data.
4. **Content-Type** (415). A body must be declared `application/json`: the content types a page may
   send without a CORS preflight (`text/plain`, forms) are refused even from a browser that sends no
   Origin. A POST without a body (A1111 clients' interrupt) has nothing to mistake. The one exception
   is OpenAI's `/v1/images/edits`, whose clients send `multipart/form-data` (and only that, there): a
   form another site posts there is still refused by the Origin check (every current browser sends
   Origin on a cross-site POST), and with a token, by the token.

Plain ASGI, not a function middleware: that would wrap `receive` and hide a client's disconnect from
the handler waiting for its images. Every request is counted here, with the status it got, and with
`Settings.access_log` logged on stderr in one line (`access_line`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import ipaddress
import sys
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from spo_cli.serve import api
from spo_cli.serve.metrics import Metrics
from spo_cli.serve.plumbing import Settings

OPEN_PATHS = {"/", "/health", "/favicon.ico"}  # the page holds no data; it asks for the token itself
OPEN_PATHS |= {"/openapi.json", "/docs"}  # what the API takes, as A1111 serves it: no data of the server's
LOOPBACK_NAMES = {"localhost"}
WILDCARDS = {"0.0.0.0", "::"}
BODYLESS = {"GET", "HEAD", "OPTIONS"}
DEFAULT_PORTS = {"http": "80", "https": "443"}


def split_host(value: str) -> tuple[str, str | None] | None:
    """A Host header → (host in lower case, without brackets or a final dot; port or None); None when
    it is not a host[:port] at all."""
    try:
        parts = urlsplit("//" + value)
        host, port = parts.hostname, parts.port  # .port raises on a port that is not a number in range
    except ValueError:
        return None
    if not host or parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return host.rstrip("."), None if port is None else str(port)


class HostRule:
    """The Host names and addresses this server answers to."""

    def __init__(self, bound: str | None, allowed: list[str]):
        self.names = LOOPBACK_NAMES | {n.lower().rstrip(".") for n in allowed}
        self.bound = _address(bound) if bound else None
        self.wildcard = bound in WILDCARDS  # bound to every address: any address literal of ours is served

    def allows(self, host: str) -> bool:
        if host in self.names:
            return True
        address = _address(host)
        if address is None:
            return False  # a name: only those given (a rebinding page brings its own name)
        # An address literal cannot be rebound: a browser sends it only for a page loaded from it.
        return address.is_loopback or address == self.bound or self.wildcard

    def describe(self) -> str:
        names = ["127.0.0.1", "localhost", "[::1]"]
        if self.bound is not None and not self.bound.is_loopback and not self.wildcard:
            names.append(str(self.bound) if self.bound.version == 4 else f"[{self.bound}]")
        if self.wildcard:
            names.append("this machine's addresses")
        names += sorted(self.names - LOOPBACK_NAMES)
        return ", ".join(names)


def _address(text: str):
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


class Guard:
    def __init__(self, app, settings: Settings, metrics: Metrics):
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.hosts = HostRule(settings.bound, settings.allow_hosts)
        self.cors = set(settings.cors_origins)
        self.secrets = tuple(filter(None, [settings.token, *(password for _, password in settings.api_auth)]))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self.settings.access_log:
            return await self.checked(scope, receive, send)
        started, status = time.monotonic(), [500]  # no answer sent: uvicorn's is a 500

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.checked(scope, receive, sending)
        finally:
            if sys.stderr is not None:  # started with stderr closed: print(file=None) would write on stdout
                print(access_line(scope, status[0], time.monotonic() - started, self.secrets), file=sys.stderr,
                      flush=True)

    async def checked(self, scope, receive, send):
        headers = Headers(scope=scope)
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            origin = headers.get("origin")
            if origin is not None and self.cross_origin_allowed(origin):  # so that the page there can read why
                refusal.headers["Access-Control-Allow-Origin"] = origin
                refusal.headers["Vary"] = "Origin"
            self.metrics.http_request(scope["path"], refusal.status_code)
            return await refusal(scope, receive, send)
        status = [500]
        counted = [False]

        def count():
            if not counted[0]:
                counted[0] = True
                route = scope.get("route")  # set by the router: the template, so /outputs/<file> is one label
                self.metrics.http_request(getattr(route, "path", scope["path"]), status[0])

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte goes out: a client that has read the whole answer and asks
                # /metrics next must find it there (counting after the app returns lost that race in CI).
                count()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            count()

    def refusal(self, scope, headers: Headers) -> JSONResponse | None:
        host_header = headers.get("host")
        host = split_host(host_header) if host_header is not None else None
        if host is None or not self.hosts.allows(host[0]):
            shown = "no Host header" if host_header is None else f"'Host: {host_header[:200]}'"
            return _error(421, f"This server answers only to {self.hosts.describe()}, not to {shown}. If this "
                          "name reaches it on purpose (a proxy, a name on your network), start it with "
                          "--allow-host NAME.", "Host", path=scope["path"])
        origin, header = headers.get("origin"), "Origin"
        if origin is None:
            origin, header = referer_origin(headers.get("referer")), "Referer"
        if origin is not None and not self.same_origin(origin, host) and not self.cross_origin_allowed(origin):
            return _error(403, f"Requests from pages of another site ('{header}: {origin[:200]}') are refused. "
                          "To let a page there use this server, start it with --cors-origin ORIGIN.", header,
                          path=scope["path"])
        method, path = scope["method"], scope["path"]
        settings = self.settings
        if (settings.token or settings.api_auth) and path not in OPEN_PATHS and method != "OPTIONS":
            if not self.authorized(headers.get("authorization", "")):
                ways, challenges = [], []
                if settings.token:
                    ways.append("a token as 'Authorization: Bearer <token>'")
                    challenges.append("Bearer")
                if settings.api_auth:
                    ways.append("a user name and password (HTTP Basic, as A1111's --api-auth)")
                    challenges.append('Basic realm="spo", charset="UTF-8"')
                return _error(401, f"This server needs credentials: send {' or '.join(ways)}.", "Authorization",
                              {"WWW-Authenticate": ", ".join(challenges)}, path)
        if method not in BODYLESS and _has_body(headers):
            kind = headers.get("content-type", "").partition(";")[0].strip().lower()
            wanted = "multipart/form-data" if path in api.MULTIPART_PATHS else "application/json"
            if kind != wanted:
                shown = f"'{kind[:100]}'" if kind else "none"
                what = "multipart/form-data (OpenAI's image edits)" if wanted != "application/json" else "JSON"
                return _error(415, f"A request body here must be {what} sent as 'Content-Type: {wanted}' "
                              f"(this one's Content-Type is {shown}).", "Content-Type", path=path)
        return None

    def authorized(self, header: str) -> bool:
        """Whether an Authorization header carries the token or one of the Basic credentials. Every
        comparison is hmac.compare_digest, and every user's is made, so that the time taken says
        nothing of which part was wrong."""
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip().encode("latin-1")  # Starlette decodes headers as Latin-1
        if scheme == "bearer" and self.settings.token:
            return hmac.compare_digest(value, self.settings.token.encode())
        if scheme == "basic" and self.settings.api_auth:
            try:
                user, colon, password = base64.b64decode(value, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
            found = False
            for known_user, known_password in self.settings.api_auth:
                found |= hmac.compare_digest(user, known_user.encode()) & hmac.compare_digest(
                    password, known_password.encode())
            return found and bool(colon)
        return False

    @staticmethod
    def same_origin(origin: str, host: tuple[str, str | None]) -> bool:
        """The page's own requests: scheme://host:port naming what the Host header names. https as well
        as http, for a proxy that ends TLS in front of the server."""
        try:
            parts = urlsplit(origin)
            scheme, name, port = parts.scheme, parts.hostname, parts.port
        except ValueError:
            return False
        if scheme not in DEFAULT_PORTS or not name or parts.path or parts.query or parts.fragment:
            return False
        port = str(port) if port is not None else DEFAULT_PORTS[scheme]
        return name.rstrip(".") == host[0] and port == (host[1] or DEFAULT_PORTS[scheme])

    def cross_origin_allowed(self, origin: str) -> bool:
        return "*" in self.cors or origin in self.cors


def referer_origin(referer: str | None) -> str | None:
    """The origin (scheme://host[:port]) of a web page's Referer; None when there is none to check.
    Where a browser leaves Origin out (older ones, extensions that strip it, a form's POST from a page
    with an unusual policy) its Referer still names the page, as OWASP's CSRF advice uses it."""
    if not referer:
        return None
    try:
        parts = urlsplit(referer)
        if parts.scheme.lower() not in DEFAULT_PORTS or not parts.netloc:
            return None  # not a web page's address (about:client, an app's scheme): nothing to compare
        return f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2]}"
    except ValueError:
        return None


def access_line(scope, status: int, seconds: float, secrets: tuple[str, ...] = ()) -> str:
    """One request, for the log: client, method, path, status and duration. Never the query string (a
    client may put a secret there), the headers (the token) or the body (the prompt), nor `secrets`
    (the token, the passwords) where a client put one in the path. The path is the client's own text,
    and so is the client's address behind a proxy (uvicorn reads X-Forwarded-For from loopback, an SSH
    tunnel's end): both shown escaped and cut, so that they cannot forge a line or reach the terminal."""
    client = scope.get("client")
    who = _printable(f"{client[0]}:{client[1]}", 100) if client else "-"
    path = scope["path"]
    for secret in secrets:  # before the cut, which could leave a secret's start
        path = path.replace(secret, "***")
    return f'{who} - "{_printable(scope["method"], 20)} {_printable(path, 300)}" {status} {seconds:.3f}s'


def _printable(text: str, limit: int) -> str:
    return json.dumps(text[:limit])[1:-1] + ("..." if len(text) > limit else "")  # ASCII, quotes and controls escaped


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() != "0")


def _error(status: int, message: str, field: str, headers: dict | None = None, path: str = "") -> JSONResponse:
    return JSONResponse(api.BadRequest(message, field, status).body(path), status_code=status, headers=headers)
