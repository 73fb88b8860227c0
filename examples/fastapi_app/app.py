"""An async web app on FastAPI that starts workflows (issue 13).

    DURABLE_DATABASE_URL=postgresql+psycopg://... DURABLE_BROKER_URL=redis://... \
        uvicorn --factory examples.fastapi_app.app:create_app

- POST /orders {order_id, total, delay_seconds}: the order is written to the
  app's own table and its workflow enqueued in the same transaction (an
  AsyncSession; the enqueue runs on its sync session through run_sync):
  202 with the workflow ID; 422 for invalid input (nothing written); 409
  for an order that exists.
- GET /orders/{id}: the workflow's status.
- GET /orders/{id}/result?timeout=10: waits with `result_async` (the event
  loop keeps serving other requests meanwhile): 200 with the result, 202
  while it still runs.
- GET /orders/{id}/events: the status as server-sent events, one per change,
  until the workflow ends (woken by the end's notification, not polling).

The app's table lives in durable's own Postgres database: that is what
lets the order and the workflow commit together.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from durable import DurableClient, Status
from durable.errors import DurableError, WorkflowNotFoundError

WORKFLOW = "api.process_order"
RUNNING = (Status.ENQUEUED, Status.PENDING)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "api_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    total: Mapped[float]
    workflow_id: Mapped[str] = mapped_column(String(255))


class OrderIn(BaseModel):
    order_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    total: float = Field(gt=0, le=1_000_000)
    delay_seconds: float = Field(default=0.0, ge=0, le=30)


def create_app(client: DurableClient | None = None) -> FastAPI:
    client = client or DurableClient()
    engine = create_async_engine(client.settings.resolved_database_url)
    sessions = async_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield
        await engine.dispose()
        client.close()

    app = FastAPI(title="durable FastAPI example", lifespan=lifespan)

    @app.post("/orders", status_code=202)
    async def create_order(order: OrderIn) -> dict[str, str]:
        workflow_id = f"order-{order.order_id}"
        try:
            async with sessions() as session, session.begin():
                session.add(Order(id=order.order_id, total=order.total, workflow_id=workflow_id))
                await session.run_sync(lambda sync_session: client.enqueue(
                    WORKFLOW, args=[order.order_id, order.total],
                    kwargs={"delay_seconds": order.delay_seconds}, workflow_id=workflow_id,
                    transaction=sync_session,
                ))
        except IntegrityError:
            raise HTTPException(409, f"order {order.order_id!r} exists") from None
        return {"workflow_id": workflow_id}

    @app.get("/orders/{order_id}")
    async def order_status(order_id: str) -> dict[str, Any]:
        try:
            status = await client.get_async(f"order-{order_id}")
        except WorkflowNotFoundError:
            raise HTTPException(404, "no such order") from None
        return {"workflow_id": status.workflow_id, "status": status.status.value, "output": status.output}

    @app.get("/orders/{order_id}/result")
    async def order_result(order_id: str, timeout: float = Query(10.0, ge=0, le=60)) -> Any:
        handle = client.handle(f"order-{order_id}")
        try:
            return {"result": await handle.result_async(timeout=timeout)}
        except WorkflowNotFoundError:
            raise HTTPException(404, "no such order") from None
        except TimeoutError:
            return JSONResponse({"status": "running"}, status_code=202)
        except DurableError as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    @app.get("/orders/{order_id}/events")
    async def order_events(order_id: str) -> StreamingResponse:
        workflow_id = f"order-{order_id}"
        try:
            await client.get_async(workflow_id)
        except WorkflowNotFoundError:
            raise HTTPException(404, "no such order") from None
        return StreamingResponse(_status_events(client, workflow_id), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return app


async def _status_events(client: DurableClient, workflow_id: str) -> AsyncIterator[str]:
    """One event per status change; between changes the stream waits for
    the workflow's end (result_async), with a keep-alive comment every 15 s."""
    handle = client.handle(workflow_id)
    last = None
    while True:
        status = await client.get_async(workflow_id)
        if status.status != last:
            last = status.status
            data = {"workflow_id": workflow_id, "status": status.status.value, "output": status.output}
            yield f"event: status\ndata: {json.dumps(data, default=str)}\n\n"
        if status.status not in RUNNING:
            return
        try:
            await handle.result_async(timeout=15 if status.status is Status.PENDING else 0.5)
        except TimeoutError:
            yield ": keep-alive\n\n"
        except DurableError:
            pass  # it ended with an error: the next look reports it
