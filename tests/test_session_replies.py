"""session.replies.ReplyOrder on its own: the slots in command order, the shared link's
accounting and CLIENT REPLY's muting (Redis's prepareClientToWrite / resetClient), no session."""
from __future__ import annotations

from redisgate.session.replies import (CLOSE, DROP, FWD, LOCAL, SUB, SUBDROP, Muting,
                                       ReplyOrder)


def order() -> tuple[ReplyOrder, list[bytes]]:
    out: list[bytes] = []
    return ReplyOrder(out), out


def test_a_local_reply_with_nothing_due_goes_out_at_once_else_waits_in_its_slot():
    r, out = order()
    r.local(b"+A\r\n")
    assert out == [b"+A\r\n"] and not r.slots
    r.expect(FWD, 2, None, shared=False, pushes_when_muted=True)
    r.local(b"+B\r\n")
    assert list(r.slots) == [[FWD, 2, None], [LOCAL, 0, b"+B\r\n"]]
    assert r.due() == 3


def test_forwarded_runs_share_a_slot_unless_they_carry_a_payload():
    r, _ = order()
    r.expect(FWD, 1, None, shared=False, pushes_when_muted=True)
    r.forwarded(3, shared=False)
    r.expect(FWD, 1, "payload", shared=False, pushes_when_muted=True)
    r.expect(SUB, 1, True, shared=False, pushes_when_muted=True)
    r.expect(SUB, 2, True, shared=False, pushes_when_muted=True)
    assert [s[:2] for s in r.slots] == [[FWD, 4], [FWD, 1], [SUB, 1], [SUB, 2]]


def test_passed_replies_release_the_local_ones_behind_them_and_say_close():
    r, out = order()
    r.forwarded(2, shared=False)
    r.local(b"+L\r\n")
    assert r.close_after() is False
    assert r.passed(b"$1\r\na\r\n", 1) is False and out == [b"$1\r\na\r\n"]
    assert r.passed(b"$1\r\nb\r\n", 1) is True
    assert out == [b"$1\r\na\r\n", b"$1\r\nb\r\n", b"+L\r\n"] and not r.slots


def test_close_after_with_nothing_due_is_now():
    r, _ = order()
    assert r.close_after() is True and not r.slots


def test_the_shared_links_replies_are_handed_over_once():
    r, _ = order()
    r.forwarded(3, shared=True)
    r.expect(FWD, 1, None, shared=True, pushes_when_muted=True)
    assert r.handed_over() == 4 and r.handed_over() == 0
    r.forwarded(2, shared=False)   # (its own connection: not counted)
    assert r.handed_over() == 0 and r.expected == 4


def test_a_failure_answers_every_reply_due_with_the_error_in_order():
    r, out = order()
    r.forwarded(2, shared=False)
    r.local(b"+L\r\n")
    r.expect(SUB, 3, True, shared=False, pushes_when_muted=True)
    r.expect(DROP, 1, "authentication", shared=False, pushes_when_muted=True)
    r.close_after()
    assert r.failed(b"-ERR x\r\n") is True
    assert out == [b"-ERR x\r\n", b"-ERR x\r\n", b"+L\r\n", b"-ERR x\r\n"] and not r.slots


def test_client_reply_off_mutes_every_command_until_on():
    r, out = order()
    r.reply_off()
    assert r.muting is Muting.OFF
    r.begin()
    r.local(b"-ERR refused\r\n")                                   # not kept
    r.expect(FWD, 1, None, shared=False, pushes_when_muted=True)   # swallowed when it comes
    r.end()
    assert out == [] and list(r.slots) == [[DROP, 1, None]]
    r.begin()
    r.reply_on()            # ON replies, although the command started muted
    r.local(b"+OK\r\n")
    r.end()
    assert r.muting is Muting.NONE and r.slots[-1] == [LOCAL, 0, b"+OK\r\n"]


def test_client_reply_skip_mutes_the_next_command_only():
    r, _ = order()
    r.begin()
    r.reply_skip()          # SKIP itself replies nothing; it applies from the next command
    r.end()
    assert r.muting is Muting.SKIP and r.quiet
    r.begin()
    assert r.muted
    r.end()
    assert r.muting is Muting.NONE and not r.quiet
    r.begin()
    assert not r.muted
    r.end()


def test_skip_under_off_does_nothing_and_reset_turns_off_off():
    r, _ = order()
    r.reply_off()
    r.reply_skip()
    assert r.muting is Muting.OFF and not r.skip_next
    r.begin()
    r.reset()               # RESET: OFF goes, and RESET itself replies
    assert not r.muted and r.muting is Muting.NONE
    r.end()


def test_a_muted_subscribe_is_swallowed_only_where_redis_swallows_it():
    r, _ = order()
    r.reply_off()
    r.begin()
    r.expect(SUB, 1, True, shared=False, pushes_when_muted=True)    # 6.2+: confirmations come
    r.expect(SUB, 1, True, shared=False, pushes_when_muted=False)   # 5.0: they do not
    r.end()
    assert [s[0] for s in r.slots] == [SUB, SUBDROP]


def test_the_lane_takes_a_lone_forwarded_run_and_gives_it_back():
    r, _ = order()
    assert r.lane_due() == 0
    r.forwarded(5, shared=False)
    assert r.lane_due() == 5
    r.local(b"+L\r\n")
    assert r.lane_due() is None
    r.slots.clear()
    r.lane_returned(5)
    r.lane_returned(0)
    assert list(r.slots) == [[FWD, 5, None]]
    assert CLOSE > LOCAL > SUBDROP > DROP > SUB > FWD   # (kinds < LOCAL wait for the upstream)
