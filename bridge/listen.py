"""The service's listening sockets, made before anything else starts.

`serve` binds them before the application starts up, because start-up tells every messenger
the bridge's webhook URL (`connect`): a start that cannot listen must fail before that, not
after a messenger was sent to a URL nobody answers. Connections that arrive during start-up
wait in the backlog.
"""

from __future__ import annotations

import socket

BACKLOG = 128  # aiohttp's own default for a site


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """One listening socket per address `host` resolves to (as aiohttp's TCPSite would bind:
    SO_REUSEADDR, IPv6 sockets IPv6-only; "" means every interface).

    Raises OSError naming host and port (the port in use, an address not on this machine).
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sockets
