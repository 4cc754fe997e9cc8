"""The I/O layer: sockets, TLS, processes and files; it only moves bytes and runs what
session.Session's Actions say.

server (listeners, client connections, upstream connections and shared links), dial (connecting
to a Redis: probes, keepalive, the words for a failed connection), flow (why a connection is not
read), tasks (kept background tasks), resolver and sentinel (where the master
is), workers (serve --workers N), embedded (the default upstream), admin (/metrics, /healthz),
pidfile.
May import: every layer below it (session, config and tls, asynq, policy, telemetry, protocol,
_native) and redisgate.cluster. No protocol or policy decision is made here.
"""
