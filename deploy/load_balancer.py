"""The nginx configuration that puts one address in front of every device's server (`invoke serve --host all
--print-nginx`): A1111 clients point at nginx, and a busy or dead device is skipped.

What each line does, from nginx's documentation (ngx_http_upstream_module, ngx_http_proxy_module):
- `least_conn`: "a request is passed to the server with the least number of active connections": a device
  busy with a large image gets the next request last.
- `max_fails=2 fail_timeout=10s`: after 2 failed attempts within 10 s the server is "considered unavailable
  for the duration of the fail_timeout parameter" (a device unplugged costs one connect timeout, not one
  per request).
- `proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent`: a request that fails that
  way goes to the next server; our 503 is "busy, retry", so it moves on. `non_idempotent`: "normally,
  requests with a non-idempotent method (POST, LOCK, PATCH) are not passed to the next server if a request
  has been sent to an upstream server; enabling this option explicitly allows retrying such requests". An
  interrogation changes nothing on the device, so a retried POST is safe.
- `proxy_next_upstream_tries`: at most one try per device.
- `client_max_body_size`: nginx's default (1m) would refuse every photo with a 413 before any device saw it;
  set to the servers' own --max-body-mb default.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import is_host_address
from pipeline.errors import PipelineError
from runtime.server.app import ServerSettings

UPSTREAM = "clip_axera"
CONNECT_TIMEOUT_S = 2  # a device that does not accept within this is tried next


@dataclass(frozen=True)
class Backend:
    """One device's server as nginx reaches it."""

    device: str
    address: str
    port: int

    def server(self) -> str:
        """`address:port` as nginx reads it (an IPv6 address bracketed); nothing but a host name or an IP
        address gets into the file, whatever an ssh_config's HostName says."""
        if not is_host_address(self.address):
            raise PipelineError(
                f"device {self.device}: {self.address[:100]!r} is not a host name or IP address nginx can use",
                hint="set the device's host address (or its ssh_config HostName) to the device's IP address",
            )
        bare = self.address.strip("[]")
        return f"[{bare}]:{self.port}" if ":" in bare else f"{self.address}:{self.port}"


def nginx_config(backends: list[Backend], listen: str) -> str:
    """An nginx `http`-context snippet (for /etc/nginx/conf.d/): the upstream and a server on `listen`
    (`7860`, or `127.0.0.1:7860`)."""
    defaults = ServerSettings()
    max_body_mb = -(-defaults.max_body_bytes // (1024 * 1024))
    read_timeout_s = int(defaults.queue_timeout_s) + 60  # a request may wait that long, then be interrogated
    servers = "\n".join(f"    server {b.server()} max_fails=2 fail_timeout=10s;  # {b.device}" for b in backends)
    return f"""# clip-axera: one address for the fleet's A1111 interrogation servers (`invoke serve --host all
# --print-nginx`). The servers must listen beyond loopback for nginx on another machine: `invoke serve
# --host all --listen`.
upstream {UPSTREAM} {{
    least_conn;
{servers}
    keepalive {4 * len(backends)};
}}

server {{
    listen {listen};
    client_max_body_size {max_body_mb}m;

    location / {{
        proxy_pass http://{UPSTREAM};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_connect_timeout {CONNECT_TIMEOUT_S}s;
        proxy_read_timeout {read_timeout_s}s;
        proxy_send_timeout {read_timeout_s}s;
        proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
        proxy_next_upstream_tries {len(backends)};
        proxy_request_buffering on;
    }}
}}
"""
