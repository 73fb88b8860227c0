"""The client from asyncio code (issue 13): `enqueue_async`, `result_async`
and `get_async` leave the event loop free while they work or wait. Real
Postgres, Redis and a worker; each test drives its own loop with
`asyncio.run`."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from durable import DurableClient, Settings, Status
from durable.errors import WorkflowNotFoundError
from tests.harness import Backend


@pytest.fixture
def backend(pg_backend: Backend) -> Backend:
    return pg_backend


class Ticker:
    """Another coroutine on the same loop, counting its turns: a loop that a
    blocking call held would give it none."""

    def __init__(self) -> None:
        self.ticks = 0
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:
            self.ticks += 1
            await asyncio.sleep(0.01)


def test_enqueue_and_wait_async_while_the_loop_keeps_serving(client: DurableClient, start_worker, effects_dir):
    start_worker()

    async def main() -> dict[str, Any]:
        ticker = Ticker()
        ticking = asyncio.create_task(ticker.run())
        handle = await client.enqueue_async("slow_workflow", args=["done", 2.0])
        status = await client.get_async(handle.workflow_id)
        ticks_before = ticker.ticks
        # meanwhile "another request" is answered: a status read on the same loop
        other = asyncio.create_task(handle.status_async())
        result = await handle.result_async(timeout=60)
        ticks_during = ticker.ticks - ticks_before
        ticker.stopped = True
        await ticking
        return dict(result=result, status=status, other=await other, ticks=ticks_during)

    seen = asyncio.run(main())
    assert seen["result"] == "done"
    assert seen["status"].status in (Status.ENQUEUED, Status.PENDING)
    assert seen["other"].workflow_id == seen["status"].workflow_id
    # a 2 s step: a loop blocked by the wait would have let the ticker run
    # once or not at all; free, it runs about every 10 ms
    assert seen["ticks"] > 20, seen["ticks"]


def test_async_errors_and_timeouts(client: DurableClient, start_worker, effects_dir):
    start_worker()

    async def main() -> None:
        with pytest.raises(WorkflowNotFoundError):
            await client.get_async("no-such-workflow")
        with pytest.raises(WorkflowNotFoundError):
            await client.handle("no-such-workflow").result_async(timeout=5)
        slow = await client.enqueue_async("slow_workflow", args=["late", 30.0])
        with pytest.raises(TimeoutError):
            await slow.result_async(timeout=0.5)
        failing = await client.enqueue_async("fails", args=["boom"])
        with pytest.raises(Exception, match="boom"):
            await failing.result_async(timeout=60)
        with pytest.raises(TypeError):  # checked before anything is written, as enqueue() does
            await client.enqueue_async("ten_steps", args="not a list")

    asyncio.run(main())
    assert [w.name for w in client.list_workflows()] == ["fails", "slow_workflow"]


def test_enqueue_in_an_async_session_transaction(client: DurableClient, backend: Backend, start_worker, effects_dir):
    """An AsyncSession: the sync enqueue runs on its session through
    run_sync; the workflow is published after the async commit."""
    client.store.db.ensure_schema()
    start_worker()
    engine = create_async_engine(backend.database_url)

    async def main() -> Any:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE orders (id text PRIMARY KEY)"))
        async with AsyncSession(engine) as session:
            async with session.begin():
                await session.execute(text("INSERT INTO orders VALUES ('o-1')"))
                handle = await session.run_sync(
                    lambda s: client.enqueue("ten_steps", workflow_id="order-o-1", transaction=s)
                )
        async with AsyncSession(engine) as session:
            async with session.begin():
                await session.run_sync(
                    lambda s: client.enqueue("ten_steps", workflow_id="order-o-2", transaction=s)
                )
                await session.rollback()
        result = await handle.result_async(timeout=60)
        await engine.dispose()
        return result

    assert asyncio.run(main())["sum"] == 385
    with pytest.raises(WorkflowNotFoundError):
        client.get("order-o-2")


def test_sqlite_waits_async_by_polling(tmp_path: Path) -> None:
    client = DurableClient(settings=Settings(home=str(tmp_path), database_url=f"sqlite:///{tmp_path / 'd.sqlite3'}"))

    async def main() -> int:
        ticker = Ticker()
        ticking = asyncio.create_task(ticker.run())
        handle = await client.enqueue_async("wf", workflow_id="w")
        with pytest.raises(TimeoutError):
            await handle.result_async(timeout=0.5)
        ticker.stopped = True
        await ticking
        return ticker.ticks

    assert asyncio.run(main()) > 5


class NoThreads(ThreadPoolExecutor):
    """A loop's default executor that refuses work: a call that needs a
    thread fails the test instead of running."""

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the loop's executor was used")


def test_a_plain_async_enqueue_awaits_its_insert_on_the_loop(client: DurableClient, start_worker, effects_dir):
    """Once the workflow's recorded parameters are known, a start without a
    dedup key is one INSERT awaited on the loop: no executor thread. The
    same ID twice is one workflow; bad input is refused there too."""
    start_worker()

    async def main() -> list[Any]:
        await client.enqueue_async("ten_steps", workflow_id="warm-up")  # reads the parameters (executor)
        asyncio.get_running_loop().set_default_executor(NoThreads())
        first = await client.enqueue_async("ten_steps", workflow_id="a-1")
        again = await client.enqueue_async("ten_steps", workflow_id="a-1")
        fresh = await client.enqueue_async("ten_steps")
        with pytest.raises(TypeError):
            await client.enqueue_async("ten_steps", args="not a list")
        return [first, again, fresh]

    first, again, fresh = asyncio.run(main())
    assert first.workflow_id == again.workflow_id == "a-1"
    for handle in (first, fresh):
        assert handle.result(timeout=60)["sum"] == 385
    assert sorted(w.workflow_id for w in client.list_workflows()) == sorted(["warm-up", "a-1", fresh.workflow_id])


def test_an_async_enqueue_whose_connection_was_cut_starts_once(client: DurableClient, backend: Backend,
                                                                 start_worker, effects_dir):
    """The server ends the loop's idle connection (a restart, a pooler's
    timeout): the next enqueue_async still starts its workflow, once, by the
    synchronous path with the same row."""
    import psycopg

    start_worker()
    admin = psycopg.connect(backend.database_url.replace("+psycopg", ""), autocommit=True)

    async def main() -> tuple[Any, Any]:
        first = await client.enqueue_async("ten_steps", workflow_id="c-1")
        second = await client.enqueue_async("ten_steps", workflow_id="c-2")  # on the loop's idle connection
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        third = await client.enqueue_async("ten_steps", workflow_id="c-3")
        return second, third

    second, third = asyncio.run(main())
    admin.close()
    assert third.result(timeout=60)["sum"] == 385
    assert second.result(timeout=60)["sum"] == 385
    assert sorted(w.workflow_id for w in client.list_workflows()) == ["c-1", "c-2", "c-3"]


def test_an_async_enqueue_with_a_held_dedup_key_is_refused(client: DurableClient, start_worker, effects_dir):
    from durable.errors import DuplicateWorkflowError

    async def main() -> tuple[Any, Any]:
        held = await client.enqueue_async("slow_workflow", args=["x", 1.0], dedup_key="k")
        with pytest.raises(DuplicateWorkflowError):
            await client.enqueue_async("slow_workflow", args=["y", 1.0], dedup_key="k")
        same = await client.enqueue_async("slow_workflow", args=["z", 1.0], dedup_key="k",
                                          on_duplicate="return_existing")
        return held, same

    held, same = asyncio.run(main())
    assert held.workflow_id == same.workflow_id
    assert len(client.list_workflows()) == 1


def test_an_async_enqueue_that_ends_its_loop_is_still_published(client: DurableClient, start_worker, effects_dir):
    """The publish is handed over once the enqueuing task yields: a loop
    that ends right after the enqueue (asyncio.run of a script) still hands
    it over as it shuts down, and the message goes out at once, not after
    the sweeper's redelivery delay."""
    start_worker()
    published: list[str] = []
    inner = client.start_dispatcher.inner

    class Recording:
        def publish(self, workflow_id: str, name: str, queue: str, priority: int = 0) -> bool:
            published.append(workflow_id)
            return inner.publish(workflow_id, name, queue, priority)

    asyncio.run(client.enqueue_async("ten_steps", workflow_id="warm"))  # reads the parameters (executor)
    client.start_dispatcher.flush()
    client.start_dispatcher.inner = Recording()
    async def script() -> Any:
        asyncio.get_running_loop().set_default_executor(NoThreads())  # the INSERT awaited on the loop
        return await client.enqueue_async("ten_steps", workflow_id="last-thing-the-loop-does")

    handle = asyncio.run(script())
    assert client.start_dispatcher.flush()
    assert published == ["last-thing-the-loop-does"]
    assert handle.result(timeout=60)["sum"] == 385
