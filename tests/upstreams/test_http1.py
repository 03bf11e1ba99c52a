"""margin's HTTP/1.1 client against real sockets: servers written byte by byte here, so
each test controls exactly what goes over the wire (lengths, chunks, closes, stalls)."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ssl
from typing import Awaitable, Callable

import pytest
from aiohttp import ClientConnectionError, ClientPayloadError, ServerDisconnectedError

from margin.upstreams.http1 import HTTPPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Server:
    """A TCP server that reads each request's head and body, then runs ``handler``."""

    def __init__(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await r.readexactly(length)
                self.requests.append(head + body)
                await self.handler(r, w, conn_no)
                if w.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_keep_alive_reuses_one_connection_and_sends_a_proper_request():
    async def handler(r, w, n):
        w.write(ok(b'{"n": %d}' % n))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}/v1",
                            headers={"authorization": "Bearer k"})
            bodies = []
            for i in range(3):
                resp = await pool.post("/v1/chat/completions", b'{"i": %d}' % i)
                assert resp.status == 200 and resp.headers["Content-Length"] == "8"
                bodies.append(await resp.read())
            await pool.close()
            return srv, bodies

    srv, bodies = run(main())
    assert bodies == [b'{"n": 1}'] * 3 and srv.connections == 1
    head = srv.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert {b"host: 127.0.0.1:%d" % srv.port, b"content-length: 8",
            b"authorization: Bearer k"} <= set(head)
    assert srv.requests[2].endswith(b'{"i": 2}')


def test_a_chunked_stream_arrives_as_it_is_sent_and_splits_into_lines():
    gate = asyncio.Event

    async def main():
        release = gate()

        async def handler(r, w, n):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n")
            w.write(chunk(b"data: {\"a\": 1}\n\n"))
            await w.drain()
            await release.wait()
            w.write(chunk(b"data: {\"b\"") + chunk(b": 2}\n\ndata: [DONE]\n\n") + b"0\r\n\r\n")

        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            resp = await pool.post("/s", b"{}")
            first = await asyncio.wait_for(resp.content.readany(), 5)  # before the rest exists
            release.set()
            lines = [line async for line in resp.content]
            resp.release()
            again = await pool.post("/s", b"{}")  # read to its end: the connection is reused
            release.set()
            rest = await again.read()
            await pool.close()
            return first, lines, rest, srv.connections

    first, lines, rest, connections = run(main())
    assert first == b'data: {"a": 1}\n\n'
    assert lines == [b'data: {"b": 2}\n', b"\n", b"data: [DONE]\n", b"\n"]
    assert rest.endswith(b"data: [DONE]\n\n") and connections == 1


def test_a_body_until_close_ends_at_the_close_and_is_not_reused():
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
        await w.drain()
        w.close()

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            a = await (await pool.post("/", b"")).read()
            b = await (await pool.post("/", b"")).read()
            await pool.close()
            return a, b, srv.connections

    assert run(main()) == (b"all of it", b"all of it", 2)


def test_an_idle_connection_the_server_closed_is_replaced_without_failing_the_request():
    async def handler(r, w, n):
        w.write(ok(b"conn %d" % n))
        await w.drain()
        if n == 1:
            # Says keep-alive, then closes while idle: the race every pooled client meets.
            await asyncio.sleep(0.05)
            w.close()

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            first = await (await pool.post("/", b"")).read()
            await asyncio.sleep(0.2)
            second = await (await pool.post("/", b"")).read()
            await pool.close()
            return first, second, srv.connections

    assert run(main()) == (b"conn 1", b"conn 2", 2)


def test_a_reused_connection_closed_as_the_request_went_out_is_retried_once_on_a_new_one():
    served: dict[int, int] = {}

    async def handler(r, w, n):
        served[n] = served.get(n, 0) + 1
        if n == 1 and served[n] == 2:
            w.close()  # the request arrived, the server had already decided to close
            return
        w.write(ok(b"conn %d" % n))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            first = await (await pool.post("/", b"a")).read()
            second = await (await pool.post("/", b"b")).read()
            await pool.close()
            return first, second, srv.connections, [r[-1:] for r in srv.requests]

    # Sent twice (once on each connection), answered once.
    assert run(main()) == (b"conn 1", b"conn 2", 2, [b"a", b"b", b"b"])


