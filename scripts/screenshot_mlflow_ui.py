"""Screenshots of the MLflow UI on an oasis-gen store, taken in headless Chromium (Debian's ``chromium``).

    .venv/bin/python scripts/screenshot_mlflow_ui.py                  # the project store mlruns/ -> docs/
    .venv/bin/python scripts/screenshot_mlflow_ui.py --store runs/x/mlruns --out-dir /tmp/shots

Starts ``mlflow server`` on the store (``oasis_gen.commands.ui``),
opens the newest VQ-VAE run as a user would and writes
``mlflow_ui.png`` (the run's metric charts) and ``mlflow_ui_artifacts.png`` (a logged picture). The browser is
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so nothing beyond Chromium itself and
the standard library is needed; ``tests/test_mlflow_ui.py`` uses the same driver.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oasis_gen.commands.ui import existing_store_uri, mlflow_ui
from oasis_gen.utils.errors import DataError, OasisGenError
from oasis_gen.utils.files import atomic_path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ROOT = Path(__file__).resolve().parents[1]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary: ``$CHROMIUM`` if set, else the first of the usual names on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


_TRAMPOLINE = ("import os, sys; a, b = int(sys.argv[1]), int(sys.argv[2]); os.dup2(a, 3); os.dup2(b, 4);"
               " os.close(a); os.close(b); os.execvp(sys.argv[3], sys.argv[3:])")


def _move_above(fd: int, lowest: int) -> int:
    """Renumber a file descriptor to one at least ``lowest``; return the new number."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """Chromium failed, or a page never showed what was waited for."""


class HeadlessChromium:
    """One headless Chromium tab driven over the DevTools protocol (JSON messages ending in NUL on fds 3 and 4)."""

    def __init__(self, binary: str, width: int = 1400, height: int = 900, timeout: float = 30.0):
        self.timeout = timeout
        self.responses: list[dict[str, Any]] = []  # Network.responseReceived of the current page
        self._profile = tempfile.TemporaryDirectory(prefix="oasis-gen-chromium-", ignore_cleanup_errors=True)
        self._next_id = 0
        self._buffer = b""
        to_browser, self._browser_in = os.pipe()
        self._browser_out, from_browser = os.pipe()
        # the child's ends move above 2..9 first, so mapping them onto 3 and 4 never overwrites one with the other
        to_browser, from_browser = (_move_above(fd, 20) for fd in (to_browser, from_browser))
        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                # no sandbox: it needs user namespaces that containers and root (CI) lack; the pages are our own
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
                "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--mute-audio", f"--window-size={width},{height}",
                "about:blank"]
        # the browser reads commands on fd 3 and writes answers on fd 4: a small Python trampoline maps our pipe
        # ends onto them and execs Chromium (preexec_fn would do it too, but is unsafe in a threaded process)
        self.process = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(to_browser), str(from_browser), *args],
                                        pass_fds=(to_browser, from_browser),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.send("Page.enable")
            self.send("Network.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      width=width, height=height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _write(self, message: dict) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._browser_in, data):]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._browser_out], [], [], left)
            if ready:
                chunk = os.read(self._browser_out, 1 << 20)
                if not chunk:
                    raise BrowserError(f"Chromium exited (code {self.process.poll()})")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            request["sessionId"] = session
        self._write(request)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error'].get('message')}")
                return message.get("result", {})
            if message.get("method") == "Network.responseReceived":
                self.responses.append(message["params"])

    def send(self, method: str, **params: Any) -> dict:
        """Send one DevTools command to the tab; return its result."""
        return self._call(method, params, self._session)

    # ------------------------------------------------------------------ what a user does
    def open(self, url: str) -> None:
        """Load a page afresh (also for a hash route of the page already open) and forget earlier responses."""
        self.send("Page.navigate", url="about:blank")
        self.responses.clear()
        error = self.send("Page.navigate", url=url).get("errorText")
        if error:
            raise BrowserError(f"{url}: {error}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value (``what`` names it in the error)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                shown = (self.evaluate("document.body ? document.body.innerText : ''") or "")[:1500]
                raise BrowserError(f"the page never showed {what}; it shows:\n{shown}")
            time.sleep(0.25)

    def wait_for_text(self, *texts: str, timeout: float | None = None) -> str:
        """Wait until the visible text of the page holds every one of texts; return that text."""
        wanted = json.dumps(list(texts))
        return self.wait_for(f"(() => {{ const t = document.body ? document.body.innerText : '';"
                             f" return {wanted}.every(w => t.includes(w)) ? t : ''; }})()",
                             " and ".join(repr(t) for t in texts), timeout)

    def click(self, selector: str) -> bool:
        """Click the first element that matches a CSS selector; whether there was one."""
        return bool(self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                                  f" if (e) e.click(); return !!e; }})()"))

    def click_text(self, selector: str, text: str) -> bool:
        """Click the first element that matches a CSS selector and shows exactly ``text``; whether there was one."""
        return bool(self.evaluate(f"(() => {{ const e = [...document.querySelectorAll({json.dumps(selector)})]"
                                  f".find(e => e.innerText.trim() === {json.dumps(text)});"
                                  f" if (e) e.click(); return !!e; }})()"))

    def type_into(self, selector: str, text: str) -> None:
        """Replace the text of an input field as a user does: focus it, select what it holds, type over it."""
        if not self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                             f" if (e) {{ e.focus(); e.select(); }} return !!e; }})()"):
            raise BrowserError(f"no input field {selector}")
        if text:
            self.send("Input.insertText", text=text)
        else:
            for kind in ("keyDown", "keyUp"):
                self.send("Input.dispatchKeyEvent", type=kind, key="Backspace", code="Backspace",
                          windowsVirtualKeyCode=8)
        self.wait_for(f"document.querySelector({json.dumps(selector)}).value === {json.dumps(text)}",
                      f"{text!r} in {selector}")

    def screenshot(self, path: str | Path) -> Path:
        """Write what the tab shows as a PNG."""
        data = base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)

    def close(self) -> None:
        """Quit Chromium (it quits when its pipe closes), end what is left of its processes, remove its profile."""
        for fd in (self._browser_in, self._browser_out):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its own process group: renderers, GPU and zygote helpers
        self.process.wait()
        self._profile.cleanup()

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- MLflow pages
MODEL_TRAINING = "workflowType=machine_learning"  # the UI's switch between its GenAI and model-training views
ASSISTANT_CLOSE = '[data-component-id="mlflow.assistant.chat_panel.close"]'
CHART_SEARCH = 'input[placeholder="Search metric charts"]'
CHART = ".js-plotly-plot"


def run_url(url: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page: its overview, or a tab (``model-metrics``, ``artifacts/<path>``)."""
    return f"{url}/#/experiments/{experiment_id}/runs/{run_id}{'/' + tab if tab else ''}?{MODEL_TRAINING}"


