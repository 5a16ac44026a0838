"""A fixed-answer HTTP server at C speed, to measure what the load generator manages alone.

nginx (Debian: `apt-get install nginx-light`), one worker, answering every request with
`{"result":"ok"}`; run in the foreground from a prefix in the run's temporary folder, so it
needs no root and touches nothing of a system nginx.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.procs import Proc

CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type application/json; return 200 '{{"result":"ok"}}'; }}
  }}
}}
"""


def start(tmp: Path, port: int) -> Proc | None:
    """nginx serving the fixed answer on `port`, or None when nginx is not installed."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        return None
    prefix = tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(CONF.format(prefix=prefix, port=port))
    args = [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return Proc(args, tmp / "nginx.log", python=False)