def test_a_close_mid_body_is_an_error_not_a_short_answer():
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await w.drain()
        w.close()

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            resp = await pool.post("/", b"")
            try:
                with pytest.raises(ClientPayloadError):
                    await resp.read()
            finally:
                await pool.close()

    run(main())


def test_a_server_that_closes_before_answering_a_new_connection_fails_the_request():
    async def handler(r, w, n):
        w.close()

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            try:
                with pytest.raises(ServerDisconnectedError):
                    await pool.post("/", b"")
            finally:
                await pool.close()

    run(main())


def test_silence_longer_than_the_read_timeout_is_a_timeout_and_bytes_reset_it():
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(4):  # a byte every 0.15 s: never 0.3 s of silence
            await asyncio.sleep(0.15)
            w.write(chunk(b"x"))
        await asyncio.sleep(5)

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", read_timeout_s=0.3)
            resp = await pool.post("/", b"")
            got = b""
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                while True:
                    got += await resp.content.readany()
            waited = loop.time() - t0
            resp.release()
            assert pool.open_count() == 0  # a timed-out connection is never reused
            await pool.close()
            return got, waited

    got, waited = run(main())
    assert got == b"xxxx" and 0.85 < waited < 2.0


def test_no_answer_within_the_read_timeout_and_a_refused_connection():
    async def stall(r, w, n):
        await asyncio.sleep(5)

    async def main():
        async with Server(stall) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", read_timeout_s=0.2)
            with pytest.raises(asyncio.TimeoutError):
                await pool.post("/", b"")
            await pool.close()
            port = srv.port
        refused = HTTPPool(f"http://127.0.0.1:{port}")
        await asyncio.sleep(0.05)
        with pytest.raises(ClientConnectionError, match="cannot connect"):
            await refused.post("/", b"")
        await refused.close()

    run(main())


def test_max_connections_makes_later_requests_wait_for_one_to_come_back():
    async def main():
        in_handler = 0
        most = 0

        async def handler(r, w, n):
            nonlocal in_handler, most
            in_handler += 1
            most = max(most, in_handler)
            await asyncio.sleep(0.05)
            in_handler -= 1
            w.write(ok(b"ok"))

        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", max_connections=2)

            async def one():
                return await (await pool.post("/", b"")).read()

            answers = await asyncio.gather(*(one() for _ in range(6)))
            assert pool.open_count() <= 2
            await pool.close()
            return answers, most, srv.connections

    answers, most, connections = run(main())
    assert answers == [b"ok"] * 6 and most == 2 and connections == 2


def test_an_answer_given_back_unread_never_reaches_the_next_request():
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk(b"part"))
        await asyncio.sleep(0.3)
        w.write(chunk(b"late") + b"0\r\n\r\n")

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            resp = await pool.post("/", b"")
            assert await resp.content.readany() == b"part"
            resp.release()  # a client that left mid-stream
            second = await pool.post("/", b"")
            assert await second.content.readany() == b"part"  # not "late" from the first
            second.release()
            await pool.close()
            return srv.connections

    assert run(main()) == 2


