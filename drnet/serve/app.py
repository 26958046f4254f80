"""The ``drnet serve`` HTTP server: standard library only (``http.server`` + ``json``).

Routes: ``GET /`` the page, ``GET /api/models`` the loaded models, ``POST /api/predict`` an
image (the raw request body with any ``Content-Type``, or ``multipart/form-data``) for every
model or for ``?model=ID``. Requests are answered on their own threads; inference runs on one
worker thread fed by a queue, so a request that arrives while another runs waits for it rather
than being refused or competing for the CPU.

Every answer is JSON (the page aside): errors are ``{"error": "..."}`` with one line and a 4xx
status (405 for a method the route does not take, a 500 for anything unexpected, the traceback
only in the server's log); non-finite numbers are sent as ``null``. Query parameters are
checked: an unknown one, or a threshold that is not a number in [0, 1], is a 400. Nothing is
written to disk.
"""

from __future__ import annotations

import email.parser
import email.policy
import ipaddress
import json
import logging
import math
import socket
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from drnet.constants import (
    SEGMENT_MAX_SIDE,
    SERVE_HOST,
    SERVE_MAX_PIXELS,
    SERVE_MAX_UPLOAD_MB,
    SERVE_PORT,
)
from drnet.serve.api import (
    TOP_K,
    ServedModel,
    UploadError,
    check_threshold,
    decode_image,
    predict,
)

