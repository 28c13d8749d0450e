"""Run the engine over chunks of attempts in worker processes, resumably, with a progress bar.

The dataset is the accepted rows of chunks 0..c*, where c* is the first chunk at which the
running total of accepted samples reaches the target. Chunks are pure functions of the config,
so that set is the same for any number of workers; chunks computed past c* by a parallel run
are dropped. Each finished attempt is staged on disk before the next one starts, so a run
killed at any moment (or a worker that dies) loses at most the attempt in progress.
"""

from __future__ import annotations

import concurrent.futures as futures
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import signal
import time
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from failrecov_ros.core.safety import MotionThresholds
from failrecov_ros.datagen import dataset
from failrecov_ros.datagen.config import DatagenConfig, from_dict
from failrecov_ros.datagen.engine import Engine, calibrate

_LOG = logging.getLogger(__name__)
CALIBRATION_FILE = "calibration.json"
MAX_WORKER_CRASHES = 3
#: A run stops when this many attempts have all crashed: a crash in every attempt is a bug in
#: the engine or its config, and without the stop the run would retry it forever.
MAX_CRASHED_ATTEMPTS = 32
_WORKER: dict[str, Any] = {}


def thresholds_for(config: DatagenConfig, out_dir: Path) -> MotionThresholds:
    """Calibrated kinematic thresholds, computed once per output directory and reused."""
    path = out_dir / CALIBRATION_FILE
    if path.exists():
        return MotionThresholds(**json.loads(path.read_text()))
    thresholds = calibrate(config)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(thresholds.to_dict(), indent=2))
    tmp.replace(path)
    return thresholds


def _init_worker(config: dict, thresholds: dict, out_dir: str) -> None:
    cfg = from_dict(config)
    _WORKER.update(engine=Engine(cfg, MotionThresholds(**thresholds)), config=cfg,
                   store=dataset.ChunkStore(out_dir, cfg.image_format), parent=os.getppid())


def _init_pool_worker(config: dict, thresholds: dict, out_dir: str) -> None:
    # Ctrl-C reaches the whole process group: the coordinator stops the workers itself,
    # instead of each printing a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(config, thresholds, out_dir)


def run_chunk(chunk: int) -> dict[str, Any]:
    """Compute (or finish) one chunk in this worker and commit it; returns its counts."""
    config: DatagenConfig = _WORKER["config"]
    engine: Engine = _WORKER["engine"]
    store: dataset.ChunkStore = _WORKER["store"]
    attempts = range(chunk * config.chunk_size, (chunk + 1) * config.chunk_size)
    done = store.staged(chunk)
    for attempt in attempts:
        if "parent" in _WORKER and os.getppid() != _WORKER["parent"]:
            # The run was killed (even with -9): stop rather than compute for nobody. What
            # is staged stays for the resume.
            os._exit(1)
        if attempt not in done:
            rows = engine.attempt(attempt)
            store.stage(chunk, attempt, rows)
            done[attempt] = rows
    rows = [row for attempt in attempts for row in done[attempt]]
    rows.sort(key=lambda r: (r["attempt"], r["sample_id"]))
    store.commit(chunk, rows, attempts)
    crashed = [r["error"] for r in rows if r["error"]]
    return {"chunk": chunk, "accepted": sum(r["accepted"] for r in rows), "rows": len(rows),
            "by_type": dict(Counter(r["failure_type"] for r in rows if r["accepted"])),
            "crashed": len(crashed), "error": crashed[0] if crashed else ""}


