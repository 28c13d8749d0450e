"""Crash-safe, resumable Parquet store for generated samples, plus its dataset card.

Layout under ``out_dir``: ``manifest.json`` (config the run was started with),
``data/chunk-NNNNN.parquet`` (accepted rows with PNG/JPEG frames, loadable by Hugging Face
``datasets``), ``attempts/chunk-NNNNN.parquet`` (every row without frames, so every verifier
score is kept) and ``staging/chunk-NNNNN/attempt-NNNNNNNNN.parquet`` (finished attempts of an
unfinished chunk). Every file is written to a temp file and ``os.replace``d, so a run killed at
any moment resumes with no lost and no duplicated samples, and the result does not depend on
how many workers wrote it.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

from failrecov_ros.evaluation import metrics

_LOG = logging.getLogger(__name__)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_TMP = ".tmp"


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature: dict) -> dict:
    return {"feature": feature, "_type": "List"}


_F64, _I64, _STR, _BOOL = _value("float64"), _value("int64"), _value("string"), _value("bool")
_DIRECTIVE = {k: _I64 for k in ("dir_x", "bins_x", "dir_y", "bins_y", "dir_z", "bins_z")}
_DIRECTIVE.update(gripper=_STR, keyframe=_I64)

# Hugging Face features (datasets >= 4 spelling, ``List``); the Arrow schema is derived from them.
FEATURES: dict[str, dict] = {
    "sample_id": _STR, "attempt": _I64, "accepted": _BOOL, "generator": _STR,
    "failure_type": _STR, "stage": _STR, "task": _STR, "instruction": _STR,
    "episode_seed": _I64, "failed": _BOOL, "label_json": _STR, "label_dream2fix": _STR,
    "label_failsafe": _STR, "ee_delta": _list(_F64), "directive": _DIRECTIVE,
    "frames": _list({"_type": "Image"}), "frame_times": _list(_F64),
    "joint_positions": _list(_list(_F64)), "gripper_width": _list(_F64),
    "tcp_pose": _list(_list(_F64)), "parameters_json": _STR, "variation_json": _STR,
    "scores_json": _STR, "reasons": _list(_STR), "error": _STR,
}
COLUMNS = tuple(FEATURES)


def _arrow_type(feature: dict) -> pa.DataType:
    kind = feature.get("_type")
    if kind == "Value":
        return {"float64": pa.float64(), "int64": pa.int64(), "string": pa.string(),
                "bool": pa.bool_()}[feature["dtype"]]
    if kind == "List":
        return pa.list_(_arrow_type(feature["feature"]))
    if kind == "Image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.struct([(name, _arrow_type(sub)) for name, sub in feature.items()])


def _schema(features: dict[str, dict]) -> pa.Schema:
    meta = {"huggingface": json.dumps({"info": {"features": features}})}
    return pa.schema([(k, _arrow_type(f)) for k, f in features.items()], metadata=meta)


SAMPLE_SCHEMA = _schema(FEATURES)
"""Accepted-sample shards (and staged attempts): all columns, ``frames`` as image structs."""
ATTEMPT_SCHEMA = _schema({k: f for k, f in FEATURES.items() if k != "frames"})
"""Attempts tables: every row of every attempt, without frames."""


def encode_frames(rgb: np.ndarray, image_format: str = "png", quality: int = 90) -> list[dict]:
    """Encode an RGB window (uint8, N x H x W x 3) as ``datasets`` image structs.

    PNG is lossless (the default, so verifiers and training see the same pixels); JPEG trades
    exactness for size with ``quality``.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {rgb.dtype}")
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {rgb.shape}")
    fmt = image_format.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    options = {"format": "PNG"} if fmt == "png" else {"format": "JPEG", "quality": quality}
    encoded = []
    for frame in rgb:
        buffer = io.BytesIO()
        Image.fromarray(frame, mode="RGB").save(buffer, **options)
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    return encoded


