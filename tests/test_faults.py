"""Fault injection for extraction (issue 4): kills, damaged caches, bad input, broken images, determinism.

The probe and report side (NaN/inf refusal, row-count mismatch, W&B failures, byte-identical results
CSVs) is tested in test_probe_module.py and test_report.py.

56 fault cases (``FAULT_CASES``; ``test_fault_cases_are_documented`` keeps this list and the count in step).

Resume: a run stopped at any point and rerun with the same command recomputes only what is missing
and yields a feature file byte-identical to an uninterrupted run's (``slow``: real subprocesses).
    sigkill-mid-run (slow), sigkill-ddp-then-one-process (slow), crash-mid-run
Shard damage left in ``<key>.partial/`` by a kill mid-write: recomputed, never read.
    stray-temp-shard, corrupt-shard, truncated-shard, empty-shard
Kills around the merge: the rerun finalises without recomputing, or is a cache hit.
    killed-before-merge, stale-merge-tmp-dir, killed-after-rename, killed-during-delete
Cache validity: each change gives another key (and entry directory).
    dataset-caption-edited, dataset-label-flipped, encoder-model, random-init, view, dtype, precision,
    tokenizer-config-edited, sbert-max-seq-length-edited, weights-overwritten-in-place,
    preprocessing-change-new-entry
Damaged or incompatible entries are refused with a clear message (never reused), and rebuilt on request.
    format-version-old, features-bytes-flipped, features-truncated, valid-mask-edited, meta-json-corrupt,
    overwrite-rebuilds-damaged-entry
The quick cache-hit path (a repeated command answered from its run record) hides no damage.
    run-record-corrupt, run-record-entry-damaged, run-record-entry-deleted
Bad input through the CLI: exit status 2 and ``error: ...`` naming the file/line/option, or a parse
error naming the key; and none of them touches the shards of an unfinished run.
    malformed-jsonl-line, missing-field, wrong-type, label-2, empty-caption, unknown-relation,
    missing-split, unknown-encoder, model-dir-missing-weights, model-dir-missing, batch-size-zero,
    config-unknown-key, dtype-float8, bad-input-keeps-partial-shards
Image faults from a loopback server, end to end: the run completes, each failure is recorded with its
reason, its rows are invalid and NaN, every other row finite.
    http-404, http-500, http-500-once-then-ok, slow-past-timeout, dropped-connection, truncated-jpeg,
    zero-byte, not-an-image, huge-image
Determinism and storage.
    identical-runs-byte-identical, float16-readonly-memmap
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
import pytest
from image_server import ImageServer

from spatial_probing.cli import main
from spatial_probing.data.datamodule import SpatialDataModule
from spatial_probing.encoders.module import FrozenEncoder
from spatial_probing.errors import CacheError
from spatial_probing.features import runs
from spatial_probing.features.entry import load_entry
from spatial_probing.features.extract import cache_key
from spatial_probing.features.key import FORMAT_VERSION, sha256_file
from spatial_probing.features.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
CPU = ["--config", str(REPO / "configs/trainer/cpu.yaml"), "--trainer.enable_progress_bar", "false"]
BATCH = 4
N_ROWS = 32  # 8 text batches of BATCH
OPENCLIP = "openclip:ViT-B-32/openai"

RESUME_CASES = ("sigkill-mid-run", "sigkill-ddp-then-one-process", "crash-mid-run")
MERGE_CASES = ("killed-before-merge", "stale-merge-tmp-dir", "killed-after-rename", "killed-during-delete")
DETERMINISM_CASES = ("identical-runs-byte-identical", "float16-readonly-memmap")


# --------------------------------------------------------------------------------------------
# a tiny VSR-format dataset, the CLI, and the cache on disk


def _rows() -> list[dict]:
    """N_ROWS valid VSR rows; captions differ in length so the length-sorted batch plan is exercised."""
    things = ["cat", "dog", "red cup", "small wooden chair", "bicycle", "large green umbrella"]
    relations = ["left of", "right of", "above", "under"]
    return [
        {
            "image": f"img{i % 8}.jpg",
            "image_link": None,
            "caption": f"The {things[i % 6]} is {relations[i % 4]} the {things[(5 * i + 1) % 6]}" + " today" * (i % 5),
            "label": i % 2,
            "relation": relations[i % 4],
        }
        for i in range(N_ROWS)
    ]


def _write_split(directory: Path, lines: list[str], split: str = "train") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    return directory


def _write_rows(directory: Path, rows: list[dict]) -> Path:
    return _write_split(directory, [json.dumps(row) for row in rows])


def _model_copy(minilm: Path, dest: Path, skip: tuple[str, ...] = (), link_weights: bool = True) -> Path:
    """A local copy of the MiniLM directory; config files are copied (to be edited), weights linked unless asked.

    Never write to a linked weight file: that would change the installed package.
    """
    for src in minilm.rglob("*"):
        rel = src.relative_to(minilm)
        if src.is_dir() or rel.as_posix() in skip:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".safetensors" and link_weights:
            (dest / rel).symlink_to(src)
        else:
            shutil.copy(src, dest / rel)
    return dest


def _edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _args(root: Path, dataset: Path, model: Path, *extra: str) -> list[str]:
    return [*CPU, "--data.dataset", str(dataset), "--data.batch_size", str(BATCH),
            "--model.encoder", f"sbert:{model}", "--feature_root", str(root), *extra]


def _entries(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("meta.json"))


def _only_entry(root: Path) -> Path:
    (entry,) = _entries(root)
    return entry


def _partial(root: Path) -> Path:
    (partial,) = root.rglob("*.partial")
    return partial


def _shard(partial: Path, batch_id: int) -> Path:
    return FeatureStore.shard_path(partial, "text", batch_id)


def _shard_stats(partial: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every shard: a shard that was rewritten (atomically, by rename) changes both."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(partial.glob("*.npz"))}


def _features_sha(root: Path) -> str:
    return sha256_file(_only_entry(root) / "parts" / "text.npy")


@pytest.fixture(scope="module", autouse=True)
def _module_cache(tmp_path_factory):
    """One SPATIAL_PROBING_CACHE for the module (scenes, memoised weight digests), set before any other fixture."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPATIAL_PROBING_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _write_rows(tmp_path_factory.mktemp("data") / "tiny", _rows())


