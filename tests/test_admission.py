"""Admission queue: limits, fairness, deadlines, cancellation, snapshots (pure asyncio, no server)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import pytest

from jupyter_llm_af.admission import Admission, Ticket
from jupyter_llm_af.errors import AdmissionTimeout, QueueFull


def far() -> float:
    return time.monotonic() + 30


async def settle(n: int = 5) -> None:
    """Let every ready task run a few steps (no timers involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


class Client:
    """One request: waits for a slot, records admission, holds it until ``finish()``."""

    def __init__(
        self,
        adm: Admission,
        user: str,
        log: list[str] | None = None,
        *,
        name: str = "",
        model: str = "m",
        deadline: float | None = None,
        stream: bool = False,
    ):
        self.name = name or user
        self.done = asyncio.Event()
        self.ticket: Ticket | None = None
        self.log = log
        self.task = asyncio.ensure_future(self._run(adm, user, model, deadline or far(), stream))

    async def _run(self, adm: Admission, user: str, model: str, deadline: float, stream: bool) -> None:
        async with adm.slot(user, model, deadline, stream=stream) as ticket:
            self.ticket = ticket
            if self.log is not None:
                self.log.append(self.name)
            await self.done.wait()

    @property
    def admitted(self) -> bool:
        return self.ticket is not None

    async def finish(self) -> None:
        self.done.set()
        await asyncio.wait_for(self.task, 2)


@pytest.fixture
def make() -> Iterator:
    """Admission factory; every test must leave its queues empty and no slot held."""
    made: list[Admission] = []

    def factory(max_concurrent: int = 1, max_queue: int = 100, max_queue_per_user: int = 100) -> Admission:
        adm = Admission(max_concurrent, max_queue, max_queue_per_user)
        made.append(adm)
        return adm

    yield factory
    for adm in made:
        assert adm.totals()["waiting"] == 0 and adm.totals()["running"] == 0, adm.totals()
        assert not adm._queues and not adm._ring and not adm._waiters


async def test_immediate_admission(make):
    adm = make(max_concurrent=2)
    async with adm.slot("alice", "m", far()) as t:
        assert t.position_at_start == 0 and t.started_at == t.enqueued_at
        assert adm.running == 1 and adm.waiting == 0
    assert adm.running == 0


async def test_concurrency_limit_respected(make):
    adm = make(max_concurrent=2)
    inside = 0
    peak = 0

    async def req(user: str) -> None:
        nonlocal inside, peak
        async with adm.slot(user, "m", far()):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.005)
            inside -= 1

    tasks = [asyncio.ensure_future(req(f"u{i % 3}")) for i in range(9)]
    await settle()
    assert adm.running == 2 and adm.waiting == 7
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert peak == 2


async def test_fifo_within_user(make):
    adm = make()
    log: list[str] = []
    holder = Client(adm, "x")
    await settle()
    clients = [Client(adm, "alice", log, name=f"a{i}") for i in range(5)]
    await settle()
    assert [c.task.done() for c in clients] == [False] * 5
    assert [adm.position(adm._queues["alice"][i].ticket.id) for i in range(5)] == [1, 2, 3, 4, 5]
    await holder.finish()
    for c in clients:
        await settle()
        assert c.admitted
        assert c.ticket.position_at_start == int(c.name[1:]) + 1
        await c.finish()
    assert log == ["a0", "a1", "a2", "a3", "a4"]


async def test_round_robin_interleaves_users(make):
    adm = make()
    log: list[str] = []
    holder = Client(adm, "x")
    await settle()
    clients = [Client(adm, "a", log, name=f"a{i}") for i in range(3)]
    clients += [Client(adm, "b", log, name=f"b{i}") for i in range(3)]
    clients += [Client(adm, "c", log, name="c0")]
    await settle()
    predicted = [e["id"] for e in adm.snapshot("x", admin=True)["all"] if e["state"] == "waiting"]
    by_id: dict[str, str] = {}
    await holder.finish()
    for _ in clients:
        await settle()
        running = [c for c in clients if c.admitted and not c.task.done()]
        assert len(running) == 1
        by_id[running[0].ticket.id] = running[0].name
        await running[0].finish()
    assert log == ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]
    assert [by_id[i] for i in predicted] == log


