"""Type stubs of the C module redisgate._native._tlsrec (redisgate/_native/_tlsrec.c, which has the contract): a
TLS listener connection's record layer after tls.TLSEngine's handshake. Arguments are
positional-only."""
from collections.abc import Callable
from typing import Any, final

OPENSSL_VERSION_NUMBER: int

@final
class Record:
    """Decrypts a connection's reads and encrypts its writes in C, over the engine's own SSL."""
    def __init__(self, slow: Callable[[bytes], object], /) -> None: ...
    def start(self, sslobj: Any, inbio: Any, raw_write: Callable[[bytes], object], owner: Any,
              sink: Callable[[bytes], object], on_fail: Callable[[str], object],
              on_close: Callable[[], object], /) -> None:
        """From now on data_received decrypts in C (TypeError: objects it does not know)."""
    def data_received(self, data: bytes, /) -> None:
        """The raw protocol's data_received: slow(data) before start(), records after."""
    def write(self, data: bytes, /) -> None:
        """Encrypt and write (dropped once failed or after a close_notify was sent)."""
    @property
    def started(self) -> bool: ...
    @property
    def failed(self) -> bool: ...
    @property
    def peer_closed(self) -> bool: ...