def close_assistant(browser: HeadlessChromium, wait: float = 1.0) -> bool:
    """Close MLflow's assistant panel, which opens by itself, with the page, on a browser's first visit; return
    whether it was open (it shows up within ``wait`` seconds of the page's content, if at all)."""
    deadline = time.monotonic() + wait
    while not browser.click(ASSISTANT_CLOSE):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    browser.wait_for(f"!document.querySelector({json.dumps(ASSISTANT_CLOSE)})", "the assistant panel closed")
    return True


def picture_shown(browser: HeadlessChromium, alt: str) -> tuple[int, int]:
    """Wait until the page shows a decoded picture with this alt text; return its width and height in pixels."""
    size = browser.wait_for(f"(() => {{ const i = [...document.images].find(i => i.alt === {json.dumps(alt)});"
                            f" return i && i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight] : null;"
                            f" }})()", f"the picture {alt}")
    return int(size[0]), int(size[1])


def show_metric_charts(browser: HeadlessChromium, url: str, experiment_id: str, run_id: str,
                       metrics: Sequence[str], search: str = "", cards: int = 0) -> int:
    """Open a run's metric charts with ``search`` in their search box, and wait until the charts of ``metrics`` (the
    run's metrics that match it) are drawn; return how many charts the page drew. ``cards``: other cards the page
    counts among them (images logged with a step have one each)."""
    browser.open(run_url(url, experiment_id, run_id, "model-metrics"))
    browser.wait_for(f"!!document.querySelector({json.dumps(CHART_SEARCH)})", "the chart search box")
    browser.type_into(CHART_SEARCH, search)  # the UI keeps the last search of an experiment: replace it
    counted = f"Model metrics ({len(metrics) + cards})"
    browser.wait_for(f"(() => {{ const t = document.body.innerText.replace(/\\s+/g, ' ');"
                     f" return t.includes({json.dumps(counted)})"
                     f" && {json.dumps(list(metrics)[:6])}.every(m => t.includes(m)); }})()",  # the first six, by name
                     f"{counted} and their names")
    # the page draws the charts in view (six at most), and only those
    return browser.wait_for(f"(() => {{ const n = document.querySelectorAll({json.dumps(CHART)}).length;"
                            f" return n >= {min(len(metrics), 6)} ? n : 0; }})()", f"the charts of {list(metrics)}")