async def test_heavy_user_does_not_starve_light_user(make):
    adm = make(max_concurrent=1, max_queue=100, max_queue_per_user=60)
    log: list[str] = []
    holder = Client(adm, "x")
    await settle()
    heavy = [Client(adm, "heavy", log, name=f"h{i}") for i in range(50)]
    await settle()
    light = Client(adm, "light", log, name="light")
    await settle()
    assert light.ticket is None
    light_id = next(iter(adm._queues["light"])).ticket.id
    assert adm.position(light_id) == 2
    await holder.finish()
    # Light user's single request is admitted after at most one heavy request.
    for _ in range(2):
        await settle()
        current = next(c for c in heavy + [light] if c.admitted and not c.task.done())
        await current.finish()
    assert log[:2] == ["h0", "light"]
    assert light.ticket.position_at_start == 2
    for c in heavy[1:]:
        await settle()
        await c.finish()
    assert len(log) == 51


async def test_full_queue_is_503(make):
    adm = make(max_concurrent=1, max_queue=2, max_queue_per_user=10)
    holder = Client(adm, "x")
    await settle()
    waiters = [Client(adm, "b"), Client(adm, "c")]
    await settle()
    with pytest.raises(QueueFull) as err:
        async with adm.slot("d", "m", far()):
            pytest.fail("must not be admitted")
    assert err.value.status == 503
    assert 1 <= err.value.retry_after <= 60
    assert "full" in err.value.message and "retry in" in err.value.message
    assert "b" not in err.value.message.split() and "c" not in err.value.message.split()
    assert adm.waiting == 2
    await holder.finish()
    for w in waiters:
        await settle()
        await w.finish()


async def test_per_user_limit_is_429(make):
    adm = make(max_concurrent=1, max_queue=10, max_queue_per_user=2)
    holder = Client(adm, "alice")  # running requests do not count against the waiting limit
    await settle()
    waiters = [Client(adm, "alice"), Client(adm, "alice")]
    await settle()
    with pytest.raises(QueueFull) as err:
        async with adm.slot("alice", "m", far()):
            pytest.fail("must not be admitted")
    assert err.value.status == 429
    assert "You already have 2 requests waiting (limit 2)" in err.value.message
    assert 1 <= err.value.retry_after <= 60
    other = Client(adm, "bob")  # another user can still queue
    await settle()
    assert adm.waiting == 3
    await holder.finish()
    for c in [waiters[0], other, waiters[1]]:
        await settle()
        assert c.admitted
        await c.finish()


async def test_retry_after_tracks_hold_times_and_is_bounded(make):
    adm = make(max_concurrent=2)
    assert 1 <= adm.estimate_retry_after() <= 60
    for _ in range(3):
        async with adm.slot("a", "m", far()):
            await asyncio.sleep(0.02)
    assert 0.015 < adm.hold_time_s < 0.5
    assert adm.estimate_retry_after(1) == 1  # never 0: clients must not hammer
    assert adm.estimate_retry_after(10**6) == 60  # the openai client honours at most 60 s
    assert adm.estimate_retry_after(400) == pytest.approx(adm.hold_time_s * 400 / 2, abs=1)


async def test_deadline_raises_timeout_with_position(make):
    adm = make(max_concurrent=1)
    holder = Client(adm, "x")
    await settle()
    first = Client(adm, "a")
    await settle()
    t0 = time.monotonic()
    with pytest.raises(AdmissionTimeout) as err:
        async with adm.slot("b", "llama3", time.monotonic() + 0.05):
            pytest.fail("must not be admitted")
    assert 0.04 <= time.monotonic() - t0 < 1
    assert err.value.position == 2
    assert 1 <= err.value.retry_after <= 60
    assert "position 2 of 2" in err.value.message and "llama3" in err.value.message
    assert adm.waiting == 1
    await holder.finish()
    await settle()
    await first.finish()


