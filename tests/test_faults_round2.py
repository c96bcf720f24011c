"""Fault injection, round 2 (issue 11): no silent wrong result, no traceback for a user's mistake, clean stops.

Reuses the fixtures and helpers of test_faults.py (the tiny dataset, the reference entry, the CLI
arguments). docs/reliability.md lists every case with what the toolkit does.

39 fault cases (``ROUND2_CASES``; ``test_round2_cases_are_documented`` keeps this list and the count in step).

Probe options refused at config time, naming the option and its valid range (item 2).
    Cs-negative, Cs-empty, Cs-zero, n-splits-1, max-iter-0, tol-zero
Silent wrong results (items 3-7).
    png-16-bit, tiff-32-bit-int, exif-orientation-option, exif-orientation-in-key, meta-encoder-edited,
    meta-dataset-edited, results-disk-full-atomic, weights-edited-in-place-mtime-restored
Tracebacks for ordinary mistakes, now one line naming the file, row or option (items 8-11).
    empty-train-jsonl, non-utf8-bytes, meta-no-sha256, meta-json-list, meta-invalid-json,
    sbert-weights-truncated, openclip-checkpoint-truncated, feature-root-not-writable,
    disk-full-writing-shards, disk-full-during-merge, out-dir-not-writable
Concurrency and stops (items 12, 13, 17).
    second-extraction-waits-and-reuses, two-extractions-race (slow), sigterm-mid-extraction,
    sigterm-mid-run-subprocess (slow), sigterm-during-fit
Edges (items 14-16, 18).
    image-name-outside-root, image-is-a-directory, image-symlink-to-device, cached-download-mode,
    duplicate-rows-warned, long-captions-warned, sbert-default-named, image-host-unreachable-fails-fast,
    unconverged-probes-announced
"""

# ruff: noqa: F811 - the fixtures imported from test_faults are requested by name as test arguments
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from itertools import count
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from image_server import ImageServer
from PIL import Image
from probe_entries import toy_entry, toy_features, toy_rows, write_entry
from test_faults import (  # noqa: F401 - fixtures are used by name
    BATCH,
    CPU,
    N_ROWS,
    OPENCLIP,
    SCENES,
    _args,
    _entries,
    _features_sha,
    _KeyInputs,
    _kill_halfway,
    _model_copy,
    _module_cache,
    _only_entry,
    _partial,
    _rerun_recording,
    _rows,
    _run,
    _scenes_args,
    _text_shards,
    _write_rows,
    _write_split,
    reference,
    scenes_env,
    scenes_reference,
    tiny,
)

from spatial_probing.cli import main
from spatial_probing.data.datamodule import SpatialDataModule
from spatial_probing.data.images import ImageLoadError, ImageSource
from spatial_probing.data.vsr import load_vsr
from spatial_probing.encoders.module import FrozenEncoder
from spatial_probing.errors import CacheError
from spatial_probing.features.entry import load_entry
from spatial_probing.features.extract import cache_key
from spatial_probing.features.key import make_key, sha256_file
from spatial_probing.features.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]


def _fit_args(out: Path, *extra: str) -> list[str]:
    return ["fit", "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar",
            "false", "--data.task.min_count", "20", "--out_dir", str(out), *extra]


def _error(capsys, argv: list[str], status: int = 2) -> str:
    """Run a command that must fail with ``status`` and one ``error:`` line; return that line."""
    capsys.readouterr()
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    print(f"MESSAGE {line}")  # shown by `pytest -rP`: the evidence table of docs/reliability.md
    return line


# --------------------------------------------------------------------------------------------
# item 2: probe options

