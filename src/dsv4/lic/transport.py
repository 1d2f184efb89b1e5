"""HTTP(S) on urllib with a short connect timeout and a long read timeout.

urllib has one timeout for everything. A model may think for minutes before its first
byte (a non-streaming request on a CPU-served model), so reads need a long timeout; but
a wrong or firewalled address must fail in seconds, not minutes. These connection
classes connect (and shake hands, for TLS) under CONNECT_TIMEOUT, then switch the socket
to the request's own timeout. Proxies from *_PROXY variables still apply (urllib's
ProxyHandler stays in the opener).
"""

from __future__ import annotations

import http.client
import urllib.request

CONNECT_TIMEOUT = 15.0


def _connect_quickly(conn, parent_connect) -> None:
    read_timeout = conn.timeout
    conn.timeout = min(CONNECT_TIMEOUT, read_timeout) if read_timeout else CONNECT_TIMEOUT
    try:
        parent_connect()
    finally:
        conn.timeout = read_timeout
    conn.sock.settimeout(read_timeout)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self):
        _connect_quickly(self, super().connect)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        _connect_quickly(self, super().connect)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_HTTPSConnection, req, context=self._context)


_opener = None


def urlopen(req: urllib.request.Request, timeout: float):
    global _opener
    if _opener is None:
        _opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)
    return _opener.open(req, timeout=timeout)
