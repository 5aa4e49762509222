"""A local HTTP server for tests: files from a dict and/or a directory, with faults on demand.

    with LocalServer(files={"/a.gz": data}, root=tmp_path / "site") as server:
        server.fail_times["/a.gz"] = 2        # answer 503 twice, then serve
        server.cut_after["/a.gz"] = 100       # each response stops after 100 body bytes
        fetch(server.url("a.gz"), dest)
        assert server.requests_for("/a.gz")[-1][2] == "bytes=100-"

Serves ``GET`` and ``HEAD`` on 127.0.0.1 (a free port), one thread per
connection. Paths are URL paths with a leading ``/``; ``files`` wins over
``root``; anything else is a 404. Single ``Range: bytes=a-[b]`` requests get a
206 with ``Content-Range``, or a 416 past the end. Fault injection, per path:

- ``fail_times[path] = n``: answer ``503`` to the next ``n`` requests;
- ``cut_after[path] = n``: send the full ``Content-Length`` but close the
  connection after ``n`` bytes of body, on every response (delete the key to stop);
- ``ignore_range`` (a set of paths): answer ``200`` with the whole file even to a Range request;
- ``serve_first[path] = [body, ...]``: serve these bodies, one per request, before the normal one.

``requests`` logs every request as ``(method, path, Range header or None)``.
"""

from __future__ import annotations

import http.server
import re
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LocalServer:
    """See the module docstring."""

    def __init__(self, files: dict[str, bytes] | None = None, root: str | Path | None = None):
        self.files = {"/" + k.lstrip("/"): v for k, v in (files or {}).items()}
        self.root = Path(root).resolve() if root is not None else None
        self.fail_times: dict[str, int] = {}
        self.cut_after: dict[str, int] = {}
        self.ignore_range: set[str] = set()
        self.serve_first: dict[str, list[bytes]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (relative to the root, with or without a leading ``/``)."""
        return f"{self.base}/{path.lstrip('/')}"

    def requests_for(self, path: str) -> list[tuple[str, str, str | None]]:
        """The logged requests for one path."""
        path = "/" + path.lstrip("/")
        return [r for r in self.requests if r[1] == path]

    def body(self, path: str) -> bytes | None:
        """What ``path`` serves now (consuming ``serve_first``), or ``None`` for a 404."""
        with self._lock:
            queued = self.serve_first.get(path)
            if queued:
                return queued.pop(0)
        if path in self.files:
            return self.files[path]
        if self.root is not None:
            target = (self.root / path.lstrip("/")).resolve()
            if target.is_relative_to(self.root) and target.is_file():
                return target.read_bytes()
        return None

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops SYNs under 8 parallel clients: 1 s retransmits

    def handle_error(self, request, client_address) -> None:
        # A client that closes mid-response (as a download that gives up on a 404
        # does) resets the connection: expected here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(server: LocalServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - http.server's naming
            self._serve(send_body=True)

        def do_HEAD(self):  # noqa: N802
            self._serve(send_body=False)

        def _serve(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            range_header = self.headers.get("Range")
            server.requests.append((self.command, path, range_header))
            with server._lock:
                failing = server.fail_times.get(path, 0) > 0
                if failing:
                    server.fail_times[path] -= 1
            if failing:
                return self._status(503, "Service Unavailable")
            body = server.body(path)
            if body is None:
                return self._status(404, "Not Found")
            size, status, start = len(body), 200, 0
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
            if match and path not in server.ignore_range:
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                if start >= size or end < start:
                    return self._status(416, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
                body, status = body[start : end + 1], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{size}")
            cut = server.cut_after.get(path)
            if cut is not None and cut < len(body):
                body = body[:cut]
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _status(self, code: int, message: str, headers: dict | None = None) -> None:
            text = f"{code} {message}\n".encode()
            self.send_response(code, message)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)

        def log_message(self, *args) -> None:
            pass

    return Handler