async def test_past_deadline_still_admits_when_slot_free(make):
    adm = make()
    async with adm.slot("a", "m", time.monotonic() - 1) as t:
        assert t.started_at is not None


async def test_cancel_while_waiting_leaves_queue_at_once(make):
    adm = make(max_concurrent=1)
    holder = Client(adm, "x")
    await settle()
    a, b, c = Client(adm, "a"), Client(adm, "b"), Client(adm, "c")
    await settle()
    ids = {name: adm._queues[name][0].ticket.id for name in "abc"}
    assert [adm.position(ids[n]) for n in "abc"] == [1, 2, 3]
    b.task.cancel()
    await asyncio.sleep(0)  # one loop step: the cancelled task has left the queue
    assert adm.waiting == 2 and adm.position(ids["b"]) is None
    assert [adm.position(ids[n]) for n in "ac"] == [1, 2]
    assert adm.snapshot("c")["mine"][0]["position"] == 2
    with pytest.raises(asyncio.CancelledError):
        await b.task
    await holder.finish()
    await settle()
    assert a.admitted and not c.admitted
    await a.finish()
    await settle()
    await c.finish()


async def test_cancel_racing_admission_does_not_leak_slot(make):
    adm = make(max_concurrent=1)
    cm = adm.slot("x", "m", far())
    await cm.__aenter__()
    racer = Client(adm, "a")
    behind = Client(adm, "b")
    await settle()
    await cm.__aexit__(None, None, None)  # grants the slot to `racer` synchronously...
    assert adm.running == 1 and adm.waiting == 1 and racer.ticket is None
    racer.task.cancel()  # ...whose task is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await racer.task
    assert racer.ticket is None
    await settle()
    assert behind.admitted and adm.running == 1  # the slot passed on, not leaked
    await behind.finish()
    async with adm.slot("c", "m", far()) as t:
        assert t.position_at_start == 0


async def test_cancel_in_same_step_as_dispatch_skips_cancelled_waiter(make):
    adm = make(max_concurrent=1)
    cm = adm.slot("x", "m", far())
    await cm.__aenter__()
    gone = Client(adm, "a")
    nxt = Client(adm, "b")
    await settle()
    gone.task.cancel()  # the future is cancelled, the task has not run its cleanup yet
    await cm.__aexit__(None, None, None)  # dispatch must skip it and admit `nxt`
    with pytest.raises(asyncio.CancelledError):
        await gone.task
    await settle()
    assert nxt.admitted and adm.running == 1 and adm.waiting == 0
    await nxt.finish()


async def test_deadline_firing_in_same_step_as_admission(make):
    """The timer and the grant land in the same loop step, in either order: no leak, no double."""
    for grant_first in (True, False):
        adm = make(max_concurrent=1)
        cm = adm.slot("x", "m", far())
        await cm.__aenter__()
        racer, behind = Client(adm, "a"), Client(adm, "b")
        await settle()
        waiter = adm._queues["a"][0]
        if grant_first:
            await cm.__aexit__(None, None, None)
            adm._expire(waiter)  # the timer fires after the grant: must be a no-op
        else:
            adm._expire(waiter)
            await cm.__aexit__(None, None, None)
        await settle()
        if grant_first:
            assert racer.admitted and not behind.admitted
            await racer.finish()
            await settle()
        else:
            with pytest.raises(AdmissionTimeout):
                await racer.task
            assert behind.admitted and adm.running == 1
        await behind.finish()


