"""Event names and the wire envelope."""

from __future__ import annotations

import json

import pytest

from choreo import ConfigurationError, Event
from choreo.events import snake_case
from choreo.wire import CAUSATION_HEADER, encode


class SkuProcessed(Event):
    sku: str


class PriceChanged(Event, name="pricing.price_changed"):
    sku: str
    price: float


class TestEventNames:
    def test_name_defaults_to_snake_case_of_the_class(self) -> None:
        """SkuProcessed is published as "sku_processed"."""
        assert SkuProcessed.__event_name__ == "sku_processed"

    def test_explicit_name_via_class_keyword(self) -> None:
        """class PriceChanged(Event, name=...) keeps the given name."""
        assert PriceChanged.__event_name__ == "pricing.price_changed"

    @pytest.mark.parametrize(
        ("cls", "name"),
        [("HTTPRequestSent", "http_request_sent"), ("Sku2Ready", "sku2_ready"), ("A", "a")],
    )
    def test_snake_case_handles_acronyms_and_digits(self, cls: str, name: str) -> None:
        """Acronyms stay one word; digits stick to the word before them."""
        assert snake_case(cls) == name

    def test_subclass_gets_its_own_name(self) -> None:
        """A subclass of an event is another event with its own name."""

        class SkuProcessedV2(SkuProcessed):
            pass

        assert SkuProcessedV2.__event_name__ == "sku_processed_v2"
        assert SkuProcessed.__event_name__ == "sku_processed"

    @pytest.mark.parametrize("bad", ["", "has space", "-leading", "a/b"])
    def test_invalid_explicit_name_fails_at_class_creation(self, bad: str) -> None:
        """A name the broker or the wire contract cannot carry is refused at once."""
        with pytest.raises(ConfigurationError, match="invalid event name"):

            class Bad(Event, name=bad):
                pass


class TestEnvelope:
    def test_encode_sets_the_wire_properties(self) -> None:
        """JSON body, content type, persistent id, type, correlation and causation."""
        message = encode(
            PriceChanged(sku="A1", price=9.5),
            correlation_id="c-1",
            causation_id="m-0",
            headers={"tenant": "acme"},
        )
        assert json.loads(message.body) == {"sku": "A1", "price": 9.5}
        assert message.content_type == "application/json"
        assert message.type == "pricing.price_changed"
        assert message.correlation_id == "c-1"
        assert message.headers == {"tenant": "acme", CAUSATION_HEADER: "m-0"}
        assert message.message_id
        assert len(message.message_id) == 32
        assert message.timestamp
        assert message.timestamp > 1_700_000_000

    def test_each_message_gets_a_new_id(self) -> None:
        """Two encodings of the same event are two messages."""
        event = SkuProcessed(sku="A1")
        assert encode(event).message_id != encode(event).message_id

    def test_encode_refuses_the_base_class_and_non_events(self) -> None:
        """Only instances of Event subclasses can be published."""
        with pytest.raises(ConfigurationError):
            encode(Event())
        with pytest.raises(ConfigurationError):
            encode({"sku": "A1"})  # type: ignore[arg-type]
