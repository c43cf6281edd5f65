"""`choreo asyncapi`: the AsyncAPI 3.0.0 document, validated structurally."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choreo import topology
from services.events import SkuReceived

from .test_cli import ROOT, choreo_cmd
from .test_cli_graph import DEMO, LEDGER, ORDERED, SHOP

REQUIRED = ("asyncapi", "info", "channels", "operations")


def resolve(document: dict[str, Any], ref: str) -> Any:
    """The node a local ``#/a/b`` reference points to; KeyError when it resolves nowhere."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    """Every $ref in ``node``, depth first."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in refs(item)]
    return []


def validate(document: dict[str, Any]) -> None:
    """The structural rules of an AsyncAPI 3.0.0 document that choreo must keep."""
    assert all(key in document for key in REQUIRED), sorted(document)
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"]
    assert document["info"]["version"]
    for ref in refs(document):
        resolve(document, ref)
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), name
        channel = resolve(document, channel_ref)
        for message in operation["messages"]:  # an operation's messages are its channel's
            assert message["$ref"].startswith(channel_ref + "/messages/"), (name, message)
        if "reply" in operation:
            reply_channel = operation["reply"]["channel"]["$ref"]
            for message in operation["reply"].get("messages", []):
                assert message["$ref"].startswith(reply_channel + "/messages/"), name
        assert channel["messages"], name
    for channel in document["channels"].values():
        for message in channel["messages"].values():
            assert message["$ref"].startswith("#/components/messages/")
            assert "payload" in resolve(document, message["$ref"])


def asyncapi(*args: str) -> dict[str, Any]:
    result = choreo_cmd("asyncapi", *args)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


class TestDocument:
    def test_demo_document_is_structurally_valid(self) -> None:
        """Required keys; every $ref resolves; operations use their channel's messages."""
        validate(asyncapi(*DEMO))

    def test_one_channel_per_exchange_with_its_amqp_binding(self) -> None:
        """Address = the exchange (with the namespace); fanout and durable in bindings.amqp."""
        document = asyncapi(*DEMO, "--namespace", "staging")
        channel = document["channels"]["sku_processed"]
        assert channel["address"] == "staging.sku_processed"
        exchange = channel["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"], exchange["durable"]) == (
            "staging.sku_processed",
            "fanout",
            True,
        )
        assert channel["bindings"]["amqp"]["is"] == "routingKey"
        requests = document["channels"]["choreo.requests"]
        assert requests["address"] == "staging.choreo.requests"
        assert requests["bindings"]["amqp"]["exchange"]["type"] == "direct"

    def test_operations_per_handler_emitted_event_and_request(self) -> None:
        """receive per handler, send per emitted event, request/respond with the reply."""
        operations = asyncapi(*DEMO)["operations"]
        assert sorted(operations) == [
            "catalog.receive.sku_processed",
            "catalog.request.get_availability",
            "inventory.receive.sku_processed",
            "inventory.receive.sku_received",
            "inventory.respond.get_availability",
            "inventory.send.sku_processed",
            "warehouse.send.sku_received",
            "wishlist.receive.sku_processed",
            "wishlist.request.get_availability",
        ]
        assert operations["inventory.receive.sku_received"]["action"] == "receive"
        assert operations["inventory.receive.sku_received"]["x-choreo-queue"] == "inventory"
        assert operations["warehouse.send.sku_received"]["action"] == "send"
        asked = operations["catalog.request.get_availability"]
        assert asked["action"] == "send"
        assert asked["reply"]["messages"] == [
            {"$ref": "#/channels/choreo.replies/messages/availability"}
        ]

    def test_payloads_are_the_pydantic_json_schemas(self) -> None:
        """components.schemas holds model_json_schema() of each event, keyed by its name."""
        document = asyncapi(*DEMO)
        message = document["components"]["messages"]["sku_received"]
        assert message["contentType"] == "application/json"
        assert resolve(document, message["payload"]["$ref"]) == SkuReceived.model_json_schema()
        assert set(document["components"]["schemas"]) >= {
            "sku_received",
            "sku_processed",
            "get_availability",
            "availability",
        }

    def test_nested_models_resolve_inside_the_document(self) -> None:
        """A nested model's $ref points into components.schemas, not to a $defs elsewhere."""
        document = asyncapi(*SHOP)
        validate(document)
        placed = document["components"]["schemas"]["shop.order_placed"]
        assert placed["properties"]["lines"]["items"] == {"$ref": "#/components/schemas/Line"}
        assert resolve(document, "#/components/schemas/Line")["required"] == ["sku", "quantity"]
        assert "$defs" not in placed

    def test_output_is_deterministic(self) -> None:
        """The same services in another order give the same document."""
        assert choreo_cmd("asyncapi", *DEMO).stdout == choreo_cmd("asyncapi", *DEMO[::-1]).stdout


