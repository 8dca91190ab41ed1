"""``--listen`` / ``--metrics-listen`` with port 0 on a host whose name resolves to both IPv4
and IPv6 (aggregator/listen.py): one port for every socket, as announced.

asyncio bound each address on a port of its own: ``localhost:0`` listened on
``127.0.0.1:A and [::1]:B``, and a client that resolved ``localhost`` to ``::1`` reached another
port than the one the log and ``/metrics`` announced. The sockets here bind loopback addresses
only (127.0.0.1, and ::1 where the machine has it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from aggregator import listen
from aggregator.commands import main
from aggregator.config import Settings
from aggregator.listen import Address
from aggregator.service import Aggregator

_real_getaddrinfo = socket.getaddrinfo


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


#: The loopback addresses this machine can bind: 127.0.0.1, and ::1 where IPv6 is on. Without
#: ::1 the tests below check the single-family case only: the one address listened on, on
#: the port announced (no second port can exist then; the test says so by its id).
LOOPBACKS = [(socket.AF_INET, ("127.0.0.1", 0))] + (
    [(socket.AF_INET6, ("::1", 0, 0, 0))] if _has_ipv6_loopback() else []
)
FAMILIES = "dual-stack" if len(LOOPBACKS) == 2 else "IPv4-only (no ::1 here)"
#: Two addresses for the tests of a port taken on the second one: both loopbacks, or two of
#: IPv4's (127.0.0.2 is loopback too on Linux) where ::1 is missing.
TWO = LOOPBACKS if len(LOOPBACKS) == 2 else [*LOOPBACKS, (socket.AF_INET, ("127.0.0.2", 0))]


IPV4_LOOPBACK: Address = (socket.AF_INET, ("127.0.0.1", 0))
IPV6_LOOPBACK: Address = (socket.AF_INET6, ("::1", 0, 0, 0))
#: An address of TEST-NET-1 (RFC 5737): on no host, its bind fails with
#: EADDRNOTAVAIL (what ``::1`` gives where IPv6 is off).
NOT_HERE: Address = (socket.AF_INET, ("192.0.2.1", 0))


def _localhost_resolves_to(monkeypatch: pytest.MonkeyPatch, *addresses: Address) -> None:
    """``localhost`` resolves to ``addresses`` (as /etc/hosts names them), other names for
    real."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "localhost":
            return _real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (sa[0], int(port or 0), *sa[2:]))
            for family, sa in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _localhost_is_every_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``localhost`` resolves to every loopback of :data:`LOOPBACKS`, ``::1`` first (as glibc
    orders them on most hosts): this machine's /etc/hosts may name 127.0.0.1 alone."""
    _localhost_resolves_to(monkeypatch, *reversed(LOOPBACKS))


def _connects(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) == 0


@pytest.mark.parametrize("families", [FAMILIES])
def test_localhost_port_0_listens_on_one_port_for_every_address(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, families: str
) -> None:
    """``--listen localhost:0``: the ``listening on`` addresses are every address of
    ``localhost``, on one port, and each takes connections there."""
    _localhost_is_every_loopback(monkeypatch)
    settings = Settings(
        listen="localhost:0", warehouse=str(tmp_path / "wh"), buffer_dir=str(tmp_path / "b")
    )
    agg = Aggregator(settings)
    listening = _started(agg)
    assert [host for host, _ in listening] == [sa[0] for _, sa in LOOPBACKS], families
    ports = {port for _, port in listening}
    assert ports == {agg.port} and agg.port > 0, listening


