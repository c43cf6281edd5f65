"""An asyncio TCP proxy that injects network faults, run inside the test's event loop.

Clients connect to ``127.0.0.1:<port>``; each connection is forwarded to the target (or to the
first of the fallback targets that accepts). The test then breaks the network on demand::

    async with FaultProxy("127.0.0.1", 5672) as proxy:   # or: port = await proxy.start()
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        proxy.cut()            # every live connection is reset now (the client sees ECONNRESET)
        proxy.black_hole()     # nothing flows either way, sockets stay open: only a heartbeat
        proxy.resume()         #   timeout tells the client; held bytes flow again on resume
        proxy.refuse()         # live connections cut, new ones reset as soon as they arrive
        proxy.accept()         #   (the listening port is kept, so it cannot be lost)
        proxy.latency(0.2)     # each chunk is delivered 200 ms after it was read, both ways
        proxy.heal()           # resume + accept + no latency

Bounded: loopback addresses only; at most ``max_connections`` links (further ones are
reset); at most ``queue_chunks`` chunks of ``chunk_size`` bytes in flight per direction; at
most ``max_chunks`` chunks forwarded per direction (then the link is reset and the error is
kept in ``errors``). A link lives until one side closes or resets it, or until ``cut()``,
``refuse()`` or ``close()``; ``close()`` waits for the handlers at most ``timeout`` seconds.

The same proxy as a separate process, driven over a one-line control protocol (for a test
whose code under test runs in another process and cannot share its event loop)::

    python tests/support/tcp_proxy.py --target 127.0.0.1:5672 [--target H:P ...]
        [--listen PORT] [--control PORT] [--max-seconds 600]
        # prints "READY port=<listen> control=<control>" once both listen on 127.0.0.1;
        # exits on SIGTERM/SIGINT, or after --max-seconds whatever happens
    python tests/support/tcp_proxy.py ctl CONTROL_PORT cut|black_hole|resume|refuse|accept|
        heal|latency SECONDS|status     (down = refuse, up = accept)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from types import TracebackType

LISTEN_HOST = "127.0.0.1"

_EOF = b""


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"FaultProxy forwards to loopback addresses only, not {host!r}")


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN (SO_LINGER 0), as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LinkExhausted(RuntimeError):
    """A connection forwarded ``max_chunks`` chunks one way: the proxy resets it."""


class _Link:
    """One proxied connection: the client's socket, the target's, and the four pump tasks."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self.client = client
        self.target = target
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.target):
            _reset(writer)
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of ``target_host:target_port``, with fault controls."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        fallbacks: Sequence[tuple[str, int]] = (),
        listen_port: int = 0,
        max_connections: int = 64,
        connect_timeout: float = 5.0,
        chunk_size: int = 64 * 1024,
        queue_chunks: int = 32,
        max_chunks: int = 1_000_000,
    ) -> None:
        self.targets = [(target_host, target_port), *fallbacks]
        for host, _port in self.targets:
            _require_loopback(host)
        self._listen_port = listen_port
        self._max_connections = max_connections
        self._connect_timeout = connect_timeout
        self._chunk_size = chunk_size
        self._queue_chunks = queue_chunks
        self._max_chunks = max_chunks
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._delay = 0.0
        self._closed = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0  # connections forwarded
        self.rejected = 0  # connections reset on arrival (refuse(), too many, no target)
        self.errors: list[BaseException] = []  # unexpected pump failures (not network errors)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen on 127.0.0.1 and return the port."""
        if self._server is not None:
            return self.port
        self._server = await asyncio.start_server(
            self._on_client, LISTEN_HOST, self._listen_port, reuse_address=True
        )
        self._listen_port = self.port
        return self._listen_port

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._listen_port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Live proxied connections."""
        return len(self._links)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop listening, reset every connection, and wait (bounded) for the handlers."""
        self._closed = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=timeout)
        if server is not None:
            async with asyncio.timeout(timeout):
                await server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- faults ------------------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every live connection now; return how many there were."""
        links = list(self._links)
        self._links.clear()
        for link in links:
            link.abort()
        return len(links)

    def black_hole(self) -> None:
        """Stop forwarding bytes both ways; sockets stay open and nothing is lost."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, held bytes first."""
        self._flowing.set()

    def refuse(self) -> int:
        """Reset new connections as they arrive and cut the live ones (returns how many)."""
        self._refusing = True
        return self.cut()

    def accept(self) -> None:
        """Forward new connections again."""
        self._refusing = False

    def latency(self, seconds: float) -> None:
        """Deliver each chunk ``seconds`` after it was read, both ways (0 = none)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._delay = seconds

    def heal(self) -> None:
        """Undo every fault: resume, accept, no latency."""
        self._delay = 0.0
        self.accept()
        self.resume()

    # ---- forwarding --------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._forward(reader, writer)
        except asyncio.CancelledError:
            _reset(writer)  # close(): swallowed, so asyncio does not report the handler
        finally:
            self._handlers.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed or self._refusing or len(self._links) >= self._max_connections:
            self.rejected += 1
            _reset(writer)
            return
        target = await self._open_target()
        if target is None or self._closed or self._refusing:
            self.rejected += 1
            _reset(writer)
            if target is not None:
                _reset(target[1])
            return
        target_reader, target_writer = target
        self.accepted += 1
        link = _Link(writer, target_writer)
        upstream: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self._queue_chunks)
        downstream: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self._queue_chunks)
        link.tasks = [
            asyncio.create_task(self._read(reader, upstream)),
            asyncio.create_task(self._send(upstream, target_writer)),
            asyncio.create_task(self._read(target_reader, downstream)),
            asyncio.create_task(self._send(downstream, writer)),
        ]
        self._links.add(link)
        finished = False
        try:
            # all four end once both sides have closed; a reset ends one with an error
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_EXCEPTION)
            finished = True
        finally:
            was_cut = link not in self._links
            self._links.discard(link)
            for pump in link.tasks:
                pump.cancel()
            results = await asyncio.gather(*link.tasks, return_exceptions=True)
            failures = [r for r in results if isinstance(r, Exception)]  # not CancelledError
            self.errors.extend(r for r in failures if not isinstance(r, OSError))
            if not was_cut:
                if finished and not failures:
                    writer.close()
                    target_writer.close()
                else:
                    link.abort()  # one side was reset (or the proxy closes): reset both

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for host, port in self.targets:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    return await asyncio.open_connection(host, port)
            except (OSError, TimeoutError):
                continue
        return None

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._max_chunks):
            await self._flowing.wait()  # black hole: stop reading, the sender's buffers fill
            data = await reader.read(self._chunk_size)
            await queue.put((loop.time() + self._delay, data))
            if data == _EOF:
                return
        raise LinkExhausted(f"{self._max_chunks} chunks forwarded one way: link reset")

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self._max_chunks + 1):  # at most what _read puts, EOF included
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()  # black hole: hold what was already read
            if data == _EOF:
                if writer.can_write_eof() and not writer.is_closing():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()


# ---- a separate process ----------------------------------------------------------------------


async def _control(proxy: FaultProxy, line: str) -> str:
    words = line.split()
    command, args = (words[0].lower(), words[1:]) if words else ("", [])
    simple = {
        "cut": proxy.cut,
        "black_hole": proxy.black_hole,
        "resume": proxy.resume,
        "refuse": proxy.refuse,
        "down": proxy.refuse,
        "accept": proxy.accept,
        "up": proxy.accept,
        "heal": proxy.heal,
    }
    if command in simple and not args:
        result = simple[command]()
        return f"ok {command}" + (f" {result}" if result is not None else "")
    if command == "latency" and len(args) == 1:
        proxy.latency(float(args[0]))
        return f"ok latency {float(args[0])}"
    if command == "status" and not args:
        counts = f"accepted={proxy.accepted} rejected={proxy.rejected}"
        return f"ok connections={proxy.connections} {counts}"
    return f"error: unknown command {line.strip()!r}"


async def _serve(args: argparse.Namespace) -> None:
    targets = []
    for spec in args.target:
        host, _, port = spec.rpartition(":")
        targets.append((host or LISTEN_HOST, int(port)))
    proxy = FaultProxy(*targets[0], fallbacks=targets[1:], listen_port=args.listen)
    stop = asyncio.Event()

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                line = (await reader.readline()).decode(errors="replace")
                try:
                    reply = await _control(proxy, line)
                except ValueError as exc:
                    reply = f"error: {exc}"
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with proxy:
        control = await asyncio.start_server(on_control, LISTEN_HOST, args.control)
        try:
            control_port = control.sockets[0].getsockname()[1]
            print(f"READY port={proxy.port} control={control_port}", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.max_seconds):
                    await stop.wait()
        finally:
            control.close()


def _ctl(port: int, words: list[str]) -> int:
    with socket.create_connection((LISTEN_HOST, port), timeout=10) as sock:
        sock.sendall(" ".join(words).encode() + b"\n")
        reply = b""
        for _ in range(64):  # one short line
            chunk = sock.recv(4096)
            reply += chunk
            if not chunk or reply.endswith(b"\n"):
                break
    text = reply.decode(errors="replace").strip()
    print(text)
    return 0 if text.startswith("ok") else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ctl"]:
        if len(argv) < 3:
            print("usage: tcp_proxy.py ctl CONTROL_PORT COMMAND [ARG]", file=sys.stderr)
            return 2
        return _ctl(int(argv[1]), argv[2:])
    parser = argparse.ArgumentParser(description="TCP fault proxy on 127.0.0.1")
    parser.add_argument("--target", action="append", required=True, help="[host:]port, repeatable")
    parser.add_argument("--listen", type=int, default=0, help="listen port (0: any free one)")
    parser.add_argument("--control", type=int, default=0, help="control port (0: any free one)")
    parser.add_argument("--max-seconds", type=float, default=600, help="exit after this long")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
