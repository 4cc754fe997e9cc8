"""flow.FlowControl alone: the reasons that hold a connection's reading, and the transport calls
they make (one pause when the first reason comes, one resume when the last one goes)."""
from redisgate.io.flow import FlowControl, Hold


class Transport:
    def __init__(self):
        self.calls = []

    def pause_reading(self):
        self.calls.append("pause")

    def resume_reading(self):
        self.calls.append("resume")


def test_reading_pauses_at_the_first_reason_and_resumes_after_the_last():
    t = Transport()
    flow = FlowControl(t)
    flow.hold(Hold.WINDOW, False)          # releasing what is not held changes nothing
    assert t.calls == [] and not flow.read_paused
    flow.hold(Hold.WINDOW)
    flow.hold(Hold.OUTPUT)
    flow.hold(Hold.WINDOW)                 # held again: still one pause
    assert t.calls == ["pause"] and flow.read_paused
    assert flow.reasons == {Hold.WINDOW, Hold.OUTPUT}
    flow.hold(Hold.WINDOW, False)
    assert t.calls == ["pause"] and flow.holds(Hold.OUTPUT)
    flow.hold(Hold.OUTPUT, False)
    assert t.calls == ["pause", "resume"] and not flow.read_paused and not flow.reasons


def test_a_reason_held_by_several_sources_holds_until_each_released_it():
    t = Transport()
    flow = FlowControl(t)
    flow.hold(Hold.UPSTREAM, True, "node-a")
    flow.hold(Hold.UPSTREAM, True, "node-b")
    flow.hold(Hold.UPSTREAM, True)         # the shared link's (no source)
    flow.hold(Hold.UPSTREAM, False, "node-a")
    flow.hold(Hold.UPSTREAM, False)
    assert flow.holds(Hold.UPSTREAM) and t.calls == ["pause"]
    flow.hold(Hold.UPSTREAM, False, "node-b")
    assert not flow.holds(Hold.UPSTREAM) and t.calls == ["pause", "resume"]


def test_release_all_resumes_and_a_closed_connection_is_never_called():
    t = Transport()
    flow = FlowControl(t)
    flow.hold(Hold.BUDGET)
    flow.hold(Hold.AUTH_THROTTLE)
    flow.release_all()
    assert t.calls == ["pause", "resume"] and not flow.reasons
    flow.closed = True
    flow.hold(Hold.BUDGET)
    flow.hold(Hold.BUDGET, False)
    assert t.calls == ["pause", "resume"]


def test_without_a_transport_reasons_are_kept_and_writing_is_tracked():
    flow = FlowControl()
    flow.hold(Hold.LINK_CONNECTING)
    assert flow.holds(Hold.LINK_CONNECTING) and not flow.read_paused
    assert not flow.write_paused
    flow.pause_writing()
    assert flow.write_paused
    flow.resume_writing()
    assert not flow.write_paused
