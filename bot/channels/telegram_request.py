"""python-telegram-bot's networking on aiohttp: a ``telegram.request.BaseRequest``.

PTB's default backend, ``HTTPXRequest`` (httpx), costs about three times the CPU per Bot
API call of aiohttp, and a busy ``serve`` process is CPU-bound, so the Telegram channel's
``Bot`` talks through :class:`AiohttpRequest` instead. PTB keeps everything above the
transport: it builds the parameters, turns the status and body returned here into its
errors (``RetryAfter`` for 429, ``Forbidden``, ``BadRequest``, ``NetworkError``...), and
parses the JSON. This class only moves bytes, and maps aiohttp's failures to PTB's
``TimedOut`` and ``NetworkError`` as ``HTTPXRequest`` does with httpx's.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlencode
from urllib.request import getproxies

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

# A filename goes into the part's Content-Disposition as UTF-8, as httpx (and browsers)
# send it; a quote or a control character must not end the header.
_FILENAME_ESCAPES = {ord('"'): "%22", **{c: f"%{c:02X}" for c in range(0x20) if c != 0x1B}}


def _ssl_context() -> ssl.SSLContext:
    """Certificates from certifi, like httpx (PTB's default backend) used; the system's if
    certifi is missing."""
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with httpx, a PTB dependency
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class AiohttpRequest(BaseRequest):
    """A ``BaseRequest`` on one ``aiohttp.ClientSession``.

    The timeouts are seconds (``None``: no limit), the defaults ``HTTPXRequest``'s; a Bot
    method's own ``read_timeout=``... overrides them per call.

    - ``connect_timeout``: opening the TCP (and TLS) connection.
    - ``read_timeout``: waiting for the response, and between chunks of it.
    - ``pool_timeout``: waiting for a free connection when all ``connection_pool_size``
      are busy. aiohttp bounds the wait for a connection and the connect together, so the
      limit on both is ``pool_timeout + connect_timeout``.
    - ``write_timeout``, ``media_write_timeout``: accepted for PTB, but aiohttp has no
      write timeout; sending the request body is not bounded by itself (the read timeout
      starts once the body is sent).

    The session is created in the running event loop by :meth:`initialize` (or the first
    request); after :meth:`shutdown` a request raises ``RuntimeError`` until
    :meth:`initialize` is called again, as with ``HTTPXRequest``.
    """

    __slots__ = ("_connect_timeout", "_media_write_timeout", "_pool_size", "_pool_timeout",
                 "_read_timeout", "_session", "_shut_down", "_write_timeout")

    def __init__(
        self,
        connection_pool_size: int = 256,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
        media_write_timeout: float | None = 20.0,
    ) -> None:
        if connection_pool_size < 1:
            raise ValueError("connection_pool_size must be at least 1")
        self._pool_size = connection_pool_size
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._media_write_timeout = media_write_timeout
        self._session: aiohttp.ClientSession | None = None
        self._shut_down = False

    @property
    def read_timeout(self) -> float | None:
        """See :attr:`BaseRequest.read_timeout`: the default read timeout in seconds."""
        return self._read_timeout

    def _open(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment: concurrent callers share one.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, ssl=_ssl_context()),
                headers={"User-Agent": self.USER_AGENT},
                # HTTP(S)_PROXY / NO_PROXY, as httpx honours them. Looking them up costs
                # aiohttp about 0.4 ms per request, so only when one is set.
                trust_env=bool(getproxies()),
            )
        return self._session

    async def initialize(self) -> None:
        """See :meth:`BaseRequest.initialize`. Idempotent."""
        self._shut_down = False
        self._open()

    async def shutdown(self) -> None:
        """See :meth:`BaseRequest.shutdown`. Idempotent."""
        self._shut_down = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """See :meth:`BaseRequest.do_request`."""
        if self._shut_down:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        session = self._open()

        # Not passed (DEFAULT_NONE): the defaults given to the constructor. None: no limit.
        if isinstance(read_timeout, DefaultValue):
            read_timeout = self._read_timeout
        if isinstance(connect_timeout, DefaultValue):
            connect_timeout = self._connect_timeout
        if isinstance(pool_timeout, DefaultValue):
            pool_timeout = self._pool_timeout
        # write_timeout is not used: aiohttp has no write timeout (see the class docstring).

        timeout = aiohttp.ClientTimeout(
            total=None,
            # aiohttp's "connect" covers waiting for a pooled connection plus connecting.
            connect=(pool_timeout + connect_timeout
                     if pool_timeout is not None and connect_timeout is not None else None),
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )

        data: Any = None
        headers: dict[str, str] | None = None
        if request_data is not None:
            if request_data.contains_files:
                data = self._multipart(request_data)
            else:
                data = urlencode(request_data.json_parameters).encode("ascii")
                headers = {"Content-Type": "application/x-www-form-urlencoded"}

        try:
            async with session.request(method, url, data=data, headers=headers,
                                       timeout=timeout) as response:
                return response.status, await response.read()
        except TimeoutError as err:
            # asyncio.TimeoutError (the builtin since 3.11), and aiohttp.ServerTimeoutError,
            # a subclass naming the phase: connect, or reading from the socket. First, as
            # TimeoutError is also an OSError.
            raise TimedOut(f"Timed out: aiohttp.{err.__class__.__name__}: {err}") from err
        except (aiohttp.ClientError, OSError) as err:
            # The class name helps when the message is empty, as in HTTPXRequest.
            raise NetworkError(f"aiohttp.{err.__class__.__name__}: {err}") from err

    @staticmethod
    def _multipart(request_data: RequestData) -> aiohttp.FormData:
        """multipart/form-data: the JSON-encoded parameters as fields, then the files
        (``multipart_data`` maps a part name to ``(filename, bytes or file, mimetype)``)."""
        form = aiohttp.FormData(quote_fields=False, default_to_multipart=True)
        for name, value in request_data.json_parameters.items():
            form.add_field(name, value)
        for name, (filename, content, mimetype) in request_data.multipart_data.items():
            form.add_field(name, content, filename=filename.translate(_FILENAME_ESCAPES),
                           content_type=mimetype)
        return form
