"""Records of finished extractions, so a repeated command is answered without importing Lightning.

Importing torch + Lightning costs several seconds; the cache key does not need them. Each finished
``extract`` records, under a digest of its exact invocation (working directory, arguments and the
content of every ``--config`` file), the inputs of its key. A repeated invocation reloads the rows,
recomputes the key from those inputs (so an edited dataset or model changes it) and, when the entry is
complete and verified, is a cache hit. Anything else falls through to the full LightningCLI path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from spatial_probing import __version__
from spatial_probing.data.sources import cache_root, load_rows
from spatial_probing.features.entry import FeatureEntry
from spatial_probing.features.key import make_key
from spatial_probing.features.store import FeatureStore
from spatial_probing.io import atomic_write

#: Arguments that must always reach the full CLI.
_BYPASS = {"--print_config", "--help", "-h", "--overwrite", "--overwrite=true", "--overwrite=True"}


def invocation_digest(args: list[str]) -> str | None:
    """Digest of an ``extract`` invocation, or None when it must not take the quick path."""
    if _BYPASS.intersection(args) or any(a.startswith("--print_config") for a in args):
        return None
    digest = hashlib.sha256(json.dumps([__version__, os.getcwd(), args]).encode())
    for path in _config_paths(args):
        if not Path(path).is_file():
            return None
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _config_paths(args: list[str]) -> list[str]:
    """The files named by ``--config PATH``, then those named by ``--config=PATH``."""
    paths = [value for flag, value in zip(args, args[1:], strict=False) if flag == "--config"]
    return paths + [arg.partition("=")[2] for arg in args if arg.startswith("--config=")]


def _record_path(digest: str) -> Path:
    return cache_root() / "runs" / f"{digest}.json"


def record_run(args: list[str], entry: FeatureEntry, data_args: dict, model: str, feature_root: str) -> None:
    """Remember how ``args`` maps to ``entry``'s key inputs (written atomically; best effort)."""
    digest = invocation_digest(args)
    if digest is None:
        return
    key = entry.meta["key"]
    record = {"data": data_args, "model": model, "feature_root": feature_root, "key": key}
    path = _record_path(digest)
    atomic_write(path, json.dumps(record, sort_keys=True))


def recorded_hit(args: list[str]) -> FeatureEntry | None:
    """The verified entry for a repeated invocation whose inputs are unchanged, else None."""
    digest = invocation_digest(args)
    if digest is None or not _record_path(digest).is_file():
        return None
    try:
        record = json.loads(_record_path(digest).read_text())
        key = record["key"]
        rows = load_rows(**record["data"])
        fresh = make_key(key["encoder"], key["view"], record["model"], rows, key["dtype"], key["precision"],
                         key["layers"], key["image_orientation"], uses_images=True)  # as recorded: the invocation fixes it
        if fresh.as_dict() != key:
            return None
        return FeatureStore(record["feature_root"]).lookup(fresh)
    except Exception:  # noqa: BLE001 - any doubt sends the command down the full path, which reports errors
        return None
