"""A real browser for the tests: Debian's headless Chromium, driven over the DevTools protocol.

`Chromium.visit(url)` loads a page the way a person's browser does (HTML parsed, CSS applied,
laid out, painted) and returns the text it shows (`document.body.innerText`) and a PNG
screenshot. `make system-deps` installs the `chromium` package; without it the tests that need
it fail and say so.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streams.infra.process import ManagedProcess, wait_until

WIDTH, HEIGHT = 1280, 1000


@dataclass
class Visit:
    text: str  # what the page shows, as the browser renders it
    png: bytes  # the screenshot
    images: int  # <img> elements on the page
    broken_images: int  # of which the browser could not load or decode
    scroll_width: int = 0  # the document's full width (document.documentElement.scrollWidth), CSS pixels
    viewport_width: int = 0  # the width the window shows (document.documentElement.clientWidth): a wider
    # scroll_width means the page scrolls sideways
    tables: int = 0  # <table> elements on the page


class Chromium:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise RuntimeError("chromium is not installed: run `make system-deps` (Debian's chromium package)")
        self.profile = workdir / "chromium-profile"
        self.process = ManagedProcess(
            "chromium", [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                         f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                         f"--window-size={WIDTH},{HEIGHT}", "about:blank"], workdir / "chromium.log").start()
        active = self.profile / "DevToolsActivePort"
        try:
            wait_until(lambda: active.is_file() and len(active.read_text().split()) == 2, 60,
                       "headless Chromium opens its DevTools port", self.process)
        except BaseException:
            self.close()
            raise
        self.port = int(active.read_text().split()[0])
        self._ids = itertools.count(1)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.process.stop()  # its whole process group: the wrapper script and the browser it started

    def visit(self, url: str, timeout_s: float = 60) -> Visit:
        """Open `url` in a new tab, wait for its load event, read the rendered text, take a screenshot."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            target = json.load(r)
        try:
            return asyncio.run(asyncio.wait_for(self._visit(target["webSocketDebuggerUrl"], url), timeout_s))
        finally:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=10):
                pass

    async def _visit(self, ws_url: str, url: str) -> Visit:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            async def call(method: str, **params: object) -> dict:
                n = next(self._ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == n:
                        if "error" in data:
                            raise RuntimeError(f"Chromium: {method}: {data['error']}")
                        return data["result"]
                    if data.get("method") == "Page.loadEventFired":
                        self._loaded = True
                raise RuntimeError("Chromium closed the DevTools connection")

            self._loaded = False
            await call("Page.enable")
            nav = await call("Page.navigate", url=url)
            if nav.get("errorText"):
                raise RuntimeError(f"Chromium could not load {url}: {nav['errorText']}")
            while not self._loaded:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise RuntimeError(f"Chromium closed the DevTools connection while loading {url}")
                self._loaded = json.loads(msg.data).get("method") == "Page.loadEventFired"
            expression = ("[document.body.innerText, document.images.length, "
                          "[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length, "
                          "document.documentElement.scrollWidth, document.documentElement.clientWidth, "
                          "document.getElementsByTagName('table').length]")
            seen = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            shot = await call("Page.captureScreenshot", format="png")
        text, images, broken, scroll_width, viewport_width, tables = seen["result"]["value"]
        return Visit(text, base64.b64decode(shot["data"]), images, broken, scroll_width, viewport_width, tables)