async def test_raising_max_concurrent_admits_waiters(make):
    adm = make(max_concurrent=1)
    clients = [Client(adm, f"u{i}") for i in range(4)]
    await settle()
    assert adm.running == 1 and adm.waiting == 3
    adm.max_concurrent = 3
    await settle()
    assert adm.running == 3 and adm.waiting == 1
    assert sum(c.admitted for c in clients) == 3
    adm.max_concurrent = 1  # lowering lets running requests finish, admits none until below
    for c in clients[:3]:
        await c.finish()
        await settle()
    assert clients[3].admitted
    await clients[3].finish()
    with pytest.raises(ValueError):
        adm.max_concurrent = 0


async def test_snapshot_hides_other_users_unless_admin(make):
    adm = make(max_concurrent=1, max_queue=10, max_queue_per_user=5)
    run = Client(adm, "alice", model="llama3", stream=True)
    await settle()
    bob = Client(adm, "bob", model="qwen")
    alice2 = Client(adm, "alice", model="gemma")
    await settle()

    snap = adm.snapshot("alice", admin=False)
    assert "all" not in snap
    assert "bob" not in json.dumps(snap) and "qwen" not in json.dumps(snap)
    mine = snap["mine"]
    assert [(e["model"], e["state"]) for e in mine] == [("llama3", "running"), ("gemma", "waiting")]
    assert mine[1]["position"] == 2 and "position" not in mine[0]
    assert mine[0]["stream"] is True and mine[0]["running_s"] >= 0 and mine[1]["waited_s"] >= 0
    assert snap["totals"] == {
        "waiting": 2,
        "running": 1,
        "users_waiting": 2,
        "max_concurrent": 1,
        "max_queue": 10,
        "max_queue_per_user": 5,
    }
    assert adm.snapshot("carol")["mine"] == []

    admin = adm.snapshot("carol", admin=True)
    assert [(e["user"], e["state"], e.get("position")) for e in admin["all"]] == [
        ("alice", "running", None),
        ("bob", "waiting", 1),
        ("alice", "waiting", 2),
    ]
    assert admin["mine"] == []
    await run.finish()
    await settle()
    await bob.finish()
    await settle()
    await alice2.finish()


async def test_positions_match_actual_order_randomised(make):
    """Seeded fuzz: random arrivals/cancels; predicted RR order == real admission order."""
    rng = random.Random(6)
    for _ in range(5):
        adm = make(max_concurrent=1, max_queue=200, max_queue_per_user=200)
        holder = Client(adm, "x")
        await settle()
        log: list[str] = []
        clients = [Client(adm, f"u{rng.randrange(5)}", log, name=str(i)) for i in range(rng.randrange(5, 40))]
        await settle()
        for c in rng.sample(clients, len(clients) // 4):
            c.task.cancel()
        await asyncio.sleep(0)
        live = [c for c in clients if not c.task.cancelled() and not c.task.done()]
        assert adm.waiting == len(live)
        predicted = [e["id"] for e in adm.snapshot("x", admin=True)["all"] if e["state"] == "waiting"]
        positions = {i: adm.position(i) for i in predicted}
        assert list(positions.values()) == list(range(1, len(predicted) + 1))
        await holder.finish()
        admitted_ids = []
        for _ in live:
            await settle()
            cur = [c for c in live if c.admitted and not c.task.done()]
            assert len(cur) == 1
            admitted_ids.append(cur[0].ticket.id)
            await cur[0].finish()
        assert admitted_ids == predicted
        await asyncio.gather(*(c.task for c in clients), return_exceptions=True)


async def test_many_waiters_finish_and_nothing_leaks(make):
    adm = make(max_concurrent=4, max_queue=500, max_queue_per_user=500)
    served = 0

    async def req(i: int) -> None:
        nonlocal served
        async with adm.slot(f"u{i % 7}", "m", far()):
            assert adm.running <= 4
            await asyncio.sleep(0)
            served += 1

    await asyncio.wait_for(asyncio.gather(*(req(i) for i in range(300))), 5)
    assert served == 300
