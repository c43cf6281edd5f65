"""The consuming runtime (private): what happens to a delivery between the transport's
callback and its ack.

* ``worker.py``: a queue's worker: bounded concurrency, graceful drain, the observer call
* ``dispatch.py``: event deliveries: find the handler, decode, run it with in-process
  retries, and decide the delivery's fate (a ``Verdict``)
* ``responder.py``: request deliveries: run the responder, send the reply
* ``settle.py``: the one place a delivery is settled: ack, requeue, retry through the
  broker (``broker_retry.py``) or dead-letter (``deadletter.py``)
* ``declare.py``: the one owner of what a bus declared on the broker
"""
