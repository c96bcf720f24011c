"""Images by name from a local root, or by URL through a disk cache; every failure is an `ImageLoadError`."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from spatial_probing.errors import DataError
from spatial_probing.io import atomic_write

USER_AGENT = "spatial-probing/0.1 (+image fetch for probing experiments)"
# Errors a decoder raises on damaged data; anything else is a bug and should surface as such.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# 16-bit greyscale: Pillow's conversion to RGB clips at 255 instead of scaling, so these are scaled here.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
# 32-bit integer and float images have no defined 8-bit range: recorded as failures, never guessed.
_NO_8BIT_RANGE = ("I", "F")
_CONNECT_FAILURES = ("timeout", "connection_error")


class ImageLoadError(Exception):
    """An image that could not be loaded.

    ``reason`` is a short code: ``not_found``, ``outside_root``, ``is_a_directory``, ``not_a_regular_file``,
    ``bad_link``, ``http_<status>`` (``http_404``, ``http_500``), ``timeout``, ``connection_error``,
    ``empty_file``, ``not_an_image``, ``corrupt``, ``too_large``, ``unsupported_mode``;
    ``detail`` says which file or URL and why.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Keep reason and detail intact when the error crosses a process boundary (DataLoader workers).
        return type(self), (self.reason, self.detail)


def _retryable(reason: str) -> bool:
    """Transient failures worth another try: timeouts, dropped connections, server errors, rate limits."""
    return reason in ("timeout", "connection_error", "http_429") or reason.startswith("http_5")


