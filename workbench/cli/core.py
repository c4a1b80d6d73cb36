"""Commands about the workbench itself: models, runs, the dashboard."""
from __future__ import annotations

import errno
import importlib.util
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import JSON_OPT


def register(app: typer.Typer) -> None:
    @app.command()
    def models(as_json: bool = JSON_OPT) -> None:
        """Known models and whether each can be loaded offline here."""
        from ..models import available_models

        rows = available_models()
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        for r in rows:
            mark = "yes" if r["available"] else "no "
            print(f"{r['name']:<20} {r['kind']:<9} available: {mark}  {r['description']}")

    @app.command()
    def runs(
        as_json: bool = JSON_OPT,
        root: Optional[Path] = typer.Option(None, "--root", help="runs folder (default: $WORKBENCH_RUNS or ./runs)"),
    ) -> None:
        """Saved runs, newest first; a broken run folder is listed with the reason."""
        from ..results import list_runs

        rows = list_runs(root)
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        if not rows:
            print("no saved runs yet; try `workbench ablation`")
        for r in rows:
            line = f"{r['created'] or '?':<27} {r['analysis'] or '?':<10} {r['model'] or '?':<16} {r['path']}"
            if r.get("reason"):
                line += f"  ({r['reason']})"
            print(line)
        broken = sum(1 for r in rows if r["analysis"] == "broken")
        if broken:
            print(f"{broken} broken run folder(s): delete them and re-run the analysis", file=sys.stderr)

    @app.command(name="app")
    def app_cmd(
        port: int = typer.Option(8501, "--port", help="port to serve on (1-65535)"),
        address: str = typer.Option("127.0.0.1", "--address",
                                    help="address to serve on; anything but this machine's loopback shares every saved run"),
    ) -> None:
        """Start the Streamlit dashboard on 127.0.0.1."""
        check_server(port, address)  # before the exec: streamlit would answer with a traceback
        app_spec = importlib.util.find_spec("workbench.app")  # located, not imported: the core never imports the app
        if app_spec is None or app_spec.origin is None:
            from ..errors import EnvironmentProblem

            raise EnvironmentProblem("the dashboard package workbench.app is not installed; reinstall the workbench "
                                     "(pip install -e . from the checkout)")
        home = Path(app_spec.origin).resolve().parent / "Home.py"
        print(f"dashboard: http://{_url_host(address)}:{port}", flush=True)
        cmd = [sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(port),
               "--server.address", address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal"]  # no Deploy button; streamlit reads .streamlit/ from the cwd only
        # exec, not a child process: stopping `workbench app` stops the server itself
        os.execv(sys.executable, cmd)


def check_server(port: int, address: str) -> None:
    """--port and --address, checked like every other option (one line naming it): the port
    is in range and free on the address, the address is one of this machine's. Serving beyond
    the loopback is allowed with a warning: the dashboard lists and opens every saved run."""
    from ..errors import InputError

    if not 1 <= port <= 65535:
        raise InputError(f"--port must be between 1 and 65535 (got {port}); the default is 8501")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError):
        raise InputError(f"--address '{address}' is not an address or a host name this machine can resolve; "
                         "use 127.0.0.1 (this machine only)") from None
    _check_bind(infos[0], port, address)
    if not all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos):
        from ..paths import runs_dir

        print(f"warning: --address {address} serves the dashboard beyond this machine: every saved run in "
              f"{runs_dir().resolve()} becomes readable by anyone who can reach port {port}", file=sys.stderr, flush=True)


def _check_bind(info: tuple, port: int, address: str) -> None:
    """Bind the address and port once and let go: in use, not ours or not allowed is a line now."""
    from ..errors import InputError

    family, kind, proto, _, sockaddr = info
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InputError(f"--port {port} is already in use on {address}; pick a free one, e.g. "
                                 f"--port {port + 1 if port < 65535 else 8501}") from None
            if exc.errno == errno.EACCES:
                raise InputError(f"--port {port} needs administrator rights on this machine; pick one above 1023, "
                                 "e.g. --port 8501") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InputError(f"--address {address} is not an address of this machine; use 127.0.0.1 "
                                 "(this machine only)") from None
            raise InputError(f"cannot serve on --address {address} --port {port}: {exc.strerror or exc}") from None


def _url_host(address: str) -> str:
    """The host part of the dashboard's URL (IPv6 addresses in brackets)."""
    return f"[{address}]" if ":" in address else address