logger = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Limits and defaults of one server."""

    max_upload_bytes: int = int(SERVE_MAX_UPLOAD_MB * 1024 * 1024)
    max_pixels: int = SERVE_MAX_PIXELS
    threshold: float | None = None  # None: each classifier's own (ServedModel.threshold)
    max_side: int | None = SEGMENT_MAX_SIDE


def page_html() -> bytes:
    """The page (``drnet/serve/static/index.html``, package data)."""
    return resources.files("drnet.serve").joinpath("static/index.html").read_bytes()


def example_images() -> dict[str, bytes]:
    """The example images the page offers (``drnet/assets/examples/*.png``, package data):
    ``{file name: PNG bytes}``, sorted by name."""
    folder = resources.files("drnet").joinpath("assets/examples")
    if not folder.is_dir():
        return {}
    return {
        entry.name: entry.read_bytes()
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".png")
    }


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(host: str) -> frozenset[str]:
    """The ``Host`` header names (without port) a server bound to ``host`` answers: the
    loopback names and ``host`` itself. A page on another site can reach a local server
    through DNS rebinding (its own name resolving to 127.0.0.1), but then sends its own name
    as ``Host``: refused. Bound to every address (``0.0.0.0``, ``::``), any IP literal and this
    machine's names are accepted too (an IP literal cannot be rebound)."""
    import socket

    names = {*LOOPBACK_NAMES, host.strip("[]").lower()}
    if host in ("", "0.0.0.0", "::"):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def host_of(header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``a:80`` -> ``a``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class DrnetServer(ThreadingHTTPServer):
    """A threading HTTP server holding the models and the one inference worker."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], models: Sequence[ServedModel], settings: ServeSettings
    ) -> None:
        # set before binding: a failed bind calls server_close(), which needs the worker
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drnet-inference")
        self.models = {m.id: m for m in models}
        self.settings = settings
        self.page = page_html()
        self.examples = example_images()
        self.allowed_hosts = allowed_hosts(str(address[0]))
        self.any_address = str(address[0]) in ("", "0.0.0.0", "::")
        if ":" in str(address[0]):
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request's ``Host`` header names this server (see :func:`allowed_hosts`)."""
        if not header:
            return False
        name = host_of(header)
        if name in self.allowed_hosts:
            return True
        if self.any_address:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def handle_error(self, request, client_address) -> None:
        """A request that failed outside the handler's own guard: logged, not printed."""
        logger.debug("drnet serve: error with %s", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        self.worker.shutdown(wait=False, cancel_futures=True)

    def run_models(
        self, image, ids: Sequence[str], threshold: float | None, activations: bool = False
    ) -> list[dict[str, Any]]:
        """The results of the models ``ids`` on ``image``, computed on the inference worker
        (queued behind any request already there); ``threshold`` None: each classifier's own."""

        def job() -> list[dict[str, Any]]:
            return [
                predict(
                    self.models[i],
                    image,
                    threshold=threshold,
                    top_k=TOP_K,
                    max_side=self.settings.max_side,
                    activations=activations,
                )
                for i in ids
            ]

        return self.worker.submit(job).result()


class RequestHandler(BaseHTTPRequestHandler):
    server: DrnetServer
    protocol_version = "HTTP/1.1"
    server_version = "drnet-serve"

    # -- plumbing ---------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(finite(data), allow_nan=False).encode("utf-8")
        self._send(status, body, "application/json", headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own errors (a malformed request line, an unknown method, a header
        too long) as JSON too, not its HTML page."""
        short = self.responses.get(code, ("error", ""))[0]
        self.close_connection = True
        if not getattr(self, "command", None):
            self.command = "GET"  # no request line parsed: still send a body
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # unparsed version: still send a status line
        self._json(code, {"error": f"{code} {message or short}".splitlines()[0]})

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _guarded(self, route) -> None:
        try:
            route()
        except UploadError as exc:
            self._error(exc.status, str(exc))
        except (BrokenPipeError, ConnectionResetError):  # the client left: nobody to answer
            self.close_connection = True
        except Exception as exc:  # the last resort: one line to the client, details in the log
            logger.error("drnet serve: %s %s failed: %s", self.command, self.path, exc)
            logger.debug("traceback", exc_info=True)
            self.close_connection = True
            self._error(500, f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self._request_ok():
            self._guarded(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        if self._request_ok():
            self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        if self._request_ok():
            self._guarded(self._post)

    def _not_allowed(self) -> None:
        """PUT, DELETE, OPTIONS, PATCH: a 405 in JSON naming the methods the route takes."""
        if not self._request_ok():
            return
        path = urlsplit(self.path).path
        allowed = "POST" if path == "/api/predict" else "GET, HEAD"
        self._drain_or_close()
        self._json(
            405,
            {"error": f"{self.command} {path} is not supported: use {allowed}"},
            {"Allow": allowed},
        )

    do_PUT = do_DELETE = do_OPTIONS = do_PATCH = _not_allowed  # noqa: N815 - http.server's names

    def _request_ok(self) -> bool:
        """Answer (and close) a request this server must not serve: a ``Host`` that is not
        one of its names (421), a body whose length cannot be known (400, 411). Its body is
        never read, so it can never be taken for a second request."""
        if not self.server.host_allowed(self.headers.get("Host")):
            self.close_connection = True
            self._error(
                421,
                f"Host {self.headers.get('Host')!r} is not an address of this server (it "
                f"answers {', '.join(sorted(self.server.allowed_hosts))}; --host adds one)",
            )
            return False
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._error(411, "chunked uploads are not supported: send a Content-Length")
            return False
        if len(set(lengths)) > 1 or any(not v.strip().isdigit() for v in lengths):
            self.close_connection = True
            self._error(400, f"invalid Content-Length {', '.join(lengths)!r}")
            return False
        return True

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/api/"):
            _query(url.query, known=())
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/models":
            self._json(200, {"models": [m.describe() for m in self.server.models.values()]})
        elif path == "/api/examples":
            names = list(self.server.examples)
            self._json(200, {"examples": [{"name": n, "url": f"/examples/{n}"} for n in names]})
        elif path.startswith("/examples/") and path[len("/examples/") :] in self.server.examples:
            self._send(200, self.server.examples[path[len("/examples/") :]], "image/png")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"no such page: {path} (the page is /, the API /api/...)")

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path != "/api/predict":
            self._drain_or_close()
            self._error(404, f"no such endpoint: POST {url.path} (use /api/predict)")
            return
        try:
            query = _query(url.query, PREDICT_PARAMETERS)
        except UploadError:
            self._drain_or_close()
            raise
        data, name = self._upload(query.get("filename"))  # read first: keep-alive stays in step
        ids = self._model_ids(query.get("model"))
        threshold = _threshold(query.get("threshold"), self.server.settings.threshold)
        activations = _flag(query.get("activations"), "activations")
        image = decode_image(data, name, self.server.settings.max_pixels)
        results = self.server.run_models(image, ids, threshold, activations)
        self._json(
            200,
            {"image": {"name": name, "width": image.width, "height": image.height},
             "results": results},
        )  # fmt: skip

    # -- request parts ----------------------------------------------------------------------------

    def _model_ids(self, wanted: str | None) -> list[str]:
        models = self.server.models
        if not wanted:
            return list(models)
        ids = [w.strip() for w in wanted.split(",") if w.strip()]
        unknown = [i for i in ids if i not in models]
        if unknown:
            raise UploadError(
                404, f"unknown model {', '.join(unknown)}: this server has {', '.join(models)}"
            )
        return ids

    def _drain_or_close(self) -> None:
        """An unread body would be taken for the next request: read a small one, else close."""
        length = self._length()
        if 0 < length <= self.server.settings.max_upload_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)  # checked by _request_ok

    def _upload(self, filename: str | None) -> tuple[bytes, str]:
        """The image bytes and a name for messages: the raw body, or the first file of a
        ``multipart/form-data`` body. 413 before reading a body over the limit."""
        length = self._length()
        limit = self.server.settings.max_upload_bytes
        if length > limit:
            self.close_connection = True  # the body stays unread
            raise UploadError(
                413,
                f"upload of {length / 2**20:.1f} MiB: the server takes at most "
                f"{limit / 2**20:.1f} MiB (--max-upload-mb)",
            )
        body = self.rfile.read(length) if length else b""
        name = filename or self.headers.get("X-Filename") or "upload"
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            return _multipart_file(content_type, body, name)
        return body, name


PREDICT_PARAMETERS = ("model", "threshold", "filename", "activations")


def _query(text: str, known: Sequence[str]) -> dict[str, str]:
    """The query's parameters (the last value of each); an unknown one is a 400 that names
    the known ones (a misspelt parameter must not be silently ignored)."""
    query = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
    unknown = sorted(set(query) - set(known))
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise UploadError(400, f"unknown parameter {', '.join(unknown)}: {takes}")
    return query


def _threshold(text: str | None, default: float | None) -> float | None:
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise UploadError(400, f"threshold={text!r}: expected a number such as 0.2") from None
    return check_threshold(value)


def _flag(text: str | None, name: str) -> bool:
    if text is None:
        return False
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on", ""):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UploadError(400, f"{name}={text!r}: expected 1 or 0")


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinity replaced by None (``null``): JSON has no such
    numbers, and ``JSON.parse`` refuses ``NaN``."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def _multipart_file(content_type: str, body: bytes, default_name: str) -> tuple[bytes, str]:
    """The first file part (or the part named ``image``/``file``) of a multipart body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(head + body)
    if not message.is_multipart():
        raise UploadError(400, "malformed multipart/form-data body (no parts)")
    for part in message.iter_parts():
        filename = part.get_filename()
        field = part.get_param("name", header="content-disposition")
        if filename or field in ("image", "file"):
            return part.get_payload(decode=True) or b"", filename or default_name
    raise UploadError(400, "multipart/form-data body without a file part (send it as 'image')")


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(
    models: Sequence[ServedModel],
    host: str = SERVE_HOST,
    port: int = SERVE_PORT,
    settings: ServeSettings | None = None,
) -> DrnetServer:
    """A server bound to ``host:port`` (port 0: a free one; see ``server.url``), not yet
    serving: call ``serve_forever()`` (e.g. on a thread) and ``server_close()`` at the end."""
    if not models:
        raise ValueError("drnet serve needs at least one model")
    return DrnetServer((host, port), models, settings or ServeSettings())


def serve_forever(server: DrnetServer) -> None:
    """Serve until interrupted (Ctrl-C), then close the socket and the worker."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def serve_in_thread(server: DrnetServer) -> threading.Thread:
    """Serve on a daemon thread (tests, notebooks); stop with ``server.shutdown()``."""
    thread = threading.Thread(target=server.serve_forever, name="drnet-serve", daemon=True)
    thread.start()
    return thread