def test_gzip_is_decoded_and_a_large_body_survives_flow_control():
    big = bytes(range(256)) * 8192  # 2 MiB, read slowly below

    async def handler(r, w, n):
        if n == 1 and len(srv_box[0].requests) == 1:
            w.write(ok(gzip.compress(b"hello, compressed"), b"content-encoding: gzip\r\n"))
        else:
            w.write(ok(big))
        await w.drain()

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            small = await (await pool.post("/", b"")).read()
            resp = await pool.post("/", b"")
            parts = []
            while data := await resp.content.readany():
                parts.append(data)
                await asyncio.sleep(0.001)
            resp.release()
            await pool.close()
            return small, b"".join(parts)

    small, large = run(main())
    assert small == b"hello, compressed" and large == big


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_verifies_the_server_certificate(tmp_path, monkeypatch):
    cert_path, key_path = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)

    async def handler(r, w, n):
        w.write(ok(b"secret"))

    async def main(trusted: bool):
        async with Server(handler, server_ctx) as srv:
            pool = HTTPPool(f"https://localhost:{srv.port}")
            try:
                if not trusted:
                    with pytest.raises(ClientConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                        await pool.post("/", b"")
                    return None
                return await (await pool.post("/", b"")).read()
            finally:
                await pool.close()

    assert run(main(trusted=False)) is None  # not in the trust store: refused
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # trusted the way OpenSSL reads it
    assert run(main(trusted=True)) == b"secret"


def test_a_waiter_cancelled_as_it_is_woken_passes_its_turn_on():
    """A client that leaves while its request waits for a connection (the gateway cancels
    the upstream call) must not take the wake-up with it: the next waiter gets the
    connection instead of waiting for one that is already idle."""
    async def handler(r, w, n):
        w.write(ok(b"ok"))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", max_connections=1)
            first = await pool.post("/", b"")
            leaving = asyncio.ensure_future(pool.post("/", b""))
            staying = asyncio.ensure_future(pool.post("/", b""))
            await asyncio.sleep(0.05)  # both wait for the one connection
            assert await first.read() == b"ok"  # it comes back: `leaving` is woken...
            leaving.cancel()  # ...and cancelled before it ran
            try:
                resp = await asyncio.wait_for(staying, 2)
                return await resp.read()
            finally:
                await pool.close()

    assert run(main()) == b"ok"


def test_an_error_mid_body_is_not_turned_into_a_clean_end_by_the_close_that_follows():
    """A body that runs until the close fails (here: bytes that are not gzip); the close
    the failure causes must not then read as the body's end, a short answer passed as whole."""
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n"
                + gzip.compress(b"x" * 1000)[:20])
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"this is not gzip")
        await asyncio.sleep(1)

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            resp = await pool.post("/", b"")
            await asyncio.sleep(0.2)  # the failure and the close happen while nobody reads
            try:
                with pytest.raises(ClientPayloadError):
                    await resp.read()
            finally:
                await pool.close()

    run(main())


def test_closing_the_pool_fails_what_is_in_flight_and_sends_nothing_more():
    """pool.close() (a reload, a shutdown) with requests in flight: an answer being read
    until the close fails rather than ending short, a request waiting for its headers on a
    reused connection is not sent again on a new one, and one waiting for a connection
    fails instead of opening one on the closed pool."""
    async def handler(r, w, n):
        if len(srv_box[0].requests) <= 2:
            await asyncio.sleep(0.05)  # both at once: two connections
            w.write(ok(b"warm"))  # left to reuse
            return
        if len(srv_box[0].requests) == 3:
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\npart of it")
        await asyncio.sleep(2)

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", max_connections=2)
            async def warm():
                return await (await pool.post("/", b"")).read()

            assert await asyncio.gather(warm(), warm()) == [b"warm", b"warm"]
            reading = await pool.post("/", b"")  # reused, read until the close
            heads = asyncio.ensure_future(pool.post("/", b""))  # the other, reused
            await asyncio.sleep(0.1)
            queued = asyncio.ensure_future(pool.post("/", b""))  # waits for a slot
            await asyncio.sleep(0.05)
            await pool.close()
            with pytest.raises(ClientConnectionError):
                await reading.read()
            with pytest.raises(ClientConnectionError):
                await asyncio.wait_for(heads, 2)
            with pytest.raises(ClientConnectionError):
                await asyncio.wait_for(queued, 2)
            await asyncio.sleep(0.1)
            return len(srv.requests), srv.connections

    assert run(main()) == (4, 2)  # warm twice, reading, heads: nothing sent after the close


def test_a_retry_waiting_for_a_fresh_connection_while_another_is_idle_gets_one():
    """The retry after the keep-alive race wants a connection of its own; when the pool is
    full and one comes back idle, it must make room (close the idle one), not spin."""
    served: dict[int, int] = {}

    async def handler(r, w, n):
        served[n] = served.get(n, 0) + 1
        if n == 1 and served[n] == 1:
            w.write(ok(b"warm"))
        elif n == 1:
            await asyncio.sleep(0.1)
            w.close()  # the race: the reused connection closes with the request on it
        else:
            await asyncio.sleep(0.3)
            w.write(ok(b"conn %d" % n))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", max_connections=2)
            assert await (await pool.post("/", b"")).read() == b"warm"

            async def one():
                return await (await pool.post("/", b"")).read()

            # The first goes on the warm connection, the second opens another, the third
            # waits, and takes the slot the closing one frees before the first's retry does.
            answers = await asyncio.wait_for(asyncio.gather(one(), one(), one()), 5)
            await pool.close()
            return answers

    answers = run(main())
    assert sorted(answers) == [b"conn 2", b"conn 3", b"conn 4"]


