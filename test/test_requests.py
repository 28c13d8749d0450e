"""Asking a server just discovered: lost answers asked for again, extra goals canceled.

Also the task slot, the server's half: one goal admitted at a time, a claim never held lapses;
and the Stretch backend's mode and stop services, which are asked again the same way.
"""

import threading
import time

import pytest
from std_srvs.srv import Trigger

from failrecov_ros.ros.backends import TRIGGER_ATTEMPTS, StretchBackend
from failrecov_ros.ros.requests import TaskSlot, first_answer
from failrecov_ros.skills.runner import MotionStatus


class Future:
    """Answered once ``answer`` is called (or from the start)."""

    def __init__(self, answered=False):
        self.answered = answered

    def done(self):
        return self.answered


class Server:
    """Hands out futures; ``lost`` of them never get an answer."""

    def __init__(self, lost):
        self.lost, self.sent = lost, []

    def send(self):
        future = Future(answered=len(self.sent) >= self.lost)
        self.sent.append(future)
        return future


def test_an_answered_request_is_sent_once():
    server = Server(lost=0)
    assert first_answer(server.send, timeout=0.05) is server.sent[0]
    assert len(server.sent) == 1


def test_a_lost_answer_is_asked_for_again():
    server = Server(lost=2)
    sent = []
    future = first_answer(server.send, timeout=0.05, attempts=3, sent=sent)
    assert future is server.sent[2] and future.done()
    assert sent == server.sent and len(sent) == 3


def test_a_late_answer_to_an_earlier_send_wins():
    server = Server(lost=5)
    looks = []

    def pause(_seconds):  # the first send's answer arrives while the second one waits
        looks.append(len(server.sent))
        if len(server.sent) == 2:
            server.sent[0].answered = True

    assert first_answer(server.send, timeout=0.05, attempts=3, pause=pause) is server.sent[0]
    assert len(server.sent) == 2
    assert looks[0] == 1  # it did wait on the first send before sending again


def test_no_answer_at_all_is_none_with_every_send_kept():
    server = Server(lost=10)
    sent = []
    assert first_answer(server.send, timeout=0.02, attempts=3, sent=sent) is None
    assert len(sent) == 3 and not any(f.done() for f in sent)


