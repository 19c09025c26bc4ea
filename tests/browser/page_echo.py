"""Drives headless Chromium (Debian's) against volley's page over the DevTools protocol:
the page's own script connects back with the browser's WebSocket API, a message is typed
and sent, and its echo must appear in the page's log.

Usage: python page_echo.py http://127.0.0.1:PORT/ SCREENSHOT.png
Exits non-zero with the reason on failure.
"""
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

PAGE, SHOT = sys.argv[1], sys.argv[2]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def main():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise SystemExit("chromium not found (apt-get install chromium)")
    port = free_port()
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                page = next(t for t in targets if t["type"] == "page")
                break
            except Exception:
                if time.time() > deadline:
                    raise SystemExit("chromium did not start its DevTools endpoint")
                await asyncio.sleep(0.2)
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as cdp:
            seq = 0

            async def call(method, **params):
                nonlocal seq
                seq += 1
                await cdp.send(json.dumps({"id": seq, "method": method, "params": params}))
                while True:
                    msg = json.loads(await cdp.recv())
                    if msg.get("id") == seq:
                        if "error" in msg:
                            raise SystemExit(f"{method}: {msg['error']}")
                        return msg["result"]

            async def js(expr):
                r = await call("Runtime.evaluate", expression=expr, returnByValue=True)
                return r["result"].get("value")

            async def wait_for(expr, what, timeout=10):
                end = time.time() + timeout
                while not await js(expr):
                    if time.time() > end:
                        log = await js("document.getElementById('log') && document.getElementById('log').innerText")
                        raise SystemExit(f"timed out waiting for {what}; page log: {log!r}")
                    await asyncio.sleep(0.1)

            await call("Page.enable")
            await call("Page.navigate", url=PAGE)
            await wait_for("document.getElementById('status') && document.getElementById('status').textContent === 'open'",
                           "the page's WebSocket to open")
            # The server runs with --deflate: Chromium offers permessage-deflate and the page's
            # socket must have agreed to it (ws.extensions is what the server answered).
            ext = await js("ws.extensions")
            print(f"browser: ws.extensions = {ext!r}")
            if not (ext or "").startswith("permessage-deflate"):
                raise SystemExit(f"permessage-deflate was not agreed: ws.extensions = {ext!r}")
            # The last one is long enough (over the 64-byte threshold) to be compressed both ways.
            long = "compress me, " * 20 + "done"
            for text in ["hello from chromium", "κόσμε ✓", long]:
                await js(f"document.getElementById('msg').value = {json.dumps(text)};"
                         "document.getElementById('f').requestSubmit(); true")
                await wait_for(f"document.getElementById('log').innerText.includes({json.dumps('< ' + text)})",
                               f"the echo of {text!r}")
            shot = await call("Page.captureScreenshot", format="png")
            with open(SHOT, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print("browser: page connected, sent and got its echoes")
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


asyncio.run(main())
