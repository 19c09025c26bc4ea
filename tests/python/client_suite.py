"""Python `websockets` (a client no one here wrote) against a running volley echo server.

Usage: python client_suite.py ws://127.0.0.1:PORT/
Exits non-zero on the first failure; prints one line per check.
"""
import asyncio
import sys

import websockets
from websockets.exceptions import ConnectionClosed

URL = sys.argv[1]


async def echo_sizes():
    async with websockets.connect(URL, max_size=None) as ws:
        for size in [0, 125, 126, 65535, 65536, 16 << 20]:
            data = bytes((i * 7) & 0xFF for i in range(min(size, 1 << 16))) * (size // (1 << 16) or 1)
            data = data[:size]
            await ws.send(data)
            assert await ws.recv() == data, f"binary {size}"
            text = ("é" * (size // 2)) + ("a" if size % 2 else "")
            await ws.send(text)
            assert await ws.recv() == text, f"text {size}"


async def fragmented():
    async with websockets.connect(URL) as ws:
        # An iterable is sent as one message in several frames.
        await ws.send(["frag", "ment", "ed ✓"])
        assert await ws.recv() == "fragmented ✓"
        await ws.send([b"\x00\x01", b"\x02"])
        assert await ws.recv() == b"\x00\x01\x02"


async def ping_pong():
    async with websockets.connect(URL) as ws:
        waiter = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(waiter, 5)
        assert latency >= 0


async def close_codes():
    async with websockets.connect(URL) as ws:
        await ws.close(code=4001, reason="py bye")
        assert ws.close_code == 4001, ws.close_code
    async with websockets.connect(URL) as ws:
        await ws.send("close-me")
        try:
            await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError("expected a close")
        except ConnectionClosed as e:
            assert e.rcvd is not None and e.rcvd.code == 4000, e


async def many_at_once():
    conns = await asyncio.gather(*[websockets.connect(URL) for _ in range(200)])
    await asyncio.gather(*[c.send(f"m{i}") for i, c in enumerate(conns)])
    got = await asyncio.gather(*[c.recv() for c in conns])
    assert got == [f"m{i}" for i in range(200)]
    await asyncio.gather(*[c.close() for c in conns])


async def main():
    checks = [echo_sizes, fragmented, ping_pong, close_codes, many_at_once]
    for check in checks:
        await asyncio.wait_for(check(), 60)
        print(f"python websockets: {check.__name__} ok", flush=True)


asyncio.run(main())
