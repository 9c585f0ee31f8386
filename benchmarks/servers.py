"""The servers the benchmarks send to, each started on a free loopback port and stopped after.

- `simulator()`: our own provider simulator (`sms-blaster mock-provider`), for throttling, and
  for counting arrivals the way a provider would.
- `nginx()`: Debian's nginx answering a fixed Vonage success body, so the server costs almost
  nothing; under `/slow` the echo module answers after a fixed sleep (when the module is there).
  `run_nginx()` runs it with any `http` block (a proxy in front of receivers, a bare 204).
- `receiver()`: `sms-blaster receive`; `naive_receiver()`: the process-then-answer handler.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent / "sms-blaster"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


@dataclass(frozen=True, slots=True)
class Cli:
    """How to start sms-blaster: the installed script, or another checkout's package."""

    program: tuple[str, ...] = (str(BIN),)
    env: Mapping[str, str] | None = None  # None: this process's environment
    cwd: Path | None = None

    @classmethod
    def checkout(cls, folder: Path, python: str = sys.executable) -> Cli:
        """`python -m sms_blaster` on the package in `folder`, whatever its module layout.

        `folder` is also the working directory: `-m` puts the working directory first on the
        import path, ahead of PYTHONPATH and of the package installed in the interpreter."""
        env = {**os.environ, "PYTHONPATH": str(folder)}
        return cls((python, "-m", "sms_blaster"), env, folder)

    def argv(self, *args: str) -> list[str]:
        return [*self.program, *args]


INSTALLED = Cli()

# What Vonage answers for an accepted single-part message, without the `to` a real answer names:
# one fixed answer serves every row, and sms-blaster reads an answer naming another number than
# the request's as a stray (`unknown`), never `sent`; an answer naming none is not checked.
VONAGE_OK = (
    '{"message-count":"1","messages":[{"message-id":"0A0000000123ABCD1",'
    '"status":"0","remaining-balance":"3.14159265","message-price":"0.03330000",'
    '"network":"23410"}]}'
)


@dataclass(frozen=True, slots=True)
class Simulator:
    url: str

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_simulator/reset", b"", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stats(self) -> dict[str, object]:
        with urllib.request.urlopen(self.url + "/_simulator/stats", timeout=10) as answer:
            data: dict[str, object] = json.load(answer)
            return data


@contextlib.contextmanager
def simulator(*options: str, cli: Cli = INSTALLED) -> Iterator[Simulator]:
    """`sms-blaster mock-provider` in its own process, keeping no messages (only counts)."""
    with tempfile.TemporaryDirectory() as folder:
        url_file = Path(folder) / "url"
        argv = cli.argv("mock-provider", "--port", "0", "--port-file", str(url_file))
        log = Path(folder) / "stderr"
        with log.open("wb") as err:
            process = subprocess.Popen(
                [*argv, "--no-keep-messages", *options], stderr=err, env=cli.env, cwd=cli.cwd
            )
        try:
            yield Simulator(listening("the simulator", process, url_file, 10, log))
        finally:
            # An idle simulator on uvloop has been seen to take longer than this over SIGTERM.
            stop(process, timeout_s=10)


def listening(
    name: str, process: subprocess.Popen[bytes], url_file: Path, timeout_s: float, log: Path
) -> str:
    """The URL that `process` writes to `url_file` once it listens; RuntimeError with the end
    of its stderr (`log`) when it exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not url_file.exists() or not url_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return url_file.read_text().strip()


def stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (our servers drain and exit; nginx shuts down fast), SIGKILL after `timeout_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_main_config(folder: Path, http: str, modules: str = "", connections: int = 1024) -> str:
    """A self-contained config around `http` (the inside of its http block): pid, logs and temp
    files in `folder`, one worker of `connections` connections, no access log unless `http`
    names one."""
    # A master started as root drops its workers to `nobody`; keep them as the current user,
    # who owns the temp folder. As any other user the directive only draws a warning.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{modules}
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile {connections + 64};
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 10000000;
{http}
}}
"""


def nginx_config(folder: Path, port: int, echo: bool, slow_s: float, connections: int) -> str:
    slow = (
        f"location = /slow/sms/json {{ default_type application/json; "
        f"echo_sleep {slow_s}; echo -n '{VONAGE_OK}'; }}"
        if echo
        else ""
    )
    server = f"""
    server {{
        listen 127.0.0.1:{port};
        location = /sms/json {{ default_type application/json; return 200 '{VONAGE_OK}'; }}
        {slow}
    }}"""
    modules = f"load_module {ECHO_MODULE};" if echo else ""
    return nginx_main_config(folder, server, modules, connections)


@dataclass(frozen=True, slots=True)
class Nginx:
    url: str  # fixed answer at once: POST {url}/sms/json
    slow_url: str | None  # the same answer after the sleep, when the echo module is there


@contextlib.contextmanager
def nginx(slow_s: float = 0.05, connections: int = 1024) -> Iterator[Nginx]:
    """Debian's nginx in the foreground with its own config, on a free port, taking up to
    `connections` connections at once; stopped after."""
    echo = ECHO_MODULE.exists()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as name:
        folder = Path(name)
        port = free_port()
        with run_nginx(folder, nginx_config(folder, port, echo, slow_s, connections), port) as url:
            yield Nginx(url, url + "/slow" if echo else None)


@contextlib.contextmanager
def run_nginx(folder: Path, config_text: str, port: int) -> Iterator[str]:
    """nginx in the foreground on `config_text`, which listens on `port`; stopped after."""
    config = folder / "nginx.conf"
    config.write_text(config_text)
    argv = [NGINX, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "error.log").read_text() if (folder / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {log.strip()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process, timeout_s=10)


@dataclass(frozen=True, slots=True)
class Served:
    """A server process of ours and the URL it listens on."""

    url: str
    process: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


REPO = Path(__file__).parent.parent


def python_path() -> str:
    """The repository root (for --hook benchmarks.receipt_hooks:…), after any PYTHONPATH given:
    `PYTHONPATH=/tmp/snapshot python -m benchmarks.run` measures the sms_blaster found there."""
    return os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))


@contextlib.contextmanager
def served(argv: list[str], url_file: Path, log: Path) -> Iterator[Served]:
    """Run `argv`, which writes its URL to `url_file` once listening; SIGTERM it after (it drains
    and exits), unless it is gone already. Its stderr goes to `log`."""
    env = {**os.environ, "PYTHONPATH": python_path()}
    with log.open("ab") as err:
        process = subprocess.Popen(argv, stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
    try:
        yield Served(listening(Path(argv[0]).name, process, url_file, 15, log), process)
    finally:
        stop(process, timeout_s=60)


def receiver(
    store: Path, folder: Path, name: str, *options: str
) -> contextlib.AbstractContextManager[Served]:
    """`sms-blaster receive --store STORE` on a free port; `options` as on its command line."""
    url_file = folder / f"{name}.url"
    url_file.unlink(missing_ok=True)
    argv = [str(BIN), "receive", "--store", str(store), "--port", "0", "--port-file", str(url_file)]
    return served([*argv, *options], url_file, folder / f"{name}.log")


def naive_receiver(
    store: Path, folder: Path, name: str
) -> contextlib.AbstractContextManager[Served]:
    """`benchmarks.naive_receiver` (process 100 ms, store, then answer) on a free port."""
    url_file = folder / f"{name}.url"
    url_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "benchmarks.naive_receiver", str(store), str(url_file)]
    return served(argv, url_file, folder / f"{name}.log")
