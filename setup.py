"""Only the optional C accelerators live here; everything else is in pyproject.toml.

redisgate._native._speedups is the request parser's hot loops in C, redisgate._native._lane a client connection's
steady state, redisgate._native._tlsrec a TLS listener connection's record layer after the handshake
(linked against the libssl Python's ssl module uses; needs OpenSSL's headers, libssl-dev). All
are optional: where they cannot be compiled (no C compiler, no Python or OpenSSL headers) the
install goes on and the Python code does the same, more slowly.
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("redisgate._native._speedups", ["redisgate/_native/_speedups.c"], depends=["redisgate/_native/_respscan.h"],
              optional=True),
    Extension("redisgate._native._lane", ["redisgate/_native/_lane.c"], depends=["redisgate/_native/_respscan.h"],
              optional=True),
    Extension("redisgate._native._tlsrec", ["redisgate/_native/_tlsrec.c"], libraries=["ssl", "crypto"],
              optional=True),
])
