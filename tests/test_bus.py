"""connect() and the Bus: URLs, settings from the environment, lifecycle errors."""

from __future__ import annotations

import pytest

from choreo import ChoreoError, ConfigurationError, Event, Service, connect
from choreo.config import redact
from choreo.transports.memory import MemoryTransport
from choreo.transports.rabbitmq import RabbitMQTransport


class SkuProcessed(Event):
    sku: str


class TestConnect:
    def test_url_defaults_to_the_environment_then_localhost(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """connect() reads CHOREO_BROKER_URL, else the local RabbitMQ."""
        monkeypatch.delenv("CHOREO_BROKER_URL", raising=False)
        assert connect().url == "amqp://guest:guest@localhost:5672/"
        monkeypatch.setenv("CHOREO_BROKER_URL", "memory://env")
        bus = connect()
        assert bus.url == "memory://env"
        assert isinstance(bus.transport, MemoryTransport)

    def test_namespace_defaults_to_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """namespace=None reads CHOREO_NAMESPACE; an explicit value wins."""
        monkeypatch.setenv("CHOREO_NAMESPACE", "staging")
        assert connect("memory://").namespace == "staging"
        assert connect("memory://", namespace="").namespace == ""

    def test_amqp_urls_pick_the_rabbitmq_transport(self) -> None:
        """amqp:// and amqps:// go to RabbitMQ; nothing is contacted yet."""
        assert isinstance(connect("amqp://u:p@host:5672/vh").transport, RabbitMQTransport)
        assert isinstance(connect("amqps://u:p@host/").transport, RabbitMQTransport)

    @pytest.mark.parametrize("url", ["http://localhost/", "redis://x", "localhost:5672", "amqp://"])
    def test_unsupported_or_malformed_urls_are_configuration_errors(self, url: str) -> None:
        """A URL choreo cannot use fails at connect(), with the URL in the message."""
        with pytest.raises(ConfigurationError, match="URL"):
            connect(url)

    def test_limits_must_be_positive(self) -> None:
        """prefetch and concurrency below 1 are refused."""
        with pytest.raises(ConfigurationError, match="prefetch"):
            connect("memory://", prefetch=0)


class TestLifecycle:
    async def test_publish_before_connecting_is_a_clear_error(self) -> None:
        """Using a bus that was never opened tells how to open it."""
        with pytest.raises(ChoreoError, match="async with connect"):
            await connect("memory://").publish(SkuProcessed(sku="A1"))

    async def test_await_connect_opens_the_bus(self) -> None:
        """bus = await connect(...) is the same as entering `async with`."""
        bus = await connect("memory://await-test")
        try:
            assert await bus.publish(SkuProcessed(sku="A1"))
        finally:
            await bus.close()

    async def test_starting_a_service_twice_or_without_handlers_fails(self) -> None:
        """Mistakes in what is started are ConfigurationErrors."""
        service = Service("catalog")

        @service.on(SkuProcessed)
        async def handle(event: SkuProcessed) -> None:
            pass

        async with connect("memory://start-twice") as bus:
            with pytest.raises(ConfigurationError, match="no handlers"):
                await bus.start(Service("empty"))
            with pytest.raises(ConfigurationError, match="started twice"):
                await bus.start(service, service)
            await bus.start(service)
            with pytest.raises(ConfigurationError, match="started twice"):
                await bus.start(service)
            assert bus.running == ("catalog",)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:secret@host:5672/vh", "amqp://guest:***@host:5672/vh"),
        ("amqp://host/", "amqp://host/"),
        ("amqps://u:p%40ss@[::1]:5671/", "amqps://u:***@[::1]:5671/"),
    ],
)
def test_redact_hides_passwords(url: str, shown: str) -> None:
    """URLs are logged and printed without their password."""
    assert redact(url) == shown


@pytest.mark.parametrize("password", ["pa/ss", "pa#ss", "pa?ss", "pa,ss", "p@ss", "a/b#c?d,e@f"])
def test_a_password_with_unencoded_characters_is_never_shown(password: str) -> None:
    """A password holding '/', '#', '?', ',' or '@' unencoded: connect() refuses the URL
    with an error that names the fix and shows no part of the password."""
    url = f"amqp://guest:{password}@127.0.0.1:5672/"
    assert redact(url) == "amqp://guest:***@127.0.0.1:5672/"
    with pytest.raises(ConfigurationError, match="must be percent-encoded") as caught:
        connect(url)
    assert password not in str(caught.value)
    assert "***" in str(caught.value)
