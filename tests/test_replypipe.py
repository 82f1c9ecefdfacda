"""ReplyPipe (bridge/queue/replypipe.py): pipelined commands over a connection of the client's pool,
their replies handed to a callback from the read callback, on a real Valkey."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import hiredis
import pytest
import uvloop
from redis.asyncio import Redis

from bridge.queue import keys
from bridge.queue.replypipe import ReplyPipe
from tests.servers import until


class Outcomes:
    """What the `done` callbacks got, in the order they were called."""

    def __init__(self) -> None:
        self.got: list[tuple[str, list[Any] | Exception]] = []

    def done(self, name: str) -> Any:
        return lambda outcome: self.got.append((name, outcome))

    async def count(self, n: int) -> None:
        await until(lambda: len(self.got) >= n, timeout_s=5)


async def test_pipelined_exchanges_get_their_own_replies_in_order(redis_client: Redis) -> None:
    await redis_client.set("text", "not a number")
    pipe = await ReplyPipe.open(redis_client)
    outcomes = Outcomes()
    pipe.send(
        [hiredis.pack_command(("SET", "a", "1")), hiredis.pack_command(("INCR", "a"))], outcomes.done("first")
    )
    pipe.send([hiredis.pack_command(("INCR", "text"))], outcomes.done("second"))
    assert pipe.in_flight == 2
    await outcomes.count(2)
    (first, replies), (second, errors) = outcomes.got
    assert (first, replies) == ("first", [b"OK", 2])
    assert second == "second"
    assert isinstance(errors, list)
    assert isinstance(errors[0], hiredis.ReplyError)  # a server error is a reply, not the end
    assert not pipe.closed
    assert pipe.in_flight == 0
    await pipe.give_back()
    assert pipe.closed


async def test_a_lost_connection_fails_what_is_in_flight_once(redis_client: Redis) -> None:
    pipe = await ReplyPipe.open(redis_client)
    outcomes = Outcomes()
    pipe.send([hiredis.pack_command(("BLPOP", "never", 0))], outcomes.done("blocked"))
    await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    await outcomes.count(1)
    assert outcomes.got[0][0] == "blocked"
    assert isinstance(outcomes.got[0][1], ConnectionError)
    assert pipe.closed
    pipe.send([hiredis.pack_command(("PING",))], outcomes.done("after"))  # answered at once
    assert isinstance(outcomes.got[1][1], ConnectionError)
    assert len(outcomes.got) == 2
    await pipe.give_back()


async def test_no_reply_within_the_socket_timeout_fails_the_connection(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=0.2)
    try:
        pipe = await ReplyPipe.open(client)
        outcomes = Outcomes()
        pipe.send([hiredis.pack_command(("BLPOP", "never", 0))], outcomes.done("blocked"))
        pipe.send([hiredis.pack_command(("PING",))], outcomes.done("behind it"))
        await outcomes.count(2)
        assert [name for name, _ in outcomes.got] == ["blocked", "behind it"]
        assert all(isinstance(outcome, TimeoutError) for _, outcome in outcomes.got)
        assert pipe.closed
        await pipe.give_back()
    finally:
        await client.aclose()


# -- over TLS (rediss://), on asyncio's loop and on uvloop (which `serve` runs on) ----------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here (cryptography is a dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def _accept_over_tls(valkey_socket: str, cert_file: Path, key_file: Path) -> list[Any]:
    """A TLS front for the Valkey server's Unix socket (it has no TLS of its own), and 40
    deliveries accepted through it; what is stored is read back over the plain socket."""
    from bridge.queue.ingest import Accepter, Incoming

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(valkey_socket)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer), return_exceptions=True)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    front = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    port = front.sockets[0].getsockname()[1]
    client = Redis.from_url(f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=str(cert_file), socket_timeout=5)
    plain = Redis.from_url(f"unix://{valkey_socket}")
    try:
        accepter = Accepter(client, dedupe_window_s=60, retention_s=120)
        events = [Incoming("m", "none", f"tls-{i}", b'{"a": 1}', {}) for i in range(40)]
        async with asyncio.timeout(10):
            accepted = await asyncio.gather(*(accepter.accept(event) for event in events))
            stored = [await plain.hget(keys.delivery(a.delivery_id), "event_id") for a in accepted]
            await client.aclose()  # closes the ingest connection too, without waiting
        return stored
    finally:
        await plain.aclose()
        front.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_accepts_over_tls(valkey_server: Any, redis_url: str, tmp_path: Path, loop: str) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    valkey_socket = redis_url.removeprefix("unix://")
    run = asyncio.run if loop == "asyncio" else uvloop.run
    stored = run(_accept_over_tls(valkey_socket, cert_file, key_file))
    assert stored == [f"tls-{i}".encode() for i in range(40)]
