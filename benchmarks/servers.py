"""The servers the benchmarks send to, each started on a free loopback port and stopped after.

- `simulator()`: our own provider simulator (`sms-blaster mock-provider`), for throttling, and
  for counting arrivals the way a provider would.
- `nginx()`: Debian's nginx answering a fixed Vonage success body, so the server costs almost
  nothing; under `/slow` the echo module answers after a fixed sleep (when the module is there).
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent / "sms-blaster"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

# What Vonage answers for an accepted single-part message.
VONAGE_OK = (
    '{"message-count":"1","messages":[{"to":"447400000001","message-id":"0A0000000123ABCD1",'
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
def simulator(*options: str) -> Iterator[Simulator]:
    """`sms-blaster mock-provider` in its own process, keeping no messages (only counts)."""
    with tempfile.TemporaryDirectory() as folder:
        url_file = Path(folder) / "url"
        argv = [str(BIN), "mock-provider", "--port", "0", "--port-file", str(url_file)]
        process = subprocess.Popen(
            [*argv, "--no-keep-messages", *options], stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while not url_file.exists() or not url_file.read_text().strip():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the simulator did not start")
                time.sleep(0.05)
            yield Simulator(url_file.read_text().strip())
        finally:
            process.terminate()
            process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nginx_config(folder: Path, port: int, echo: bool, slow_s: float) -> str:
    """A self-contained config: pid, logs and temp files in `folder`, one worker, no access log."""
    # A master started as root drops its workers to `nobody`; keep them as the current user,
    # who owns the temp folder. As any other user the directive only draws a warning.
    user = "user root;" if os.geteuid() == 0 else ""
    slow = (
        f"location = /slow/sms/json {{ default_type application/json; "
        f"echo_sleep {slow_s}; echo -n '{VONAGE_OK}'; }}"
        if echo
        else ""
    )
    return f"""
{f"load_module {ECHO_MODULE};" if echo else ""}
{user}
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 10000000;
    server {{
        listen 127.0.0.1:{port};
        location = /sms/json {{ default_type application/json; return 200 '{VONAGE_OK}'; }}
        {slow}
    }}
}}
"""


@dataclass(frozen=True, slots=True)
class Nginx:
    url: str  # fixed answer at once: POST {url}/sms/json
    slow_url: str | None  # the same answer after the sleep, when the echo module is there


@contextlib.contextmanager
def nginx(slow_s: float = 0.05) -> Iterator[Nginx]:
    """Debian's nginx in the foreground with its own config, on a free port; stopped after."""
    echo = ECHO_MODULE.exists()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as name:
        folder = Path(name)
        port = free_port()
        config = folder / "nginx.conf"
        config.write_text(nginx_config(folder, port, echo, slow_s))
        argv = [NGINX, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
        process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (folder / "error.log").read_text()
                        if (folder / "error.log").exists()
                        else ""
                    )
                    raise RuntimeError(f"nginx did not start: {log.strip()}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}"
            yield Nginx(url, url + "/slow" if echo else None)
        finally:
            process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