@pytest.fixture(scope="module")
def reference(tiny, minilm_dir, tmp_path_factory) -> Path:
    """The entry of an uninterrupted run on the tiny dataset (treat as read-only: copy before damaging)."""
    root = tmp_path_factory.mktemp("reference")
    assert main(["extract", *_args(root, tiny, minilm_dir)]) == 0
    return _only_entry(root)


# --------------------------------------------------------------------------------------------
# stopping a run in-process at a chosen point, and watching what a rerun writes


class _Killed(Exception):
    """Stands in for SIGKILL in-process: raised where the run is to stop, nothing after it runs."""


def _run_killed(monkeypatch, args: list[str], after_shards: int | None = None) -> None:
    """Run an extraction that dies after writing ``after_shards`` shards, or (None) as its merge starts."""
    def die(*_args: object) -> None:
        raise _Killed()

    with monkeypatch.context() as patch:
        if after_shards is None:
            patch.setattr(FeatureStore, "finalize", die)
        else:
            real, written = FeatureStore.write_shard, count()

            def write(path, *rest):
                if next(written) >= after_shards:
                    raise _Killed()
                real(path, *rest)

            patch.setattr(FeatureStore, "write_shard", staticmethod(write))
        with pytest.raises(_Killed):
            main(["extract", *args])


@dataclass
class _Spy:
    """Shards a run writes, and each shard's (inode, mtime) as its merge starts."""

    written: list[str] = field(default_factory=list)
    at_merge: dict[str, tuple[int, int]] = field(default_factory=dict)


def _spy(monkeypatch) -> _Spy:
    spy = _Spy()
    real_write, real_finalize = FeatureStore.write_shard, FeatureStore.finalize

    def write(path, *rest):
        spy.written.append(path.name)
        real_write(path, *rest)

    def finalize(self, key, *rest):
        spy.at_merge.update(_shard_stats(self.partial_dir(key)))
        return real_finalize(self, key, *rest)

    monkeypatch.setattr(FeatureStore, "write_shard", staticmethod(write))
    monkeypatch.setattr(FeatureStore, "finalize", finalize)
    return spy


# --------------------------------------------------------------------------------------------
# resume


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


#: Damage a kill can leave among the shards; batch id -> how (batches 0..4 were written before the kill).
SHARD_DAMAGE: dict[str, tuple[int, Callable[[Path], None]]] = {
    # killed inside write_shard: a half-written temp file beside the shard it was to become
    "stray-temp-shard": (5, lambda p: p.with_name(f".{p.name}.424242.tmp").write_bytes(b"PK\x03\x04half")),
    "corrupt-shard": (1, lambda p: p.write_bytes(os.urandom(256))),
    "truncated-shard": (2, _truncate),
    "empty-shard": (3, lambda p: p.write_bytes(b"")),
}


