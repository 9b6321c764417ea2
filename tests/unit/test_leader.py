"""The pure parts of leader election: timing rules, the guarded store view, run_while_leader."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.ha.leader import (
    MIN_TTL,
    Election,
    keepalive_period,
    leadership_expired,
    run_while_leader,
)
from controlplane.store import NotLeader, Store, StoreError


def test_keepalive_refreshes_three_times_per_ttl():
    assert keepalive_period(6) == 2
    assert keepalive_period(0) > 0


def test_leadership_expires_a_ttl_after_the_last_refresh_was_sent():
    assert not leadership_expired(10.0, 14.9, 5)
    assert leadership_expired(10.0, 15.0, 5)


def test_with_guard_is_a_view_sharing_the_client():
    client = object()
    store = Store(client, prefix="/x/")
    view = store.with_guard(b"/x/leader", 7)
    assert view.client is client and view.prefix == "/x"
    assert view.guard == (b"/x/leader", 7) and store.guard is None
    assert view._group is store._group  # group commit still batches both


def test_not_leader_is_a_store_error():
    assert issubclass(NotLeader, StoreError)


def test_an_election_that_has_not_won_has_no_guard():
    e = Election(Store(object(), prefix="/p"), name="me", ttl=1)
    assert e.ttl == MIN_TTL and e.key == b"/p/leader" and not e.is_leader
    with pytest.raises(NotLeader):
        e.leader_guard()


class FakeElection:
    """Wins every campaign at once; terms are numbered by the guard's revision."""

    def __init__(self):
        self.store = Store(object(), prefix="/p")
        self.term = 0
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self.resigned = 0
        self.campaigned = asyncio.Event()

    async def campaign(self):
        self.term += 1
        self.lost.clear()
        self.elected.set()
        self.campaigned.set()

    def leader_guard(self):
        return b"/p/leader", self.term

    def step_down(self, reason=""):
        self.elected.clear()
        self.lost.set()

    async def resign(self):
        self.resigned += 1
        self.step_down()


def test_run_while_leader_restarts_its_tasks_after_not_leader():
    async def go():
        election = FakeElection()
        terms = []

        async def work(store):
            if len(terms) == 1:
                raise NotLeader("deposed")
            await asyncio.Event().wait()

        def factory(store):
            terms.append(store.guard)
            return [work(store)]

        runner = asyncio.ensure_future(run_while_leader(election, factory))
        for _ in range(100):
            if len(terms) >= 2:
                break
            await asyncio.sleep(0.01)
        assert terms == [(b"/p/leader", 1), (b"/p/leader", 2)]
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        assert election.resigned == 1

    asyncio.run(go())


def test_run_while_leader_cancels_tasks_when_leadership_is_lost():
    async def go():
        election = FakeElection()
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        runner = asyncio.ensure_future(run_while_leader(election, lambda s: [work()]))
        await asyncio.wait_for(election.campaigned.wait(), 1)
        await asyncio.sleep(0)
        election.campaigned.clear()
        election.step_down()
        await asyncio.wait_for(cancelled.wait(), 1)
        await asyncio.wait_for(election.campaigned.wait(), 1)  # and campaigns again
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(go())


def test_any_other_task_failure_resigns_and_is_raised():
    async def go():
        election = FakeElection()

        async def broken():
            raise RuntimeError("scheduler bug")

        with pytest.raises(RuntimeError, match="scheduler bug"):
            await run_while_leader(election, lambda s: [broken()])
        assert election.resigned == 1

    asyncio.run(go())
