"""The monitor's core: triggers, one pending window, staleness, state alignment, counters."""

import numpy as np
import pytest

from failrecov_ros.core.schema import Diagnosis
from failrecov_ros.core.taxonomy import FailureType
from failrecov_ros.monitor.supervisor import NS, SkillContext, Supervisor, TriggerConfig

JOINTS = tuple(f"j{i}" for i in range(3))
FINGERS = ("f1", "f2")


def _width(positions):
    return sum(positions[f] for f in FINGERS) if all(f in positions for f in FINGERS) else None
MS = 1_000_000


def _frame(value=0):
    return np.full((4, 6, 3), value, dtype=np.uint8)


def _feed(supervisor, stamps):
    return [supervisor.add_frame(stamp, _frame(i % 255)) for i, stamp in enumerate(stamps)]


def test_every_n_frames_fires_on_the_nth_frame_with_the_last_n_frames():
    s = Supervisor(TriggerConfig(window_frames=4, every_n_frames=4, on_events=()))
    fired = _feed(s, [k * 100 * MS for k in range(1, 13)])
    assert fired == [False, False, False, True] * 3
    window = s.take_pending(12 * 100 * MS)
    assert window.stamps_ns == tuple(k * 100 * MS for k in range(9, 13))
    assert s.take_pending(12 * 100 * MS) is None


def test_a_new_window_replaces_an_unanalysed_one_and_is_counted():
    s = Supervisor(TriggerConfig(window_frames=2, every_n_frames=2, on_events=()))
    _feed(s, [k * 10 * MS for k in range(1, 7)])
    assert s.stats.triggered == 3 and s.stats.superseded == 2
    assert s.take_pending(60 * MS).stamps_ns == (50 * MS, 60 * MS)


def test_a_window_older_than_max_age_is_dropped_and_counted():
    s = Supervisor(TriggerConfig(window_frames=2, every_n_frames=2, max_age_s=0.5, on_events=()))
    _feed(s, [1 * NS, 1 * NS + 100 * MS])
    assert s.take_pending(1 * NS + 700 * MS) is None
    assert s.stats.dropped_stale == 1


def test_event_trigger_waits_for_the_settling_frames_and_fires_once():
    s = Supervisor(TriggerConfig(window_frames=3, every_n_frames=0, event_delay_frames=2,
                                 on_events=("gripper_close",)))
    _feed(s, [k * MS for k in range(1, 4)])
    s.set_context(SkillContext(skill="grasp", event="gripper_close", event_stamp_ns=3 * MS))
    assert _feed(s, [k * MS for k in range(4, 8)]) == [False, False, True, False]
    # The same event seen again (latched status re-sent) does not fire again.
    s.set_context(SkillContext(skill="grasp", event="gripper_close", event_stamp_ns=3 * MS))
    assert not any(_feed(s, [k * MS for k in range(8, 12)]))


def test_action_budget_fires_once_per_skill_when_exceeded():
    s = Supervisor(TriggerConfig(window_frames=2, every_n_frames=0, action_budget_steps=5,
                                 on_events=()))
    s.set_context(SkillContext(episode_id="e", skill="grasp", step=10))
    assert not any(_feed(s, [1 * MS, 2 * MS]))
    s.set_context(SkillContext(episode_id="e", skill="grasp", step=16))
    assert _feed(s, [3 * MS, 4 * MS]) == [True, False]
    s.set_context(SkillContext(episode_id="e", skill="lift", step=17))
    assert not any(_feed(s, [5 * MS]))


def test_request_makes_a_window_from_what_is_there():
    s = Supervisor(TriggerConfig(window_frames=5, every_n_frames=0, on_events=()))
    _feed(s, [1 * MS, 2 * MS])
    s.request()
    window = s.take_pending(3 * MS)
    assert window.stamps_ns == (1 * MS, 2 * MS)


def test_state_is_sampled_at_frame_stamps_and_missing_when_too_far():
    s = Supervisor(TriggerConfig(window_frames=2, every_n_frames=2, state_max_gap_s=0.05,
                                 on_events=()), JOINTS, _width)
    for k in range(0, 30):
        stamp = k * 10 * MS
        s.add_joint_state(stamp, JOINTS + FINGERS, [k, k + 1, k + 2, 0.01, 0.02])
    _feed(s, [101 * MS, 199 * MS])
    window = s.take_pending(200 * MS)
    np.testing.assert_allclose(window.joint_positions[:, 0], [10, 20])
    np.testing.assert_allclose(window.gripper_width, [0.03, 0.03])
    _feed(s, [900 * MS, 1000 * MS])  # state ended at 290 ms
    assert s.take_pending(1000 * MS).joint_positions is None


def test_joint_states_without_our_joints_or_with_nan_are_ignored():
    s = Supervisor(TriggerConfig(), JOINTS, _width)
    s.add_joint_state(1, ("other",), [0.0])
    s.add_joint_state(2, JOINTS, [0.0, float("nan"), 0.0])
    assert s.latest_joint_positions() is None
    s.add_joint_state(3, JOINTS, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(s.latest_joint_positions(), [1, 2, 3])


def test_frames_going_back_in_time_restart_the_window():
    s = Supervisor(TriggerConfig(window_frames=3, every_n_frames=3, on_events=()))
    _feed(s, [5 * MS, 6 * MS])
    assert _feed(s, [1 * MS, 2 * MS, 3 * MS]) == [False, False, True]
    assert s.take_pending(3 * MS).stamps_ns == (1 * MS, 2 * MS, 3 * MS)


def test_a_frame_of_another_size_restarts_the_window_instead_of_breaking_it():
    s = Supervisor(TriggerConfig(window_frames=3, every_n_frames=3, on_events=()))
    for stamp in (1 * MS, 2 * MS):
        s.add_frame(stamp, np.zeros((4, 4, 3), np.uint8))
    triggered = [s.add_frame(stamp, np.zeros((6, 8, 3), np.uint8))
                 for stamp in (3 * MS, 4 * MS, 5 * MS)]
    assert triggered == [False, False, True] and s.stats.buffer_resets == 1
    window = s.take_pending(5 * MS)
    assert window.stamps_ns == (3 * MS, 4 * MS, 5 * MS)


def test_counters_and_latency_percentiles():
    s = Supervisor(TriggerConfig())
    ok = Diagnosis(False, FailureType.NONE, 0.9, latency_s=0.01)
    bad = Diagnosis.unknown("bad json", latency_s=0.03)
    failed = Diagnosis(True, FailureType.SLIP, 0.8, latency_s=0.02)
    for d in (ok, bad, failed):
        s.record(d)
    assert (s.stats.analysed, s.stats.unknown, s.stats.failures_reported) == (3, 1, 1)
    assert s.stats.latency_percentile(50) == pytest.approx(0.02)


@pytest.mark.parametrize("bad", [dict(window_frames=0), dict(max_age_s=0),
                                 dict(min_frames=11), dict(every_n_frames=-1)])
def test_invalid_trigger_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        TriggerConfig(**bad)