def test_a_pause_that_raises_abandons_the_wait():
    server = Server(lost=10)

    def pause(_seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first_answer(server.send, timeout=5.0, pause=pause)
    assert len(server.sent) == 1


@pytest.mark.parametrize("attempts, timeout", [(0, 1.0), (2, 0.0)])
def test_nonsense_limits_are_refused(attempts, timeout):
    with pytest.raises(ValueError, match="attempts >= 1 and timeout > 0"):
        first_answer(Server(0).send, timeout=timeout, attempts=attempts)


# --- the episode runner's goals: a resend's extra goal and an interrupt are canceled ----------
class Goal:
    """A send_goal future: unanswered until ``answer``; its handle cancels on request."""

    def __init__(self):
        self.handle, self.callbacks, self.cancels = None, [], 0

    def done(self):
        return self.handle is not None

    def result(self):
        return self.handle

    def add_done_callback(self, callback):
        self.callbacks.append(callback)
        if self.done():
            callback(self)

    def answer(self, accepted=True):
        from types import SimpleNamespace

        future = self

        def cancel_goal_async():
            future.cancels += 1
            done = Future(answered=True)
            done.result = lambda: SimpleNamespace(goals_canceling=[1])
            return done

        self.handle = SimpleNamespace(accepted=accepted, cancel_goal_async=cancel_goal_async)
        for callback in self.callbacks:
            callback(self)


class Logger:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    warning = info


def _runner(goals):
    """An EpisodeRunner's goal methods on a stand-in: sends hand out ``goals`` in order."""
    from types import SimpleNamespace

    from failrecov_ros.nodes.episode_runner import EpisodeRunner

    logger = Logger()
    runner = SimpleNamespace(get_logger=lambda: logger, lines=logger.lines)
    queue = iter(goals)
    runner.execute = SimpleNamespace(send_goal_async=lambda goal: next(queue))
    runner._ask = lambda send, timeout, what, sent: first_answer(send, 0.05, 2, sent).result()
    runner.send_goal = lambda goal, sent: EpisodeRunner._send_goal(runner, goal, sent)
    runner.cancel = lambda sent, timeout: EpisodeRunner._cancel(runner, sent, "ep", timeout)
    return runner


def test_a_goal_accepted_after_its_resend_was_is_canceled():
    lost, resent = Goal(), Goal()
    resent.answer()  # the resend is accepted at once
    runner = _runner([lost, resent])
    sent = []
    handle = runner.send_goal("goal", sent)
    assert handle is resent.handle and sent == [lost, resent]
    assert resent.cancels == 0
    lost.answer()  # the "lost" answer was only late: that goal runs too, so it is canceled
    assert lost.cancels == 1 and resent.cancels == 0
    assert "accepted twice" in runner.lines[-1]


def test_an_interrupt_cancels_the_accepted_goal_and_does_not_wait_on_a_lost_one():
    lost, accepted = Goal(), Goal()
    accepted.answer()
    runner = _runner([])
    started = time.monotonic()
    runner.cancel([lost, accepted], timeout=30.0)
    assert time.monotonic() - started < 10.0  # it did not sit out the deadline on the lost one
    assert accepted.cancels == 1
    assert runner.lines == ["interrupted: canceled the running goal of ep"]


def test_an_interrupt_before_any_goal_was_accepted_cancels_nothing():
    lost, refused = Goal(), Goal()
    refused.answer(accepted=False)
    runner = _runner([])
    runner.cancel([lost, refused], timeout=0.1)
    assert refused.cancels == 0
    assert runner.lines == ["interrupted before the goal of ep was accepted"]


def test_the_task_slot_admits_one_goal_from_acceptance_to_the_end():
    now = [0.0]
    slot = TaskSlot(claim_timeout_s=5.0, clock=lambda: now[0])
    first, second = object(), object()
    assert not slot.busy and slot.claim() and slot.busy
    assert not slot.claim()  # a second goal arriving together is refused when judged
    assert slot.holder is None
    assert slot.hold(first) and slot.busy and slot.holder is first
    now[0] = 1000.0
    assert not slot.claim() and slot.busy  # a held task has no time limit
    slot.release()
    assert not slot.busy and slot.holder is None and slot.claim()
    # A claim whose goal response was lost is never held: it lapses, and the resend gets in.
    now[0] += 4.9
    assert not slot.claim()
    now[0] += 0.2
    assert not slot.busy and slot.claim() and slot.hold(first)
    # A goal accepted on a lapsed claim while another holds the slot is told so (one runs).
    assert not slot.hold(second) and slot.holder is first
    slot.release()
    with pytest.raises(ValueError, match="must not be None"):
        slot.hold(None)
    with pytest.raises(ValueError, match="claim_timeout_s must be positive"):
        TaskSlot(claim_timeout_s=0.0)


def test_the_task_slot_lets_one_of_many_racing_claims_win():
    slot = TaskSlot()
    start = threading.Barrier(8)
    wins = []

    def race():
        start.wait()
        wins.append(slot.claim())

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


class TriggerClient:
    """A std_srvs/Trigger client whose first ``lost`` requests get no answer."""

    def __init__(self, lost):
        self.server = Server(lost)

    def wait_for_service(self, timeout_sec):
        return True

    def call_async(self, request):
        future = self.server.send()
        future.result = lambda: Trigger.Response(success=True, message="ok")
        return future


def test_the_stretch_mode_switch_is_sent_again_when_its_answer_is_lost():
    # The Stretch's first switch_to_trajectory_mode after discovery went unanswered in CI.
    client = TriggerClient(lost=1)
    outcome = StretchBackend._trigger(client, "switch_to_trajectory_mode", 0.3)
    assert outcome.ok, outcome
    assert len(client.server.sent) == 2


def test_a_mode_switch_never_answered_times_out_after_every_send():
    client = TriggerClient(lost=99)
    outcome = StretchBackend._trigger(client, "switch_to_trajectory_mode", 0.15)
    assert outcome.status == MotionStatus.TIMED_OUT
    assert "did not answer 3 requests" in outcome.message
    assert len(client.server.sent) == TRIGGER_ATTEMPTS
