"""Load an HTML page in headless Chromium and report what a reader would see.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages separated by NUL bytes on file descriptors 3 and 4), which needs no port, no
websocket library and no browser download (Playwright and Selenium bring their own
browser or driver). The page itself runs no JavaScript: only this harness evaluates
expressions in it, to ask whether every <img> decoded.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # running as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "--window-size=1280,1024",
]
IMAGES = "JSON.stringify(Array.from(document.images, i => [i.alt, i.complete, i.naturalWidth]))"


def chromium() -> str | None:
    """Path of the chromium binary, or None when it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageCheck:
    images: list[tuple[str, bool, int]]  # (alt, complete, natural width) of every <img>
    errors: list[str]  # console messages of level error, uncaught exceptions
    requests: list[str]  # every URL the page asked for, data: URLs left out
    screenshot: bytes  # full-page PNG
    text: str = field(default="")  # document.body.innerText


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int, timeout: float) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.deadline = time.monotonic() + timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message())


def _errors(events: list[dict]) -> list[str]:
    found = []
    for event in events:
        params = event.get("params", {})
        if event.get("method") == "Runtime.exceptionThrown":
            found.append(params["exceptionDetails"].get("text", "exception"))
        elif event.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(params["entry"]["text"])
        elif event.get("method") == "Runtime.consoleAPICalled" and params["type"] == "error":
            found.append(str(params["args"]))
    return found


def check_page(path: Path, timeout: float = 60.0) -> PageCheck:
    """Open `path` (file://) in headless Chromium; images, errors, requests, screenshot."""
    to_chrome, from_chrome = os.pipe(), os.pipe()

    def child_fds() -> None:  # Chromium reads commands on fd 3 and writes on fd 4
        # copies above 10 first, so that neither end already sits on 3 or 4; dup2 then
        # makes 3 and 4 inheritable, and close_fds=False lets them through exec
        read_end = fcntl.fcntl(to_chrome[0], fcntl.F_DUPFD_CLOEXEC, 10)
        write_end = fcntl.fcntl(from_chrome[1], fcntl.F_DUPFD_CLOEXEC, 10)
        os.dup2(read_end, 3)
        os.dup2(write_end, 4)

    # Chromium's helper processes may still write to the profile as the browser exits
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # dbus noise of a container without a session bus
            preexec_fn=child_fds,
            close_fds=False,  # Python's own descriptors are close-on-exec anyway (PEP 446)
        )
        os.close(to_chrome[0])
        os.close(from_chrome[1])
        pipe = _Pipe(to_chrome[1], from_chrome[0], timeout)
        try:
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.call(f"{domain}.enable", session)
            pipe.call("Page.navigate", session, url=Path(path).resolve().as_uri())
            pipe.wait_for("Page.loadEventFired")
            images = pipe.call("Runtime.evaluate", session, expression=IMAGES)["result"]["value"]
            text = pipe.call("Runtime.evaluate", session, expression="document.body.innerText")
            size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = pipe.call(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip=clip,
            )
            pipe.call("Browser.close")
        finally:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            os.close(to_chrome[1])
            os.close(from_chrome[0])
    urls = [
        e["params"]["request"]["url"]
        for e in pipe.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    requests = [url for url in urls if not url.startswith("data:")]
    return PageCheck(
        images=[tuple(i) for i in json.loads(images)],
        errors=_errors(pipe.events),
        requests=requests,
        screenshot=base64.b64decode(shot["data"]),
        text=text["result"]["value"],
    )
