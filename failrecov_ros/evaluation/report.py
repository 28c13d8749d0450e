"""Result files and a self-contained HTML report, reusable by any evaluation (ROS-free).

Plots are matplotlib on the Agg backend (no display), returned as PNG bytes and embedded in
the HTML as base64, so one file carries everything and can be mailed or archived.

Building blocks (each independent; compose them for other reports, e.g. the closed-loop demo):

- ``confusion_png(labels, predicted, title=...) -> bytes``: confusion matrix of two equally long
  sequences of class names (rows true, columns predicted, counts in the cells).
- ``bars_png(mapping, title, ylabel=..., limit=...) -> bytes``: one bar per key.
- ``histogram_png(values, title, unit) -> bytes``: histogram with p50/p95 marked.
- ``frame_png(rgb, arrow=None, text=...) -> bytes``: an RGB frame, optionally an arrow
  ``((u0, v0), (u1, v1))`` in pixels and a text box.
- ``project_arrow(intrinsics, camera_from_base, origin_base, delta_base, scale=...)``: the
  pixel arrow of an end-effector delta, or None when it cannot be projected;
  ``look_at_transform(position, target)`` gives ``camera_from_base`` for a placed camera.
- ``img_html(png, alt)``, ``table_html(rows, columns)``: HTML fragments (escaped).
- ``write_html(path, title, sections)``: the page; ``sections`` is a list of
  ``(heading, html_fragment)``; the provenance table is appended.
- ``provenance(**extra) -> dict``: model, data, git commit, machine, command line, date;
  every result file carries it (``extra`` adds or overrides keys, e.g. ``model=...``).
- ``write_json(path, data)``, ``write_csv(path, rows, columns=None)``.

:func:`write_replay_report` puts them together for :mod:`failrecov_ros.evaluation.replay`.
"""

from __future__ import annotations

import base64
import csv
import datetime
import hashlib
import html
import io
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from failrecov_ros.core.camera import Intrinsics

_REPO = Path(__file__).resolve().parents[2]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight",
                metadata={"Software": None})  # no version string: identical inputs, same bytes
    plt.close(fig)
    return buffer.getvalue()


# --- plots -------------------------------------------------------------------------------------
def confusion_png(labels: Sequence[str], predicted: Sequence[str],
                  title: str = "confusion (rows: label, columns: predicted)") -> bytes:
    """Confusion matrix of class names; classes are the union, in sorted order."""
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels for {len(predicted)} predictions")
    classes = sorted(set(labels) | set(predicted)) or ["(none)"]
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, predicted, strict=True):
        counts[index[t], index[p]] += 1
    plt = _pyplot()
    size = 1.6 + 0.55 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(title)
    high = counts.max() or 1
    for (i, j), value in np.ndenumerate(counts):
        if value:
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > high / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


def bars_png(mapping: Mapping[str, float], title: str, ylabel: str = "",
             limit: tuple[float, float] | None = None) -> bytes:
    """One bar per key, value printed on top; None values are skipped."""
    items = [(k, float(v)) for k, v in mapping.items() if v is not None]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(items) + 2), 3.2))
    names = [k for k, _ in items]
    values = [v for _, v in items]
    bars = ax.bar(range(len(items)), values, color="#4878a8")
    ax.set_xticks(range(len(items)), names, rotation=30, ha="right")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    if limit is not None:
        ax.set_ylim(*limit)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def histogram_png(values: Sequence[float], title: str, unit: str = "") -> bytes:
    """Histogram with the median and 95th percentile marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size:
        ax.hist(data, bins=min(30, max(5, data.size // 3)), color="#4878a8")
        for q, style in ((50, "-"), (95, "--")):
            value = float(np.percentile(data, q))
            ax.axvline(value, color="#c44e52", linestyle=style,
                       label=f"p{q} {value:.4g} {unit}".rstrip())
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(unit)
    ax.set_ylabel("count")
    ax.set_title(title)
    return _png(fig)


def frame_png(rgb: np.ndarray, arrow: tuple[tuple[float, float], tuple[float, float]] | None
              = None, text: str = "", width_in: float = 4.5) -> bytes:
    """An RGB frame with an optional pixel arrow (tail, head) and a text box."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got {rgb.shape}")
    plt = _pyplot()
    height, width = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(width_in, width_in * height / width))
    ax.imshow(rgb)
    ax.set_axis_off()
    if arrow is not None:
        (u0, v0), (u1, v1) = arrow
        ax.annotate("", xy=(u1, v1), xytext=(u0, v0),
                    arrowprops={"arrowstyle": "-|>", "color": "#ff9900", "lw": 3})
    if text:
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=8, color="white",
                va="bottom", ha="left", wrap=True,
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 3})
    fig.subplots_adjust(0, 0, 1, 1)
    return _png(fig)


