"""Fault-injection tooling owned by the test suite (nothing outside the repository needed).

* :mod:`tests.support.tcp_proxy`: :class:`~tests.support.tcp_proxy.FaultProxy`, an asyncio
  TCP proxy in the test's event loop that cuts, black-holes, refuses or delays connections.
* :mod:`tests.support.rabbit_nodes`: :class:`~tests.support.rabbit_nodes.RabbitNodes`, extra
  throw-away RabbitMQ nodes on loopback (a lone node or a cluster) that a test may stop, kill
  and restart without touching the shared broker on 5672.
"""
