"""first_answer: a request whose answer was lost to discovery is sent again, and no more."""

import pytest

from failrecov_ros.ros.requests import first_answer


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