def test_response_headers_past_the_limit_fail_instead_of_growing_without_bound():
    """An upstream sending headers without end (bytes keep coming, so no read timeout)
    must not hold memory without bound: aiohttp refused a line past 8 KiB; this client
    refuses a head past 256 KiB, and keeps answering heads below that."""
    async def handler(r, w, n):
        size = 200 * 1024 if len(srv_box[0].requests) == 1 else 4 * 1024 * 1024
        w.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(size // 65536):
            w.write(b"x-big: " + b"a" * 65536 + b"\r\n")
            await w.drain()
        w.write(b"content-length: 2\r\n\r\nok")

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            try:
                assert await (await pool.post("/", b"")).read() == b"ok"  # 200 KiB: fine
                with pytest.raises(ClientPayloadError, match="headers"):
                    await pool.post("/", b"")
            finally:
                await pool.close()

    run(main())


def test_a_stream_given_back_at_done_before_its_last_chunk_keeps_its_connection():
    """The stream readers stop at ``data: [DONE]`` and give the answer back; servers write
    the chunked terminator after it, often in a packet of its own. That connection is
    finished off in the background and reused, not closed after every stream (a new TCP
    and TLS handshake per request); one whose answer does not end soon is still closed."""
    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                + chunk(b"data: [DONE]\n\n"))
        await w.drain()
        await asyncio.sleep(0.05 if len(srv_box[0].requests) < 3 else 3)
        w.write(b"0\r\n\r\n")

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            for _ in range(3):
                resp = await pool.post("/", b"")
                assert await resp.content.readany() == b"data: [DONE]\n\n"
                resp.release()  # at [DONE], before the terminator
                with pytest.raises(ClientConnectionError):  # read after that: no waiting
                    await asyncio.wait_for(resp.content.readany(), 1)
                await asyncio.sleep(0.15)
            late = pool.open_count()  # the third has not ended: closed after a while
            await asyncio.sleep(0.5)
            late_after = pool.open_count()
            await pool.close()
            return srv.connections, late, late_after

    # Three streams on one connection; the third, unfinished, is closed within 0.25 s.
    assert run(main()) == (1, 1, 0)


def test_a_request_cancelled_as_its_answer_arrives_raises_nothing_into_the_loop():
    """The gateway cancels the upstream call when its client leaves. Cancelled in the turn
    before its headers are read, the answer still parses (into a cancelled future); the
    close that follows must not raise from connection_lost into the event loop."""
    async def main():
        errors: list[object] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: errors.append(ctx.get("exception", ctx)))
        got, answer = asyncio.Event(), asyncio.Event()

        async def handler(r, w, n):
            got.set()
            await answer.wait()
            w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the close")
            await w.drain()
            w.close()

        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            task = asyncio.ensure_future(pool.post("/", b""))
            await got.wait()
            await asyncio.sleep(0.01)
            answer.set()
            await asyncio.sleep(0)  # the server writes in this turn...
            loop.call_soon(task.cancel)  # ...the cancel runs in the next, before the read
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.1)
            await pool.close()
            return errors, pool.open_count()

    assert run(main()) == ([], 0)


def test_a_connection_still_opening_when_the_pool_closes_is_closed_and_carries_nothing():
    async def handler(r, w, n):
        w.write(ok(b"after the close"))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            task = asyncio.ensure_future(pool.post("/", b""))
            await asyncio.sleep(0)  # connecting
            await pool.close()
            with pytest.raises(ClientConnectionError, match="closed"):
                await task
            await asyncio.sleep(0.1)
            return len(srv.requests), pool.open_count()

    assert run(main()) == (0, 0)


