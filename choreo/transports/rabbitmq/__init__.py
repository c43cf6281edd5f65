"""RabbitMQ transport: this package is the only part of choreo that imports aio-pika.

``_wire.py`` converts messages and holds the failover connection, ``_consumer.py`` consumes
and acknowledges (in batches), ``_transport.py`` is the transport itself.
"""

from ._transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]
