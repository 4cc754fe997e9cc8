"""The optional C accelerators, and their type stubs (checked by mypy.stubtest).

_speedups: the request parser's hot loops (protocol.resp uses it when it is built).
_lane: a client connection's steady state (io.server arms it; its decisions come from
policy.memo's compiled verdicts, the shared link's accounting from io's link state).
_tlsrec: a TLS listener connection's record layer after the handshake.
Each has a Python twin that does the same where no compiler is available. The C code imports no
redisgate module: what it needs is handed to it as typed objects (see the .pyi files).
"""
