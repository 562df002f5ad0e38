"""Model-aware admission: slots per (worker, model), GPU memory, eviction, plans against starvation,
two workers, cancellation, Retry-After per model, the models breakdown (pure asyncio, no server)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator

import pytest

from jupyter_llm_af.admission import Admission, WorkerInfo
from jupyter_llm_af.errors import AdmissionTimeout, BadRequest, QueueFull
from tests.test_admission import Client, far, settle

# A 40 GB job: gen (20 GB) and qwen (15 GB) fit together, big (25 GB) needs one of them out.
SIZES = {"gen": 20.0, "qwen": 15.0, "big": 25.0, "embed": 0.5, "huge": 70.0}


def job(key: str = "job1", mem: float = 40.0, parallel: int = 2, loaded=None, max_running: int = 0):
    return WorkerInfo(key, mem, parallel, dict(loaded or {}), max_running)


def check_invariants(adm: Admission) -> None:
    """What must hold after every step: limits, memory, and no waiter left that could run now."""
    assert len(adm._running) <= adm.max_concurrent
    for wk in adm._workers.values():
        assert wk.total == sum(wk.running.values()) >= 0
        if wk.live:
            if wk.parallel:
                assert all(n <= wk.parallel for n in wk.running.values()), (wk.key, wk.running)
            if wk.max_running:
                assert wk.total <= wk.max_running
            if wk.gpu_memory_gb:
                assert wk.used_gb() <= wk.gpu_memory_gb + 1e-6, (wk.key, wk.loaded)
    if len(adm._running) < adm.max_concurrent:
        for w in adm._waiters.values():
            if not w.fut.done():
                assert adm._place(w.key, w.seq) is None, f"{w.ticket.model} could run but waits"


@pytest.fixture
def make() -> Iterator:
    """Model-aware Admission factory; every test must leave it empty: no waiter, slot or plan."""
    made: list[Admission] = []

    def factory(
        workers=None, max_concurrent: int = 8, max_queue: int = 100, max_queue_per_user: int = 100, sizes=None
    ) -> Admission:
        table = SIZES if sizes is None else sizes
        adm = Admission(
            max_concurrent,
            max_queue,
            max_queue_per_user,
            size_of=table.get,
            workers=workers if workers is not None else [job()],
        )
        made.append(adm)
        return adm

    yield factory
    for adm in made:
        assert adm.waiting == 0 and adm.running == 0, adm.totals()
        assert not adm._queues and not adm._ring and not adm._waiters and not adm._per_user
        assert not adm._model_waiting and not adm._plans
        for wk in adm._workers.values():
            assert wk.total == 0 and not wk.running and wk.plan is None


def current(clients: list[Client]) -> list[Client]:
    return [c for c in clients if c.admitted and not c.task.done()]


# -- slots per model ----------------------------------------------------------------------------
async def test_embedding_not_blocked_behind_generations_of_another_model(make):
    adm = make([job(parallel=2, loaded={"gen": 20.0, "embed": 0.5})], max_concurrent=8)
    gens = [Client(adm, f"u{i}", model="gen") for i in range(3)]
    await settle()
    assert sum(c.admitted for c in gens) == 2 and adm.waiting == 1  # gen's 2 slots are full
    emb = Client(adm, "e", model="embed")
    await settle()
    assert emb.admitted and emb.ticket.position_at_start == 0  # its own slots: no wait at all
    assert emb.ticket.worker == "job1" and not emb.ticket.load and emb.ticket.evict == ()
    check_invariants(adm)
    await emb.finish()
    for c in gens:
        await settle()
        await c.finish()


async def test_one_global_queue_without_workers_is_todays_behaviour(make):
    """No workers given: one stand-in worker, the one limit max_concurrent for every model."""
    adm = Admission(2, 100, 100)
    gens = [Client(adm, f"u{i}", model="gen") for i in range(2)]
    await settle()
    emb = Client(adm, "e", model="embed")
    await settle()
    assert not emb.admitted and adm.position(adm._queues["e"][0].ticket.id) == 1
    assert gens[0].ticket.worker == "default"
    await gens[0].finish()
    await settle()
    assert emb.admitted
    await emb.finish()
    await gens[1].finish()
    assert adm.running == 0 and adm.waiting == 0


async def test_overall_cap_and_per_worker_cap(make):
    adm = make([job(parallel=4, loaded={"gen": 20.0, "embed": 0.5}, max_running=3)], max_concurrent=8)
    clients = [Client(adm, f"u{i}", model="gen") for i in range(2)] + [
        Client(adm, f"e{i}", model="embed") for i in range(2)
    ]
    await settle()
    assert len(current(clients)) == 3  # the worker's own cap, below the per-model slots
    check_invariants(adm)
    adm.set_workers([job(parallel=4, loaded={"gen": 20.0, "embed": 0.5})])
    await settle()
    assert len(current(clients)) == 4
    adm.max_concurrent = 1  # lowering lets running requests finish
    more = Client(adm, "late", model="embed")
    await settle()
    assert not more.admitted
    for c in clients:
        await c.finish()
    await settle()
    assert more.admitted
    await more.finish()


# -- memory-aware placement, waiting for memory, eviction ---------------------------------------
async def test_load_beside_running_model_when_memory_allows(make):
    adm = make([job(loaded={"gen": 20.0})])
    g = Client(adm, "a", model="gen")
    q = Client(adm, "b", model="qwen")  # 20 + 15 <= 40
    await settle()
    assert g.admitted and not g.ticket.load
    assert q.admitted and q.ticket.load and q.ticket.evict == ()
    assert adm._workers["job1"].loaded == {"gen": 20.0, "qwen": 15.0}
    await g.finish()
    await q.finish()


async def test_load_waits_for_memory_then_evicts_the_idle_model(make):
    adm = make([job(loaded={"gen": 20.0, "qwen": 15.0})])
    g = Client(adm, "a", model="gen")
    q = Client(adm, "b", model="qwen")
    await settle()
    big = Client(adm, "c", model="big")  # 25 GB fits beside qwen only (40 - 15): gen must go
    await settle()
    assert not big.admitted
    m = {e["name"]: e for e in adm.snapshot("c")["models"]}
    assert m["big"]["waiting"] == 1 and m["big"]["waiting_for"] == "memory"
    assert m["big"]["plan"] == {"worker": "job1", "evicts": ["gen"]}
    assert adm.snapshot("c")["workers"][0]["reserved_for"] == "big"
    check_invariants(adm)
    await q.finish()  # qwen idle: evicting it alone frees 20 GB, not enough
    await settle()
    assert not big.admitted
    late = Client(adm, "d", model="gen")  # gen has a free slot, but this came after big: it waits
    await settle()
    assert not late.admitted
    await g.finish()
    await settle()
    assert big.admitted and big.ticket.load and big.ticket.evict == ("gen",)
    assert adm._workers["job1"].loaded == {"qwen": 15.0, "big": 25.0}
    assert not late.admitted  # gen (20) needs big out; big is running: gen's plan holds it
    assert adm._plans["gen"].victims == ("big",)
    check_invariants(adm)
    await big.finish()
    await settle()
    # gen loads again: evicting big alone is enough (the idle qwen, older, is kept)
    assert late.admitted and late.ticket.load and late.ticket.evict == ("big",)
    await late.finish()


async def test_eviction_prefers_least_recently_used_and_keeps_only_what_is_needed(make):
    adm = make([job(mem=41.0, loaded={"qwen": 15.0, "embed": 0.5, "gen": 20.0})])
    for model in ("gen", "qwen"):  # embed never used, then gen, qwen used last
        async with adm.slot("a", model, far()):
            await asyncio.sleep(0.001)
    # big (25) needs 19.5 GB more than the 5.5 free: LRU order is embed, gen, qwen; embed + gen
    # would do, but gen alone does too, so embed stays.
    async with adm.slot("a", "big", far()) as t:
        assert t.load and t.evict == ("gen",)
    assert adm._workers["job1"].loaded == {"qwen": 15.0, "embed": 0.5, "big": 25.0}
    async with adm.slot("a", "embed", far()):
        pass  # embed is now the most recently used
    # gen (20) with 0.5 free: qwen (the LRU) alone is not enough, big alone is: big goes.
    async with adm.slot("a", "gen", far()) as t:
        assert t.load and t.evict == ("big",)


async def test_idle_model_with_waiters_is_evicted_last(make):
    adm = make([job(mem=40.0, parallel=1, loaded={"gen": 20.0, "qwen": 15.0})], max_concurrent=1)
    holder = Client(adm, "x", model="gen")  # fills the overall cap
    await settle()
    wants_qwen = Client(adm, "q", model="qwen")
    await settle()
    assert not wants_qwen.admitted
    await holder.finish()  # cap free: qwen's waiter runs (qwen is loaded, its slot is free)
    await settle()
    assert wants_qwen.admitted
    await wants_qwen.finish()


async def test_unknown_size_is_assumed_to_fit(make):
    adm = make([job(mem=40.0, loaded={"gen": 20.0, "qwen": 15.0})])
    clients = [
        Client(adm, "a", model="gen"),
        Client(adm, "b", model="qwen"),
        Client(adm, "c", model="mystery"),
    ]
    await settle()
    assert all(c.admitted for c in clients) and clients[2].ticket.evict == ()
    for c in clients:
        await c.finish()


async def test_model_bigger_than_every_gpu_is_refused_at_once(make):
    adm = make([job(mem=40.0, loaded={"gen": 20.0}), job("job2", mem=48.0)])
    with pytest.raises(BadRequest) as err:
        async with adm.slot("a", "huge", far()):
            pytest.fail("must not be admitted")
    assert (
        err.value.code == "model_too_large" and "70 GB" in err.value.message and "48 GB" in err.value.message
    )
    assert adm.waiting == 0


async def test_latest_alias_is_one_model(make):
    adm = make([job(parallel=1, loaded={"gen:latest": 20.0})])
    a = Client(adm, "a", model="gen")
    b = Client(adm, "b", model="gen:latest")
    await settle()
    assert a.admitted and not a.ticket.load and not b.admitted  # one slot for the one model
    await a.finish()
    await settle()
    await b.finish()


# -- no starvation of a load ----------------------------------------------------------------------
async def test_load_is_not_starved_by_a_continuous_stream_for_a_loaded_model(make):
    """gen keeps both its slots busy forever; big needs gen out. Once big waits, only gen requests
    that arrived before it still run; then big loads (evicting gen), and gen comes back after."""
    adm = make([job(mem=40.0, parallel=2, loaded={"gen": 30.0})], sizes={"gen": 30.0, "big": 20.0})
    events: list[tuple[str, int]] = []  # (model, ticket seq) in admission order
    stop = asyncio.Event()

    async def stream(user: str) -> None:
        while not stop.is_set():
            async with adm.slot(user, "gen", far()) as t:
                events.append(("gen", int(t.id)))
                check_invariants(adm)
                await asyncio.sleep(0.003)

    async def until(pred) -> None:  # bounded: a busy machine only slows the stream down
        for _ in range(400):
            if pred():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("condition not reached in 2 s")

    streams = [asyncio.ensure_future(stream(f"s{i}")) for i in range(3)]
    await until(lambda: len(events) > 10)  # the stream runs: gen always has 2 running and 1 waiting
    await settle()
    assert adm._workers["job1"].running == {"gen": 2} and adm.waiting == 1
    mark = len(events)
    t0 = time.monotonic()
    async with adm.slot("b", "big", far()) as big:
        waited = time.monotonic() - t0
        assert big.load and big.evict == ("gen",)
        seq = int(big.id)
        overtook = [s for _, s in events[mark:] if s > seq]
        assert not overtook, "a gen request that arrived after big was admitted before it"
        assert len(events) - mark <= 1  # only the one gen request already waiting went first
        n_before = len(events)
        await asyncio.sleep(0.02)
        assert len(events) == n_before  # gen cannot come back while big holds the memory
    assert waited < 0.5
    await until(lambda: len(events) > n_before + 5)  # gen loaded again (evicting the idle big)
    assert adm._workers["job1"].loaded == {"gen": 30.0}
    stop.set()
    await asyncio.wait_for(asyncio.gather(*streams), 2)


async def test_two_loads_waiting_go_in_order(make):
    adm = make(
        [job(mem=40.0, parallel=1, loaded={"gen": 30.0})], sizes={"gen": 30.0, "big": 25.0, "qwen": 25.0}
    )
    g = Client(adm, "a", model="gen")
    await settle()
    first = Client(adm, "b", model="big")
    await settle()
    second = Client(adm, "c", model="qwen")
    await settle()
    assert list(adm._plans) == ["big"]  # one plan per worker: qwen is next in line
    await g.finish()
    await settle()
    assert first.admitted and not second.admitted and first.ticket.evict == ("gen",)
    assert list(adm._plans) == ["qwen"] and adm._plans["qwen"].victims == ("big",)
    await first.finish()
    await settle()
    assert second.admitted and second.ticket.evict == ("big",)
    await second.finish()


# -- fairness across users per model ------------------------------------------------------------
async def test_round_robin_across_users_for_one_model_while_another_flows(make):
    adm = make([job(parallel=1, loaded={"gen": 20.0, "embed": 0.5})], max_concurrent=8)
    log: list[str] = []
    holder = Client(adm, "x", model="gen")
    await settle()
    heavy = [Client(adm, "heavy", log, name=f"h{i}", model="gen") for i in range(6)]
    await settle()
    light = Client(adm, "light", log, name="light", model="gen")
    embeds = [Client(adm, "heavy", log, name=f"e{i}", model="embed") for i in range(3)]
    await settle()
    # heavy's embeddings are not held behind heavy's own gen requests
    assert [c.admitted for c in embeds] == [True, False, False]
    light_id = adm._queues["light"][0].ticket.id
    assert adm.position(light_id) == 2  # among gen waiters: after heavy's first
    for c in embeds:
        await settle()
        await c.finish()
    await holder.finish()
    for _ in range(7):
        await settle()
        running = [c for c in heavy + [light] if c.admitted and not c.task.done()]
        assert len(running) == 1
        await running[0].finish()
    gen_order = [n for n in log if not n.startswith("e")]
    # heavy was served (its embeddings) while light waited, so light may even go first
    assert "light" in gen_order[:2] and gen_order.count("light") == 1


# -- two workers --------------------------------------------------------------------------------
async def test_two_workers_prefer_loaded_model_else_least_loaded(make):
    adm = make([job("w1", loaded={"gen": 20.0}), job("w2", loaded={"qwen": 15.0})], max_concurrent=16)
    a = Client(adm, "a", model="gen")
    await settle()
    assert a.ticket.worker == "w1" and not a.ticket.load
    b = Client(adm, "b", model="qwen")  # loaded on w2 only
    await settle()
    assert b.ticket.worker == "w2"
    c = Client(adm, "c", model="embed")  # loaded nowhere: the least loaded (a tie: the first)
    await settle()
    assert c.ticket.worker == "w1" and c.ticket.load and c.ticket.evict == ()
    d = Client(adm, "d", model="gen")  # loaded on w1 with a free slot: w1, although w2 runs less
    await settle()
    assert d.ticket.worker == "w1" and not d.ticket.load
    e = Client(adm, "e", model="gen")  # w1's 2 gen slots are full: a second copy in w2's free memory
    await settle()
    assert e.ticket.worker == "w2" and e.ticket.load and e.ticket.evict == ()
    on_w2 = {m["name"] for m in adm.snapshot("root", admin=True)["models"] if "w2" in m["workers"]}
    assert on_w2 == {"gen", "qwen"}
    check_invariants(adm)
    f = Client(adm, "f", model="gen")  # the copy on w2 has a second slot
    g = Client(adm, "g", model="gen")  # both copies full: waits for a gen slot
    await settle()
    assert f.admitted and f.ticket.worker == "w2" and not f.ticket.load and not g.admitted
    await e.finish()
    await settle()
    assert g.admitted and g.ticket.worker == "w2" and not g.ticket.load
    for x in (a, b, c, d, f, g):
        await x.finish()


async def test_least_loaded_worker_for_a_new_model(make):
    adm = make([job("w1", loaded={"gen": 20.0}), job("w2", loaded={"qwen": 15.0})], max_concurrent=16)
    busy = [Client(adm, "a", model="gen"), Client(adm, "b", model="gen")]
    await settle()
    new = Client(adm, "c", model="embed")
    await settle()
    assert new.ticket.worker == "w2"  # w1 runs 2, w2 none
    for x in busy + [new]:
        await x.finish()


async def test_second_copy_never_by_eviction(make):
    adm = make([job("w1", loaded={"gen": 20.0}), job("w2", loaded={"big": 25.0})], max_concurrent=16)
    g = [Client(adm, f"u{i}", model="gen") for i in range(3)]
    await settle()
    # w2 could hold gen only by evicting the idle big: not for a second copy; gen waits its slot.
    assert [x.admitted for x in g] == [True, True, False]
    assert all(x.ticket.worker == "w1" for x in g[:2])
    assert not adm._plans
    await g[0].finish()
    await settle()
    assert g[2].admitted and g[2].ticket.worker == "w1"
    await g[1].finish()
    await g[2].finish()


async def test_plan_on_the_worker_whose_victims_drain_soonest(make):
    w1, w2 = job("w1", loaded={"gen": 30.0}), job("w2", loaded={"qwen": 30.0})
    adm = make([w1, w2], max_concurrent=16, sizes={"gen": 30.0, "qwen": 30.0, "big": 20.0})
    clients = [Client(adm, "a", model="gen"), Client(adm, "b", model="gen"), Client(adm, "c", model="qwen")]
    await settle()
    big = Client(adm, "d", model="big")
    await settle()
    assert adm._plans["big"].worker.key == "w2" and adm._plans["big"].victims == ("qwen",)
    late = Client(adm, "e", model="qwen")  # arrived after big: held while big's plan holds w2
    await settle()
    assert not late.admitted
    await clients[2].finish()
    await settle()
    assert big.admitted and big.ticket.worker == "w2" and big.ticket.evict == ("qwen",)
    await settle()
    assert not late.admitted  # qwen is loaded nowhere now; w2 holds gen? no: it holds big
    await big.finish()
    await settle()
    assert late.admitted and late.ticket.worker == "w2" and late.ticket.evict == ("big",)
    for x in clients[:2] + [late]:
        await x.finish()


async def test_plan_is_released_when_the_model_gets_a_place_elsewhere(make):
    w1, w2 = job("w1", parallel=1, loaded={"gen": 30.0}), job("w2", mem=10.0, parallel=1)
    adm = make([w1, w2], max_concurrent=16, sizes={"gen": 30.0, "big": 20.0})
    g = Client(adm, "a", model="gen")
    await settle()
    big = Client(adm, "b", model="big")
    big2 = Client(adm, "d", model="big")
    await settle()
    assert adm._plans["big"].worker.key == "w1"
    held = Client(adm, "c", model="gen")  # after big: frozen on w1
    await settle()
    assert not held.admitted
    adm.set_workers([w1, job("w2", mem=80.0, parallel=1)])  # w2 grew (e.g. a bigger job replaced it)
    await settle()
    assert big.admitted and big.ticket.worker == "w2" and not adm._plans
    # no longer frozen; w1's one gen slot is busy, so a second copy goes to w2's free memory
    assert held.admitted and held.ticket.worker == "w2" and held.ticket.load and held.ticket.evict == ()
    assert not big2.admitted  # big's one slot on w2 is busy; no second copy by evicting gen
    await big.finish()
    await settle()
    assert big2.admitted and big2.ticket.worker == "w2"
    for x in (g, big2, held):
        await x.finish()


async def test_removed_worker_keeps_its_running_requests(make):
    adm = make([job("w1", loaded={"gen": 20.0}), job("w2", loaded={"gen": 20.0})], max_concurrent=16)
    a, b, c = (Client(adm, u, model="gen") for u in "abc")
    await settle()
    assert [x.ticket.worker for x in (a, b, c)] == ["w1", "w2", "w1"]  # least loaded, ties: first
    adm.set_workers([job("w1", loaded={"gen": 20.0})])  # the launcher let w2 go
    assert not adm._workers["w2"].live and [w["key"] for w in adm.snapshot("a")["workers"]] == ["w1"]
    d = Client(adm, "d", model="gen")
    await settle()
    assert not d.admitted  # w1's two gen slots are taken, w2 gets nothing new
    await b.finish()
    await settle()
    assert "w2" not in adm._workers and not d.admitted
    await a.finish()
    await settle()
    assert d.admitted and d.ticket.worker == "w1"
    await c.finish()
    await d.finish()


async def test_backend_reports_change_the_accounting(make):
    adm = make([job(loaded={"gen": 20.0, "qwen": 15.0})])
    g, q = Client(adm, "a", model="gen"), Client(adm, "b", model="qwen")
    await settle()
    big = Client(adm, "c", model="big")
    await settle()
    assert not big.admitted
    wk = adm._workers["job1"]
    adm.model_unloaded("job1", "qwen")  # a stale listing: a request runs on qwen, it stays counted
    assert "qwen" in wk.loaded
    adm.set_workers([job(mem=80.0, loaded={"gen": 20.0})])  # a bigger GPU reported; qwen runs on
    await settle()
    assert big.admitted and big.ticket.evict == () and set(wk.loaded) == {"gen", "qwen", "big"}
    adm.model_loaded("job1", "embed")  # size from size_of
    assert wk.loaded["embed"] == 0.5
    for c in (g, q, big):
        await c.finish()
    adm.model_unloaded("job1", "qwen")  # idle now: gone
    adm.set_workers([job(mem=80.0, loaded={"gen": 20.0, "big": None})])  # None: size from size_of
    assert wk.loaded == {"gen": 20.0, "big": 25.0}


# -- cancellation ---------------------------------------------------------------------------------
async def test_cancelling_the_waiting_load_releases_its_plan(make):
    adm = make([job(mem=40.0, parallel=1, loaded={"gen": 30.0})], sizes={"gen": 30.0, "big": 20.0})
    g = Client(adm, "a", model="gen")
    await settle()
    big = Client(adm, "b", model="big")
    await settle()
    assert adm._plans
    later = Client(adm, "c", model="gen")  # frozen behind big's plan
    await g.finish()
    await settle()
    assert big.admitted and not later.admitted
    await big.finish()
    await settle()
    await later.finish()
    # Now cancel a load while it waits: the gen request held behind it runs at once.
    g2 = Client(adm, "a", model="gen")
    await settle()
    big2 = Client(adm, "b", model="big")
    await settle()
    held = Client(adm, "c", model="gen")
    await settle()
    assert adm._plans and not held.admitted
    big2.task.cancel()
    await asyncio.sleep(0)
    assert not adm._plans
    await g2.finish()
    await settle()
    assert held.admitted
    with pytest.raises(asyncio.CancelledError):
        await big2.task
    await held.finish()


async def test_cancel_racing_a_load_does_not_leak_slot_or_memory(make):
    adm = make([job(mem=40.0, parallel=1, loaded={"gen": 30.0})], sizes={"gen": 30.0, "big": 20.0})
    cm = adm.slot("x", "gen", far())
    await cm.__aenter__()
    racer = Client(adm, "a", model="big")
    behind = Client(adm, "b", model="gen")
    await settle()
    await cm.__aexit__(None, None, None)  # grants big (evicting gen) synchronously...
    assert racer.ticket is None and adm.running == 1
    racer.task.cancel()  # ...whose task is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await racer.task
    wk = adm._workers["job1"]
    assert "big" not in wk.loaded  # it never reached the backend
    await settle()
    assert behind.admitted and behind.ticket.load  # gen counted unloaded by the grant: loads again
    await behind.finish()
    assert wk.total == 0 and not wk.running


async def test_timeout_while_waiting_for_memory_says_why(make):
    adm = make([job(loaded={"gen": 20.0, "qwen": 15.0})])
    g, q = Client(adm, "a", model="gen"), Client(adm, "b", model="qwen")
    await settle()
    with pytest.raises(AdmissionTimeout) as err:
        async with adm.slot("c", "big", time.monotonic() + 0.05):
            pytest.fail("must not be admitted")
    msg = err.value.message
    assert "big" in msg and "GPU memory" in msg and "job1" in msg and "position 1 of 1" in msg
    assert 1 <= err.value.retry_after <= 60
    assert not adm._plans
    await g.finish()
    await q.finish()


# -- limits and Retry-After per model -------------------------------------------------------------
async def test_retry_after_per_model_from_its_own_hold_times(make):
    adm = make([job(parallel=2, loaded={"gen": 20.0, "embed": 0.5})])
    for _ in range(3):
        async with adm.slot("a", "gen", far()):
            await asyncio.sleep(0.2)
        async with adm.slot("a", "embed", far()):
            await asyncio.sleep(0.002)
    assert adm.hold_time_for("gen") > 0.15 > 0.01 > adm.hold_time_for("embed")
    assert adm.estimate_retry_after(100, "gen") == pytest.approx(adm.hold_time_for("gen") * 100 / 2, abs=1)
    assert adm.estimate_retry_after(100, "embed") == 1
    assert adm.estimate_retry_after(10**6, "gen") == 60
    # The 429 names the user's limit and estimates from the model of their first waiting request.
    tight = make([job(parallel=1, loaded={"gen": 20.0})], max_queue_per_user=1)
    for _ in range(3):
        async with tight.slot("a", "gen", far()):
            await asyncio.sleep(0.2)
    holder = Client(tight, "a", model="gen")
    await settle()
    waiter = Client(tight, "a", model="gen")
    await settle()
    with pytest.raises(QueueFull) as err:
        async with tight.slot("a", "gen", far()):
            pytest.fail("must not be admitted")
    assert err.value.status == 429 and "limit 1" in err.value.message
    assert err.value.retry_after == max(1, round(tight.hold_time_for("gen") + 0.5))
    await holder.finish()
    await settle()
    await waiter.finish()


async def test_shared_queue_full_is_503_across_models(make):
    adm = make([job(parallel=1, loaded={"gen": 20.0, "embed": 0.5})], max_queue=2)
    holders = [Client(adm, "x", model="gen"), Client(adm, "y", model="embed")]
    await settle()
    waiters = [Client(adm, "a", model="gen"), Client(adm, "b", model="embed")]
    await settle()
    with pytest.raises(QueueFull) as err:
        async with adm.slot("c", "gen", far()):
            pytest.fail("must not be admitted")
    assert err.value.status == 503 and 1 <= err.value.retry_after <= 60
    for c in holders:
        await c.finish()
    for c in waiters:
        await settle()
        await c.finish()


# -- the models breakdown --------------------------------------------------------------------------
async def test_snapshot_models_breakdown_and_privacy(make):
    adm = make([job(parallel=1, loaded={"gen": 20.0})], max_concurrent=8)
    run = Client(adm, "alice", model="gen")
    await settle()
    bob = Client(adm, "bob", model="secret")  # size unknown: fits, runs (loaded from now on)
    bob2 = Client(adm, "bob", model="gen")  # waits for gen's slot
    carol = Client(adm, "carol", model="big")  # 25 GB beside gen's 20: waits for memory
    await settle()
    assert bob.admitted and not bob2.admitted and not carol.admitted
    snap = adm.snapshot("alice")
    assert set(snap) == {"mine", "totals", "models", "workers"}
    assert snap["totals"] == {
        "waiting": 2,
        "running": 2,
        "users_waiting": 2,
        "max_concurrent": 8,
        "max_queue": 100,
        "max_queue_per_user": 100,
    }
    models = {m["name"]: m for m in snap["models"]}
    # alice sees loaded/running models (public through /api/ps) but not carol's waiting one
    assert (
        set(models) == {"gen", "secret"} and "big" not in json.dumps(snap) and "bob" not in json.dumps(snap)
    )
    assert models["gen"] == {
        "name": "gen",
        "waiting": 1,
        "running": 1,
        "workers": ["job1"],
        "size_gb": 20.0,
        "waiting_for": "slot",
    }
    assert snap["mine"][0]["worker"] == "job1"
    admin = adm.snapshot("root", admin=True)
    amodels = {m["name"]: m for m in admin["models"]}
    assert amodels["big"]["waiting_for"] == "memory" and amodels["big"]["plan"]["evicts"] == ["gen"]
    assert [(e["user"], e["model"], e.get("position")) for e in admin["all"] if e["state"] == "waiting"] == [
        ("bob", "gen", 1),
        ("carol", "big", 1),
    ]
    assert adm.longest_wait_s() > 0 and adm.longest_wait_s("big") > 0 and adm.longest_wait_s("secret") == 0
    w = admin["workers"][0]
    assert w["key"] == "job1" and w["used_gb"] == 20.0 and w["running"] == 2 and w["reserved_for"] == "big"
    assert adm.snapshot("carol")["mine"][0]["position"] == 1
    for c in (run, bob, bob2, carol):
        await settle()
        await c.finish()


# -- randomised: limits, memory and work conservation hold at every step --------------------------
async def test_random_mixed_load_keeps_invariants_and_serves_everyone(make):
    rng = random.Random(15)
    sizes = {"gen": 20.0, "qwen": 15.0, "big": 25.0, "embed": 0.5, "x": None}
    for round_ in range(4):
        workers = [job("w1", parallel=2, loaded={"gen": 20.0})]
        if round_ % 2:
            workers.append(job("w2", mem=30.0, parallel=1, max_running=2))
        adm = make(workers, max_concurrent=rng.choice([2, 4, 8]), sizes=sizes)
        served: list[str] = []
        failures: list[BaseException] = []

        async def req(adm: Admission, served: list[str], failures: list[BaseException]) -> None:
            model = rng.choice(["gen", "gen", "qwen", "big", "embed", "embed", "x"])
            deadline = time.monotonic() + 0.003 if rng.random() < 0.1 else far()
            try:
                async with adm.slot(f"u{rng.randrange(5)}", model, deadline) as t:
                    check_invariants(adm)
                    await asyncio.sleep(rng.choice([0, 0.001, 0.004]))
                    served.append(t.id)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: BLE001 - collected, asserted below
                failures.append(e)
            finally:
                check_invariants(adm)

        tasks = []
        for _ in range(60):
            tasks.append(asyncio.ensure_future(req(adm, served, failures)))
            if rng.random() < 0.3:
                await asyncio.sleep(0.001)
            if rng.random() < 0.1:
                rng.choice(tasks).cancel()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        cancelled = sum(isinstance(d, asyncio.CancelledError) for d in done)
        assert all(isinstance(err, AdmissionTimeout) for err in failures), failures
        assert len(served) + cancelled + len(failures) == 60


async def test_positions_per_model_match_actual_order_randomised(make):
    """While the overall cap is not what blocks, positions count the waiters for the same model;
    the predicted round-robin order is the order gen's one slot admits them."""
    rng = random.Random(7)
    for _ in range(4):
        adm = make([job(parallel=1, loaded={"gen": 20.0, "embed": 0.5})], max_concurrent=8)
        holder = Client(adm, "x", model="gen")
        await settle()
        clients = [
            Client(adm, f"u{rng.randrange(4)}", model=rng.choice(["gen", "gen", "embed"]))
            for _ in range(rng.randrange(6, 25))
        ]
        await settle()
        embeds = [c for c in clients if c.admitted]
        for c in embeds:  # one embed runs, the others wait for its slot: let them all through
            await c.finish()
        while True:
            await settle()
            running = [c for c in clients if c.admitted and not c.task.done() and c.ticket.model == "embed"]
            if not running:
                break
            for c in running:
                await c.finish()
        gens = [c for c in clients if not c.task.done()]
        assert all(not c.admitted for c in gens)
        predicted = [e["id"] for e in adm.snapshot("root", admin=True)["all"] if e["state"] == "waiting"]
        assert [adm.position(i) for i in predicted] == list(range(1, len(predicted) + 1))
        await holder.finish()
        order = []
        for _ in gens:
            await settle()
            cur = [c for c in gens if c.admitted and not c.task.done()]
            assert len(cur) == 1
            order.append(cur[0].ticket.id)
            await cur[0].finish()
        assert order == predicted