def test_the_listen_hosts_are_resolved_once_and_those_addresses_bound(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--listen and --metrics-listen resolved before the buffer is read, and again at their
    binds: once that read took its seconds per GiB, a resolver that failed for now there (or a
    name gone) ended the start. Now each name is asked once and its addresses are bound."""
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host not in ("forward.test", "metrics.test"):
            return _real_getaddrinfo(host, port, *args, **kwargs)
        if asked.count(host) > 1:
            raise socket.gaierror(socket.EAI_AGAIN, "asked again")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    where = {"warehouse": str(tmp_path / "wh"), "buffer_dir": str(tmp_path / "b")}
    agg = Aggregator(Settings(listen="forward.test:0", metrics_listen="metrics.test:0", **where))
    assert _started(agg) == [("127.0.0.1", agg.port)]
    assert agg.metrics_server is not None and agg.metrics_server.port > 0
    assert sorted(h for h in asked if h in ("forward.test", "metrics.test")) == [
        "forward.test",
        "metrics.test",
    ]


def _started(agg: Aggregator) -> list[tuple[str, int]]:
    """Where ``agg`` listens once started (then stopped)."""

    async def scenario() -> list[tuple[str, int]]:
        running = asyncio.ensure_future(agg.run())
        try:
            while not agg.port:
                assert not running.done(), running.exception()
                await asyncio.sleep(0.02)
            assert agg.server is not None
            return list(agg.server.listening)
        finally:
            agg.stop()
            await asyncio.wait_for(running, 30)

    return asyncio.run(scenario())


def test_metrics_port_0_listens_on_one_port_for_every_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--metrics-listen localhost:0`` alike: the port announced answers on every address."""
    from aggregator.metrics import Metrics, MetricsServer

    _localhost_is_every_loopback(monkeypatch)

    async def scenario() -> None:
        server = MetricsServer(Metrics(), "localhost", 0)
        port = await server.start()
        try:
            assert server._server is not None
            names = [s.getsockname()[:2] for s in server._server.sockets]
            assert sorted(names) == sorted((sa[0], port) for _, sa in LOOPBACKS), FAMILIES
            for family, sa in LOOPBACKS:
                assert await asyncio.to_thread(_connects, family, sa[0], port), sa
        finally:
            await server.stop()

    asyncio.run(scenario())


def _taken_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The second address's first bind fails as if another process held the port there;
    the ports given to the first address, in order."""
    real = listen._bound
    ports: list[int] = []

    def bound(family: int, sockaddr: tuple[Any, ...]) -> socket.socket:
        if sockaddr[1] and len(ports) == 1:  # the first set's second address: taken
            ports.append(-1)
            raise OSError(errno.EADDRINUSE, "address already in use")
        sock = real(family, sockaddr)
        if not sockaddr[1]:
            ports.append(sock.getsockname()[1])
        return sock

    monkeypatch.setattr(listen, "_bound", bound)
    return ports


def test_a_port_0_taken_on_a_later_address_is_picked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process holds the first address's port on the second one: the set is bound
    again on a new port, the first try's socket closed."""
    ports = _taken_once(monkeypatch)
    sockets = listen.bind_all(TWO, 0)
    try:
        assert len(ports) == 3 and ports[1] == -1, ports
        names = [s.getsockname()[:2] for s in sockets]
        assert names == [(sa[0], ports[2]) for _, sa in TWO], names
    finally:
        for sock in sockets:
            sock.close()


def test_a_fixed_port_taken_on_a_later_address_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port given in the flag is not changed: the error of the address that cannot have it
    (``listen_error`` names the flag and what to do), nothing left bound."""
    opened: list[socket.socket] = []
    real = listen._bound

    def bound(family: int, sockaddr: tuple[Any, ...]) -> socket.socket:
        if sockaddr[0] == TWO[1][1][0]:
            raise OSError(errno.EADDRINUSE, "address already in use")
        opened.append(real(family, sockaddr))
        return opened[-1]

    monkeypatch.setattr(listen, "_bound", bound)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError) as caught:
        listen.bind_all(TWO, port)
    assert caught.value.errno == errno.EADDRINUSE
    assert [s.fileno() for s in opened] == [-1], "the first address stayed bound"


def _listening(host: str, port: int = 0) -> list[tuple[str, int]]:
    """Where ``listen.start_server(host, port)`` listens (then closed)."""

    async def scenario() -> list[tuple[str, int]]:
        server = await listen.start_server(lambda r, w: w.close(), host, port)
        try:
            return [s.getsockname()[:2] for s in server.sockets]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(scenario())


def test_an_address_family_the_kernel_lacks_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel booted with ``ipv6.disable=1`` makes no IPv6 socket (EAFNOSUPPORT), while
    ``localhost`` (and ``:PORT``, every address) still resolves to IPv6 too: the IPv4 address
    is listened on, as asyncio did. The whole start failed with EAFNOSUPPORT."""
    _localhost_resolves_to(monkeypatch, IPV6_LOOPBACK, IPV4_LOOPBACK)
    real = socket.socket

    def no_ipv6(family: int = -1, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(listen, "socket", SimpleNamespace(**{**vars(socket), "socket": no_ipv6}))
    listening = _listening("localhost")
    assert [host for host, _ in listening] == ["127.0.0.1"] and listening[0][1] > 0, listening


def test_an_address_not_on_this_host_is_left_out_when_another_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``::1`` in /etc/hosts of a container whose IPv6 is off (EADDRNOTAVAIL), named first:
    listened on 127.0.0.1 alone, as Python 3.13's asyncio does (an address of TEST-NET-1, on
    no host, stands for ``::1``). The whole start failed with EADDRNOTAVAIL."""
    _localhost_resolves_to(monkeypatch, NOT_HERE, IPV4_LOOPBACK)
    listening = _listening("localhost")
    assert [host for host, _ in listening] == ["127.0.0.1"] and listening[0][1] > 0, listening


def test_an_address_not_on_this_host_alone_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no other address, its error is raised, errno kept (``listen_error``'s hint: "this
    host has no such address")."""
    _localhost_resolves_to(monkeypatch, NOT_HERE)
    with pytest.raises(OSError) as caught:
        _listening("localhost")
    assert caught.value.errno == errno.EADDRNOTAVAIL, caught.value


def test_the_metrics_line_names_every_address_listened_on(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--metrics-listen :0`` (no host: every address of this host, here made the loopbacks
    of :data:`LOOPBACKS`): the ``metrics on`` line names each address listened on, on the one
    port, IPv4 first, as ``listening on`` does. It said ``http://0.0.0.0:PORT/metrics``
    whatever was bound, which the README says is IPv4 only."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host is not None:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        return [
            (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (sa[0], int(port or 0), *sa[2:]))
            for family, sa in reversed(LOOPBACKS)
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    settings = Settings(
        metrics_listen=":0", warehouse=str(tmp_path / "wh"), buffer_dir=str(tmp_path / "b")
    )
    agg = Aggregator(settings)

    async def scenario() -> int:
        await agg._start_metrics()
        assert agg.metrics_server is not None
        try:
            return agg.metrics_server.port
        finally:
            await agg.metrics_server.stop()

    port = asyncio.run(scenario())
    urls = [
        f"http://{'[' + sa[0] + ']' if ':' in sa[0] else sa[0]}:{port}/metrics"
        for _, sa in LOOPBACKS
    ]
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("metrics on ")]
    assert line == [f"metrics on {' and '.join(urls)}"], (line, FAMILIES)


def test_a_connection_open_when_the_loop_ends_ends_without_an_error_logged() -> None:
    """``asyncio.run`` cancels the tasks left when its coroutine returns: a connection's task
    that ended cancelled made Python 3.11's stream callback log ``Exception in callback ...
    CancelledError`` with a traceback (every SIGTERM with a scraper connected to
    --metrics-listen). The task ends quietly, its socket dropped."""
    errors: list[dict[str, Any]] = []
    cleaned: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()  # the client sends nothing: open until the loop ends
        finally:
            cleaned.append("handler")

    async def main() -> socket.socket:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        server = await listen.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        while len(asyncio.all_tasks()) < 2:  # until the connection's task runs beside main's
            await asyncio.sleep(0.01)
        server.close()
        return client  # the handler's task is still open: asyncio.run cancels it

    client = asyncio.run(main())
    try:
        assert cleaned == ["handler"]  # its own cleanup ran
        assert errors == []
        client.settimeout(10)
        assert client.recv(1) == b""  # the server's socket was dropped
    finally:
        client.close()


def test_a_handler_error_that_is_not_a_cancellation_is_still_reported() -> None:
    """:func:`listen.ends_quietly` swallows only a cancellation: a handler's own error (a bug,
    which ``MetricsServer._handle`` does not catch) still reaches asyncio's exception handler,
    which logs it with its traceback, and the connection is closed."""
    errors: list[dict[str, Any]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1)
        raise RuntimeError("a bug in the handler")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        server = await listen.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x")
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server
        writer.close()
        server.close()

    asyncio.run(main())
    assert [str(e.get("exception")) for e in errors] == ["a bug in the handler"], errors


# --- a host name that does not resolve -----------------------------------------------------------

#: A name no resolver has (RFC 6761: ``.invalid`` never exists).
NO_SUCH_HOST = "nosuchhost.invalid"


def _serve(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[int, int]:
    """``logq-aggregator FLAGS`` in this process: its exit status, and how many times it began
    reading its --buffer-dir (where a previous run's segments take seconds per GiB)."""
    reads: list[None] = []
    read_buffer_dir = Aggregator._read_buffer_dir

    def counted(agg: Aggregator) -> None:
        reads.append(None)
        read_buffer_dir(agg)

    monkeypatch.setattr(Aggregator, "_read_buffer_dir", counted)
    where = ["--buffer-dir", str(tmp_path / "buf"), "--warehouse", str(tmp_path / "wh")]
    return main([*flags, *where]), len(reads)


def _last_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag", ["--listen", "--metrics-listen"])
def test_a_host_name_that_does_not_exist_exits_2_before_the_buffer_is_read(
    flag: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Asked of this host's resolver: the name does not exist, so the command must change
    (exit 2, as a bad flag), said before the buffer is read. It exited 1 (a failure to retry)
    once the Forward port was opened, after the previous run's segments were read."""
    try:
        socket.getaddrinfo(NO_SUCH_HOST, 24224, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno not in listen.NO_SUCH_NAME:
            pytest.skip(
                f"this host's resolver cannot tell that {NO_SUCH_HOST} does not exist: {exc}"
            )
    address = f"{NO_SUCH_HOST}:24224"
    flags = {"--listen": "127.0.0.1:0", "--metrics-listen": "127.0.0.1:0", flag: address}
    status, reads = _serve(tmp_path, monkeypatch, *(x for f in flags.items() for x in f))
    last = _last_line(capsys)
    assert (status, reads) == (2, 0), last
    assert last.startswith(
        f"logq-aggregator: cannot listen on {address} ({flag}): the host name "
        f"'{NO_SUCH_HOST}' does not resolve ("
    ), last
    assert last.endswith("use an IP address, :PORT (every address) or a name this host resolves")


@pytest.mark.parametrize(
    ("code", "status", "said"),
    [
        (
            socket.EAI_AGAIN,
            1,
            f"could not be resolved for now (resolver said {socket.EAI_AGAIN}): a temporary DNS "
            "failure; retry once DNS answers, or use an IP address",
        ),
        (
            socket.EAI_FAIL,
            1,
            f"could not be resolved (resolver said {socket.EAI_FAIL}): the resolver failed; "
            "check this host's DNS (/etc/resolv.conf) and retry, or use an IP address",
        ),
        (
            socket.EAI_NONAME,
            2,
            f"does not resolve (resolver said {socket.EAI_NONAME}): use an IP address, :PORT "
            "(every address) or a name this host resolves",
        ),
    ],
)
def test_a_resolver_failure_exits_1_saying_to_retry_a_name_that_does_not_exist_2(
    code: int,
    status: int,
    said: str,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The resolver's answer, made here (no DNS server can be made to fail on demand): no
    answer for now (``EAI_AGAIN``, DNS not up yet at boot) or a failed resolver may pass with
    the same command, so exit 1 saying to retry; only a name that does not exist is exit 2.
    Both before the buffer is read."""

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "logs.example":
            raise socket.gaierror(code, f"resolver said {code}")
        return _real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    got, reads = _serve(tmp_path, monkeypatch, "--listen", "logs.example:24224")
    last = _last_line(capsys)
    assert (got, reads) == (status, 0), last
    assert last == (
        "logq-aggregator: cannot listen on logs.example:24224 (--listen): the host name "
        f"'logs.example' {said}"
    ), last
