"""Redis commands packed into the wire protocol (RESP) by hiredis, in C.

redis-py's synchronous client packs commands with hiredis when it is installed; its asyncio client
(5.x) always packs them in Python, argument by argument. An ingest batch is one command of about
nine arguments per delivery, and a worker sends dozens of commands per delivery: packing was 6 %
of `serve`'s CPU (bench/results/profile/serve.txt). hiredis does the same in about a sixth of the
time (6.4 against 1.1 us per delivery of a 30-delivery batch, measured in this repo).
`packed_by_hiredis(cls)` is the connection class `cls` with redis-py's own hiredis packer; the
bytes sent are the same.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer

_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def packed_by_hiredis(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """`connection_class` (TCP, TLS or Unix socket) packing its commands with hiredis."""
    if connection_class in _PACKED:
        return _PACKED[connection_class]
    serializer = HiredisRespSerializer()

    class Packed(connection_class):  # type: ignore[valid-type,misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            packed: list[bytes] = serializer.pack(*args)
            return packed

    Packed.__name__ = Packed.__qualname__ = f"Hiredis{connection_class.__name__}"
    _PACKED[connection_class] = Packed
    return Packed
