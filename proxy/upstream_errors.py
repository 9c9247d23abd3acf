"""How an exchange with a backend can fail, one class per cause, so that each caller
tests the cause it cares about (`except StaleConnection`, `isinstance(exc, ConnectFailed)`)."""

from __future__ import annotations


class UpstreamError(Exception):
    """The backend failed: refused, reset, timed out or spoke something not HTTP."""


class ConnectFailed(UpstreamError):
    """No connection could be made at all (refused, unroutable, connect timed out)."""


class ConnectTimedOut(ConnectFailed):
    """The backend's host did not answer the connect within its timeout (down, or out of
    reach), where a refused connect is answered at once."""


class ProxyExhausted(ConnectFailed):
    """The proxy itself ran out of what a new connection needs (open files, local ports,
    socket buffers): its own state, which any client holding enough connections brings
    about, not the backend failing."""


class ConnectionLost(UpstreamError):
    """The backend closed or reset the connection before its answer ended."""


class StaleConnection(ConnectionLost):
    """A pooled connection was closed before the backend answered a byte: the backend
    had timed it out while idle, which says nothing about its health."""


class ProtocolError(UpstreamError):
    """The backend's answer is not HTTP/1.1 as the proxy can read it. `unquoted`, when
    the answer's first line is no status line: the message without that line, which may
    be no answer's head at all (`UpstreamConnection.data_received`)."""

    def __init__(self, message: str, unquoted: str = "") -> None:
        super().__init__(message)
        self.unquoted = unquoted


class IdleTimeout(UpstreamError):
    """The backend stayed silent longer than the idle timeout allows."""
