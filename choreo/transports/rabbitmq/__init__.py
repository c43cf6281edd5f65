"""RabbitMQ transport: this package is the only part of choreo that imports aio-pika.

``_amqp.py`` converts messages to AMQP frames and holds the failover connection,
``_consumer.py`` consumes and acknowledges (in batches), ``_transport.py`` is the
transport itself.
"""

from ._codec_guard import install as _guard_the_codec
from ._transport import RabbitMQTransport

_guard_the_codec()

__all__ = ["RabbitMQTransport"]
