"""`choreo graph` and `choreo check`, run as subprocesses on the demo and on fixtures."""

from __future__ import annotations

import json

import pytest

from choreo import Event, Service

from .test_cli import choreo_cmd

DEMO = [
    "services.warehouse:service",
    "services.inventory:service",
    "services.catalog:service",
    "services.wishlist:service",
]
SHOP = ["tests.fixtures.shop:orders", "tests.fixtures.shop:billing", "tests.fixtures.shop:mailer"]
MISMATCH = "tests.fixtures.mismatch"
LOOSE = "tests.fixtures.loose_ends"


class Posted(Event, name="graph_entry_posted", key="account"):
    account: str
    cents: int


class Audited(Event, name="graph_entry_audited"):
    account: str


BANK = Service("bank", emits=[Posted, Audited])
LEDGER = Service("ledger", partitions=8)  # ordered per account


@LEDGER.on(Posted)
async def post(event: Posted) -> None: ...


@LEDGER.on(Audited)
async def audit(event: Audited) -> None: ...


ORDERED = ["tests.test_cli_graph:LEDGER", "tests.test_cli_graph:BANK"]


class PostedByAmount(Event, name="graph_entry_posted", key="cents"):  # another key
    account: str
    cents: int


OTHER_BANK = Service("other_bank", emits=[PostedByAmount])

DEMO_MERMAID = """\
flowchart LR
    s_catalog["catalog"]
    s_inventory["inventory"]
    s_warehouse["warehouse"]
    s_wishlist["wishlist"]
    e_sku_processed{{"sku_processed"}}
    e_sku_received{{"sku_received"}}
    s_inventory --> e_sku_processed
    e_sku_processed --> s_catalog
    e_sku_processed --> s_inventory
    e_sku_processed --> s_wishlist
    s_warehouse --> e_sku_received
    e_sku_received --> s_inventory
    s_catalog -.->|"get_availability / availability"| s_inventory
    s_wishlist -.->|"get_availability / availability"| s_inventory
"""


