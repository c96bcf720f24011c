"""Visual Spatial Reasoning (VSR) rows from the Hugging Face hub or a local directory of split files."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spatial_probing.data.rows import SpatialRows
from spatial_probing.errors import DataError

HUB_SPLITS = ("train", "dev", "test")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_CORE_FIELDS = ("image", "image_link", "caption", "label", "relation")

def load_vsr(source: str, split: str, relations: list[str] | None = None) -> SpatialRows:
    """Load and validate one split of VSR-format rows.

    Args:
        source: a local directory holding ``{split}.jsonl`` files (e.g. a clone of VSR's
            ``data/splits/random``, or a directory written by `write_scenes`), or a hub id
            (``cambridgeltl/vsr_random``, ``cambridgeltl/vsr_zeroshot``).
        split: the split to load (``train``, ``dev``, ``test``).
        relations: keep only rows with these relations (None keeps all).

    Every row is checked; the first bad one raises `DataError` naming the file, line and field.
    Fields beyond the five VSR core fields become ``extra`` columns (None where a row lacks them).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        records, origin = _read_local(path, split), str(path / f"{split}.jsonl")
        name = _local_name(path)
    elif _HUB_ID.match(source) and not path.exists():
        records, origin = _read_hub(source, split), f"{source}:{split}"
        name = source.split("/")[-1]
    else:
        raise DataError(f"dataset source {source!r} is neither a directory nor a hub id like "
                        "'cambridgeltl/vsr_random'")
    rows = _to_rows(records, origin, name=f"{name}/{split}", source=str(source))
    return _filter_relations(rows, relations) if relations is not None else rows


def dataset_summary(rows: SpatialRows) -> dict[str, Any]:
    """Row, image, label and relation counts plus the fingerprint of a table, for ``meta.json``."""
    n_true = int(rows.labels.sum())
    counts = rows.relation_counts()
    return {
        "name": rows.name,
        "source": rows.source,
        "n_rows": len(rows),
        "n_images": len(rows.unique_images()[0]),
        "n_true": n_true,
        "n_false": len(rows) - n_true,
        "frac_true": n_true / len(rows) if len(rows) else float("nan"),
        "n_relations": len(counts),
        "relation_counts": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "fingerprint": rows.fingerprint,
    }


def _local_name(path: Path) -> str:
    """Dataset name of a local directory: VSR's split folders get a ``vsr_`` prefix, scene dirs are ``scenes``."""
    resolved = path.resolve()
    if (resolved / "scenes.json").is_file():
        return "scenes"
    if resolved.name in ("random", "zeroshot"):
        return f"vsr_{resolved.name}"
    return resolved.name


def _read_local(path: Path, split: str) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed JSON) for every non-blank line of ``path/{split}.jsonl``."""
    file = path / f"{split}.jsonl"
    if not file.is_file():
        available = sorted(p.stem for p in path.glob("*.jsonl"))
        raise DataError(f"split {split!r} not found: {file} does not exist; available splits in {path}: "
                        f"{available or 'none (no *.jsonl files)'}")
    with file.open("rb") as f:  # bytes, decoded per line, so a decoding error can name its line
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{file}:{line_no}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from exc
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}:{line_no}: malformed JSON ({exc.msg} at column {exc.colno})") from exc


def _read_hub(hub_id: str, split: str) -> Iterator[tuple[int, Any]]:
    """(row number, row dict) of one split of a VSR dataset on the Hugging Face hub."""
    if split not in HUB_SPLITS:
        raise DataError(f"split {split!r} not found for {hub_id}; available splits: {list(HUB_SPLITS)}")
    import datasets  # deferred: importing datasets is slow and only the hub path needs it

    try:
        # VSR's hub repos hold plain {train,dev,test}.jsonl; naming the file keeps "dev" from being
        # renamed "validation" by the hub's split inference.
        ds = datasets.load_dataset(hub_id, data_files={split: f"{split}.jsonl"}, split=split)
    except OSError as exc:  # ConnectionError (offline, unreachable) and DatasetNotFoundError are OSErrors
        raise DataError(
            f"cannot load {hub_id!r} from the Hugging Face hub (unreachable or offline: {exc}), and no local "
            f"directory of that name exists. Pass a local "
            "directory of {train,dev,test}.jsonl instead, e.g. a clone of the VSR repository's "
            "data/splits/random (https://github.com/cambridgeltl/visual-spatial-reasoning)."
        ) from exc
    yield from enumerate(ds, start=1)


def _to_rows(records: Iterable[tuple[int, Any]], origin: str, name: str, source: str) -> SpatialRows:
    """Validate every record and build the table; extra fields become extra columns."""
    columns: dict[str, list] = {f: [] for f in _CORE_FIELDS}
    extra: dict[str, dict[int, Any]] = {}
    for i, (line_no, record) in enumerate(records):
        row = _validate(record, f"{origin}:{line_no}")
        for f in _CORE_FIELDS:
            columns[f].append(row[f])
        for key in record.keys() - set(_CORE_FIELDS):
            extra.setdefault(key, {})[i] = record[key]
    n = len(columns["caption"])
    return SpatialRows(
        name=name,
        captions=tuple(columns["caption"]),
        relations=tuple(columns["relation"]),
        labels=np.array(columns["label"], dtype=np.int8),
        images=tuple(columns["image"]),
        image_links=tuple(columns["image_link"]),
        source=source,
        extra={key: tuple(values.get(i) for i in range(n)) for key, values in sorted(extra.items())},
    )


def _validate(record: Any, where: str) -> dict[str, Any]:
    """The core fields of one record, or `DataError` naming ``file:line`` and the offending field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key in ("caption", "relation", "image"):
        if key not in record:
            raise DataError(f"{where}: missing field {key!r}")
        value = record[key]
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise DataError(f"{where}: field {key!r} is empty or whitespace")
    if "label" not in record:
        raise DataError(f"{where}: missing field 'label'")
    label = record["label"]
    # bool is an int subclass; both are accepted, but 1.0, "1" or 2 are not labels.
    if not isinstance(label, int) or label not in (0, 1):
        raise DataError(f"{where}: field 'label' must be 0, 1, true or false, got {label!r}")
    link = record.get("image_link")
    if link is not None and not isinstance(link, str):
        raise DataError(f"{where}: field 'image_link' must be a string or null, got {type(link).__name__}")
    return {"caption": record["caption"], "relation": record["relation"], "image": record["image"],
            "label": int(label), "image_link": link or None}


def _filter_relations(rows: SpatialRows, relations: list[str]) -> SpatialRows:
    """Rows whose relation is in ``relations``; an unknown relation is an error, not an empty result."""
    known = rows.relation_counts()
    unknown = [r for r in relations if r not in known]
    if unknown:
        raise DataError(f"{rows.name}: unknown relation(s) {unknown}; relations in this split: {sorted(known)}")
    wanted = set(relations)
    return rows.subset([i for i, r in enumerate(rows.relations) if r in wanted])
