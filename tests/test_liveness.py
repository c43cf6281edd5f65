"""Liveness under faults: no message, broker event or foreign input stops a service.

These run on both transports. A worker that dies is played in process by closing its
bus's transport abruptly while a handler hangs: the broker then redelivers everything the
worker held, exactly as it does when a process is killed (a subprocess test with a real
``os._exit`` is in ``test_liveness_processes.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from choreo import Bus, Context, Event, Retry, Service, wire
from choreo import dlq as dlq_tools
from choreo.transports.base import Message

from .conftest import Buses
from .helpers import WAIT, Recorder


class Job(Event):
    n: int
    kind: str = "ok"  # "ok", "hang" (the culprit), or what the handler raises


class TestHandlerExits:
    @pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt", "CancelledError"])
    async def test_a_handler_raising_an_exit_is_a_handler_failure(
        self, make_bus: Buses, raised: str
    ) -> None:
        """SystemExit, KeyboardInterrupt and a CancelledError of the handler's own are
        retried per policy, then dead-lettered under their name; the worker goes on."""
        attempts = Recorder()
        service = Service("exits", retry=Retry(attempts=2, delay=0.01))
        exits: dict[str, BaseException] = {
            "SystemExit": SystemExit(3),
            "KeyboardInterrupt": KeyboardInterrupt(),
            "CancelledError": asyncio.CancelledError(),
        }

        @service.on(Job)
        async def handle(event: Job, ctx: Context) -> None:
            attempts.add((event.n, ctx.attempt))
            if event.kind != "ok":
                raise exits[event.kind]

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(Job(n=1, kind=raised))
        await bus.publish(Job(n=2))  # the worker still handles what comes next
        await attempts.wait_for(3)
        letters = await _dead_letters(bus, "exits", 1)
        assert letters[0].error_type.rsplit(".", 1)[-1] == raised
        assert sorted(attempts.items) == [(1, 1), (1, 2), (2, 1)]
        assert bus.running == ("exits",)


async def _dead_letters(bus: Bus, service: str, count: int) -> list[Any]:
    async with asyncio.timeout(WAIT):
        while len(letters := await dlq_tools.list_dead_letters(bus, service)) < count:
            await asyncio.sleep(0.02)
    return letters


class TestCrashLoops:
    async def test_a_message_that_keeps_killing_its_worker_is_dead_lettered(
        self, make_bus: Buses
    ) -> None:
        """With the default prefetch, a culprit among 20 innocents: each "death" hands
        everything back; the culprit is dead-lettered after delivery_limit deliveries as
        KilledItsWorker, every innocent is handled, none dead-lettered."""
        limit = 4
        started = Recorder()  # (n, life) for every handler start
        hanging = asyncio.Event()

        def service(life: int) -> Service:
            svc = Service("crashy", delivery_limit=limit)

            @svc.on(Job)
            async def handle(event: Job) -> None:
                started.add((event.n, life))
                if event.kind == "hang":
                    hanging.set()
                    await asyncio.Event().wait()  # until the worker "dies"

            return svc

        publisher = await make_bus()
        await publisher.declare(service(0))
        await publisher.publish(Job(n=0, kind="hang"))
        for n in range(1, 21):
            await publisher.publish(Job(n=n))
        life = 0
        while True:
            life += 1
            worker = await make_bus(shutdown_timeout=0.1)
            await worker.start(service(life))
            culprit_started = asyncio.ensure_future(hanging.wait())
            dead = asyncio.ensure_future(_dead_letters(publisher, "crashy", 1))
            done, _ = await asyncio.wait(
                {culprit_started, dead}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, "neither a dead letter nor the culprit running"
            if dead in done:
                culprit_started.cancel()
                break
            dead.cancel()
            hanging.clear()
            await worker.transport.close()  # the worker dies with everything it holds
            await worker.close()
            assert life <= limit + 1, "the culprit was never dead-lettered"
        (letter,) = await dead
        assert letter.error_type == "KilledItsWorker"
        assert f"died {limit} times" in letter.error_message
        culprit_runs = [item for item in started.items if item[0] == 0]
        assert len(culprit_runs) == limit
        async with asyncio.timeout(WAIT):
            while {n for n, _ in started.items} != set(range(21)):
                await asyncio.sleep(0.02)
        assert worker.running == ("crashy",)


class TestNothingVanishes:
    async def test_a_message_that_expires_in_its_queue_is_dead_lettered(
        self, make_bus: Buses
    ) -> None:
        """A foreign message with a per-message expiration that passes while no worker
        consumes: in the service's DLQ, where the listing gives the broker's reason."""
        service = Service("expiring")

        @service.on(Job)
        async def handle(event: Job) -> None:
            raise AssertionError("nothing consumes in this test")

        bus = await make_bus()
        await bus.declare(service)
        message = wire.encode(Job(n=1))
        message.expiration = 0.05
        await bus.transport.publish(message, f"{bus.namespace}.job", mandatory=True)
        (letter,) = await _dead_letters(bus, "expiring", 1)
        assert letter.error_type == "Expired"
        assert letter.message_id == message.message_id
        assert letter.event == "job"
        assert "expiration passed" in letter.error_message


class TestAttemptsCarryOver:
    async def test_a_stop_during_in_process_retries_keeps_the_attempt_count(
        self, make_bus: Buses
    ) -> None:
        """A worker stopped while a failing handler waits for its next in-process attempt
        hands the message back carrying that attempt: the next worker goes on counting
        (1, 2, 3), it does not start again at 1; the last attempt dead-letters it."""
        attempts = Recorder()
        failed_once = asyncio.Event()
        service = Service("counting", retry=Retry(attempts=3, delay=0.3, in_process_max_delay=1))

        @service.on(Job)
        async def handle(event: Job, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            failed_once.set()
            raise RuntimeError(f"attempt {ctx.attempt}")

        first = await make_bus(shutdown_timeout=5)
        await first.start(service)
        await first.publish(Job(n=1))
        async with asyncio.timeout(WAIT):
            await failed_once.wait()
        await first.stop()  # during the 0.3 s wait before attempt 2
        second = await make_bus()
        await second.start(service)
        (letter,) = await _dead_letters(second, "counting", 1)
        assert attempts.items == [1, 2, 3]
        assert letter.attempts == 3


class TestBrokerEvents:
    async def test_a_queue_deleted_while_consuming_is_declared_again(self, make_bus: Buses) -> None:
        """The service queue is deleted under a running worker (a deploy re-creating it):
        the worker declares it again and goes on consuming; stop() does not hang."""
        seen = Recorder()
        service = Service("deleted")

        @service.on(Job)
        async def handle(event: Job) -> None:
            seen.add(event.n)

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(Job(n=1))
        await seen.wait_for(1)
        await bus.transport.delete_queue(f"{bus.namespace}.deleted")
        async with asyncio.timeout(WAIT):
            while 2 not in seen.items:  # dropped while no queue is bound, handled once it is
                await bus.publish(Job(n=2))
                await asyncio.sleep(0.1)
        assert bus.healthy
        async with asyncio.timeout(10):
            await bus.stop()


class TestDeadLetterToolsAtAnySize:
    async def _dead_letters_of(self, bus: Bus, service: Service, count: int) -> list[str]:
        """``count`` dead letters of ``service``, put straight into its DLQ."""
        await bus.declare(service)
        ids = []
        for n in range(count):
            message = wire.encode(Job(n=n))
            await bus.transport.publish(message, "", f"{bus.namespace}.{service.name}.dlq")
            ids.append(message.message_id or "")
        return ids

    @staticmethod
    def _service() -> Service:
        service = Service("tools")

        @service.on(Job)
        async def handle(event: Job) -> None:
            raise AssertionError("nothing consumes in this test")

        return service

    async def test_a_listing_limit_over_65535_works(self, make_bus: Buses) -> None:
        """choreo dlq list --limit 70000 used to crash (the limit went into basic.qos,
        whose prefetch count is a short): it lists what there is."""
        bus = await make_bus()
        ids = await self._dead_letters_of(bus, self._service(), 5)
        letters = await dlq_tools.list_dead_letters(bus, "tools", limit=70_000)
        assert [letter.message_id for letter in letters] == ids

    async def test_replay_goes_in_bounded_batches_with_progress(self, make_bus: Buses) -> None:
        """replay --all moves every dead letter, at most ``batch`` held at once, and reports
        progress after each batch."""
        bus = await make_bus()
        await self._dead_letters_of(bus, self._service(), 10)
        seen: list[tuple[int, int]] = []
        moved = await dlq_tools.replay(
            bus, "tools", batch=3, progress=lambda done, total: seen.append((done, total))
        )
        assert moved == 10
        assert seen == [(3, 10), (6, 10), (9, 10), (10, 10)]
        assert await bus.transport.queue_size(f"{bus.namespace}.tools") == 10
        assert await bus.transport.queue_size(f"{bus.namespace}.tools.dlq") == 0

    async def test_a_dead_lettered_request_goes_back_to_the_request_queue(
        self, make_bus: Buses
    ) -> None:
        """A request (it has a reply_to) is replayed to <service>.requests, an event to
        <service>."""
        service = self._service()

        @service.responds(Job)
        async def answer(event: Job) -> Job:
            return event

        bus = await make_bus()
        await bus.declare(service)
        request = wire.encode(Job(n=1))
        request.reply_to = "a-requester-that-is-gone"
        await bus.transport.publish(request, "", f"{bus.namespace}.tools.dlq")
        await bus.transport.publish(wire.encode(Job(n=2)), "", f"{bus.namespace}.tools.dlq")
        assert await dlq_tools.replay(bus, "tools") == 2
        assert await bus.transport.queue_size(f"{bus.namespace}.tools.requests") == 1
        assert await bus.transport.queue_size(f"{bus.namespace}.tools") == 1


class TestEverythingIsSettled:
    def test_copies_carry_only_headers_an_encoder_takes(self) -> None:
        """A dead-letter copy of a message whose headers hold a float beyond float32, bytes
        that are not UTF-8 and an oversized value: every header encodes (pamqp), the
        copy fits the budget, and x-choreo-sanitized says what changed."""
        import pamqp.encode

        from choreo._headers import HEADER_BUDGET

        original = wire.encode(Job(n=1))
        original.headers.update(
            {"huge-float": 1e300, "raw": b"\xff\xfe\xfd", "big": "x" * 200_000, "ok": "kept"}
        )
        copy = wire.dead_letter(
            original,
            error_type="RuntimeError",
            error_message="boom " * 1000,
            attempts=3,
            service="svc",
            event="job",
            traceback_text="trace " * 2000,
        )
        encoded = pamqp.encode.field_table(copy.headers)
        assert len(encoded) <= HEADER_BUDGET
        assert copy.headers["ok"] == "kept"
        assert copy.headers["huge-float"] == "1e+300"
        note = copy.headers[wire.SANITIZED_HEADER]
        assert "stringified huge-float" in note
        assert "dropped big" in note
        assert copy.headers[wire.ERROR_TYPE_HEADER] == "RuntimeError"

    async def test_a_stuck_worker_is_reported_unhealthy(self, make_bus: Buses) -> None:
        """A worker that holds a delivery and settles nothing for stall_timeout makes
        bus.healthy (what /healthz reports) false, and true again once it moves."""
        release = asyncio.Event()
        service = Service("stuck")

        @service.on(Job)
        async def handle(event: Job) -> None:
            await release.wait()

        bus = await make_bus(stall_timeout=0.3)
        await bus.start(service)
        assert bus.healthy
        await bus.publish(Job(n=1))
        async with asyncio.timeout(WAIT):
            while bus.healthy:
                await asyncio.sleep(0.05)
        release.set()
        async with asyncio.timeout(WAIT):
            while not bus.healthy:
                await asyncio.sleep(0.05)

    async def test_a_failure_while_settling_hands_the_message_back(
        self, make_bus: Buses, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unforeseen error while dead-lettering (here injected once) leaves no delivery
        unsettled: the message goes back to its queue and is dead-lettered next time."""
        from choreo._runtime import settle

        real = settle.send_to_dlq
        calls = 0

        async def flaky(*args: Any, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("an error nobody foresaw")
            await real(*args, **kwargs)

        monkeypatch.setattr(settle, "send_to_dlq", flaky)
        monkeypatch.setattr(settle, "DEAD_LETTER_BACKOFF", 0.05)
        service = Service("settling", retry=Retry(attempts=1))

        @service.on(Job)
        async def handle(event: Job) -> None:
            raise ValueError("fails for good")

        bus = await make_bus()
        await bus.start(service)
        await bus.publish(Job(n=1))
        (letter,) = await _dead_letters(bus, "settling", 1)
        assert letter.error_type == "ValueError"
        assert calls == 2


class TestOneIdPerChoreography:
    def test_the_first_message_of_a_chain_correlates_to_itself(self) -> None:
        """A message published without a correlation id carries its own message id."""
        message = wire.encode(Job(n=1))
        assert message.correlation_id == message.message_id
        assert wire.encode(Job(n=1), correlation_id="c-1").correlation_id == "c-1"

    async def test_a_foreign_message_with_neither_id_starts_a_chain(self, make_bus: Buses) -> None:
        """A message with no message_id and no correlation_id: the handler gets a fresh
        correlation id, and what it publishes carries it."""
        seen = Recorder()
        first, second = Service("first"), Service("second")

        class Next(Event):
            n: int

        @first.on(Job, emits=[Next])
        async def relay(event: Job, ctx: Context) -> None:
            seen.add(("first", ctx.correlation_id))
            await ctx.publish(Next(n=event.n))

        @second.on(Next)
        async def end(event: Next, ctx: Context) -> None:
            seen.add(("second", ctx.correlation_id))

        bus = await make_bus()
        await bus.start(first, second)
        foreign = Message(body=b'{"n": 1}', type="job", content_type="application/json")
        await bus.transport.publish(foreign, f"{bus.namespace}.job", mandatory=True)
        items = dict(await seen.wait_for(2))
        assert items["first"]
        assert items["second"] == items["first"]