def test_a_gzip_body_cut_short_by_the_close_is_an_error():
    """A body read until the close has no length to check; when it is gzip, the gzip end
    marker is the check: cut short, it fails rather than passing as the whole answer."""
    whole = gzip.compress(b'{"choices": []}' * 200)

    async def handler(r, w, n):
        i = len(srv_box[0].requests)
        if i == 3:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: 0\r\n\r\n")
            return
        w.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n"
                + (whole if i == 1 else whole[:len(whole) // 2]))
        await w.drain()
        w.close()

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            try:
                assert await (await pool.post("/", b"")).read() == b'{"choices": []}' * 200
                with pytest.raises(ClientPayloadError):
                    await (await pool.post("/", b"")).read()
                # No bytes at all under a gzip label: an empty body, not an error.
                assert await (await pool.post("/", b"")).read() == b""
            finally:
                await pool.close()

    run(main())


def test_idle_connections_past_keepalive_are_closed_while_newer_ones_keep_working():
    """Idle connections are reused newest first, so after a burst the older ones sit at the
    bottom, never reached while traffic is light: past ``keepalive_s`` they are closed as
    connections come back, not held open (a socket each, on both ends) indefinitely."""
    async def handler(r, w, n):
        await asyncio.sleep(0.05)
        w.write(ok(b"ok"))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}", keepalive_s=0.3)

            async def one():
                return await (await pool.post("/", b"")).read()

            await asyncio.gather(*(one() for _ in range(4)))  # a burst: four connections
            for _ in range(8):  # then one at a time, for longer than keepalive_s
                await one()
            open_after = pool.open_count()
            await pool.close()
            return open_after

    assert run(main()) == 1


def test_a_request_header_replaces_the_pools_header_of_the_same_name():
    """aiohttp's rule, which the upstreams were written for: a header given with the
    request replaces the session's of the same name (any case), not joins it. Bedrock
    sends its signed content-type on top of the deployment's; sent twice, the server
    reads "application/json,application/json" and the signature no longer matches."""
    async def handler(r, w, n):
        w.write(ok(b"ok"))

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}",
                            headers={"content-type": "application/json", "x-a": "1"})
            await (await pool.post("/", b"{}", {"Content-Type": "application/json",
                                                 "X-Amz-Date": "20260101T000000Z"})).read()
            await (await pool.post("/", b"{}")).read()
            await pool.close()
            return [[line for line in req.split(b"\r\n\r\n")[0].lower().split(b"\r\n")[1:]
                     if not line.startswith((b"host:", b"content-length:"))]
                    for req in srv.requests]

    with_own, plain = run(main())
    assert sorted(with_own) == [b"content-type: application/json", b"x-a: 1",
                                b"x-amz-date: 20260101t000000z"]
    assert sorted(plain) == [b"content-type: application/json", b"x-a: 1"]


def test_a_reused_connection_lost_long_after_the_request_went_out_is_not_resent():
    """The keep-alive race shows at once: the server had closed before the request came.
    A connection lost later, after the request had been out a while (a server that died
    on it, a proxy that cut a silent connection), means the request may have been taken
    and worked on: a POST is not sent again by the client (aiohttp resends only
    idempotent methods); the caller, which retries with backoff and health, decides."""
    async def handler(r, w, n):
        if len(srv_box[0].requests) == 1:
            w.write(ok(b"warm"))
            return
        await asyncio.sleep(1.2)  # working on it...
        w.close()  # ...and gone, no answer

    srv_box: list[Server] = []

    async def main():
        async with Server(handler) as srv:
            srv_box.append(srv)
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            try:
                assert await (await pool.post("/", b"")).read() == b"warm"
                with pytest.raises(ServerDisconnectedError):
                    await asyncio.wait_for(pool.post("/", b""), 5)
            finally:
                await pool.close()
            return len(srv.requests)

    assert run(main()) == 2


def test_a_body_until_the_close_cut_by_a_reset_is_an_error_not_its_end():
    """Read until the close, a body ends at the server's orderly close (FIN); a reset
    (RST: the server crashed, a proxy gave up) is not that end but a loss mid-answer."""
    import socket
    import struct

    async def handler(r, w, n):
        w.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"part of it")
        await w.drain()
        await asyncio.sleep(0.1)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # with linger 0: a reset

    async def main():
        async with Server(handler) as srv:
            pool = HTTPPool(f"http://127.0.0.1:{srv.port}")
            resp = await pool.post("/", b"")
            try:
                assert await resp.content.readany() == b"part of it"
                with pytest.raises(ClientPayloadError):
                    await resp.content.readany()
            finally:
                resp.release()
                await pool.close()

    run(main())