def decode_frames(encoded: list[dict]) -> np.ndarray:
    """Decode image structs (as stored or staged) back to a uint8 N x H x W x 3 array."""
    return np.stack([np.asarray(Image.open(io.BytesIO(e["bytes"])).convert("RGB"))
                     for e in encoded])


def rows_to_table(rows: list[dict], schema: pa.Schema = SAMPLE_SCHEMA,
                  image_format: str = "png", quality: int = 90) -> pa.Table:
    """Build a table, checking keys so a typo cannot silently become a null column.

    ``frames`` may be an array (encoded here), already-encoded structs (from ``staged``) or None.
    """
    wanted = set(COLUMNS)
    prepared = []
    for row in rows:
        if set(row) != wanted:
            missing, extra = sorted(wanted - set(row)), sorted(set(row) - wanted)
            raise ValueError(f"row {row.get('sample_id')!r}: missing keys {missing}, "
                             f"unknown keys {extra}")
        out = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
               for k, v in row.items() if k != "frames" and k in schema.names}
        if "frames" in schema.names:
            frames = row["frames"]
            if isinstance(frames, np.ndarray):
                frames = encode_frames(frames, image_format, quality)
            out["frames"] = frames
        prepared.append(out)
    return pa.Table.from_pylist(prepared, schema=schema)


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write next to ``path`` then rename: readers see the whole file or none of it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{_TMP}")
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:05d}"


class ChunkStore:
    """Chunk files and per-attempt staging under one output directory.

    A chunk is done only when its attempts file exists; it is written after the data file,
    so a crash between the two leaves the chunk to be recomputed, never half counted.
    """

    def __init__(self, out_dir: str | os.PathLike, image_format: str = "png",
                 quality: int = 90) -> None:
        self.out_dir = Path(out_dir)
        self.image_format, self.quality = image_format, quality
        for sub in ("data", "attempts", "staging"):
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def data_path(self, chunk: int) -> Path:
        """Accepted-sample shard of ``chunk``."""
        return self.out_dir / "data" / f"{_chunk_name(chunk)}.parquet"

    def attempts_path(self, chunk: int) -> Path:
        """Attempts table of ``chunk``."""
        return self.out_dir / "attempts" / f"{_chunk_name(chunk)}.parquet"

    def staging_dir(self, chunk: int) -> Path:
        """Directory of the finished attempts of an unfinished ``chunk``."""
        return self.out_dir / "staging" / _chunk_name(chunk)

    def stage(self, chunk: int, attempt: int, rows: list[dict]) -> None:
        """Persist one finished attempt (possibly zero rows) so a restart skips it."""
        directory = self.staging_dir(chunk)
        directory.mkdir(parents=True, exist_ok=True)
        table = rows_to_table(rows, SAMPLE_SCHEMA, self.image_format, self.quality)
        _write_atomic(table, directory / f"attempt-{attempt:09d}.parquet")

    def staged(self, chunk: int) -> dict[int, list[dict]]:
        """Rows of every intact staged attempt; temp and corrupt files are deleted.

        Frames come back as encoded structs, which ``commit`` accepts unchanged.
        """
        directory, result = self.staging_dir(chunk), {}
        if not directory.is_dir():
            return result
        for path in sorted(directory.iterdir()):
            if path.name.endswith(_TMP):
                path.unlink(missing_ok=True)
                continue
            try:
                table = pq.read_table(path, schema=SAMPLE_SCHEMA)
            except (pa.ArrowException, OSError) as exc:
                _LOG.warning(f"discarding corrupt staged file {path}: {exc}")
                path.unlink(missing_ok=True)
                continue
            result[int(path.stem.split("-")[1])] = table.to_pylist()
        return result

    def commit(self, chunk: int, rows: list[dict], attempts: Iterable[int] | None = None) -> None:
        """Write the chunk's two files (in the given row order), then drop its staging.

        ``attempts`` are the attempt indices the chunk ran; by default the staged ones plus
        those in ``rows``. Their count is kept so attempts that yielded no rows still count.
        A chunk with no accepted rows gets no data file: ``datasets`` cannot read empty shards.
        """
        if attempts is None:
            attempts = set(self.staged(chunk)) | {row["attempt"] for row in rows}
        accepted = [r for r in rows if r["accepted"]]
        table = rows_to_table(rows, ATTEMPT_SCHEMA)
        info = {"chunk": chunk, "n_attempts": len(set(attempts)), "n_accepted": len(accepted)}
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               b"failrecov": json.dumps(info)})
        if accepted:
            _write_atomic(rows_to_table(accepted, SAMPLE_SCHEMA, self.image_format,
                                        self.quality), self.data_path(chunk))
        else:
            self.data_path(chunk).unlink(missing_ok=True)
        _write_atomic(table, self.attempts_path(chunk))
        shutil.rmtree(self.staging_dir(chunk), ignore_errors=True)

    def _info(self, chunk: int) -> dict:
        meta = pq.read_schema(self.attempts_path(chunk)).metadata or {}
        return json.loads(meta.get(b"failrecov", b"{}"))

    def done_chunks(self) -> set[int]:
        """Chunks whose attempts file exists, and their data file too unless none was accepted."""
        chunks = {int(p.stem.split("-")[1])
                  for p in (self.out_dir / "attempts").glob("chunk-*.parquet")}
        return {c for c in chunks
                if self.data_path(c).exists() or self._info(c).get("n_accepted") == 0}

    def read_attempts_table(self) -> pa.Table:
        """All rows of all finished chunks, in chunk order."""
        tables = [pq.read_table(self.attempts_path(c), schema=ATTEMPT_SCHEMA)
                  for c in sorted(self.done_chunks())]
        return pa.concat_tables(tables) if tables else ATTEMPT_SCHEMA.empty_table()

    def read_attempts(self) -> list[dict]:
        """All rows of all finished chunks as dicts, in chunk order."""
        return self.read_attempts_table().to_pylist()

    def attempt_count(self) -> int:
        """Attempts run by finished chunks, including those that yielded no rows."""
        return sum(self._info(c).get("n_attempts", 0) for c in self.done_chunks())

    def cleanup(self) -> None:
        """Remove temp files and the leftover staging of done chunks (after a crash)."""
        for sub in ("data", "attempts"):
            for tmp in (self.out_dir / sub).glob(f"*{_TMP}"):
                tmp.unlink(missing_ok=True)
        for chunk in self.done_chunks():
            shutil.rmtree(self.staging_dir(chunk), ignore_errors=True)