class TestGraph:
    def test_demo_map_in_mermaid_is_the_choreography(self) -> None:
        """Default format: services, event hexagons, fan-out, and the request edges."""
        result = choreo_cmd("graph", *DEMO)
        assert result.returncode == 0, result.stderr
        assert result.stdout == DEMO_MERMAID

    def test_output_does_not_depend_on_the_order_of_targets(self) -> None:
        """Sorted output: the same text for the same services in another order."""
        forward = choreo_cmd("graph", *DEMO, "--format", "dot")
        backward = choreo_cmd("graph", *reversed(DEMO), "--format", "dot")
        assert forward.returncode == backward.returncode == 0
        assert forward.stdout == backward.stdout

    def test_dot_draws_the_same_edges(self) -> None:
        """Graphviz: one node per service and event, dashed request edges with labels."""
        result = choreo_cmd("graph", *DEMO, "-f", "dot")
        assert result.returncode == 0, result.stderr
        lines = [line.strip() for line in result.stdout.splitlines()]
        assert lines[0] == "digraph choreography {"
        assert '"service:warehouse" -> "event:sku_received";' in lines
        assert '"event:sku_processed" -> "service:wishlist";' in lines
        assert (
            '"service:catalog" -> "service:inventory" '
            '[style=dashed, label="get_availability / availability"];'
        ) in lines
        assert sum(line.endswith("shape=box];") for line in lines) == 4

    def test_json_lists_who_does_what(self) -> None:
        """JSON: per service, per event, per request, and requester -> responder edges."""
        result = choreo_cmd("graph", *SHOP, "--format", "json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        billing = next(s for s in data["services"] if s["name"] == "billing")
        assert billing == {
            "name": "billing",
            "partitions": None,
            "consumes": ["shop.order_placed"],
            "emits": ["invoice_sent"],
            "requests": ["get_price"],
            "responds": [],
        }
        assert data["events"] == [
            {
                "name": "invoice_sent",
                "key": None,
                "emitted_by": ["billing"],
                "consumed_by": ["mailer"],
            },
            {
                "name": "shop.order_placed",
                "key": None,
                "emitted_by": ["orders"],
                "consumed_by": ["billing"],
            },
        ]
        assert data["request_edges"] == [
            {
                "requester": "billing",
                "responder": "orders",
                "request": "get_price",
                "reply": "price",
            }
        ]

    def test_partitions_and_ordering_keys_are_shown(self) -> None:
        """A partitioned service shows its partition count, a keyed event its ordering key,
        in every format; an event without a key and an unpartitioned service stay bare."""
        mermaid = choreo_cmd("graph", *ORDERED)
        assert mermaid.returncode == 0, mermaid.stderr
        assert mermaid.stdout == (
            "flowchart LR\n"
            '    s_bank["bank"]\n'
            '    s_ledger["ledger (8 partitions)"]\n'
            '    e_graph_entry_audited{{"graph_entry_audited"}}\n'
            '    e_graph_entry_posted{{"graph_entry_posted (key: account)"}}\n'
            "    s_bank --> e_graph_entry_audited\n"
            "    e_graph_entry_audited --> s_ledger\n"
            "    s_bank --> e_graph_entry_posted\n"
            "    e_graph_entry_posted --> s_ledger\n"
        )
        dot = choreo_cmd("graph", *ORDERED, "-f", "dot").stdout.splitlines()
        assert '    "service:ledger" [label="ledger (8 partitions)", shape=box];' in dot
        assert '    "service:bank" [label="bank", shape=box];' in dot
        assert (
            '    "event:graph_entry_posted" [label="graph_entry_posted (key: account)", '
            "shape=hexagon];"
        ) in dot
        data = json.loads(choreo_cmd("graph", *ORDERED, "-f", "json").stdout)
        assert [(s["name"], s["partitions"]) for s in data["services"]] == [
            ("bank", None),
            ("ledger", 8),
        ]
        assert [(e["name"], e["key"]) for e in data["events"]] == [
            ("graph_entry_audited", None),
            ("graph_entry_posted", "account"),
        ]

    def test_a_request_nobody_answers_points_to_no_responder(self) -> None:
        """A request without a responder among the services is drawn to 'no responder'."""
        result = choreo_cmd("graph", f"{LOOSE}:asker")
        assert result.returncode == 0, result.stderr
        assert '    s_asker -.->|"question"| nobody\n' in result.stdout
        assert 'nobody(["no responder"])' in result.stdout

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["no_such_module:service"], "no module named 'no_such_module'"),
            (["tests.fixtures.worker:NOT_A_SERVICE"], "is a int, not a choreo.Service"),
        ],
    )
    def test_bad_target_is_one_clear_line(self, args: list[str], message: str) -> None:
        """As with choreo run: exit 2, one line, no traceback."""
        result = choreo_cmd("graph", *args)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stderr.count("\n") == 1

    def test_unknown_format_is_refused(self) -> None:
        """--format outside mermaid|dot|json: a usage error (exit 2)."""
        result = choreo_cmd("graph", *DEMO, "--format", "png")
        assert result.returncode == 2
        assert "png" in result.stderr


