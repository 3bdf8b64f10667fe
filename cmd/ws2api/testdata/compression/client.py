"""A compression client on Python's websockets (see
../../compression_clients_test.go).

Usage: python3 client.py <ws url> <mode>; mode "default" offers what
websockets offers (permessage-deflate; client_max_window_bits), "window10"
asks for server_max_window_bits=10, which the gateway must decline. Prints
one JSON line of what it saw.
"""
import asyncio
import json
import sys

import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory


async def main(url, mode):
    kwargs = {}
    if mode == "window10":
        kwargs["extensions"] = [ClientPerMessageDeflateFactory(server_max_window_bits=10)]
        kwargs["compression"] = None
    big = "MeterValues " * 25000
    want = ["hi", big, "binary:70000", "fragmented:" + "ab" * 3000]
    async with websockets.connect(url, max_size=2**22, **kwargs) as ws:
        out = {"negotiated": ws.response_headers.get("Sec-WebSocket-Extensions", "")}
        await ws.send("hi")
        await ws.send(big)
        await ws.send(bytes([7]) * 70000)
        await ws.send(["fragmented:", "ab" * 1500, "ab" * 1500])  # one message, three frames
        got = []
        for _ in want:
            m = await asyncio.wait_for(ws.recv(), 15)
            got.append("binary:%d" % len(m) if isinstance(m, bytes) else m)
        out["ok"] = got == want
        out["replies"] = len(got) if out["ok"] else [g[:40] + "… (%d)" % len(g) for g in got]
        print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2]))