class ImageSource:
    """Loads RGB images by file name from ``root``, or else from their URL through ``cache_dir``.

    Args:
        root: directory holding the images by name (``root/name``); when set, links are not used.
        cache_dir: where downloaded images are kept as ``<sha1 of url>.<ext>`` (None: no disk cache).
        timeout_s: socket timeout of each HTTP request.
        retries: further attempts after a timeout, a connection error, a 5xx or a 429 (never after a 4xx).
        max_pixels: images with more pixels (read from the header, before decoding) are ``too_large``.
        backoff_s: wait before the first retry; doubled for each further retry.
        exif_transpose: rotate/flip each image as its EXIF orientation tag says (default: pixels as stored).
        fail_fast: when this many downloads in a row fail to connect before any succeeds, raise a
            `DataError` naming ``--data.image_root`` instead of trying every other link (0: never).
    """

    def __init__(self, root: str | None = None, cache_dir: str | None = None, timeout_s: float = 10.0,
                 retries: int = 2, max_pixels: int = 50_000_000, backoff_s: float = 0.5,
                 exif_transpose: bool = False, fail_fast: int = 0) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_pixels = max_pixels
        self.backoff_s = backoff_s
        self.exif_transpose = exif_transpose
        self.fail_fast = fail_fast
        self._unconnected: list[str] = []  # downloads that failed to connect before any succeeded
        self._connected = False

    def load(self, name: str, link: str | None = None) -> Image.Image:
        """The fully decoded RGB image ``name`` (from ``root``) or ``link`` (cache, else download)."""
        if self.root is not None:
            path = self._local_path(name)
            return self._decode(path.read_bytes(), str(path))
        if not link:
            raise ImageLoadError("not_found", f"{name}: no image root is set and the row has no image_link")
        cached = self.cache_path(link)
        if cached is not None and cached.is_file():
            return self._decode(cached.read_bytes(), f"{link} (cached at {cached})")
        data = self._download_watching_connectivity(link)
        image = self._decode(data, link)
        if cached is not None:  # only a complete, decodable download is kept
            atomic_write(cached, data)
        return image

    def cache_path(self, link: str) -> Path | None:
        """Where ``link`` is cached: ``cache_dir/<sha1 of url><ext>`` (None without a cache)."""
        if self.cache_dir is None:
            return None
        suffix = Path(urlsplit(link).path).suffix.lower()
        ext = suffix if 1 < len(suffix) <= 5 and suffix[1:].isalnum() else ".img"
        return self.cache_dir / f"{hashlib.sha1(link.encode('utf-8')).hexdigest()}{ext}"

    def _local_path(self, name: str) -> Path:
        """``root/name``, refused when the name leads outside ``root`` or is not a regular file.

        Checked on the name, not the resolved path: image roots are often trees of symlinks (e.g. COCO
        train and val merged), which are followed as usual.
        """
        if Path(name).is_absolute() or ".." in Path(os.path.normpath(name)).parts:
            raise ImageLoadError("outside_root", f"{name}: image names must stay inside the image root {self.root}")
        path = self.root / name
        if path.is_dir():
            raise ImageLoadError("is_a_directory", str(path))
        if path.exists() and not path.is_file():
            raise ImageLoadError("not_a_regular_file", f"{path} (a device, socket or pipe)")
        if not path.is_file():
            raise ImageLoadError("not_found", str(path))
        return path

    def _download_watching_connectivity(self, url: str) -> bytes:
        """`_download`, giving up on the whole host list when the first ``fail_fast`` fetches cannot connect."""
        try:
            data = self._download(url)
        except ImageLoadError as exc:
            if not self._connected and exc.reason in _CONNECT_FAILURES:
                self._unconnected.append(exc.detail)
                if self.fail_fast and len(self._unconnected) >= self.fail_fast:
                    raise DataError(
                        f"the first {len(self._unconnected)} image downloads all failed to connect (last: "
                        f"{exc.detail}); offline or the image host is unreachable. Pass --data.image_root DIR "
                        "with the images by file name (e.g. COCO train2017 + val2017), or raise "
                        "--data.image_fail_fast (0: never give up)"
                    ) from exc
            raise
        self._connected = True
        return data

    def _download(self, url: str) -> bytes:
        """The body of ``url``, retrying transient failures with exponential backoff."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ImageLoadError("bad_link", f"{url}: only http(s) links can be fetched")
        attempt = 0
        while True:
            try:
                return self._fetch_once(url)
            except ImageLoadError as exc:
                if attempt >= self.retries or not _retryable(exc.reason):
                    raise
            time.sleep(self.backoff_s * 2**attempt)
            attempt += 1

    def _fetch_once(self, url: str) -> bytes:
        """One GET; every network failure becomes an `ImageLoadError` with its reason code."""
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                # read() raises IncompleteRead when the body is shorter than Content-Length.
                return response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ImageLoadError(f"http_{exc.code}", url) from exc
        except urllib.error.URLError as exc:
            reason = "timeout" if isinstance(exc.reason, TimeoutError) else "connection_error"
            raise ImageLoadError(reason, f"{url}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise ImageLoadError("timeout", f"{url}: no data within {self.timeout_s} s") from exc
        except (http.client.HTTPException, OSError) as exc:
            raise ImageLoadError("connection_error", f"{url}: {type(exc).__name__}: {exc}") from exc

    def _decode(self, data: bytes, where: str) -> Image.Image:
        """Decode ``data`` completely (so truncation shows) into an RGB image, checking size from the header."""
        if not data:
            raise ImageLoadError("empty_file", where)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:  # Pillow's own limit, checked while reading the header
            raise ImageLoadError("too_large", f"{where}: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageLoadError("not_an_image", where) from exc
        except _DECODE_ERRORS as exc:
            raise ImageLoadError("corrupt", f"{where}: {exc}") from exc
        width, height = image.size
        if width * height > self.max_pixels:
            raise ImageLoadError("too_large", f"{where}: {width}x{height} exceeds {self.max_pixels} pixels")
        try:
            image.load()
            if self.exif_transpose:
                image = ImageOps.exif_transpose(image)
            return _to_rgb(image, where)
        except _DECODE_ERRORS as exc:
            raise ImageLoadError("corrupt", f"{where}: {exc}") from exc


def _to_rgb(image: Image.Image, where: str) -> Image.Image:
    """8-bit RGB: 16-bit greyscale scaled to 0..255 (not clipped), 32-bit modes refused as ``unsupported_mode``."""
    if image.mode in _SIXTEEN_BIT:
        scaled = np.asarray(image).astype(np.float32) / 257.0  # 65535 -> 255 exactly
        return Image.fromarray(np.rint(scaled).astype(np.uint8)).convert("RGB")
    if image.mode in _NO_8BIT_RANGE:
        raise ImageLoadError("unsupported_mode", f"{where}: {image.mode} (32-bit) pixels have no defined 8-bit range; "
                             "convert the image to 8 or 16 bits per channel")
    return image.convert("RGB")