class TestPartitions:
    def test_the_partition_exchange_is_a_channel_with_its_queues(self) -> None:
        """A partitioned service: a channel for its partition exchange (direct, durable),
        bound to each handled event's exchange, with its queues and their buckets; its
        receive operations take their events from there, from its partition queues."""
        document = asyncapi(*ORDERED, "--namespace", "ns")
        validate(document)
        channel = document["channels"]["ledger.partitions"]
        assert channel["address"] == "ns.ledger.partitions"
        exchange = channel["bindings"]["amqp"]["exchange"]
        assert (exchange["name"], exchange["type"], exchange["durable"]) == (
            "ns.ledger.partitions",
            "direct",
            True,
        )
        assert sorted(channel["messages"]) == ["graph_entry_audited", "graph_entry_posted"]
        assert "crc32" in channel["description"]
        partitions = channel["x-choreo-partitions"]
        assert (partitions["count"], partitions["buckets"]) == (8, 1024)
        assert partitions["boundTo"] == ["ns.graph_entry_audited", "ns.graph_entry_posted"]
        plan = topology.partition_plan(LEDGER, "ns", "ns.ledger.dlq")  # the keys' spelling
        keys = [key for _, key in plan.queues[0].bindings]
        assert partitions["queues"][0] == {
            "name": "ns.ledger.p0",
            "buckets": "b % 8 == 0",
            "bindingKeys": f"{keys[0]}, {keys[1]}, {keys[2]}, ... (128)",
        }
        assert len(keys) == 128
        assert [q["name"] for q in partitions["queues"]] == [f"ns.ledger.p{i}" for i in range(8)]
        received = document["operations"]["ledger.receive.graph_entry_posted"]
        assert received["channel"] == {"$ref": "#/channels/ledger.partitions"}
        assert received["x-choreo-queues"] == [f"ns.ledger.p{i}" for i in range(8)]
        assert "x-choreo-queue" not in received
        sent = document["operations"]["bank.send.graph_entry_posted"]
        assert sent["channel"] == {"$ref": "#/channels/graph_entry_posted"}

    def test_a_keyed_event_names_its_key_field(self) -> None:
        """The message of a keyed event carries its key field and how its routing key is
        computed; an event without a key carries neither, nor does an unpartitioned demo."""
        messages = asyncapi(*ORDERED)["components"]["messages"]
        key = messages["graph_entry_posted"]["x-choreo-key"]
        assert key["field"] == "account"
        assert "bucket of str(account)" in key["routingKey"]
        assert "x-choreo-key" not in messages["graph_entry_audited"]
        demo = asyncapi(*DEMO)
        assert not [c for c in demo["channels"] if c.endswith(".partitions")]


class TestFiles:
    def test_yaml_file_holds_the_same_document(self, tmp_path: Path) -> None:
        """-o x.yaml writes YAML (chosen by the suffix) that loads to the JSON document."""
        yaml = pytest.importorskip("yaml")
        out = tmp_path / "asyncapi.yaml"
        result = choreo_cmd("asyncapi", *DEMO, "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"wrote {out} (AsyncAPI 3.0.0, yaml)\n"
        assert yaml.safe_load(out.read_text()) == asyncapi(*DEMO)
        assert "&id" not in out.read_text()  # no YAML anchors and aliases

    def test_json_file_with_format_option(self, tmp_path: Path) -> None:
        """--format json -o FILE writes the JSON document."""
        out = tmp_path / "doc.yml"
        result = choreo_cmd("asyncapi", *SHOP, "--format", "json", "-o", str(out))
        assert result.returncode == 0, result.stderr
        validate(json.loads(out.read_text()))

    def test_yaml_without_pyyaml_is_one_clear_error(self) -> None:
        """Without PyYAML: exit 2 and a line naming the extra to install, no traceback."""
        code = (
            "import sys; sys.modules['yaml'] = None; from choreo.cli import main; "
            f"sys.argv = ['choreo', 'asyncapi', {DEMO[1]!r}, '--format', 'yaml']; main()"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        assert result.stderr == (
            "choreo: error: YAML output needs PyYAML: pip install 'choreo-mq[yaml]' "
            "(or use --format json)\n"
        )

    def test_unwritable_output_is_one_clear_error(self, tmp_path: Path) -> None:
        """-o into a missing directory: exit 1, one line."""
        result = choreo_cmd("asyncapi", *DEMO, "-o", str(tmp_path / "missing" / "a.json"))
        assert result.returncode == 1
        assert result.stderr.startswith("choreo: error: cannot write")
        assert result.stderr.count("\n") == 1
