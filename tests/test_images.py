"""ImageSource: local root, URL fetch through a disk cache, and one reason code per failure."""

from __future__ import annotations

import hashlib
import io
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
from image_server import HTML, ImageServer, png_header
from PIL import Image

from spatial_probing.data.images import ImageLoadError, ImageSource


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_s=2.0) as srv:
        yield srv


def fast_source(cache_dir: Path | None = None, **kwargs) -> ImageSource:
    """An ImageSource with test-sized timeouts and backoff."""
    opts = {"timeout_s": 0.5, "retries": 2, "backoff_s": 0.01} | kwargs
    return ImageSource(cache_dir=str(cache_dir) if cache_dir else None, **opts)


def reason_of(source: ImageSource, name: str, link: str | None) -> str:
    with pytest.raises(ImageLoadError) as info:
        source.load(name, link)
    return info.value.reason


# -- local root -------------------------------------------------------------------------------------

def test_local_root_loads_rgb_with_exact_pixels(tmp_path):
    pixels = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.new("L", (4, 3), 200).save(tmp_path / "gray.png")
    source = ImageSource(root=str(tmp_path))
    image = source.load("a.png", "http://unused.invalid/a.png")  # a root wins over links
    assert image.mode == "RGB" and image.size == (5, 6)
    np.testing.assert_array_equal(np.asarray(image), pixels)
    gray = source.load("gray.png", None)
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [200, 200, 200]


def test_local_root_failures_have_reasons(tmp_path, server):
    photo = server.bodies["photo.jpg"]
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.jpg").write_bytes(HTML)
    (tmp_path / "cut.jpg").write_bytes(photo[: len(photo) // 2])
    (tmp_path / "huge.png").write_bytes(png_header(100_000, 100_000))
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    source = ImageSource(root=str(tmp_path))
    assert reason_of(source, "missing.jpg", None) == "not_found"
    assert reason_of(source, "empty.jpg", None) == "empty_file"
    assert reason_of(source, "page.jpg", None) == "not_an_image"
    assert reason_of(source, "cut.jpg", None) == "corrupt"
    assert reason_of(source, "huge.png", None) == "too_large"
    assert reason_of(ImageSource(root=str(tmp_path), max_pixels=300 * 200 - 1), "big.png", None) == "too_large"
    assert ImageSource(root=str(tmp_path), max_pixels=300 * 200).load("big.png", None).size == (300, 200)


def test_no_root_and_no_link_is_not_found():
    assert reason_of(ImageSource(), "x.jpg", None) == "not_found"


def test_non_http_link_is_refused(tmp_path):
    Image.new("RGB", (2, 2)).save(tmp_path / "a.png")
    assert reason_of(ImageSource(), "a.png", (tmp_path / "a.png").as_uri()) == "bad_link"


# -- HTTP -------------------------------------------------------------------------------------------

def test_download_matches_served_image(server):
    image = fast_source().load("photo.jpg", server.url("/images/photo.jpg"))
    expected = Image.open(io.BytesIO(server.bodies["photo.jpg"])).convert("RGB")
    np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))


@pytest.mark.parametrize(
    ("path", "reason", "requests"),
    [
        ("/status/404", "http_404", 1),  # a client error is final: no retry
        ("/status/403", "http_403", 1),
        ("/status/500", "http_500", 3),  # 1 try + 2 retries
        ("/status/503", "http_503", 3),
        ("/dropped.png", "connection_error", 3),
        ("/truncated.jpg", "corrupt", 1),
        ("/empty.png", "empty_file", 1),
        ("/page.png", "not_an_image", 1),
        ("/huge.png", "too_large", 1),
    ],
)
def test_http_faults_map_to_reasons(server, tmp_path, path, reason, requests):
    before = server.count(path)
    assert reason_of(fast_source(tmp_path / "cache"), "x", server.url(path)) == reason
    assert server.count(path) - before == requests
    # a failed download leaves nothing in the cache, not even a temporary file
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_header_checked_against_max_pixels_before_decoding(server):
    source = fast_source(max_pixels=300 * 200 - 1)
    assert reason_of(source, "big.png", server.url("/images/big.png")) == "too_large"


def test_slow_response_times_out(server):
    source = fast_source(timeout_s=0.2, retries=1)
    before = server.count("/slow/red.png")
    assert reason_of(source, "red.png", server.url("/slow/red.png")) == "timeout"
    assert server.count("/slow/red.png") - before == 2


def test_refused_connection_is_connection_error():
    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert reason_of(fast_source(retries=0), "x.png", f"http://127.0.0.1:{port}/x.png") == "connection_error"


def test_retry_after_server_errors_then_success(server):
    link = server.url("/flaky/2/red.png")
    image = fast_source(retries=2).load("red.png", link)
    assert image.size == (16, 12) and np.asarray(image)[0, 0].tolist() == [255, 0, 0]
    assert server.count("/flaky/2/red.png") == 3


def test_retries_are_bounded(server):
    assert reason_of(fast_source(retries=1), "red.png", server.url("/flaky/5/red.png")) == "http_500"
    assert server.count("/flaky/5/red.png") == 2


def test_cache_is_reused_without_a_request(server, tmp_path):
    link = server.url("/images/red.png?v=cache")
    source = fast_source(tmp_path / "cache")
    first = source.load("red.png", link)
    cached = tmp_path / "cache" / f"{hashlib.sha1(link.encode()).hexdigest()}.png"
    assert source.cache_path(link) == cached
    assert cached.read_bytes() == server.bodies["red.png"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [cached.name]  # no temp files left
    second = fast_source(tmp_path / "cache").load("red.png", link)  # a fresh source, same cache dir
    assert server.count("/images/red.png?v=cache") == 1
    np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_without_cache_every_load_downloads(server):
    link = server.url("/images/red.png?v=nocache")
    source = fast_source()
    source.load("red.png", link)
    source.load("red.png", link)
    assert server.count("/images/red.png?v=nocache") == 2


def test_cache_suffix_falls_back_for_odd_urls():
    source = ImageSource(cache_dir="/tmp/c")
    assert source.cache_path("http://h/a/b.JPG").suffix == ".jpg"
    assert source.cache_path("http://h/image?id=3").suffix == ".img"


def test_error_survives_pickling():
    error = pickle.loads(pickle.dumps(ImageLoadError("http_404", "http://h/x.jpg")))
    assert (error.reason, error.detail, str(error)) == ("http_404", "http://h/x.jpg", "http_404: http://h/x.jpg")