def _chunk_counts(store: dataset.ChunkStore, chunk_size: int) -> dict[int, int]:
    done = store.done_chunks()
    counts = dict.fromkeys(done, 0)
    for row in store.read_attempts_table().select(["attempt", "accepted"]).to_pylist():
        counts[row["attempt"] // chunk_size] += int(row["accepted"])
    return counts


def generate(config: DatagenConfig, out_dir: str | Path, samples: int, workers: int = 1, *,
             command: str = "", progress: bool = True) -> dict[str, Any]:
    """Generate until at least ``samples`` verified samples exist; resumes an existing run.

    One run at a time per output folder (:func:`dataset.exclusive`).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    with dataset.exclusive(out_dir):
        return _generate(config, Path(out_dir), samples, workers, command, progress)


def _generate(config: DatagenConfig, out_dir: Path, samples: int, workers: int, command: str,
              progress: bool) -> dict[str, Any]:
    store = dataset.open_or_create(out_dir, config.to_dict(), config.seed, config.image_format)
    thresholds = thresholds_for(config, out_dir)
    counts = _chunk_counts(store, config.chunk_size)
    started, state = time.monotonic(), {"accepted": 0, "rows": 0, "crashed": 0}
    bar = _progress(samples, progress)

    def prefix() -> tuple[int, int | None]:
        total, chunk = 0, 0
        while chunk in counts:
            total += counts[chunk]
            if total >= samples:
                return total, chunk
            chunk += 1
        return total, None

    def record(result: dict[str, Any]) -> None:
        counts[result["chunk"]] = result["accepted"]
        state["accepted"] += result["accepted"]
        state["rows"] += result["rows"]
        state["crashed"] += result["crashed"]
        if state["crashed"] == state["rows"] >= MAX_CRASHED_ATTEMPTS:
            raise RuntimeError(f"all {state['rows']} attempts of this run crashed (one with "
                               f"{result['error']!r}; {out_dir}/attempts has every error): fix "
                               "the cause and start a new folder, since a resumed run would "
                               "keep these attempts as crashed")
        if bar is not None:
            bar.update(result["accepted"])
            bar.set_postfix(retention=f"{state['accepted'] / max(1, state['rows']):.0%}")

    if bar is not None:
        bar.update(min(samples, prefix()[0]))
    def finished() -> bool:
        return prefix()[1] is not None

    args = (config.to_dict(), thresholds.to_dict(), str(out_dir))
    crashes = 0
    try:
        while not finished():
            # Chunks not done yet, in order; a restart after a crash picks up where it stopped.
            chunks = (c for c in itertools.count() if c not in counts)
            try:
                if workers <= 1:
                    _run_serial(args, chunks, record, finished)
                else:
                    _run_parallel(args, chunks, workers, record, finished)
            except BrokenProcessPool as error:
                crashes += 1
                _LOG.warning(f"a worker died ({error}); restarting "
                             f"({crashes}/{MAX_WORKER_CRASHES}), finished attempts are kept")
                if crashes >= MAX_WORKER_CRASHES:
                    raise RuntimeError(f"workers crashed {crashes} times; the staged attempts "
                                       f"in {out_dir}/staging are kept, rerun to resume"
                                       ) from error
    finally:
        if bar is not None:
            bar.close()
    total, last = prefix()
    for chunk in [c for c in store.done_chunks() if c > last]:  # computed past the target
        store.data_path(chunk).unlink(missing_ok=True)
        store.attempts_path(chunk).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "staging", ignore_errors=True)
    card = dataset.write_card(out_dir, command=command, config={
        **config.to_dict(), "kinematic_thresholds": thresholds.to_dict()},
        target_samples=samples)
    elapsed = time.monotonic() - started
    return {"accepted": total, "chunks": last + 1, "elapsed_s": elapsed, "card": card,
            "new_accepted": state["accepted"]}


def _run_serial(args, chunks, record, finished) -> None:
    _init_worker(*args)
    try:
        for chunk in chunks:
            record(run_chunk(chunk))
            if finished():
                return
    finally:
        _WORKER.pop("engine").close()
        _WORKER.clear()


def _run_parallel(args, chunks, workers, record, finished) -> None:
    """One pool for the whole run, kept busy with two chunks per worker until ``finished``.

    On KeyboardInterrupt the workers are terminated at once (what they staged is kept; the
    attempt each was computing is redone on resume) rather than left to finish their chunks.
    """
    context = multiprocessing.get_context("spawn")  # no inherited GL or physics state
    pool = futures.ProcessPoolExecutor(workers, mp_context=context,
                                       initializer=_init_pool_worker, initargs=args)
    try:
        running = {pool.submit(run_chunk, next(chunks)) for _ in range(2 * workers)}
        while running:
            done, running = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for job in done:
                record(job.result())
            if finished():
                for job in running:
                    job.cancel()
                return
            running |= {pool.submit(run_chunk, next(chunks)) for _ in done}
    except KeyboardInterrupt:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(pool: futures.ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="sample", desc="verified samples", smoothing=0.05)
