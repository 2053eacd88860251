"""Open an HTML file in headless Chromium as a person would, through the DevTools protocol.

`open_page` reports the console errors and uncaught exceptions the page raised, whether every image
loaded, the page's visible text, and saves a screenshot. Used by tests/test_report.py; run as a
script it writes a screenshot (the one in docs/ is made so):

    python tests/browser.py report.html docs/report_digits.png
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-extensions", "--hide-scrollbars", "--remote-debugging-port=0"]
IMAGES_LOADED = "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"


def chromium() -> str | None:
    """The Chromium executable, or None when there is none."""
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if (found := shutil.which(name))), None)


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)
    images: int = 0
    images_loaded: bool = False
    text: str = ""
    screenshot: Path | None = None


class _DevTools:
    """One page target's websocket: commands by id, events kept as they come."""

    def __init__(self, url: str):
        import websocket

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {seconds} s")
            self.events.append(json.loads(self.socket.recv()))

    def close(self) -> None:
        self.socket.close()


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}".strip())
    return found


def open_page(page: Path, screenshot: Path, width: int = 1280, max_height: int = 12000) -> PageCheck:
    """Load `page` from disk in a fresh headless Chromium and check it; the screenshot is the whole page."""
    executable = chromium()
    if executable is None:
        raise FileNotFoundError("chromium is not installed")
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return _check(Path(profile), Path(page).resolve(), Path(screenshot), width, max_height)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _port(profile: Path, seconds: float = 60) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium wrote no DevToolsActivePort within {seconds} s")


def _check(profile: Path, page: Path, screenshot: Path, width: int, max_height: int) -> PageCheck:
    port = _port(profile)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
        targets = json.loads(answer.read())
    target = next(t for t in targets if t.get("type") == "page")
    tools = _DevTools(target["webSocketDebuggerUrl"])
    try:
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        tools.events.clear()
        tools.call("Page.navigate", url=page.as_uri())
        tools.wait_for("Page.loadEventFired")
        value = lambda expression: tools.call("Runtime.evaluate", expression=expression,  # noqa: E731
                                              returnByValue=True)["result"].get("value")
        check = PageCheck(images=value("document.images.length"), images_loaded=bool(value(IMAGES_LOADED)),
                          text=value("document.body.innerText"))
        height = min(max_height, int(value("document.documentElement.scrollHeight")))
        tools.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                   mobile=False)
        import base64

        shot = tools.call("Page.captureScreenshot", format="png")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        check.screenshot = screenshot
        time.sleep(0.2)  # late console messages
        tools.call("Runtime.evaluate", expression="0")
        check.errors = _errors(tools.events)
        return check
    finally:
        tools.close()


if __name__ == "__main__":
    result = open_page(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{result.images} images, all loaded: {result.images_loaded}; errors: {result.errors or 'none'}; "
          f"screenshot: {result.screenshot}")
    sys.exit(1 if result.errors or not result.images_loaded else 0)
