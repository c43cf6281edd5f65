"""Service: registration of handlers, and the checks made at registration."""

from __future__ import annotations

from typing import Any

import pytest

from choreo import ConfigurationError, Context, Event, Retry, Service

from .fixtures import future_handlers


class SkuProcessed(Event):
    sku: str


class PriceChanged(Event):
    price: float


class TestRegistration:
    def test_decorator_registers_and_returns_the_function_unchanged(self) -> None:
        """@service.on is sugar: the function stays a plain, directly callable function."""
        service = Service("catalog")

        async def handle(event: SkuProcessed) -> None:
            pass

        assert service.on(SkuProcessed)(handle) is handle
        handler = service.handlers["sku_processed"]
        assert (handler.func, handler.event_type, handler.takes_context) == (
            handle,
            SkuProcessed,
            False,
        )

    def test_ctx_parameter_is_detected(self) -> None:
        """(event, ctx) handlers get a Context; (event) handlers do not."""
        service = Service("catalog")

        @service.on(SkuProcessed)
        async def handle(event: SkuProcessed, ctx: Context) -> None:
            pass

        assert service.handlers["sku_processed"].takes_context

    def test_same_event_twice_is_a_configuration_error(self) -> None:
        """One handler per event and service, refused at registration."""
        service = Service("catalog")

        @service.on(SkuProcessed)
        async def first(event: SkuProcessed) -> None:
            pass

        with pytest.raises(ConfigurationError, match="already handles 'sku_processed'"):

            @service.on(SkuProcessed)
            async def second(event: SkuProcessed) -> None:
                pass

    def test_postponed_annotations_are_resolved(self) -> None:
        """A module with `from __future__ import annotations` registers fine."""
        handlers = future_handlers.service.handlers
        assert handlers["stock_counted"].takes_context
        assert not handlers["stock_reset"].takes_context

    def test_retry_is_kept_per_handler(self) -> None:
        """retry= on the decorator is stored with the handler."""
        service = Service("catalog", retry=Retry(attempts=2))
        policy = Retry(attempts=5, delay=0.01)

        @service.on(SkuProcessed, retry=policy)
        async def handle(event: SkuProcessed) -> None:
            pass

        assert service.handlers["sku_processed"].retry is policy
        assert service.retry == Retry(attempts=2)


async def _sync_is_refused(event: SkuProcessed) -> None:
    pass


class TestBadHandlers:
    @pytest.mark.parametrize(
        ("func", "match"),
        [
            (lambda event: None, "must be an async function"),
            (lambda: None, "must be an async function"),
        ],
    )
    def test_sync_functions_are_refused(self, func: Any, match: str) -> None:
        """Handlers are coroutines; a plain function fails at registration."""
        with pytest.raises(ConfigurationError, match=match):
            Service("catalog").add_handler(SkuProcessed, func)

    def test_too_many_or_too_few_parameters(self) -> None:
        """(event) or (event, ctx), nothing else."""

        async def none() -> None:
            pass

        async def three(event: SkuProcessed, ctx: Context, extra: int) -> None:
            pass

        for func in (none, three):
            with pytest.raises(ConfigurationError, match=r"must take \(event\) or \(event, ctx\)"):
                Service("catalog").add_handler(SkuProcessed, func)

    def test_annotation_of_another_event_is_refused(self) -> None:
        """Registering for SkuProcessed a handler that expects PriceChanged is a mistake."""

        async def handle(event: PriceChanged) -> None:
            pass

        with pytest.raises(ConfigurationError, match="annotated PriceChanged"):
            Service("catalog").add_handler(SkuProcessed, handle)

    def test_second_parameter_must_be_a_context(self) -> None:
        """The second parameter, when annotated, must accept a Context."""

        async def handle(event: SkuProcessed, ctx: str) -> None:
            pass

        with pytest.raises(ConfigurationError, match=r"must be a choreo\.Context"):
            Service("catalog").add_handler(SkuProcessed, handle)

    def test_base_class_annotation_is_accepted(self) -> None:
        """A handler typed for Event accepts every event."""

        async def handle(event: Event) -> None:
            pass

        Service("catalog").add_handler(SkuProcessed, handle)

    def test_decorator_refuses_what_is_not_an_event(self) -> None:
        """@service.on(dict) fails on the decorator line."""
        with pytest.raises(ConfigurationError, match=r"subclass of choreo\.Event"):
            Service("catalog").on(dict)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match=r"subclass of choreo\.Event"):
            Service("catalog").on(Event)


class TestServiceOptions:
    @pytest.mark.parametrize("name", ["", "with space", "a/b", "-x"])
    def test_invalid_service_names(self, name: str) -> None:
        """A name that cannot be a queue name is refused."""
        with pytest.raises(ConfigurationError, match="invalid service name"):
            Service(name)

    @pytest.mark.parametrize("option", ["prefetch", "concurrency"])
    def test_limits_must_be_positive(self, option: str) -> None:
        """prefetch=0 or concurrency=0 would never consume."""
        with pytest.raises(ConfigurationError, match=option):
            Service("catalog", **{option: 0})

    @pytest.mark.parametrize(
        "kwargs", [{"attempts": 0}, {"delay": -1}, {"multiplier": 0.5}, {"give_up_on": (int,)}]
    )
    def test_retry_validates_its_arguments(self, kwargs: dict[str, Any]) -> None:
        """Retry refuses values that cannot describe a policy."""
        with pytest.raises(ConfigurationError):
            Retry(**kwargs)

    def test_retry_waits_grow_and_are_capped(self) -> None:
        """delay * multiplier ** (n - 2) before attempt n, at most max_delay."""
        policy = Retry(attempts=6, delay=1.0, multiplier=3.0, max_delay=10.0)
        assert [policy.wait_before(n) for n in range(2, 6)] == [1.0, 3.0, 9.0, 10.0]
