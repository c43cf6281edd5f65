"""What happened to each message: the observer (logs), metrics and tracing.

``observer.py`` holds the outcomes and the default observer (one log line per handled
message), ``logs.py`` the JSON log format, ``metrics.py`` Prometheus metrics and the
``/metrics`` + ``/healthz`` endpoint (``choreo-mq[metrics]``), ``tracing.py`` W3C trace
context through OpenTelemetry (``choreo-mq[otel]``). The optional ones import their library
only when used.
"""
