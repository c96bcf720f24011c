"""A loopback HTTP server for tests: generated images plus one route per network or file fault.

Usage::

    with ImageServer() as server:
        ImageSource(cache_dir=tmp).load("x.png", server.url("/images/red.png"))
        assert server.count("/images/red.png") == 1

Routes (all GET):
    /images/<name>          generated images (``red.png``, ``photo.jpg``, ``big.png`` 300x200)
    /status/<code>          that HTTP status, no body
    /flaky/<n>/<name>       HTTP 500 for the first n requests of that path, then the image <name>
    /slow/<name>            the image <name> after ``slow_s`` seconds (beyond a short client timeout)
    /dropped.png            a Content-Length of 1000 but 16 bytes, then the connection closes
    /truncated.jpg          the first half of a JPEG, with a matching Content-Length
    /empty.png              a zero-byte body
    /page.png               an HTML page (not an image)
    /huge.png               a valid PNG header declaring 100000 x 100000 pixels
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

HTML = b"<!doctype html><html><body><h1>Not an image</h1></body></html>"


def encode(image: Image.Image, fmt: str) -> bytes:
    """The bytes of ``image`` saved in ``fmt`` (PNG, JPEG)."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR declares ``width`` x ``height`` (its pixel data is a stub)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def sample_images() -> dict[str, Image.Image]:
    """Small deterministic images the server serves under /images/."""
    rng = np.random.default_rng(0)
    return {
        "red.png": Image.new("RGB", (16, 12), (255, 0, 0)),
        "photo.jpg": Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)),
        "big.png": Image.new("RGB", (300, 200), (0, 128, 255)),
    }


class ImageServer:
    """Threaded HTTP server on 127.0.0.1 (free port) in a daemon thread; a context manager that stops itself.

    ``count(path)`` is how many requests reached ``path`` (query included, so tests can use a fresh
    ``?v=...`` per case). Handlers never block longer than ``slow_s``,
    and stopping the server ends any pending slow response at once.
    """

    def __init__(self, slow_s: float = 2.0) -> None:
        self.slow_s = slow_s
        self.images = sample_images()
        self.bodies = {name: encode(im, "JPEG" if name.endswith(".jpg") else "PNG") for name, im in self.images.items()}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def count(self, path: str) -> int:
        """Requests received so far for ``path``."""
        with self._lock:
            return self._counts[path]

    def _record(self, path: str) -> int:
        with self._lock:
            self._counts[path] += 1
            return self._counts[path]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                n = server._record(self.path)  # counted with its query, routed without it
                route = urlsplit(self.path).path
                parts = route.strip("/").split("/")
                if parts[0] == "images" and len(parts) == 2:
                    self._image(parts[1])
                elif parts[0] == "status" and len(parts) == 2:
                    self._send(int(parts[1]), b"")
                elif parts[0] == "flaky" and len(parts) == 3:
                    if n <= int(parts[1]):
                        self._send(500, b"")
                    else:
                        self._image(parts[2])
                elif parts[0] == "slow" and len(parts) == 2:
                    if not server._stopping.wait(server.slow_s):
                        self._image(parts[1])
                elif route == "/dropped.png":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(server.bodies["red.png"][:16])
                    self.close_connection = True
                elif route == "/truncated.jpg":
                    body = server.bodies["photo.jpg"]
                    self._send(200, body[: len(body) // 2], "image/jpeg")
                elif route == "/empty.png":
                    self._send(200, b"", "image/png")
                elif route == "/page.png":
                    self._send(200, HTML, "text/html")
                elif route == "/huge.png":
                    self._send(200, png_header(100_000, 100_000), "image/png")
                else:
                    self._send(404, b"")

            def _image(self, name: str) -> None:
                body = server.bodies.get(name)
                if body is None:
                    self._send(404, b"")
                else:
                    self._send(200, body, "image/jpeg" if name.endswith(".jpg") else "image/png")

            def _send(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout tests); nothing left to tell it

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the http.server API)
                """Silence the per-request log lines."""

        return Handler