BAD_OPTIONS: dict[str, tuple[list[str], str]] = {
    "Cs-negative": (["--model.Cs", "[-1]"], "--model.Cs [-1.0] is out of range: expected a non-empty list of finite"),
    "Cs-empty": (["--model.Cs", "[]"], "--model.Cs [] is out of range"),
    "Cs-zero": (["--model.Cs", "[0]"], "--model.Cs [0.0] is out of range"),
    "n-splits-1": (["--data.n_splits", "1"], "--data.n_splits 1 is out of range: expected an integer >= 2"),
    "max-iter-0": (["--model.max_iter", "0"], "--model.max_iter 0 is out of range: expected an integer >= 1"),
    "tol-zero": (["--model.tol", "0"], "--model.tol 0.0 is out of range: expected a number > 0"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_probe_option_is_refused_at_config_time(case, tmp_path, capsys):
    args, message = BAD_OPTIONS[case]
    entry = toy_entry(tmp_path)
    line = _error(capsys, _fit_args(tmp_path / "out", "--data.features", f"[{entry}]", *args))
    assert message in line
    assert not (tmp_path / "out").exists()  # refused before any probe ran or any file was written


# --------------------------------------------------------------------------------------------
# items 3, 4, 14: images


def _png16(path: Path, pixels8: np.ndarray) -> Path:
    Image.fromarray(pixels8.astype(np.uint16) * 257).save(path)  # the same picture in 16 bits
    return path


def test_16_bit_png_is_scaled_not_saturated_and_32_bit_is_a_recorded_failure(tmp_path):
    pixels8 = (np.arange(64 * 64).reshape(64, 64) % 121).astype(np.uint8)  # mean 60, like the picture
    _png16(tmp_path / "g16.png", pixels8)
    Image.fromarray(pixels8).save(tmp_path / "g8.png")
    source = ImageSource(root=str(tmp_path))
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    sixteen, eight = np.asarray(source.load("g16.png")), np.asarray(source.load("g8.png"))
    assert sixteen.shape == (64, 64, 3) and np.array_equal(sixteen, eight)
    Image.fromarray(pixels8.astype(np.int32) * 1000).save(tmp_path / "i32.tiff")
    with pytest.raises(ImageLoadError) as err:
        source.load("i32.tiff")
    assert err.value.reason == "unsupported_mode" and "i32.tiff" in err.value.detail


def _rotated_jpeg(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (200, 30, 30)).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_ignored_by_default_and_applied_on_request(tmp_path):
    _rotated_jpeg(tmp_path / "rot.jpg")
    assert ImageSource(root=str(tmp_path)).load("rot.jpg").size == (40, 20)
    assert ImageSource(root=str(tmp_path), exif_transpose=True).load("rot.jpg").size == (20, 40)


def test_exif_orientation_joins_the_key_of_image_views_only(tmp_path, tiny):
    rows = load_vsr(str(tiny), "train")

    def key(orientation: str, uses_images: bool) -> str:
        return make_key("e", "v", str(tmp_path), rows, "float32", "32-true", image_orientation=orientation,
                        uses_images=uses_images).digest

    assert key("exif", True) != key("stored", True)
    assert key("exif", False) == key("stored", False) == key("stored", True)


def test_image_names_outside_root_directories_and_devices_get_their_reason(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (root / "folder.jpg").mkdir()
    (root / "device.jpg").symlink_to("/dev/null")
    source = ImageSource(root=str(root))
    reasons = {}
    for name in ("../outside.png", "/etc/passwd", "folder.jpg", "device.jpg", "missing.jpg"):
        with pytest.raises(ImageLoadError) as err:
            source.load(name)
        reasons[name] = err.value.reason
    assert reasons == {"../outside.png": "outside_root", "/etc/passwd": "outside_root",
                       "folder.jpg": "is_a_directory", "device.jpg": "not_a_regular_file", "missing.jpg": "not_found"}


def test_cached_downloads_get_the_ordinary_file_mode(tmp_path):
    with ImageServer() as server:
        source = ImageSource(cache_dir=str(tmp_path / "cache"))
        link = server.url("/images/red.png")
        source.load("red.png", link)
        cached = source.cache_path(link)
    umask = os.umask(0)
    os.umask(umask)
    assert cached.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------------------------
# items 5, 9: meta.json identity and shape

META_DAMAGE = {
    "meta-encoder-edited": (lambda m: m | {"encoder": "sbert:all-mpnet-base-v2@text"}, "does not match its checksum"),
    "meta-dataset-edited": (lambda m: m | {"dataset": "vsr_zeroshot/train"}, "does not match its checksum"),
    "meta-no-sha256": (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "does not match its checksum"),
    "meta-json-list": (lambda m: [m], "is not an entry's meta.json (expected a JSON object"),
    "meta-invalid-json": (None, "meta.json is corrupt"),
}


@pytest.mark.parametrize("case", META_DAMAGE)
def test_edited_or_malformed_meta_is_refused_naming_the_file(case, tmp_path, capsys):
    edit, message = META_DAMAGE[case]
    entry = toy_entry(tmp_path / "features")
    meta_path = entry / "meta.json"
    if edit is None:
        meta_path.write_text('{"key": {"format_version": 2}, "encoder": ')
    else:
        meta_path.write_text(json.dumps(edit(json.loads(meta_path.read_text()))))
    # through the fit CLI with --data.dataset, which reads every meta.json to filter by dataset
    line = _error(capsys, _fit_args(tmp_path / "out", "--data.feature_root", str(tmp_path / "features"),
                                    "--data.dataset", "toy/train"))
    assert str(meta_path) in line and message in line
    with pytest.raises(CacheError, match=re.escape(message)):
        load_entry(entry)


# --------------------------------------------------------------------------------------------
# item 7: model content in the cache key


def test_weights_edited_in_place_with_size_and_mtime_restored_give_another_key(tmp_path, minilm_dir):
    model = _model_copy(minilm_dir, tmp_path / "model", link_weights=False)
    weights = model / "model.safetensors"
    inputs = _KeyInputs(dataset=_write_rows(tmp_path / "tiny", _rows()), model=model)
    first = inputs.key_dir(tmp_path)
    stat = weights.stat()
    with open(weights, "r+b") as handle:
        handle.seek(-4096, os.SEEK_END)
        handle.write(os.urandom(4096))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert inputs.key_dir(tmp_path) != first


# --------------------------------------------------------------------------------------------
# items 8, 10, 11: one error line naming the file, row or option; nothing left behind


def _non_utf8(tmp: Path) -> Path:
    lines = [json.dumps(row).encode() for row in _rows()]
    lines[2] = lines[2].replace(b'"The ', b'"Th\xe9 ')  # latin-1
    directory = tmp / "latin1"
    directory.mkdir()
    (directory / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return directory


def _truncated(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def _truncated_checkpoint(tmp: Path) -> str:
    """An open_clip checkpoint cut short: a safetensors header promising more bytes than the file holds."""
    from safetensors.numpy import save

    path = tmp / "clip.safetensors"
    path.write_bytes(save({"w": np.zeros((64, 64), np.float32)})[:200])
    return f"openclip:ViT-B-32/{path}"


BAD_EXTRACTIONS: dict[str, tuple] = {
    "empty-train-jsonl": (lambda t, m: ["--data.dataset", str(_write_split(t / "empty", []))],
                          ("split 'train' of", "empty", "has no rows")),
    "non-utf8-bytes": (lambda t, m: ["--data.dataset", str(_non_utf8(t))],
                       ("latin1/train.jsonl:3: not UTF-8 text (byte 0xe9", "save the file as UTF-8")),
    "sbert-weights-truncated": (
        lambda t, m: ["--model.encoder", f"sbert:{_truncate_weights(m, t)}"],
        ("cannot load", "weights-cut")),
    "openclip-checkpoint-truncated": (lambda t, m: ["--model.encoder", _truncated_checkpoint(t)],
                                      ("cannot load", "clip.safetensors")),
    "feature-root-not-writable": (lambda t, m: ["--feature_root", "/sys/spatial-probing-features"],
                                  ("cannot write /sys/spatial-probing-features", "choose a writable --feature_root")),
}


def _truncate_weights(minilm: Path, tmp: Path) -> Path:
    model = _model_copy(minilm, tmp / "weights-cut", link_weights=False)
    _truncated(model / "model.safetensors", 1 << 20)
    return model


@pytest.mark.parametrize("case", BAD_EXTRACTIONS)
def test_ordinary_mistake_is_one_error_line_and_leaves_nothing(case, tmp_path, tiny, minilm_dir, capsys):
    make_args, names = BAD_EXTRACTIONS[case]
    root = tmp_path / "features"
    line = _error(capsys, ["extract", *_args(root, tiny, minilm_dir), *make_args(tmp_path, minilm_dir)])
    for name in names:
        assert name in line
    assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]  # no partial, no lock


@contextmanager
def _file_size_limit(n_bytes: int):
    """A real write failure: files of this process cannot grow past ``n_bytes`` (EFBIG, like a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_disk_full_writing_shards_names_the_shard_and_keeps_the_finished_ones(tmp_path, tiny, minilm_dir, capsys):
    root = tmp_path / "features"
    with _file_size_limit(1000):  # plan.json fits, a 4-row shard (6 KB) does not
        line = _error(capsys, ["extract", *_args(root, tiny, minilm_dir)])
    assert re.search(r"cannot write \S+\.partial/text-000000\.npz: File too large \(disk full\?\)", line)
    assert "rerun the same command" in line
    assert not [p for p in _partial(root).iterdir() if p.name.endswith(".tmp")]


def test_disk_full_during_merge_names_the_entry_and_a_rerun_only_merges(tmp_path, tiny, minilm_dir, reference,
                                                                       capsys):
    root = tmp_path / "features"
    with _file_size_limit(20_000):  # every 6 KB shard fits, the 48 KB parts/text.npy does not
        line = _error(capsys, ["extract", *_args(root, tiny, minilm_dir)])
    partial = _partial(root)
    assert f"cannot write {partial.with_suffix('')}" in line and "(disk full?)" in line
    assert len(list(partial.glob("text-*.npz"))) == N_ROWS // BATCH
    assert [p.name for p in partial.parent.iterdir()] == [partial.name]  # no temp entry left
    assert main(["extract", *_args(root, tiny, minilm_dir)]) == 0
    assert f"resuming: {N_ROWS // BATCH} of {N_ROWS // BATCH} batches" in capsys.readouterr().out
    assert _features_sha(root) == sha256_file(reference / "parts" / "text.npy")


def test_out_dir_not_writable_fails_before_any_probe(tmp_path, capsys):
    entry = toy_entry(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for out in (blocker / "out", Path("/sys/spatial-probing-out")):
        line = _error(capsys, _fit_args(out, "--data.features", f"[{entry}]"))
        assert f"--out_dir {out} is not writable" in line
        assert "warning" not in capsys.readouterr().out


def test_result_files_are_written_atomically_on_a_full_disk(tmp_path, capsys):
    entry = toy_entry(tmp_path)
    out = tmp_path / "out"
    assert main(_fit_args(out, "--data.features", f"[{entry}]")) == 0
    files = lambda: {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}  # noqa: E731
    before = files()  # results, report, figures/
    with _file_size_limit(3000):  # results.csv (~7 KB) cannot be written whole
        line = _error(capsys, _fit_args(out, "--data.features", f"[{entry}]", "--model.Cs", "[0.5]",
                              "--overwrite", "true"))  # another run: replacing the first needs --overwrite
    assert f"cannot write the results to --out_dir {out}" in line
    assert files() == before  # previous files whole, no temp files


# --------------------------------------------------------------------------------------------
# item 12: two identical extractions


def _blocked_on(lock: Path) -> bool:
    """Whether some process waits for an flock on ``lock`` (a ``->`` line of /proc/locks for its inode)."""
    inode = f":{lock.stat().st_ino} "
    return any(line.split()[1] == "->" and inode in line for line in Path("/proc/locks").read_text().splitlines())


def test_second_extraction_waits_for_the_first_and_reuses_its_entry(tmp_path, tiny, minilm_dir, reference, capsys):
    root = tmp_path / "features"
    entry_dir = _KeyInputs(dataset=tiny, model=minilm_dir).key_dir(root)
    model = FrozenEncoder(f"sbert:{minilm_dir}")
    key = cache_key(model, SpatialDataModule(dataset=str(tiny), batch_size=BATCH), "float32", "32-true")
    store, held, finished = FeatureStore(root), threading.Event(), threading.Event()

    def first_extraction() -> None:  # holds the entry's lock until the second one waits, then publishes
        with store.locked(key):
            held.set()
            lock = entry_dir.with_name(f"{key.digest}.lock")
            while not _blocked_on(lock):
                threading.Event().wait(0.02)
            shutil.copytree(reference, entry_dir)
        finished.set()

    holder = threading.Thread(target=first_extraction)
    holder.start()
    held.wait()
    shards = count()
    real_write = FeatureStore.write_shard
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureStore, "write_shard", staticmethod(lambda *a: (next(shards), real_write(*a))))
        assert main(["extract", *_args(root, tiny, minilm_dir)]) == 0
    holder.join()
    out = capsys.readouterr().out
    assert "waiting for another extraction of the same entry to finish" in out and "cache hit" in out
    assert next(shards) == 0  # nothing recomputed
    assert sorted(p.name for p in entry_dir.parent.iterdir()) == [entry_dir.name]  # no lock, partial or temp


@pytest.mark.slow
def test_two_identical_extractions_started_together_both_succeed_without_debris(tmp_path, minilm_dir, scenes_env):
    root = tmp_path / "features"
    cmd = [sys.executable, "-m", "spatial_probing.cli", "extract", *_scenes_args(root, minilm_dir)]
    logs = [tmp_path / f"run{i}.txt" for i in range(2)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=scenes_env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
             for log in logs]
    assert [p.wait(timeout=900) for p in procs] == [0, 0], [log.read_text()[-2000:] for log in logs]
    outputs = sorted(log.read_text() for log in logs)
    assert sum("wrote " in o for o in outputs) == 1 and sum("cache hit" in o for o in outputs) == 1
    entry = _only_entry(root)
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]


# --------------------------------------------------------------------------------------------
# items 13, 17: SIGTERM


def test_sigterm_mid_extraction_stops_after_the_batch_and_resumes_to_the_same_bytes(
        tmp_path, tiny, minilm_dir, reference, monkeypatch, capsys):
    root = tmp_path / "features"
    args = _args(root, tiny, minilm_dir)
    real_write, written = FeatureStore.write_shard, count(1)

    def write_then_sigterm(path, *rest):  # a real SIGTERM, delivered while the third batch is written
        real_write(path, *rest)
        if next(written) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(FeatureStore, "write_shard", staticmethod(write_then_sigterm))
        line = _error(capsys, ["extract", *args], status=128 + signal.SIGTERM)
    partial = _partial(root)
    assert line == (f"error: stopped by SIGTERM: 3 of {N_ROWS // BATCH} batches are kept in {partial}; "
                    "rerun the same command to resume from them")
    assert len(list(partial.glob("text-*.npz"))) == 3 and not _entries(root)
    assert main(["extract", *args]) == 0
    out = capsys.readouterr().out
    assert f"resuming: 3 of {N_ROWS // BATCH} batches" in out
    assert f"extract: {N_ROWS // BATCH}/{N_ROWS // BATCH} batches (100%)" in out  # progress in a log
    assert _features_sha(root) == sha256_file(reference / "parts" / "text.npy")


@pytest.mark.slow
def test_sigterm_mid_run_subprocess_resumes_to_the_same_bytes(tmp_path, minilm_dir, scenes_env, scenes_reference):
    n_batches = -(-load_entry(scenes_reference).features.shape[0] // BATCH)
    root = tmp_path / "features"
    args = _scenes_args(root, minilm_dir)
    with open(tmp_path / "stopped.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spatial_probing.cli", "extract", *args], cwd=REPO,
                                env=scenes_env, stdout=out, stderr=subprocess.STDOUT)
        left = _kill_halfway(proc, root, n_batches, lambda: os.kill(proc.pid, signal.SIGTERM),
                             status=128 + signal.SIGTERM)
    assert f"error: stopped by SIGTERM: {left} of {n_batches} batches are kept" in (tmp_path / "stopped.txt").read_text()
    output, _ = _rerun_recording(args, scenes_env, tmp_path)
    assert f"resuming: {left} of {n_batches} batches" in output
    assert _features_sha(root) == sha256_file(scenes_reference / "parts" / "text.npy")


def test_sigterm_during_fit_stops_after_the_entry_without_result_files(tmp_path, monkeypatch, capsys):
    from spatial_probing.probes.module import LinearProbe

    entries = [toy_entry(tmp_path, name=f"enc{i}", seed=i, encoder=f"toy:enc{i}@text") for i in range(3)]
    real_solve = LinearProbe._solve

    def solve_then_sigterm(self, batch):
        fit = real_solve(self, batch)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first entry is being fitted
        return fit

    monkeypatch.setattr(LinearProbe, "_solve", solve_then_sigterm)
    out = tmp_path / "out"
    line = _error(capsys, _fit_args(out, "--data.features", json.dumps([str(e) for e in entries])),
                  status=128 + signal.SIGTERM)
    assert line == ("error: stopped by SIGTERM: 1 of 3 entries were fitted and no result file was written; "
                    "rerun the same command to fit again")
    assert not list(out.glob("*"))


# --------------------------------------------------------------------------------------------
# items 15, 16, 18: warnings, fail fast


def test_duplicate_rows_are_warned_with_a_count(tmp_path, minilm_dir, capsys):
    rows = _rows()
    dataset = _write_rows(tmp_path / "dups", [*rows, rows[3], rows[5], rows[3]])
    assert main(["extract", *_args(tmp_path / "features", dataset, minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: dups/train: 3 rows repeat an earlier row (same caption, image, relation and label; first: "
            f"row {N_ROWS}); unless folds are grouped by image (--data.folds grouped when probing)") in out


def test_captions_longer_than_the_tokenizer_limit_are_warned_with_a_count(tmp_path, minilm_dir, capsys):
    rows = _rows()
    long_caption = "The cat is left of the " + "very " * 300 + "big box."
    dataset = _write_rows(tmp_path / "long", [*rows, {**rows[0], "caption": long_caption}])
    assert main(["extract", *_args(tmp_path / "features", dataset, minilm_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"warning: long/train: 1 captions are longer than the tokenizer's limit of 256 tokens (longest 311, "
            f"first: row {N_ROWS}); their ends are truncated before encoding") in out


def test_bare_sbert_names_the_default_model(tmp_path, tiny, minilm_dir, capsys):
    capsys.readouterr()
    main(["extract", *_args(tmp_path / "features", tiny, minilm_dir), "--model.encoder", "sbert"])
    assert "extracting sbert:sentence-transformers/all-mpnet-base-v2@text features" in capsys.readouterr().out


def test_unreachable_image_host_fails_fast_naming_image_root(tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on: every connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rows = [{"image": f"{i}.jpg", "image_link": f"http://127.0.0.1:{port}/{i}.jpg", "caption": f"cat {i} is left of a box",
             "label": i % 2, "relation": "left of"} for i in range(40)]
    dataset = _write_rows(tmp_path / "offline", rows)
    line = _error(capsys, ["extract", *CPU, "--data.dataset", str(dataset), "--data.batch_size", str(BATCH),
                           "--data.image_cache", str(tmp_path / "downloads"), "--data.image_retries", "0",
                           "--model.encoder", OPENCLIP, "--model.view", "image", "--model.random_init", "true",
                           "--feature_root", str(tmp_path / "features")])
    assert line.startswith("error: the first 5 image downloads all failed to connect")
    assert "Pass --data.image_root DIR" in line


def test_unconverged_probes_are_announced_on_console_fits_csv_and_report(tmp_path, capsys):
    rows = toy_rows()
    entry = write_entry(tmp_path / "scaled", rows, toy_features(rows) * 1e4)
    out = tmp_path / "out"
    assert main(_fit_args(out, "--data.features", f"[{entry}]", "--data.normalize", "false",
                          "--model.max_iter", "3")) == 0
    console = capsys.readouterr().out
    (warning,) = pd.read_csv(out / "fits.csv")["warning"]
    assert re.fullmatch(r"\d+ of 15 probe problems of toy:enc stopped at max_iter=3 before reaching "
                        r"tol=1e-10 \(worst gradient \S+\); raise --model.max_iter, or keep --data.normalize true "
                        r"for unscaled features", warning)
    assert f"warning: {warning}" in console
    assert warning in (out / "report.html").read_text()


# --------------------------------------------------------------------------------------------
# the count quoted in the docstring

ROUND2_CASES = (
    *BAD_OPTIONS, "png-16-bit", "tiff-32-bit-int", "exif-orientation-option", "exif-orientation-in-key",
    "meta-encoder-edited", "meta-dataset-edited", "results-disk-full-atomic", "weights-edited-in-place-mtime-restored",
    "empty-train-jsonl", "non-utf8-bytes", "meta-no-sha256", "meta-json-list", "meta-invalid-json",
    "sbert-weights-truncated", "openclip-checkpoint-truncated", "feature-root-not-writable",
    "disk-full-writing-shards", "disk-full-during-merge", "out-dir-not-writable",
    "second-extraction-waits-and-reuses", "two-extractions-race", "sigterm-mid-extraction",
    "sigterm-mid-run-subprocess", "sigterm-during-fit",
    "image-name-outside-root", "image-is-a-directory", "image-symlink-to-device", "cached-download-mode",
    "duplicate-rows-warned", "long-captions-warned", "sbert-default-named", "image-host-unreachable-fails-fast",
    "unconverged-probes-announced",
)


def test_round2_cases_are_documented():
    assert len(set(ROUND2_CASES)) == len(ROUND2_CASES)
    assert set(META_DAMAGE) | set(BAD_EXTRACTIONS) <= set(ROUND2_CASES)
    assert f"\n{len(ROUND2_CASES)} fault cases" in __doc__
    undocumented = [c for c in ROUND2_CASES if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", __doc__)]
    assert undocumented == []
    reliability = (REPO / "docs" / "reliability.md").read_text()
    assert [c for c in ROUND2_CASES if f"`{c}`" not in reliability] == []
