"""The loop's scheduler: named deadlines called back in time order, deterministically."""

from __future__ import annotations

from collections.abc import Callable

from tracker.core.scheduler import Scheduler


class Calls:
    """Callbacks that write their name into one list, in the order they run."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def test_nothing_booked_means_no_deadline_and_nothing_to_run() -> None:
    s = Scheduler()
    assert s.next_due() is None
    s.run_due(1e9)
    assert s.due("x") is None and "x" not in s


def test_deadlines_run_in_time_order_once_due_and_only_then() -> None:
    s, calls = Scheduler(), Calls()
    s.set("late", 30.0, calls("late"))
    s.set("early", 10.0, calls("early"))
    s.set("middle", 20.0, calls("middle"))
    assert s.next_due() == 10.0
    s.run_due(9.999)
    assert calls.names == []
    s.run_due(20.0)
    assert calls.names == ["early", "middle"]
    assert s.next_due() == 30.0 and "late" in s and "early" not in s
    s.run_due(100.0)
    assert calls.names == ["early", "middle", "late"]
    assert s.next_due() is None


def test_equal_deadlines_run_in_the_order_they_were_booked() -> None:
    s, calls = Scheduler(), Calls()
    for name in ("c", "a", "d", "b"):
        s.set(name, 5.0, calls(name))
    s.run_due(5.0)
    assert calls.names == ["c", "a", "d", "b"]


def test_booking_a_name_again_moves_it_and_replaces_its_callback() -> None:
    s, calls = Scheduler(), Calls()
    s.set("a", 5.0, calls("a"))
    s.set("b", 5.0, calls("b"))
    s.set("a", 5.0, calls("a again"))  # the same time: now behind b
    s.set("c", 1.0, calls("c"))
    s.set("c", 50.0, calls("c"))  # later: no longer due at 10
    assert s.due("c") == 50.0
    s.run_due(10.0)
    assert calls.names == ["b", "a again"]
    s.set("d", 60.0, calls("d"))
    s.set("d", 40.0, calls("d"))  # earlier
    assert s.next_due() == 40.0


def test_cancel_forgets_a_deadline_and_a_name_without_one() -> None:
    s, calls = Scheduler(), Calls()
    s.set("a", 1.0, calls("a"))
    s.set("b", 2.0, calls("b"))
    s.cancel("a")
    s.cancel("never booked")
    assert s.next_due() == 2.0 and "a" not in s
    s.run_due(10.0)
    assert calls.names == ["b"]


def test_a_callback_may_cancel_or_move_another_due_deadline() -> None:
    s, calls = Scheduler(), Calls()

    def first() -> None:
        calls.names.append("first")
        s.cancel("cancelled")
        s.set("moved", 20.0, calls("moved"))

    s.set("first", 1.0, first)
    s.set("cancelled", 2.0, calls("cancelled"))
    s.set("moved", 3.0, calls("moved"))
    s.run_due(10.0)
    assert calls.names == ["first"]
    assert s.due("moved") == 20.0


def test_a_periodic_callback_books_itself_again() -> None:
    s = Scheduler()
    ran: list[float] = []

    def tick() -> None:
        ran.append(now)
        s.set("tick", now + 10.0, tick)

    now = 0.0
    s.set("tick", 0.0, tick)
    while now <= 35.0:  # the loop: sleep until the next deadline, then run what is due
        s.run_due(now)
        due = s.next_due()
        assert due is not None
        now = due
    assert ran == [0.0, 10.0, 20.0, 30.0]


def test_a_deadline_booked_for_now_by_a_callback_runs_in_the_same_call() -> None:
    s, calls = Scheduler(), Calls()

    def close() -> None:
        calls.names.append("close")
        s.set("after close", 5.0, calls("after close"))  # due already

    s.set("close", 5.0, close)
    s.set("other", 5.0, calls("other"))
    s.run_due(5.0)
    assert calls.names == ["close", "other", "after close"]
    assert s.next_due() is None


def test_a_callback_that_books_itself_for_now_waits_for_the_next_call() -> None:
    s = Scheduler()
    runs = 0

    def again() -> None:
        nonlocal runs
        runs += 1
        s.set("again", 0.0, again)  # due at once: must not loop

    s.set("again", 0.0, again)
    s.run_due(1.0)
    assert runs == 1 and s.next_due() == 0.0
    s.run_due(1.0)
    assert runs == 2


def test_a_deadline_is_forgotten_before_its_callback_runs() -> None:
    s = Scheduler()
    seen: list[bool] = []
    s.set("a", 1.0, lambda: seen.append("a" in s))
    s.run_due(1.0)
    assert seen == [False] and "a" not in s