def project_arrow(intrinsics: Intrinsics | None, camera_from_base: np.ndarray | None,
                  origin_base: Sequence[float] | None, delta_base: Sequence[float],
                  scale: float = 1.0):
    """Pixel arrow of ``delta_base`` (m) drawn from ``origin_base`` (the end effector).

    ``camera_from_base`` is the 4x4 transform from the robot base into the camera's optical
    frame. None when anything needed is missing or the arrow is behind the camera, so the
    caller falls back to text. ``scale`` lengthens small deltas to be visible.
    """
    if intrinsics is None or camera_from_base is None or origin_base is None:
        return None
    transform = np.asarray(camera_from_base, dtype=float)
    tail = np.asarray(origin_base, dtype=float)[:3]
    head = tail + scale * np.asarray(delta_base, dtype=float)[:3]
    points = (transform[:3, :3] @ np.stack([tail, head]).T).T + transform[:3, 3]
    if (points[:, 2] <= 1e-6).any():
        return None
    (u0, v0), (u1, v1) = intrinsics.project(points)
    return (float(u0), float(v0)), (float(u1), float(v1))


def look_at_transform(position: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """4x4 base -> optical frame (z forward, x right, y down) of a placed camera.

    The camera sits at ``position`` looking at ``target``, the base's z up (how the simulator
    places its camera).
    """
    eye, aim = np.asarray(position, dtype=float), np.asarray(target, dtype=float)
    forward = aim - eye
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("camera position and target coincide")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("camera looks straight up or down: the image's x axis is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: optical axes in base coordinates
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = -rotation @ eye
    return transform


# --- HTML ----------------------------------------------------------------------------------
def img_html(png: bytes, alt: str = "") -> str:
    """An <img> carrying ``png`` inline (base64 data URL)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (columns: the given ones, else the first row's keys)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>"
                                    for c in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#eee}
img{max-width:100%;margin:4px}figure{display:inline-block;margin:4px;vertical-align:top}
figcaption{font-size:12px;max-width:420px}"""


def write_html(path: str | Path, title: str, sections: Sequence[tuple[str, str]],
               provenance_record: Mapping[str, Any] | None = None) -> Path:
    """A self-contained page: ``sections`` of (heading, HTML fragment) and the provenance."""
    record = dict(provenance_record) if provenance_record is not None else provenance()
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, fragment in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{fragment}")
    rows = [{"key": k, "value": json.dumps(v) if not isinstance(v, str) else v}
            for k, v in record.items()]
    parts.append(f"<h2>Provenance</h2>{table_html(rows, ['key', 'value'])}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


# --- provenance and files ------------------------------------------------------------------
def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(_REPO), "status", "--porcelain", "-uno"],
                           capture_output=True, text=True, timeout=5, check=False)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def checkpoint_hash(path: str | Path) -> str | None:
    """sha256 over a checkpoint file or a folder's files (names and bytes, sorted)."""
    path = Path(path)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def provenance(**extra: Any) -> dict[str, Any]:
    """How a result was made: git commit, machine, command line, date, plus ``extra``.

    Pass ``model={"name": ..., "path": ..., "sha256": ...}`` and ``data=[...]`` (bags,
    datasets) so every result file names what it scored.
    """
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "git_commit": _git_commit(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    record.update(extra)
    return record


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Pretty JSON (NaN/inf written as null, so any JSON reader takes it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n",
                    encoding="utf-8")
    return path


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None,
              provenance_record: Mapping[str, Any] | None = None) -> Path:
    """CSV of dict rows; the provenance goes in leading ``#`` comment lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        for key, value in (provenance_record or {}).items():
            text = value if isinstance(value, str) else json.dumps(_jsonable(value))
            handle.write(f"# {key}: {text.replace(chr(10), ' ')}\n")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return path


# --- the replay report ---------------------------------------------------------------------
def model_record(name: str, path: str | Path | None = None, **extra: Any) -> dict[str, Any]:
    """``model`` entry of the provenance: name, checkpoint path and its sha256."""
    record: dict[str, Any] = {"name": name}
    if path:
        record["path"] = str(Path(path).resolve())
        record["sha256"] = checkpoint_hash(path)
    record.update(extra)
    return record


def _correction_text(diagnosis) -> str:
    correction = diagnosis.correction
    if correction.ee_delta is not None:
        d = correction.ee_delta
        return (f"dxyz ({d[0]:+.3f}, {d[1]:+.3f}, {d[2]:+.3f}) m, drpy ({d[3]:+.2f}, "
                f"{d[4]:+.2f}, {d[5]:+.2f}) rad, dgrip {d[6]:+.2f}")
    if correction.directive is not None:
        r = correction.directive
        return (f"x {r.dir_x:+d}x{r.bins_x} y {r.dir_y:+d}x{r.bins_y} z {r.dir_z:+d}x{r.bins_z} "
                f"gripper {r.gripper.value} @kf {r.keyframe}")
    return correction.kind.value


def verdict_text(diagnosis) -> str:
    """One line for a frame caption: verdict, confidence, stage, correction."""
    if diagnosis.is_unknown:
        return f"rejected: {diagnosis.error[:80]}"
    if not diagnosis.failed:
        return f"ok ({diagnosis.confidence:.2f}) {diagnosis.stage}"
    return (f"{diagnosis.failure_type.value} ({diagnosis.confidence:.2f}) {diagnosis.stage}: "
            f"{_correction_text(diagnosis)}")


def result_paths(output: str | Path) -> dict[str, Path]:
    """Where the result files go (a folder, or a ``NAME.json`` file path).

    A folder gets results.json, results.csv and report.html; ``NAME.json`` gets NAME.json,
    NAME.csv and NAME.html beside it.
    """
    output = Path(output)
    if output.suffix == ".json":
        return {"json": output, "csv": output.with_suffix(".csv"),
                "html": output.with_suffix(".html")}
    return {"json": output / "results.json", "csv": output / "results.csv",
            "html": output / "report.html"}


def write_replay_report(output: str | Path, results, summary: Mapping[str, Any],
                        provenance_record: Mapping[str, Any], arrow_for=None,
                        title: str = "Replay evaluation") -> dict[str, Path]:
    """JSON, CSV and HTML results for replayed episodes (see :func:`result_paths`).

    ``results`` are :class:`~failrecov_ros.evaluation.replay.EpisodeResult`; ``arrow_for``
    (optional) maps (result, diagnosis) to a pixel arrow, else the correction is a caption.
    """
    targets = result_paths(output)
    rows = [r.row() for r in results]
    episodes = [{**row, "diagnoses_list": [d.to_dict() for d in r.diagnoses]}
                for row, r in zip(rows, results, strict=True)]
    for entry in episodes:
        for d in entry["diagnoses_list"]:
            d.pop("raw_output", None)  # the compact model's JSON again; keep the file small
    paths = {
        "json": write_json(targets["json"], {"provenance": provenance_record,
                                             "summary": summary, "episodes": episodes}),
        "csv": write_csv(targets["csv"], rows, provenance_record=provenance_record),
    }
    sections = [("Summary", table_html([{"metric": k, "value": v} for k, v in summary.items()
                                        if not isinstance(v, (dict, list))],
                                       ["metric", "value"]))]
    for key in ("latency", "detection_delay_s"):
        if summary.get(key):
            sections.append((key.replace("_", " "), table_html([summary[key]])))
    scored = [r for r in results if r.ok and r.label is not None]
    if scored:
        truth = [r.label.diagnosis.failure_type.value for r in scored]
        predicted = [r.verdict.failure_type.value for r in scored]
        sections.append(("Confusion matrix (episode verdicts)",
                         img_html(confusion_png(truth, predicted), "confusion matrix")))
        per_type: dict[str, list[bool]] = {}
        for t, p in zip(truth, predicted, strict=True):
            per_type.setdefault(t, []).append(t == p)
        sections.append(("Accuracy per label type", img_html(bars_png(
            {k: sum(v) / len(v) for k, v in sorted(per_type.items())},
            "type + axis accuracy per label type", "accuracy", (0, 1.05)), "per-type bars")))
    latencies = [1000 * d.latency_s for r in results if r.ok for d in r.diagnoses]
    sections.append(("Model latency", img_html(histogram_png(latencies, "model latency per "
                                                             "window", "ms"), "latency")))
    figures = []
    for r in results:
        if not r.ok or not r.diagnoses:
            continue
        verdict = r.verdict
        rgb = r.frames_at.get(verdict.stamp_ns)
        if rgb is None:
            continue
        arrow = arrow_for(r, verdict) if arrow_for is not None else None
        caption = verdict_text(verdict)
        truth = f"label: {r.label.diagnosis.failure_type.value}" if r.label else "unlabelled"
        png = frame_png(rgb, arrow, caption)
        figures.append(f"<figure>{img_html(png, r.name)}<figcaption>{html.escape(r.name)}: "
                       f"{html.escape(caption)} ({html.escape(truth)})</figcaption></figure>")
    if figures:
        sections.append(("Verdict frames", "".join(figures)))
    columns = ["name", "error", "frames", "duration_s", "diagnoses", "alarms", "label_type",
               "verdict_type", "verdict_confidence", "verdict_stage", "detection_delay_s",
               "latency_p50_s", "wall_s"]
    sections.append(("Episodes", table_html(rows, columns)))
    paths["html"] = write_html(targets["html"], title, sections, provenance_record)
    return paths
