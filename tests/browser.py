"""A tiny headless-Chromium driver for page tests, speaking the DevTools protocol over a websocket
(websocket-client, pure Python): load a page, collect what went wrong (uncaught exceptions, console
errors, log errors, requests that leave the disk), evaluate JavaScript, take screenshots."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:", "chrome:", "devtools:")


def find_chromium() -> str | None:
    override = os.environ.get("CHROMIUM")
    if override and Path(override).exists():
        return override
    for path in CHROMIUM_CANDIDATES:
        if Path(path).exists():
            return path
    return shutil.which("chromium")


@dataclass
class PageLoad:
    """What happened while a page loaded: problems as readable strings, and every request URL."""

    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.exceptions + self.console_errors + self.log_errors

    @property
    def external_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]


class Chromium:
    """``with Chromium(path) as browser: load = browser.load(url)``; one page, one websocket."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000, timeout: float = 60.0):
        self.executable, self.width, self.height, self.timeout = executable, width, height, timeout
        self._profile = tempfile.mkdtemp(prefix="report-chromium-")
        self._process: subprocess.Popen | None = None
        self._socket = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    # --- process and connection ---------------------------------------------------------------
    def __enter__(self) -> "Chromium":
        import websocket  # websocket-client

        self._process = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
             f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._devtools_port()
        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not pages:
            raise RuntimeError("chromium started but opened no page target")
        self._socket = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                                   suppress_origin=True)
        for method in ("Runtime.enable", "Log.enable", "Page.enable", "Network.enable"):
            self.send(method)
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._socket is not None:
            self._socket.close()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_port(self) -> int:
        """Chromium writes the port it picked to <profile>/DevToolsActivePort."""
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self._process.returncode} before listening")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.05)
        raise RuntimeError(f"chromium did not open its DevTools port within {self.timeout:.0f} s")

    # --- protocol ---------------------------------------------------------------------------
    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message_id = self._next_id
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self._events.append(message)

    def _wait_for(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {self.timeout:.0f} s")
            message = json.loads(self._socket.recv())
            if "method" in message:
                self._events.append(message)

    def _drain(self, seconds: float) -> None:
        """Collect events for a little while after load (late script errors, deferred requests)."""
        self._socket.settimeout(0.05)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                try:
                    message = json.loads(self._socket.recv())
                except Exception:  # noqa: BLE001 - a receive timeout just means nothing new yet
                    continue
                if "method" in message:
                    self._events.append(message)
        finally:
            self._socket.settimeout(self.timeout)

    # --- what tests use ---------------------------------------------------------------------
    def load(self, url: str, settle_s: float = 0.5) -> PageLoad:
        """Navigate to ``url``, wait for the load event, and report what went wrong."""
        self._events.clear()
        self.send("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired")
        self._drain(settle_s)
        load = PageLoad()
        for event in self._events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or details.get("text", "")
                load.exceptions.append(f"uncaught: {text} (line {details.get('lineNumber')})")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
                load.console_errors.append(f"console.{params['type']}: {text}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                load.log_errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
            elif method == "Network.requestWillBeSent":
                load.requests.append(params.get("request", {}).get("url", ""))
        return load

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate({expression[:60]}...): {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path, *, full_page: bool = True, clip: dict[str, float] | None = None) -> Path:
        """PNG of the whole page (or the viewport, or a CSS-pixel ``clip``) written to ``path``."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        elif full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
                          captureBeyondViewport=True)
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
