"""Optional features, with their extra absent and present: each is imported only when
used, and without it choreo says in one line which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# choreo's own round trip on the in-memory broker: publish, handle, print what was seen
ROUND_TRIP = """
import asyncio
from choreo import Event, Service, connect

class Ping(Event):
    n: int

service = Service("pinged")
seen = []

@service.on(Ping)
async def handle(event: Ping) -> None:
    seen.append(event.n)

async def main() -> None:
    async with connect("memory://") as bus:
        await bus.start(service)
        await bus.publish(Ping(n=7))
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
    print("seen", seen)

asyncio.run(main())
"""


def _python(code: str, *blocked: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the modules ``blocked`` cannot be imported."""
    blocker = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run(
        [sys.executable, "-c", blocker + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "blocked",
    [
        (),
        ("prometheus_client",),
        ("opentelemetry",),
        ("uvloop",),
        ("yaml",),
        ("prometheus_client", "opentelemetry", "uvloop", "yaml"),
    ],
)
def test_the_core_works_with_or_without_each_extra(blocked: tuple[str, ...]) -> None:
    """Publishing and handling need none of the extras."""
    result = _python(ROUND_TRIP, *blocked)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seen [7]"


def test_metrics_without_prometheus_client_is_one_line() -> None:
    """choreo run --metrics-port without prometheus-client: exit 2 and one line naming the
    extra (it was a 30-line NameError traceback at import)."""
    code = (
        "from choreo.cli import main; sys.argv = ['choreo', 'run', "
        "'tests.fixtures.worker:service', '--broker', 'memory://', '--metrics-port', '0']; "
        "main()"
    )
    result = _python(code, "prometheus_client")
    assert result.returncode == 2
    assert result.stderr == (
        "choreo: error: metrics need prometheus-client: pip install 'choreo-mq[metrics]'\n"
    )


def test_metrics_with_prometheus_client_count_what_was_handled() -> None:
    """With the extra: the observer counts a handled event."""
    code = ROUND_TRIP.replace(
        'async with connect("memory://") as bus:',
        "from choreo.observability.metrics import PrometheusObserver\n"
        "    observer = PrometheusObserver()\n"
        '    async with connect("memory://", observer=observer) as bus:',
    ).replace(
        'print("seen", seen)',
        'print("seen", seen)\n'
        "    text = observer.exposition().decode()\n"
        "    print([line for line in text.splitlines() if line.startswith("
        "'choreo_handled_total{')])",
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert 'outcome="ok",service="pinged"' in result.stdout


def test_uvloop_is_used_when_installed_and_not_needed() -> None:
    """choreo run's loop is uvloop's when uvloop imports, asyncio's otherwise."""
    code = "from choreo.cli.loop import loop_factory; print(loop_factory() is not None)"
    assert _python(code, "uvloop").stdout.strip() == "False"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pytest.skip("uvloop (choreo-mq[fast]) is not installed here")
    assert _python(code).stdout.strip() == "True"


def test_tracing_is_off_without_opentelemetry() -> None:
    """Without opentelemetry, tracing is off and costs nothing; with it, it is on."""
    code = "from choreo.observability import tracing; print(tracing.ENABLED)"
    assert _python(code, "opentelemetry").stdout.strip() == "False"
    assert _python(code).stdout.strip() == "True"


SQL_EXTRA = "choreo.sql needs SQLAlchemy: pip install 'choreo-mq[sql]'"


def test_the_core_works_without_sqlalchemy_and_never_imports_it() -> None:
    """The sql extra: without SQLAlchemy, import choreo and a memory round trip work; with
    it installed, the core still does not import it (only choreo.sql does)."""
    result = _python(ROUND_TRIP, "sqlalchemy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "seen [7]"
    code = ROUND_TRIP + "print('sqlalchemy' in sys.modules)"
    assert _python(code).stdout.split("\n")[:2] == ["seen [7]", "False"]


def test_the_store_without_sqlalchemy_names_the_extra() -> None:
    """from choreo.sql import Store: an ImportError that says what to install."""
    code = (
        "try:\n"
        "    from choreo.sql import Store\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = _python(code, "sqlalchemy")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ImportError {SQL_EXTRA}\n"


def test_outbox_status_without_sqlalchemy_is_one_line() -> None:
    """choreo outbox status without SQLAlchemy: exit 2, one line naming the extra."""
    code = (
        "from choreo.cli import main; sys.argv = ['choreo', 'outbox', 'status', "
        "'tests.fixtures.outbox_store:store']; main()"
    )
    result = _python(code, "sqlalchemy")
    assert result.returncode == 2
    assert result.stderr == f"choreo: error: {SQL_EXTRA}\n"


def test_the_store_with_sqlalchemy_imports() -> None:
    """With the extra: Store, Transaction and OutboxStatus import from choreo.sql."""
    code = "from choreo.sql import OutboxStatus, Store, Transaction; print(Store.__module__)"
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "choreo.sql.store"
