"""The Redis protocol, sans I/O: RESP parsing and encoding, the command table, Redis's exact
error replies, option words, the proxy's own upstream handshake, and shared-link reply routing.

May import: the standard library, hiredis, redisgate._native. Nothing else of redisgate.
"""
