"""Delayed publishing: ``await bus.publish(event, delay=...)``, ``await ctx.publish(event,
delay=...)``, ``await tx.publish(event, delay=...)``; ``delay`` is seconds or a ``timedelta``.

A delayed event is delivered no earlier than its delay, to every consumer, as a normal
publish of it would be (same exchange, body and properties). ``delay=None`` or ``0`` is
the normal publish, unchanged.

**Without a store: through the broker, no plugin.** As NServiceBus's RabbitMQ transport
does it, with ``LEVELS`` (21) binary delay levels that cascade. Level ``k`` (0 to 20) is
a topic exchange and a classic queue, both named ``choreo.delay.<kk>`` (two digits; with
a namespace ``<namespace>.choreo.delay.<kk>``); the queue holds each message ``2**k``
seconds (``x-message-ttl``) and then the broker dead-letters it, routing key unchanged,
to the exchange of level ``k-1``; level 0's queue dead-letters to the delivery exchange
``choreo.delay.deliver`` (topic). The routing key carries the delay in whole seconds, in
binary, one word per level from level 20 down to level 0, then the destination exchange:
70 s (64 + 4 + 2) to ``shop.order_placed`` is ``0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.1.1.0.
shop.order_placed`` (without the line break). The exchange of level ``k`` routes a key
whose level-``k`` word is ``1`` to its queue, where it waits ``2**k`` s (binding key:
``*.`` repeated 20-k times, then ``1.#``), and one whose word is ``0`` straight on to the
level below (an exchange-to-exchange binding: ``*.`` repeated 20-k times, then ``0.#``).
A delayed publish goes to the exchange of the delay's highest level, so a message waits
once in each level whose bit is set and nowhere else. The delivery exchange routes it to
its destination exchange, bound to it with ``*.`` repeated 21 times and the exchange's
name (exactly that name, whatever dots it holds), whose queues receive it as if it had
been published there. The message carries ``x-choreo-exchange`` (its destination), so
consumers dispatch it as coming through that exchange, and the broker's ``x-death``
entries of the levels it waited in.

**Partitions.** The routing key a partitioned service's direct exchange routes by, the
event's bucket (``topology.routing_key_of``: of its ordering key, else of its message
id), travels as a second routing key: the header ``BCC: [<bucket>]`` (RabbitMQ's
sender-selected distribution, 3.10 to 4.x; the in-memory broker does the same). RabbitMQ
routes a message by every one of its keys at every exchange it passes through, keeps them
all when a queue without ``x-dead-letter-routing-key`` dead-letters it, and delivers no
``BCC`` header. One word matches no binding of the levels below 20 nor of the delivery
exchange, so the bucket rides along unused until the event's fanout exchange hands the
message to the partition exchanges, where it is the key that matches. The delay's key is
unchanged: messages in flight from before, or from publishers without ``BCC``, still
reach the unpartitioned services, not the partitioned ones. At level 20, ``1.#`` and
``0.#`` match the words ``1`` and ``0``: a message with a ``BCC`` must start at the level
of its delay's highest bit (as choreo's do), and the bucket ``0`` cannot start at level
20 (it would also go down the levels as if bit 20 were 0): a keyed event of bucket 0
delayed 2**20 s or more is a ``ConfigurationError`` (use a store), one without a key
takes bucket 1 instead. A delayed event is in its key's order by when it is **delivered**
(when it reaches its partition queue), not by when it was published.

Twenty-two exchanges and 21 queues per namespace, whatever the delays and however many:
declared (durable) by the first delayed publish of each connection, idempotently. The
destination's binding is made by the first delayed publish of each event.

* **Precision**: whole seconds; a delay with a fraction is rounded up (0.5 s waits 1 s,
  2.1 s waits 3 s), so it never arrives early; late by the broker's dead-letter hops
  (milliseconds each) and the consumer's backlog.
* **Maximum**: ``MAX_DELAY`` = 2**21 - 1 s = 2,097,151 s (24 days, 6 h 32 min 31 s);
  more is a ``ConfigurationError`` (a store has no maximum).
* **Classic queues**, on RabbitMQ 3.10 to 4.x (``x-queue-type=classic``, whatever the
  vhost's default type): persistent messages in durable queues survive worker and broker
  restarts. Quorum queues' at-least-once dead-lettering would keep a delayed event that
  reaches an exchange nobody is bound to, retrying it, and a few dozen such would hold
  up every delay of the namespace; classic dead-lettering drops it, as a fanout exchange
  drops an event nobody is bound to. Classic dead-lettering is at most once: a broker
  crash at the instant a message moves between levels may lose it. Where that matters,
  use a store.

**With a store** (a stored service's ``ctx.publish``, ``tx.publish``, ``store.publish``)
the outbox row is staged with its due time (``due_at``) in the handler's transaction, and
the relay publishes it, normally, once due: no maximum, no rounding (the relay's poll
interval aside), durable in the database across restarts, and nothing on the broker waits.
"""

from __future__ import annotations

import math
from datetime import timedelta

from .errors import ConfigurationError

__all__ = ["LEVELS", "MAX_DELAY", "Delay", "broker_seconds", "seconds_of"]

LEVELS = 21  # delay levels 0..20: level k waits 2**k seconds
MAX_DELAY = 2**LEVELS - 1  # seconds: 24 days, 6 h 32 min 31 s

Delay = timedelta | float | None
"""A delay: seconds (an ``int`` or a ``float``), a ``timedelta``, or ``None`` (none)."""


def seconds_of(delay: Delay) -> float:
    """``delay`` in seconds; ``ConfigurationError`` when it is negative or no delay."""
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif delay is None:
        seconds = 0.0
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise ConfigurationError(f"a delay is seconds or a timedelta, not {delay!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"a delay must be a finite number of seconds >= 0 ({delay!r})")
    return seconds


def broker_seconds(delay: Delay) -> int:
    """``delay`` in whole seconds, rounded up, for the broker's delay levels;
    ``ConfigurationError`` when it is over ``MAX_DELAY``."""
    seconds = seconds_of(delay)
    if seconds > MAX_DELAY:
        raise ConfigurationError(
            f"delay {delay!r} is over the maximum of the broker's delay levels, {MAX_DELAY} s "
            f"({timedelta(seconds=MAX_DELAY)}); publish it through a store "
            "(choreo.sql.Store: tx.publish(event, delay=...)) for longer delays"
        )
    return math.ceil(seconds)