def tidy_for_screenshot(browser: HeadlessChromium) -> None:
    """Close the assistant panel, leave the search box and hide the chart toolbars (a user sees them on hover)."""
    closed = close_assistant(browser)
    browser.evaluate("document.activeElement && document.activeElement.blur()")
    browser.evaluate("(() => { const s = document.createElement('style');"
                     " s.textContent = '.modebar-container { display: none !important; }';"
                     " document.head.appendChild(s); })()")
    time.sleep(1.0 if closed else 0.2)  # the charts re-lay out to the width the closed panel freed


def take_screenshots(browser: HeadlessChromium, url: str, run: Any, picture: str | None, out_dir: str | Path,
                     search: str = "val_", cards: int = 1) -> list[Path]:
    """Write ``mlflow_ui.png`` (a run's metric charts) and ``mlflow_ui_artifacts.png`` (one of its pictures).
    ``cards``: images the run logged with a step (each has a card among the metric charts)."""
    experiment_id, run_id = run.info.experiment_id, run.info.run_id
    out = Path(out_dir)
    matching = sorted(name for name in run.data.metrics if search in name)
    if not matching:
        search, matching = "", sorted(run.data.metrics)
    show_metric_charts(browser, url, experiment_id, run_id, matching, search, cards)
    tidy_for_screenshot(browser)
    written = [browser.screenshot(out / "mlflow_ui.png")]
    if picture:
        browser.open(run_url(url, experiment_id, run_id, f"artifacts/{picture}"))
        picture_shown(browser, picture)
        tidy_for_screenshot(browser)
        written.append(browser.screenshot(out / "mlflow_ui_artifacts.png"))
    return written


def newest_run(tracking_uri: str, experiment_name: str, stage: str) -> Any:
    """The newest finished run of a stage (its ``stage`` tag) in an experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise DataError(tracking_uri, f"no experiment named {experiment_name!r}")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.stage = '{stage}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise DataError(tracking_uri, f"experiment {experiment_name!r} has no finished {stage} run")
    return runs[0]


def logged_pictures(tracking_uri: str, run_id: str, folder: str | None = None) -> list[str]:
    """The paths of every PNG a run logged, sorted."""
    from mlflow import MlflowClient

    found: list[str] = []
    for item in MlflowClient(tracking_uri).list_artifacts(run_id, folder):
        if item.is_dir:
            found += logged_pictures(tracking_uri, run_id, item.path)
        elif item.path.endswith(".png"):
            found.append(item.path)
    return sorted(found)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the README's screenshots of the MLflow UI."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default=str(ROOT / "mlruns"), help="MLflow store (default: the project's mlruns)")
    parser.add_argument("--experiment", default="oasis-gen", help="experiment name (default oasis-gen)")
    parser.add_argument("--stage", default="vqvae", help="show the newest run of this stage (default vqvae)")
    parser.add_argument("--search", default="val_", help="show the charts of the metrics whose name holds this "
                                                         "(default val_)")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"), help="where the PNGs go (default docs/)")
    parser.add_argument("--size", default="1400x1000", help="window size WIDTHxHEIGHT (default 1400x1000)")
    args = parser.parse_args(argv)
    binary = find_chromium()
    if not binary:
        raise SystemExit("Chromium not found: install it (apt-get install chromium) or set $CHROMIUM")
    width, height = (int(v) for v in args.size.lower().split("x"))
    try:
        uri = existing_store_uri(args.store)
        run = newest_run(uri, args.experiment, args.stage)
    except OasisGenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    pictures = logged_pictures(uri, run.info.run_id)
    log = Path(tempfile.gettempdir()) / "oasis-gen-screenshot-mlflow.log"
    with mlflow_ui(uri, log_path=log) as url, HeadlessChromium(binary, width, height, timeout=90) as browser:
        for path in take_screenshots(browser, url, run, pictures[-1] if pictures else None, args.out_dir,
                                     args.search):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
