"""Read-ahead replay (bag read in a helper process) gives exactly what an inline replay gives."""

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from replay_bags import T0, write_bag
from test_replay import DELAY_CLOSE, SUCCESS, FakeModel

from failrecov_ros.evaluation import replay
from failrecov_ros.models.base import Window
from failrecov_ros.models.registry import ModelSpec, load_model
from failrecov_ros.monitor.supervisor import TriggerConfig

ROOT = Path(__file__).resolve().parents[1]
INLINE = replay.ReplayOptions(read_ahead=False)
AHEAD = replay.ReplayOptions(read_ahead=True)

two_cpus = pytest.mark.skipif(not replay._reads_ahead(AHEAD), reason="read-ahead needs two CPUs")


def outcome(result: replay.EpisodeResult) -> dict:
    """Everything a replay reports, latency aside (wall-clock time, never reproducible)."""
    return {
        "error": result.error, "frames": result.frames, "first": result.first_frame_ns,
        "last": result.last_frame_ns, "counters": result.counters, "label": result.label,
        "intrinsics": result.intrinsics,
        "diagnoses": [d.to_dict() | {"latency_s": 0} for d in result.diagnoses],
        "frames_at": {s: f.tobytes() for s, f in result.frames_at.items()},
        "joints_at": {s: q.tolist() for s, q in result.joints_at.items()},
    }


def ran_ahead(paths, model, options=AHEAD, labels=None):
    """Replay with a freshly started reader process, checking that it was the one used."""
    replay.stop_read_ahead()
    results = replay.replay_bags(paths, model, options, labels)
    reader = replay._READ_AHEAD
    assert reader is not None and reader.process.is_alive()
    assert reader.process.pid != os.getpid()
    return results


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bags")
    return [write_bag(folder / "fail", label=DELAY_CLOSE, onset_s=1.0),
            write_bag(folder / "ok", label=SUCCESS, storage="sqlite3", seed=1),
            # a larger image than the ring was made for, then a smaller one again
            write_bag(folder / "big", frames=40, size=(240, 320), seed=2),
            write_bag(folder / "small", frames=25, size=(48, 64), seed=3)]


def compact():
    return load_model(ModelSpec(backend="compact", path=str(ROOT / "checkpoints" / "compact"),
                                threads=1))


class _Recording:
    """Wraps a model; remembers the frame shape of every window it was given."""

    def __init__(self, model):
        self.model, self.name, self.shapes = model, model.name, []
        self.frame_transform = model.frame_transform

    def predict(self, window):
        self.shapes.append(window.frames.shape)
        return self.model.predict(window)

    def close(self):
        self.model.close()


@two_cpus
@pytest.mark.parametrize("where", ["always", "never", "auto"])
def test_compact_model_scores_the_same_read_ahead_or_inline(bags, where, monkeypatch):
    monkeypatch.setattr(replay, "_TRANSFORM_AHEAD", where)  # where the frames are shrunk
    model = _Recording(compact())
    whole = {(120, 160), (240, 320), (48, 64)}
    try:
        inline = [outcome(r) for r in replay.replay_bags(bags, model, INLINE)]
        assert {shape[1:3] for shape in model.shapes} == whole
        model.shapes.clear()
        ahead = [outcome(r) for r in ran_ahead(bags, model)]
        size = model.model.config.image_size
        shapes = {shape[1:3] for shape in model.shapes}
        assert shapes <= whole | {(size, size)}
        if where != "auto":  # auto: either, as the two processes keep up with each other
            assert shapes == ({(size, size)} if where == "always" else whole)
    finally:
        model.close()
    assert all(not r["error"] and r["diagnoses"] for r in inline)
    assert ahead == inline


@pytest.mark.parametrize("shape", [(480, 640), (120, 160), (100, 100), (96, 96), (40, 30)])
def test_compact_frame_transform_leaves_predictions_unchanged(shape):
    model = compact()
    rng = np.random.default_rng(sum(shape))
    frames = rng.integers(0, 256, (10, *shape, 3), dtype=np.uint8)
    window = Window(frames=frames, stamps_ns=tuple(T0 + 33 * i for i in range(10)),
                    instruction="pick up the red cube", joint_positions=rng.normal(size=(10, 7)),
                    gripper_width=np.full(10, 0.04))
    transform = pickle.loads(pickle.dumps(model.frame_transform))
    shrunk = dataclasses.replace(window, frames=np.stack([transform(f) for f in frames]))
    assert shrunk.frames.shape[1:3] == (model.config.image_size,) * 2
    assert model.predict(shrunk) == compact().predict(window)