def test_crash_mid_run_then_rerun_recomputes_only_missing_or_damaged_shards(
    tmp_path, tiny, minilm_dir, reference, monkeypatch, capsys
):
    root = tmp_path / "features"
    args = _args(root, tiny, minilm_dir)
    _run_killed(monkeypatch, args, after_shards=5)
    partial = _partial(root)
    assert sorted(p.name for p in partial.glob("*.npz")) == [_shard(partial, i).name for i in range(5)]
    assert not _entries(root)
    for batch_id, damage in SHARD_DAMAGE.values():
        damage(_shard(partial, batch_id))
    damaged = {_shard(partial, b).name for b, _ in SHARD_DAMAGE.values()}
    intact = {_shard(partial, b).name for b in (0, 4)}
    before = _shard_stats(partial)

    spy = _spy(monkeypatch)
    capsys.readouterr()
    assert main(["extract", *args]) == 0
    assert f"resuming: 2 of {N_ROWS // BATCH} batches" in capsys.readouterr().out
    assert set(spy.written) == {_shard(partial, i).name for i in range(N_ROWS // BATCH)} - intact
    assert damaged <= set(spy.written)
    assert {name: spy.at_merge[name] for name in intact} == {name: before[name] for name in intact}
    assert _features_sha(root) == sha256_file(reference / "parts" / "text.npy")
    assert not partial.exists()


def test_killed_before_merge_with_stale_tmp_dir_finalises_without_recomputing(
    tmp_path, tiny, minilm_dir, reference, monkeypatch, capsys
):
    root = tmp_path / "features"
    args = _args(root, tiny, minilm_dir)
    _run_killed(monkeypatch, args, after_shards=None)
    partial = _partial(root)
    n_batches = N_ROWS // BATCH
    assert len(list(partial.glob("text-*.npz"))) == n_batches and not _entries(root)
    # a merge killed before its rename leaves <key>.tmp-<pid>/ with some of the entry's files
    stale = partial.with_name(partial.name.replace(".partial", ".tmp-424242"))
    stale.mkdir()
    (stale / "features.npy").write_bytes(b"\x93NUMPY half of a file")
    before = _shard_stats(partial)

    spy = _spy(monkeypatch)
    capsys.readouterr()
    assert main(["extract", *args]) == 0
    assert f"resuming: {n_batches} of {n_batches} batches" in capsys.readouterr().out
    assert spy.written == [] and spy.at_merge == before
    assert not stale.exists() and not partial.exists()
    assert _features_sha(root) == sha256_file(reference / "parts" / "text.npy")


def _copy_reference(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the reference cache root, and its entry directory."""
    root = shutil.copytree(reference.parents[2], tmp_path / "features")
    return root, root / reference.relative_to(reference.parents[2])


def test_killed_after_rename_is_a_cache_hit(tmp_path, tiny, minilm_dir, reference, capsys):
    root, entry = _copy_reference(reference, tmp_path)
    leftover = entry.with_name(entry.name + ".partial")  # the shards, not yet dropped when the kill came
    leftover.mkdir()
    (leftover / "text-000000.npz").write_bytes(b"")
    capsys.readouterr()
    assert main(["extract", *_args(root, tiny, minilm_dir)]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert sha256_file(entry / "parts" / "text.npy") == sha256_file(reference / "parts" / "text.npy")


def test_killed_during_delete_is_rebuilt(tmp_path, tiny, minilm_dir, reference, capsys):
    root, entry = _copy_reference(reference, tmp_path)
    # `--overwrite` deletes the entry with rmtree: killed part-way, some files are gone, meta.json among them
    (entry / "meta.json").unlink()
    (entry / "valid.npy").unlink()
    capsys.readouterr()
    assert main(["extract", *_args(root, tiny, minilm_dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_entry(entry).features.shape == (N_ROWS, 384)
    assert sha256_file(entry / "parts" / "text.npy") == sha256_file(reference / "parts" / "text.npy")


# --------------------------------------------------------------------------------------------
# resume after a real SIGKILL (subprocesses)

# Runs `python -m spatial_probing.cli ...` unchanged, but records each shard's (inode, mtime) as the
# merge starts (the merge deletes the shards, so they cannot be inspected afterwards).
_RUN_CLI_RECORDING_SHARDS = """
import json, os, runpy
from spatial_probing.features.store import FeatureStore

_finalize = FeatureStore.finalize

def finalize(self, key, *rest):
    shards = sorted(self.partial_dir(key).glob("*.npz"))
    with open(os.environ["FAULTS_SHARD_STATS"], "w") as out:
        json.dump({p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in shards}, out)
    return _finalize(self, key, *rest)

FeatureStore.finalize = finalize
runpy.run_module("spatial_probing.cli", run_name="__main__", alter_sys=True)
"""
SCENES = ["--data.dataset", "scenes", "--data.scenes_per_relation", "10", "--data.batch_size", str(BATCH)]


@pytest.fixture(scope="module")
def scenes_env() -> dict[str, str]:
    """Environment of the subprocess runs: the module's cache (scenes are generated once), hub offline."""
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def _scenes_args(root: Path, model: Path, trainer: str = "cpu.yaml") -> list[str]:
    return ["--config", str(REPO / "configs/trainer" / trainer), "--trainer.enable_progress_bar", "false",
            *SCENES, "--model.encoder", f"sbert:{model}", "--feature_root", str(root)]


def _run(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=900)
    assert done.returncode == 0, log.read_text()[-3000:]
    return done


@pytest.fixture(scope="module")
def scenes_reference(minilm_dir, scenes_env, tmp_path_factory) -> Path:
    """An uninterrupted one-process extraction of the scenes, as a subprocess like the runs it is compared with."""
    root = tmp_path_factory.mktemp("scenes-reference")
    _run([sys.executable, "-m", "spatial_probing.cli", "extract", *_scenes_args(root, minilm_dir)], scenes_env,
         root / "log.txt")
    return _only_entry(root)


def _text_shards(root: Path) -> list[Path]:
    return [p for p in root.rglob("text-*.npz") if p.parent.name.endswith(".partial")]


def _kill_halfway(proc: subprocess.Popen, root: Path, n_batches: int, kill: Callable[[], None],
                  status: int = -signal.SIGKILL) -> int:
    """Wait until half of the batches are on disk, kill the run (it must end with ``status``), return its shards."""
    deadline = time.monotonic() + 600
    while len(_text_shards(root)) < n_batches // 2:
        assert proc.poll() is None, "the extraction ended before it could be killed"
        assert time.monotonic() < deadline, "no progress within 600 s"
        time.sleep(0.02)
    kill()
    assert proc.wait(timeout=60) == status
    left = len(_text_shards(root))
    assert n_batches // 2 <= left < n_batches and not _entries(root)
    return left


def _rerun_recording(args: list[str], env: dict[str, str], tmp_path: Path) -> tuple[str, dict[str, list[int]]]:
    """Rerun the extraction as a subprocess; its output and the shard (inode, mtime) at its merge."""
    stats = tmp_path / "shard-stats.json"
    _run([sys.executable, "-c", _RUN_CLI_RECORDING_SHARDS, "extract", *args], env | {"FAULTS_SHARD_STATS": str(stats)},
         tmp_path / "rerun.txt")
    return (tmp_path / "rerun.txt").read_text(), json.loads(stats.read_text())


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_bytes(tmp_path, minilm_dir, scenes_env, scenes_reference):
    n_rows = load_entry(scenes_reference).features.shape[0]
    n_batches = -(-n_rows // BATCH)
    root = tmp_path / "features"
    args = _scenes_args(root, minilm_dir)
    with open(tmp_path / "killed.txt", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spatial_probing.cli", "extract", *args], cwd=REPO,
                                env=scenes_env, stdout=out, stderr=subprocess.STDOUT)
        left = _kill_halfway(proc, root, n_batches, lambda: os.kill(proc.pid, signal.SIGKILL))
    kept = {p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in _text_shards(root)}

    output, at_merge = _rerun_recording(args, scenes_env, tmp_path)
    assert f"resuming: {left} of {n_batches} batches" in output
    assert len(at_merge) == n_batches
    assert {name: at_merge[name] for name in kept} == kept  # reused as they were, not rewritten
    assert _features_sha(root) == sha256_file(scenes_reference / "parts" / "text.npy")


@pytest.mark.slow
def test_sigkill_ddp_run_resumes_in_one_process(tmp_path, minilm_dir, scenes_env, scenes_reference):
    n_rows = load_entry(scenes_reference).features.shape[0]
    n_batches = -(-n_rows // BATCH)
    root = tmp_path / "features"
    with open(tmp_path / "killed.txt", "w") as out:
        # its own session, so one killpg reaches both ranks (rank 1 is launched by rank 0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "spatial_probing.cli", "extract", *_scenes_args(root, minilm_dir, "cpu_ddp.yaml")],
            cwd=REPO, env=scenes_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        left = _kill_halfway(proc, root, n_batches, lambda: os.killpg(proc.pid, signal.SIGKILL))
    kept = {p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in _text_shards(root)}

    output, at_merge = _rerun_recording(_scenes_args(root, minilm_dir), scenes_env, tmp_path)
    assert f"resuming: {left} of {n_batches} batches" in output
    assert {name: at_merge[name] for name in kept} == kept
    resumed, ref = load_entry(_only_entry(root)), load_entry(scenes_reference)
    assert resumed.meta["world_size"] == 1 and resumed.rows.fingerprint == ref.rows.fingerprint
    # shards from 2 one-thread ranks and 1 two-thread process may differ in the last bits
    assert np.abs(np.asarray(resumed.features) - np.asarray(ref.features)).max() <= 1e-5


# --------------------------------------------------------------------------------------------
# cache validity


@dataclass
class _KeyInputs:
    """What a cache key is computed from; ``dataset`` and ``model`` are private copies a case may edit."""

    dataset: Path
    model: Path
    encoder: str | None = None
    view: str | None = None
    random_init: bool = False
    dtype: str = "float32"
    precision: str = "32-true"

    def key_dir(self, root: Path) -> Path:
        model = FrozenEncoder(self.encoder or f"sbert:{self.model}", view=self.view, random_init=self.random_init)
        datamodule = SpatialDataModule(dataset=str(self.dataset), batch_size=BATCH)
        return FeatureStore(root).entry_dir(cache_key(model, datamodule, self.dtype, self.precision))


def _edit_row(dataset: Path, **changes: object) -> None:
    rows = _rows()
    rows[5] |= changes
    _write_rows(dataset, rows)


#: case -> (inputs before, change applied after the first key was taken)
KEY_CASES: dict[str, tuple[dict, Callable[[_KeyInputs], None]]] = {
    "dataset-caption-edited": ({}, lambda k: _edit_row(k.dataset, caption="The cat is left of the dog now")),
    "dataset-label-flipped": ({}, lambda k: _edit_row(k.dataset, label=1 - _rows()[5]["label"])),
    "encoder-model": ({}, lambda k: setattr(k, "encoder", "sbert:sentence-transformers/all-mpnet-base-v2")),
    "random-init": ({}, lambda k: setattr(k, "random_init", True)),
    "view": ({"encoder": OPENCLIP, "view": "text"}, lambda k: setattr(k, "view", "image")),
    "dtype": ({}, lambda k: setattr(k, "dtype", "float16")),
    "precision": ({}, lambda k: setattr(k, "precision", "bf16-mixed")),
    "tokenizer-config-edited": ({}, lambda k: _edit_json(k.model / "tokenizer_config.json", model_max_length=16)),
    "sbert-max-seq-length-edited": ({}, lambda k: _edit_json(k.model / "sentence_bert_config.json", max_seq_length=6)),
}


@pytest.mark.parametrize("case", KEY_CASES)
def test_each_change_gives_another_cache_key(case, tmp_path, minilm_dir):
    before, change = KEY_CASES[case]
    inputs = _KeyInputs(dataset=_write_rows(tmp_path / "tiny", _rows()),
                        model=_model_copy(minilm_dir, tmp_path / "model"), **before)
    first = inputs.key_dir(tmp_path)
    assert inputs.key_dir(tmp_path) == first  # the key is stable while nothing changes
    change(inputs)
    assert inputs.key_dir(tmp_path) != first


def test_preprocessing_change_gives_a_new_entry_not_the_cached_one(tmp_path, tiny, minilm_dir):
    root, model = tmp_path / "features", _model_copy(minilm_dir, tmp_path / "model")
    assert main(["extract", *_args(root, tiny, model)]) == 0
    first = _only_entry(root)
    _edit_json(model / "sentence_bert_config.json", max_seq_length=6)
    assert main(["extract", *_args(root, tiny, model)]) == 0
    (second,) = set(_entries(root)) - {first}
    assert second.parent == first.parent  # same encoder and dataset, another key
    a, b = load_entry(first), load_entry(second)
    assert b.meta["preprocessing_fingerprint"] != a.meta["preprocessing_fingerprint"]
    assert not np.allclose(a.features, b.features, atol=1e-3)  # captions are now cut at 6 tokens


def test_weights_overwritten_in_place_give_another_key(tmp_path, minilm_dir):
    model = _model_copy(minilm_dir, tmp_path / "model", link_weights=False)
    weights = model / "model.safetensors"
    inputs = _KeyInputs(dataset=_write_rows(tmp_path / "tiny", _rows()), model=model)
    first = inputs.key_dir(tmp_path)
    with open(weights, "r+b") as handle:  # a fine-tuned checkpoint of the same architecture: same size
        handle.seek(-4096, os.SEEK_END)
        handle.write(os.urandom(4096))
    assert inputs.key_dir(tmp_path) != first


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    path.write_bytes(bytes(data))


def _old_format(entry: Path) -> None:
    _edit_json(entry / "meta.json", key=json.loads((entry / "meta.json").read_text())["key"] | {"format_version": 0})


#: case -> (damage to a complete entry, what the refusal must say)
ENTRY_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "format-version-old": (_old_format, f"written with cache format 0, this version reads format {FORMAT_VERSION}"),
    "features-bytes-flipped": (lambda e: _flip_bytes(e / "parts" / "text.npy"), "text.npy does not match the checksum"),
    "features-truncated": (lambda e: _truncate(e / "parts" / "text.npy"), "text.npy does not match the checksum"),
    "valid-mask-edited": (lambda e: np.save(e / "valid.npy", np.zeros(N_ROWS, bool)), "valid.npy does not match"),
    "meta-json-corrupt": (lambda e: _truncate(e / "meta.json"), "meta.json is corrupt"),
}


@pytest.mark.parametrize("case", ENTRY_DAMAGE)
def test_damaged_or_incompatible_entry_is_refused(case, tmp_path, tiny, minilm_dir, reference, capsys):
    damage, message = ENTRY_DAMAGE[case]
    root, entry = _copy_reference(reference, tmp_path)
    damage(entry)
    files = {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["extract", *_args(root, tiny, minilm_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(entry) in err and message in err
    with pytest.raises(CacheError, match=re.escape(message)):
        load_entry(entry)
    assert {p.relative_to(entry): p.read_bytes() for p in entry.rglob("*") if p.is_file()} == files  # left as found


def test_overwrite_rebuilds_a_damaged_entry(tmp_path, tiny, minilm_dir, reference):
    root, entry = _copy_reference(reference, tmp_path)
    _flip_bytes(entry / "parts" / "text.npy")
    assert main(["extract", *_args(root, tiny, minilm_dir, "--overwrite", "true")]) == 0
    assert sha256_file(entry / "parts" / "text.npy") == sha256_file(reference / "parts" / "text.npy")


RUN_RECORD_CASES = ("run-record-corrupt", "run-record-entry-damaged", "run-record-entry-deleted")


def test_quick_cache_hit_path_never_hides_damage(tmp_path, tiny, minilm_dir, reference, capsys):
    """A repeated command is answered from its run record; a bad record or entry still ends right."""
    root, entry = _copy_reference(reference, tmp_path)
    args = _args(root, tiny, minilm_dir)
    assert main(["extract", *args]) == 0  # the full path's cache hit records the run
    record = runs._record_path(runs.invocation_digest(args))
    assert runs.recorded_hit(args).path == entry

    record.write_text('{"key": {"encoder": ')  # run-record-corrupt: the full path answers
    capsys.readouterr()
    assert main(["extract", *args]) == 0 and "cache hit" in capsys.readouterr().out

    _flip_bytes(entry / "parts" / "text.npy")  # run-record-entry-damaged: refused, as without a record
    assert main(["extract", *args]) == 2
    assert "text.npy does not match the checksum" in capsys.readouterr().err

    shutil.rmtree(entry)  # run-record-entry-deleted: recomputed
    assert main(["extract", *args]) == 0 and "wrote" in capsys.readouterr().out
    assert sha256_file(entry / "parts" / "text.npy") == sha256_file(reference / "parts" / "text.npy")


# --------------------------------------------------------------------------------------------
# bad input through the CLI


def _bad_line(tmp: Path, line_no: int, text: str) -> list[str]:
    """A copy of the tiny dataset (in ``bad-data/``) whose line ``line_no`` is ``text``."""
    lines = [json.dumps(row) for row in _rows()]
    lines[line_no - 1] = text
    return ["--data.dataset", str(_write_split(tmp / "bad-data", lines))]


def _bad_row(tmp: Path, drop: str | None = None, **changes: object) -> list[str]:
    row = {k: v for k, v in _rows()[2].items() if k != drop} | changes
    return _bad_line(tmp, 3, json.dumps(row))


def _typo_config(tmp: Path) -> list[str]:
    (tmp / "typo.yaml").write_text("data:\n  batch_sise: 8\n")
    return ["--config", str(tmp / "typo.yaml")]


@dataclass(frozen=True)
class _Bad:
    """One bad input: extra arguments (given the scratch dir and the MiniLM dir) and what the error names."""

    args: Callable[[Path, Path], list[str]]
    names: tuple[str, ...]


BAD_INPUTS: dict[str, _Bad] = {
    "malformed-jsonl-line": _Bad(lambda t, m: _bad_line(t, 3, '{"caption": "The cat is'),
                                 ("bad-data/train.jsonl:3", "malformed JSON")),
    "missing-field": _Bad(lambda t, m: _bad_row(t, drop="label"), ("train.jsonl:3", "missing field 'label'")),
    "wrong-type": _Bad(lambda t, m: _bad_row(t, caption=42), ("train.jsonl:3", "'caption' must be a string")),
    "label-2": _Bad(lambda t, m: _bad_row(t, label=2), ("train.jsonl:3", "'label' must be 0, 1", "got 2")),
    "empty-caption": _Bad(lambda t, m: _bad_row(t, caption="  "), ("train.jsonl:3", "'caption' is empty")),
    "unknown-relation": _Bad(lambda t, m: ["--data.relations", '["left of", "levitating above"]'],
                             ("unknown relation(s) ['levitating above']", "left of")),
    "missing-split": _Bad(lambda t, m: ["--data.split", "validation"],
                          ("split 'validation' not found", "validation.jsonl", "['train']")),
    "unknown-encoder": _Bad(lambda t, m: ["--model.encoder", "clipp:ViT-B-32"],
                            ("unknown encoder 'clipp:ViT-B-32'", "list-encoders")),
    "model-dir-missing-weights": _Bad(
        lambda t, m: ["--model.encoder", f"sbert:{_model_copy(m, t / 'partial-model', skip=('model.safetensors',))}"],
        ("partial-model is missing model.safetensors",)),
    "model-dir-missing": _Bad(lambda t, m: ["--model.encoder", f"sbert:{t / 'no-such-model'}"],
                              ("no-such-model does not exist",)),
    "batch-size-zero": _Bad(lambda t, m: ["--data.batch_size", "0"], ("--data.batch_size must be at least 1",)),
    "config-unknown-key": _Bad(lambda t, m: _typo_config(t), ("batch_sise",)),
    "dtype-float8": _Bad(lambda t, m: ["--dtype", "float8"], ('"dtype"', "float8", "float16")),
}


def _refused(argv: list[str], capsys) -> str:
    """Run a command that must be refused; return its error output."""
    capsys.readouterr()
    assert main(argv) == 2  # the parser's mistakes too: one error line, exit 2 (round 3, case 7)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_an_error_naming_it(case, tmp_path, tiny, minilm_dir, capsys):
    bad = BAD_INPUTS[case]
    err = _refused(["extract", *_args(tmp_path / "f", tiny, minilm_dir, *bad.args(tmp_path, minilm_dir))], capsys)
    assert "\nerror: " in f"\n{err}"
    for name in bad.names:
        assert name in err


def test_bad_input_after_a_partial_run_keeps_its_shards(tmp_path, tiny, minilm_dir, reference, monkeypatch, capsys):
    root = tmp_path / "features"
    args = _args(root, tiny, minilm_dir)
    _run_killed(monkeypatch, args, after_shards=3)
    partial = _partial(root)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in partial.iterdir()}
    for case, bad in BAD_INPUTS.items():
        # --overwrite true: even a forced recompute must check its input before deleting anything
        scratch = tmp_path / case
        scratch.mkdir()
        _refused(["extract", *args, *bad.args(scratch, minilm_dir), "--overwrite", "true"], capsys)
        after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in partial.iterdir()}
        assert after == before, case
    assert main(["extract", *args]) == 0
    assert f"resuming: 3 of {N_ROWS // BATCH} batches" in capsys.readouterr().out
    assert _features_sha(root) == sha256_file(reference / "parts" / "text.npy")


# --------------------------------------------------------------------------------------------
# image faults, end to end


#: case -> (route on the loopback server, reason recorded; None: the image loads)
IMAGE_FAULTS: dict[str, tuple[str, str | None]] = {
    "http-404": ("/status/404", "http_404"),
    "http-500": ("/status/500", "http_500"),
    "http-500-once-then-ok": ("/flaky/1/photo.jpg", None),
    "slow-past-timeout": ("/slow/red.png", "timeout"),
    "dropped-connection": ("/dropped.png", "connection_error"),
    "truncated-jpeg": ("/truncated.jpg", "corrupt"),
    "zero-byte": ("/empty.png", "empty_file"),
    "not-an-image": ("/page.png", "not_an_image"),
    "huge-image": ("/huge.png", "too_large"),
}
GOOD_ROUTES = ("/images/red.png", "/images/photo.jpg", "/images/big.png")


def test_image_faults_are_recorded_and_masked_end_to_end(tmp_path, capsys):
    routes = {f"ok{i}.png": (route, None) for i, route in enumerate(GOOD_ROUTES)}
    routes |= {f"{case}.img": spec for case, spec in IMAGE_FAULTS.items()}
    with ImageServer(slow_s=3.0) as server:
        rows = [
            {"image": name, "image_link": server.url(route), "caption": f"the {noun} is left of the box",
             "label": label, "relation": "left of"}
            for name, (route, _) in routes.items()
            for label, noun in ((1, "cat"), (0, "dog"))  # two captions per image: dedup and masking per row
        ]
        dataset = _write_rows(tmp_path / "served", rows)
        root = tmp_path / "features"
        assert main(["extract", *CPU, "--data.dataset", str(dataset), "--data.batch_size", str(BATCH),
                     "--data.image_cache", str(tmp_path / "downloads"), "--data.image_timeout_s", "0.5",
                     "--data.image_retries", "1", "--model.encoder", OPENCLIP, "--model.view", "concat",
                     "--model.random_init", "true", "--feature_root", str(root)]) == 0
        # bounded retries: transient failures are tried twice, a 404 once
        assert server.count("/status/500") == 2 and server.count("/flaky/1/photo.jpg") == 2
        assert server.count("/status/404") == 1
    entry = load_entry(_only_entry(root))
    expected = {name: reason for name, (_, reason) in routes.items() if reason is not None}
    assert {f["image"]: f["reason"] for f in entry.failures} == expected
    manifest = [json.loads(line) for line in (entry.path / "failures.jsonl").read_text().splitlines()]
    assert manifest == entry.failures
    bad = np.array([row["image"] in expected for row in rows])
    assert sorted(f["row"] for f in manifest) == np.flatnonzero(bad).tolist()
    assert entry.features.shape == (len(rows), 512 + 512)
    assert (entry.valid == ~bad).all() and entry.meta["n_valid"] == int((~bad).sum())
    assert np.isnan(entry.features[bad]).all() and np.isfinite(entry.features[~bad]).all()
    assert "failed rows" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# determinism and storage


def test_identical_float16_runs_are_byte_identical_and_read_only_memmaps(tmp_path, tiny, minilm_dir, reference):
    shas = []
    for name in ("first", "second"):
        root = tmp_path / name
        assert main(["extract", *_args(root, tiny, minilm_dir, "--dtype", "float16")]) == 0
        shas.append(_features_sha(root))
    assert shas[0] == shas[1]
    entry = load_entry(_only_entry(tmp_path / "first"))
    assert entry.features.dtype == np.float16 and entry.meta["key"]["dtype"] == "float16"
    assert isinstance(entry.features, np.memmap) and not entry.features.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        entry.features[0, 0] = 0
    assert np.abs(entry.features - load_entry(reference).features).max() <= 1e-3


# --------------------------------------------------------------------------------------------
# the count quoted in the docstring

FAULT_CASES = (*RESUME_CASES, *SHARD_DAMAGE, *MERGE_CASES, *KEY_CASES, "weights-overwritten-in-place",
               "preprocessing-change-new-entry",
               *ENTRY_DAMAGE, "overwrite-rebuilds-damaged-entry", *RUN_RECORD_CASES, *BAD_INPUTS, "bad-input-keeps-partial-shards",
               *IMAGE_FAULTS, *DETERMINISM_CASES)


def test_fault_cases_are_documented():
    assert len(set(FAULT_CASES)) == len(FAULT_CASES)
    assert f"\n{len(FAULT_CASES)} fault cases" in __doc__
    undocumented = [case for case in FAULT_CASES if not re.search(rf"(?<![\w-]){re.escape(case)}(?![\w-])", __doc__)]
    assert undocumented == []