@contextlib.contextmanager
def exclusive(out_dir: str | os.PathLike):
    """Hold the output folder for one run: a second run into it is an error, not a race.

    Two coordinators would work the same chunks and write the same staging files; the lock
    (flock on ``.lock``) goes with the process, so a killed run leaves nothing to clean up.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+", encoding="ascii") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(f"{folder} is being written by another `failrecov datagen` run "
                             f"(pid {holder}); wait for it, or stop it and rerun to "
                             "resume") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_or_create(out_dir: str | os.PathLike, config: dict, seed: int | None = None,
                   image_format: str = "png", quality: int = 90) -> ChunkStore:
    """Open a store, writing ``manifest.json`` on first use; refuse to mix different configs.

    Call once from the coordinating process before workers start (it also cleans up after
    a crash); workers may then construct ``ChunkStore(out_dir)`` directly.
    """
    store = ChunkStore(out_dir, image_format, quality)
    manifest = {"config": json.loads(json.dumps(config)), "seed": seed}
    path = store.out_dir / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        new_cfg, old_cfg = manifest["config"], old.get("config", {})
        keys = sorted(k for k in set(new_cfg) | set(old_cfg) if new_cfg.get(k) != old_cfg.get(k))
        if old.get("seed") != seed:
            keys.append("seed")
        if keys:
            raise ValueError(f"{path} was made with a different config (keys differ: {keys}); "
                             "use a new output directory or the original config")
    else:
        tmp = path.with_name(path.name + _TMP)
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    store.cleanup()
    return store


def _table(header: tuple[str, ...], rows: Iterable[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _retention(rows: list[dict], key: str) -> str:
    attempted, accepted = Counter(r[key] for r in rows), Counter(r[key] for r in rows
                                                                 if r["accepted"])
    return _table((key, "accepted", "attempted", "retention"),
                  ((k, accepted[k], n, f"{accepted[k] / n:.1%}")
                   for k, n in sorted(attempted.items())))


def write_card(out_dir: str | os.PathLike, *, command: str, config: dict,
               target_samples: int | None, license: str = "apache-2.0") -> str:
    """Write ``README.md`` (a Hugging Face dataset card) from the attempts tables on disk.

    Reading from disk rather than in-memory counters keeps the card right after a resume.
    """
    store = ChunkStore(out_dir)
    rows = store.read_attempts()
    accepted = [r for r in rows if r["accepted"]]
    front = {"license": license, "task_categories": ["robotics"],
             "tags": ["robotics", "failure-recovery", "synthetic"],
             "configs": [{"config_name": "default",
                          "data_files": [{"split": "train", "path": "data/*.parquet"}]}]}
    scores: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for name, value in json.loads(row["scores_json"] or "{}").items():
            if isinstance(value, (bool, int, float)):
                scores[name].append(float(value))
    # Reasons carry measured numbers; group them by their wording with the numbers masked.
    reasons = Counter(_NUMBER.sub("#", reason) for row in rows for reason in row["reasons"])
    crashed = len({r["attempt"] for r in rows if r["error"]})
    target = "none" if target_samples is None else str(target_samples)
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        "# Failure-recovery samples",
        "Synthetic failure windows with recovery labels, generated by `failrecov_ros.datagen`.",
        "## How it was made", f"```bash\n{command}\n```",
        "```yaml\n" + yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True) + "```",
        "## Counts",
        f"- accepted samples: {len(accepted)} (target: {target})\n"
        f"- attempts: {store.attempt_count()} ({len(rows)} candidate rows)\n"
        f"- crashed attempts: {crashed}",
        "### Accepted samples per failure type",
        _table(("failure_type", "samples"), sorted(Counter(r["failure_type"]
                                                           for r in accepted).items())),
        "### Accepted samples per generator",
        _table(("generator", "samples"), sorted(Counter(r["generator"]
                                                        for r in accepted).items())),
        "## Retention (accepted / attempted rows)",
        _retention(rows, "failure_type"), _retention(rows, "generator"),
        "## Rejection reasons", _table(("reason", "rows"), reasons.most_common()),
        "## Label agreement within a failed run",
        "Mean cosine between the 7-DoF dA labels of two accepted windows of the same run (same "
        "episode, same injected fault). FailSafe matches each deviated pose to a corrective "
        "pose drawn at random along the clean run: where this is low, much of a label's dA is "
        "chance, not something the window shows.",
        _table(("failure_type", "pairs", "mean cosine"),
               ((t, n, f"{c:.3f}") for t, (n, c) in metrics.label_agreement(
                   ((r["episode_seed"], r["parameters_json"]), r["failure_type"], r["ee_delta"])
                   for r in accepted if r["failed"] and r["ee_delta"]).items())),
        "## Verifier scores over all rows (booleans count as 0/1)",
        _table(("score", "mean", "min", "rows"),
               ((k, f"{np.mean(v):.4g}", f"{min(v):.4g}", len(v))
                for k, v in sorted(scores.items()))),
    ]
    text = "\n\n".join(parts) + "\n"
    path = store.out_dir / "README.md"
    path.with_name(path.name + _TMP).write_text(text)
    os.replace(path.with_name(path.name + _TMP), path)
    return text


def load_dataset(out_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Load the accepted samples as a ``datasets.Dataset`` (frames decode to PIL images).

    ``datasets`` is imported here because it costs about a second, which workers need not pay.
    """
    import datasets

    files = str(Path(out_dir) / "data" / "*.parquet")
    return datasets.load_dataset("parquet", data_files=files, split="train",
                                 cache_dir=None if cache_dir is None else str(cache_dir))
