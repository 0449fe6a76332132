"""JupyterLab in a real browser, for tests/test_browser.py: a throwaway server, Debian's Chromium, a notebook page.

Playwright for Python drives the `chromium` of the system (Debian's package, `make
browser`); it never downloads a browser of its own. The server is started with
an environment built from scratch: its settings, runtime files, kernels' IPython
and matplotlib folders, and the copy of the notebooks it serves are all under
the test's tmp folder, so nothing of the user's Jupyter set-up leaks in and
nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in containers, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Set by CI: a missing browser fails the browser tests instead of skipping them.
REQUIRE_BROWSER = "IMAGESEARCH_REQUIRE_BROWSER"
INSTALL_HINT = (
    "install Debian's chromium with `make browser` (as root it runs `apt-get install -y chromium`) "
    "and playwright with `make install`"
)
SERVER_START_SECONDS = 120
KERNEL_READY_SECONDS = 180

#: The status bar's kernel item reads "Python 3 (ipykernel) | Idle" once the kernel has started and is idle.
#: Not the toolbar's execution indicator, which says idle before the kernel exists.
KERNEL_IDLE_JS = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]
    .some(e => /\\| Idle$/.test(e.textContent.trim()) && !e.textContent.trim().startsWith('No Kernel'))"""

#: Run All is over when the first code cell has a count, no cell waits or runs ("[*]:"), and the kernel is idle.
RUN_DONE_JS = f"""() => {{
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
      .map(e => e.textContent.trim());
  return prompts.length > 0 && /^\\[\\d+\\]:$/.test(prompts[0]) && !prompts.some(p => p.includes('*'))
      && ({KERNEL_IDLE_JS})();
}}"""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"playwright is not installed; {INSTALL_HINT}"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is absent; {INSTALL_HINT}"
    return None