class TestCheck:
    def test_demo_with_its_feed_passes(self) -> None:
        """Every consumed event has an emitter, every request a responder: exit 0."""
        result = choreo_cmd("check", *DEMO)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == "ok: 4 service(s), 2 event(s), 1 request(s), no problems\n"

    def test_demo_without_its_feed_misses_an_emitter(self) -> None:
        """Without the warehouse, nobody emits sku_received: one error line, exit 1."""
        result = choreo_cmd("check", *DEMO[1:])
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "error: event 'sku_received' is consumed by inventory but emitted by none of the "
            "given services (declare emits=[...], give its emitter, or --external sku_received)",
            "3 service(s), 2 event(s), 1 request(s): 1 error(s), 0 warning(s)",
        ]

    def test_external_names_cross_the_boundary(self) -> None:
        """--external sku_received: the feed lives elsewhere, so the check passes."""
        result = choreo_cmd("check", *DEMO[1:], "--external", "sku_received")
        assert result.returncode == 0, result.stdout
        assert result.stdout.startswith("ok: ")

    def test_an_unused_external_name_is_a_warning(self) -> None:
        """A typo in --external is reported, without failing the check."""
        result = choreo_cmd("check", *DEMO, "--external", "sku_recieved")
        assert result.returncode == 0
        assert (
            "warning: --external sku_recieved: none of the given services uses 'sku_recieved'"
            in result.stdout.splitlines()
        )

    def test_every_loose_end_gets_one_line(self) -> None:
        """Errors first, then warnings, each one line; exit 1."""
        services = ["listener", "shouter", "asker", "twin_a", "twin_b"]
        result = choreo_cmd("check", *(f"{LOOSE}:{name}" for name in services))
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "error: event 'ghost' is consumed by listener but emitted by none of the given "
            "services (declare emits=[...], give its emitter, or --external ghost)",
            "error: request 'lookup' is answered by twin_a, twin_b: the requester gets "
            "whichever answers first",
            "error: request 'question' is sent by asker but none of the given services "
            "responds to it",
            "warning: event 'echo' is emitted by shouter but consumed by none of the given "
            "services",
            "warning: request 'lookup' is answered by twin_a, twin_b but sent by none of the "
            "given services",
            "5 service(s), 2 event(s), 2 request(s): 3 error(s), 2 warning(s)",
        ]

    def test_warnings_alone_exit_0_unless_strict(self) -> None:
        """An event nobody consumes is a warning: exit 0, or 1 with --strict."""
        lenient = choreo_cmd("check", f"{LOOSE}:shouter")
        strict = choreo_cmd("check", f"{LOOSE}:shouter", "--strict")
        assert (lenient.returncode, strict.returncode) == (0, 1)
        assert lenient.stdout.startswith("warning: event 'echo' is emitted by shouter")

    def test_incompatible_schemas_for_one_event_name_are_an_error(self) -> None:
        """The producer's quantity is an int, the consumer's a str, with a field more."""
        result = choreo_cmd("check", f"{MISMATCH}:producer", f"{MISMATCH}:consumer")
        assert result.returncode == 1
        (line, summary) = result.stdout.splitlines()
        assert line == (
            "error: 'stock_changed' has incompatible schemas: "
            f"{MISMATCH}.StockChanged (producer emits) vs "
            f"{MISMATCH}.StockChangedAsRead (consumer consumes); "
            "fields that differ: quantity, warehouse"
        )
        assert summary.endswith("1 error(s), 0 warning(s)")

    def test_a_partitioned_consumer_of_an_event_without_a_key_is_a_warning(self) -> None:
        result = choreo_cmd("check", *ORDERED)
        assert result.returncode == 0, result.stdout
        assert result.stdout.splitlines()[0] == (
            "warning: ledger is partitioned but 'graph_entry_audited' has no ordering key "
            "(Event key=): its events are spread over the partitions in no order"
        )

    def test_one_event_name_with_two_ordering_keys_is_an_error(self) -> None:
        result = choreo_cmd("check", *ORDERED, "tests.test_cli_graph:OTHER_BANK")
        assert result.returncode == 1
        assert result.stdout.splitlines()[0] == (
            "error: 'graph_entry_posted' has different ordering keys: "
            "tests.test_cli_graph.Posted (key='account') vs "
            "tests.test_cli_graph.PostedByAmount (key='cents'); its publishers would route "
            "one key's events to different partitions"
        )

    def test_same_fields_under_another_class_and_docstring_are_compatible(self) -> None:
        """Titles and descriptions aside, the twin's schema is the producer's: no error."""
        result = choreo_cmd("check", f"{MISMATCH}:producer", f"{MISMATCH}:lookalike")
        assert result.returncode == 0, result.stdout
        assert result.stdout.startswith("ok: 2 service(s), 1 event(s)")
