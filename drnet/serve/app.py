"""The ``drnet serve`` HTTP server: standard library only (``http.server`` + ``json``).

Routes: ``GET /`` the page, ``GET /api/models`` the loaded models, ``POST /api/predict`` an
image (the raw request body with any ``Content-Type``, or ``multipart/form-data``) for every
model or for ``?model=ID``. Requests are answered on their own threads; inference runs on one
worker thread fed by a queue, so a request that arrives while another runs waits for it rather
than being refused or competing for the CPU. Errors are JSON ``{"error": "..."}`` with a 4xx
status (a 500 with one line for anything unexpected, the traceback only in the server's log).
Nothing is written to disk.
"""

from __future__ import annotations

import email.parser
import email.policy
import ipaddress
import json
import logging
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
    DEFAULT_THRESHOLD,
    TOP_K,
    ServedModel,
    UploadError,
    decode_image,
    predict,
)

logger = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """Limits and defaults of one server."""

    max_upload_bytes: int = int(SERVE_MAX_UPLOAD_MB * 1024 * 1024)
    max_pixels: int = SERVE_MAX_PIXELS
    threshold: float = DEFAULT_THRESHOLD
    max_side: int | None = SEGMENT_MAX_SIDE


def page_html() -> bytes:
    """The page (``drnet/serve/static/index.html``, package data)."""
    return resources.files("drnet.serve").joinpath("static/index.html").read_bytes()


class DrnetServer(ThreadingHTTPServer):
    """A threading HTTP server holding the models and the one inference worker."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], models: Sequence[ServedModel], settings: ServeSettings
    ) -> None:
        super().__init__(address, RequestHandler)
        self.models = {m.id: m for m in models}
        self.settings = settings
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drnet-inference")
        self.page = page_html()

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

    def run_models(self, image, ids: Sequence[str], threshold: float) -> list[dict[str, Any]]:
        """The results of the models ``ids`` on ``image``, computed on the inference worker
        (queued behind any request already there)."""

        def job() -> list[dict[str, Any]]:
            return [
                predict(
                    self.models[i],
                    image,
                    threshold=threshold,
                    top_k=TOP_K,
                    max_side=self.settings.max_side,
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

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

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
        self._guarded(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/models":
            self._json(200, {"models": [m.describe() for m in self.server.models.values()]})
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
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        data, name = self._upload(query.get("filename"))  # read first: keep-alive stays in step
        ids = self._model_ids(query.get("model"))
        threshold = _threshold(query.get("threshold"), self.server.settings.threshold)
        image = decode_image(data, name, self.server.settings.max_pixels)
        results = self.server.run_models(image, ids, threshold)
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
        try:
            return max(0, int(self.headers.get("Content-Length") or 0))
        except ValueError:
            return 0

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


def _threshold(text: str | None, default: float) -> float:
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise UploadError(400, f"threshold={text!r}: expected a number such as 0.2") from None


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