def require_browser() -> None:
    """Skip the calling test when there is no browser, or fail it if IMAGESEARCH_REQUIRE_BROWSER=1 (CI)."""
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get(REQUIRE_BROWSER) == "1":
        pytest.fail(f"{REQUIRE_BROWSER}=1 but the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def tree_digest(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file under `folder`: enough to see that nothing wrote there."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab server."""

    base: str
    token: str
    root: Path  # the folder it serves: a copy of notebooks/
    runtime: Path  # its kernels' connection files
    log: Path

    def url(self, path: str) -> str:
        return f"{self.base}/{path}{'&' if '?' in path else '?'}token={self.token}"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.base}/api/{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """End every session and its kernel (a notebook's TensorFlow kernel holds about a gigabyte)."""
        for session in self.api("sessions"):
            self.api(f"sessions/{session['id']}", method="DELETE")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def lab_environment(workdir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The server's environment, from scratch: every folder Jupyter, IPython or matplotlib writes is in `workdir`.

    PYTHONPATH is the repository, so `import helpers` works from the copy of the
    notebooks (their `sys.path.insert(0, "..")` points into `workdir`).
    """
    home = workdir / "home"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "TMPDIR": str(workdir / "tmp"),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in the repository from this run
        "JUPYTER_PLATFORM_DIRS": "1",
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "lab-workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
    }
    env.update(extra)
    return env


def _write_lab_settings(settings: Path) -> None:
    """No news or update checks (no network), and every cell rendered (no windowing) so that all text is on the page."""
    for plugin, values in {
        "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@contextmanager
def jupyter_lab(workdir: Path, extra_env: dict[str, str]) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 serving a copy of notebooks/ (never the repository's), shut down even on failure."""
    root = workdir / "notebooks"
    shutil.copytree(REPO_ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    env = lab_environment(workdir, extra_env)
    for name in ("HOME", "TMPDIR"):
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    _write_lab_settings(Path(env["JUPYTERLAB_SETTINGS_DIR"]))
    port, token = free_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--expose-app-in-browser",  # window.jupyterapp: run commands, read the notebook model
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # not needed here; jupyter_lsp shells out to `npm prefix --global` at start
        "--ServerApp.jpserver_extensions={'jupyter_lsp': False, 'jupyter_server_terminals': False}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    lab = Lab(f"http://127.0.0.1:{port}", token, root, Path(env["JUPYTER_RUNTIME_DIR"]), workdir / "server.log")
    with open(lab.log, "wb") as log:
        server = subprocess.Popen(
            command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, to be ended as a whole if it will not stop
        )
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert server.poll() is None, f"jupyter lab exited with {server.returncode}:\n{lab.log_tail()}"
            with suppress(OSError):
                lab.api("status")
                break
            assert time.monotonic() < deadline, f"no answer after {SERVER_START_SECONDS} s:\n{lab.log_tail()}"
            time.sleep(0.25)
        yield lab
    finally:
        _stop(server, lab)
        print(f"JupyterLab's log: {lab.log}")


def _stop(server: subprocess.Popen, lab: Lab) -> None:
    """Shut the server down with its kernels: politely, then by signal, then every kernel it left by its pid."""
    with suppress(Exception):
        lab.api("shutdown", method="POST")  # shuts the kernels down too
        server.wait(timeout=30)
    if server.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server still shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    # Kernels run in sessions of their own: find any left over by their connection file, which is in our runtime folder.
    marker = str(lab.runtime).encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with suppress(OSError, ValueError):
            if marker in cmdline.read_bytes():
                os.kill(int(cmdline.parent.name), signal.SIGKILL)


@contextmanager
def chromium_page(workdir: Path, default_timeout_ms: int = 60_000):
    """A Playwright page in Debian's Chromium; a screenshot `last_page.png` in `workdir` at the end.

    Playwright gives the browser a throwaway profile in the system's temp folder and deletes it at the
    end (a profile in `workdir` would not do: Chromium's lock socket path must be short). Its home is in
    `workdir`, where crashpad writes.
    """
    from playwright.sync_api import sync_playwright

    home = workdir / "chromium-home"
    home.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, env={"PATH": "/usr/bin:/bin", "HOME": str(home)}
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(default_timeout_ms)
            page = context.new_page()
            page.errors_seen = []  # the browser console's errors and uncaught exceptions, for the record
            page.on("console", lambda message: message.type == "error" and page.errors_seen.append(
                f"{message.text} ({message.location.get('url')})"))
            page.on("pageerror", lambda error: page.errors_seen.append(f"uncaught: {error}"))
            try:
                yield page
            finally:
                with suppress(Exception):
                    page.screenshot(path=str(workdir / "last_page.png"), full_page=True)
                    print(f"the page at the end: {workdir / 'last_page.png'}")
        finally:
            browser.close()


class NotebookPage:
    """One notebook open in JupyterLab, driven through its commands and read through its model and its page."""

    def __init__(self, page, lab: Lab, name: str):
        self.page, self.lab, self.name = page, lab, name

    def open(self) -> NotebookPage:
        # ?reset: a fresh workspace, so no notebook opened earlier comes back with it (and starts a kernel)
        self.page.goto(self.lab.url(f"lab/tree/{self.name}?reset"))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell", timeout=KERNEL_READY_SECONDS * 1000)
        self.page.wait_for_function(KERNEL_IDLE_JS, timeout=KERNEL_READY_SECONDS * 1000)
        current = self.page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path")
        assert current == self.name, f"JupyterLab shows {current!r}, not {self.name!r}"
        return self

    def command(self, command_id: str, timeout_s: float, args: dict | None = None):
        """Execute a JupyterLab command and return what its promise gives, raced against a timeout.

        page.evaluate has no timeout of its own, so a command that never settles would hang the test.
        """
        return self.page.evaluate(
            """([id, args, ms]) => Promise.race([window.jupyterapp.commands.execute(id, args),
                new Promise((_, no) => setTimeout(() => no(new Error(`timeout after ${ms} ms: ${id}`)), ms))])""",
            [command_id, args or {}, int(timeout_s * 1000)],
        )

    def run_all(self, timeout_s: float) -> bool:
        """Clear every output (the committed notebooks hold stale ones), Run All, wait; False if a cell failed."""
        self.command("notebook:clear-all-cell-outputs", 60)
        self.page.wait_for_function(
            """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                     .every(e => e.textContent.trim() === '[ ]:')"""
        )
        result = self.command("notebook:run-all-cells", timeout_s)
        self.page.wait_for_function(RUN_DONE_JS, timeout=60_000)
        return result

    def cells(self) -> list[dict]:
        """Every code cell as the notebook model holds it: source, execution count and nbformat outputs."""
        return self.page.evaluate(
            """() => window.jupyterapp.shell.currentWidget.content.widgets
                .filter(c => c.model.type === 'code')
                .map(c => ({source: c.model.sharedModel.getSource(), count: c.model.executionCount,
                            outputs: c.model.outputs.toJSON()}))"""
        )

    def output_area_text(self) -> str:
        """What the output areas show as text, as a person reads it on the page."""
        return "\n".join(self.page.locator(".jp-Notebook .jp-OutputArea").all_inner_texts())

    def prompts(self) -> list[str]:
        return [p.strip() for p in self.page.locator(".jp-Notebook .jp-CodeCell .jp-InputPrompt").all_text_contents()]


def output_text(output: dict) -> str:
    """The text of one nbformat output: a stream's text, an error's traceback, a result's text/plain."""
    if output["output_type"] == "stream":
        return output["text"] if isinstance(output["text"], str) else "".join(output["text"])
    if output["output_type"] == "error":
        return "\n".join(output.get("traceback", []))
    plain = output.get("data", {}).get("text/plain", "")
    return plain if isinstance(plain, str) else "".join(plain)
