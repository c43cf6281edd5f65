"""examples/fastapi_app: the orders web app under FastAPI's TestClient, on a private
``memory://`` broker per test, and once on RabbitMQ."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator

import pytest

from choreo import Service
from choreo.testing import harness
from choreo.transports import memory
from examples.fastapi_app.app import (
    GetStock,
    OrderPlaced,
    Stock,
    StockLevel,
    create_app,
    stock_service,
)

from .conftest import delete_on_rabbitmq, unique

with warnings.catch_warnings():
    # starlette >= 1.0 warns when its test client runs on httpx rather than httpx2
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

WAIT = 5.0  # seconds: an upper bound for what takes milliseconds


@pytest.fixture
def memory_url() -> Iterator[str]:
    """A private in-memory broker, forgotten after the test."""
    name = uuid.uuid4().hex
    yield f"memory://{name}"
    memory.forget(name)


def wait_until(done: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done within {timeout}s"
        time.sleep(0.005)


class TestPublishing:
    def test_an_order_reaches_the_handler_running_in_the_app(self, memory_url: str) -> None:
        """POST /orders publishes order_placed; the stock service in the app's process
        handles it, and GET /stock shows the reservation."""
        stock = Stock({"SKU-1": 10})
        app = create_app(memory_url, services=[stock_service(stock)])
        with TestClient(app) as client:
            response = client.post("/orders", json={"sku": "SKU-1", "quantity": 2})
            assert response.status_code == 202
            accepted = response.json()
            order_id = accepted["order_id"]
            assert len(accepted["message_id"]) == 32
            wait_until(lambda: order_id in stock.orders)
            assert stock.orders[order_id] == OrderPlaced(order_id=order_id, sku="SKU-1", quantity=2)
            assert client.get("/stock/SKU-1").json() == {"sku": "SKU-1", "available": 8}
        assert not app.state.bus.transport.connected  # the lifespan closed the bus

    def test_an_invalid_order_is_a_422_and_publishes_nothing(self, memory_url: str) -> None:
        """The body is validated before anything is published."""
        stock = Stock({"SKU-1": 10})
        with TestClient(create_app(memory_url, services=[stock_service(stock)])) as client:
            assert client.post("/orders", json={"sku": "SKU-1", "quantity": 0}).status_code == 422
            assert client.get("/stock/SKU-1").json()["available"] == 10
        assert stock.orders == {}

    def test_an_order_nobody_consumes_is_a_503(self, memory_url: str) -> None:
        """With no queue bound to order_placed, the order is refused, not silently lost."""
        with TestClient(create_app(memory_url, services=())) as client:
            response = client.post("/orders", json={"sku": "SKU-1", "quantity": 1})
        assert response.status_code == 503
        assert "nobody consumes 'order_placed'" in response.json()["detail"]

    async def test_an_order_for_an_unknown_sku_is_dead_lettered(self) -> None:
        """The stock service alone, on choreo's test harness: it rejects what it cannot
        reserve, and the order waits in its dead-letter queue."""
        stock = Stock({"SKU-1": 10})
        async with harness(stock_service(stock)) as h:
            await h.publish(OrderPlaced(order_id="o-1", sku="NOPE", quantity=1))
            await h.settle()
            (dead,) = await h.dead_letters("stock")
        assert (dead.event, dead.error_type, dead.attempts) == ("order_placed", "Reject", 1)
        assert stock.orders == {}
        assert stock.available == {"SKU-1": 10}


class TestRequests:
    def test_the_stock_level_comes_from_the_responder(self, memory_url: str) -> None:
        """GET /stock/{sku} asks the stock service and returns its reply."""
        with TestClient(create_app(memory_url)) as client:
            response = client.get("/stock/SKU-2")
        assert response.status_code == 200
        assert response.json() == {"sku": "SKU-2", "available": 3}

    def test_a_responder_error_is_a_502_naming_the_remote_type(self, memory_url: str) -> None:
        """The responder raised: 502, with the remote error's type, message and service."""
        with TestClient(create_app(memory_url)) as client:
            response = client.get("/stock/NOPE")
        assert response.status_code == 502
        assert response.json()["detail"] == {
            "type": "UnknownSku",
            "message": "no stock is kept for 'NOPE'",
            "service": "stock",
        }

    def test_no_reply_in_time_is_a_504(self, memory_url: str) -> None:
        """The responder got the request but answers after the timeout: 504."""
        asked, release = threading.Event(), threading.Event()
        slow = Service("stock")

        @slow.responds(GetStock)
        async def level(query: GetStock) -> StockLevel:
            asked.set()
            while not release.is_set():  # held until the test has its answer
                await asyncio.sleep(0.005)
            return StockLevel(sku=query.sku, available=1)

        app = create_app(memory_url, services=[slow], request_timeout=0.2)
        with TestClient(app) as client:
            try:
                started = time.monotonic()
                response = client.get("/stock/SKU-1")
                elapsed = time.monotonic() - started
            finally:
                release.set()  # else stopping the app waits for the responder
        assert asked.is_set()
        assert response.status_code == 504
        assert response.json()["detail"] == "request 'get_stock' got no reply within 0.2s"
        assert 0.2 <= elapsed < WAIT

    def test_no_responder_is_a_503(self, memory_url: str) -> None:
        """No service responds to get_stock on this broker: 503 at once, no timeout."""
        app = create_app(memory_url, services=(), request_timeout=WAIT)
        with TestClient(app) as client:
            started = time.monotonic()
            response = client.get("/stock/SKU-1")
            elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["detail"] == "no service responds to 'get_stock' in namespace 'shop'"
        assert elapsed < WAIT / 2


def test_the_broker_and_namespace_come_from_the_environment(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app() reads choreo's own CHOREO_BROKER_URL and CHOREO_NAMESPACE."""
    monkeypatch.setenv("CHOREO_BROKER_URL", memory_url)
    monkeypatch.setenv("CHOREO_NAMESPACE", "web-test")
    app = create_app()
    with TestClient(app) as client:
        assert client.get("/stock/SKU-1").json() == {"sku": "SKU-1", "available": 10}
        assert (app.state.bus.url, app.state.bus.namespace) == (memory_url, "web-test")


@pytest.mark.broker
def test_the_app_on_rabbitmq(broker_url: str) -> None:
    """The same app on RabbitMQ: publish, handle in the app's process, ask, map errors."""
    stock = Stock({"SKU-1": 10})
    app = create_app(broker_url, unique("fastapi"), services=[stock_service(stock)])
    try:
        with TestClient(app) as client:
            response = client.post("/orders", json={"sku": "SKU-1", "quantity": 3})
            assert response.status_code == 202
            order_id = response.json()["order_id"]
            wait_until(lambda: order_id in stock.orders)
            assert client.get("/stock/SKU-1").json() == {"sku": "SKU-1", "available": 7}
            assert client.get("/stock/NOPE").json()["detail"]["type"] == "UnknownSku"
        assert f"{app.state.bus.namespace}.stock" in app.state.bus.declared_queues
    finally:
        bus = getattr(app.state, "bus", None)
        if bus is not None:
            queues, exchanges = set(bus.declared_queues), set(bus.declared_exchanges)
            asyncio.run(delete_on_rabbitmq(broker_url, queues, exchanges))