@two_cpus
@pytest.mark.parametrize("max_age_s", [1.0, 0.15])
def test_fixed_latency_windows_and_counters_match(bags, max_age_s):
    options = dataclasses.replace(AHEAD, latency_s=0.5,
                                  trigger=TriggerConfig(max_age_s=max_age_s))
    fake = FakeModel(fail_from_ns=T0 + 10**9)
    ahead = [outcome(r) for r in ran_ahead(bags, fake, options)]
    inline = [outcome(r) for r in replay.replay_bags(
        bags, FakeModel(fail_from_ns=T0 + 10**9), dataclasses.replace(options, read_ahead=False))]
    assert ahead == inline
    # the latency mattered: windows superseded, or dropped as stale with the short age limit
    assert ahead[0]["counters"]["dropped_stale" if max_age_s < 1 else "superseded"] > 0
    # what the model was given are its own arrays, not views of the reader's shared memory
    assert all(w.frames.flags.owndata for w in fake.windows)


@two_cpus
def test_a_corrupt_bag_is_reported_and_the_reader_goes_on(bags, tmp_path):
    cut = write_bag(tmp_path / "cut", label=SUCCESS, frames=60)
    [mcap] = cut.glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    paths = [cut, bags[0], tmp_path / "absent", bags[3]]
    ahead = ran_ahead(paths, FakeModel(fail_from_ns=T0 + 10**9))
    inline = replay.replay_bags(paths, FakeModel(fail_from_ns=T0 + 10**9), INLINE)
    assert [bool(r.error) for r in ahead] == [True, False, True, False]
    assert [outcome(r) for r in ahead] == [outcome(r) for r in inline]


class _Interrupt(BaseException):
    """Like KeyboardInterrupt: not caught by diagnose()."""


class _InterruptedModel(FakeModel):
    def predict(self, window):
        if len(self.windows) == 2:
            raise _Interrupt
        return super().predict(window)


@two_cpus
def test_an_interrupted_replay_leaves_the_reader_usable(bags):
    replay.stop_read_ahead()
    with pytest.raises(_Interrupt):
        replay.replay_bag(bags[0], _InterruptedModel(), AHEAD)
    reader = replay._READ_AHEAD
    assert reader is not None and reader.usable()
    again = replay.replay_bag(bags[0], FakeModel(fail_from_ns=T0 + 10**9), AHEAD)
    assert replay._READ_AHEAD is reader  # the same process, drained and reused
    inline = replay.replay_bag(bags[0], FakeModel(fail_from_ns=T0 + 10**9), INLINE)
    assert outcome(again) == outcome(inline)


class _ReaderKiller(FakeModel):
    """Kills the reader process while it is reading (at the second window).

    With whole frames in the ring's 4 slots, the reader can be at most 4 windows ahead, so it
    has not finished a 9-window bag by then.
    """

    def predict(self, window):
        if len(self.windows) == 1:
            replay._READ_AHEAD.process.kill()
            replay._READ_AHEAD.process.join(timeout=5)
        return super().predict(window)


@two_cpus
def test_a_dead_reader_fails_its_bag_and_is_replaced(bags):
    replay.start_read_ahead()
    first = replay._READ_AHEAD
    [killed] = replay.replay_bags(bags[:1], _ReaderKiller(), AHEAD)
    assert "reader process exited" in killed.error
    results = replay.replay_bags(bags[:2], FakeModel(), AHEAD)
    assert not any(r.error for r in results)
    assert replay._READ_AHEAD is not first and replay._READ_AHEAD.usable()


def test_measured_latency_replays_inline():
    assert not replay._reads_ahead(replay.ReplayOptions(latency_s=None))
    assert not replay._reads_ahead(INLINE)


@two_cpus
def test_frames_are_what_the_bag_holds(bags):
    fake = FakeModel()
    ran_ahead(bags[3:], fake)
    inline = FakeModel()
    replay.replay_bags(bags[3:], inline, INLINE)
    assert len(fake.windows) == len(inline.windows) > 0
    for got, want in zip(fake.windows, inline.windows, strict=True):
        assert got.stamps_ns == want.stamps_ns and np.array_equal(got.frames, want.frames)
        assert np.array_equal(got.joint_positions, want.joint_positions)
