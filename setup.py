"""Only the optional C accelerators live here; everything else is in pyproject.toml.

redisgate._speedups is the request parser's hot loops in C, redisgate._lane a client connection's
steady state, redisgate._tlsrec a TLS listener connection's record layer after the handshake
(linked against the libssl Python's ssl module uses; needs OpenSSL's headers, libssl-dev). All
are optional: where they cannot be compiled (no C compiler, no Python or OpenSSL headers) the
install goes on and the Python code does the same, more slowly.
"""
from setuptools import Extension, setup

setup(ext_modules=[
    Extension("redisgate._speedups", ["redisgate/_speedups.c"], depends=["redisgate/_respscan.h"],
              optional=True),
    Extension("redisgate._lane", ["redisgate/_lane.c"], depends=["redisgate/_respscan.h"],
              optional=True),
    Extension("redisgate._tlsrec", ["redisgate/_tlsrec.c"], libraries=["ssl", "crypto"],
              optional=True),
])
