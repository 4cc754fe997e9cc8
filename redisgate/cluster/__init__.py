"""Redis Cluster support, sans-I/O: slots (`slots`), the slot map and redirects (`topology`), and
the routing plan of one command (`route`).

Nothing in this subpackage opens a socket, reads a clock or logs: it imports only the standard
library, `hiredis` (to read replies the proxy itself consumes) and the protocol helpers
(`redisgate.resp`, `redisgate.commands`). The I/O side (connections per node, following MOVED and
ASK, refreshing the map) is not written yet: see docs/ARCHITECTURE.md, "cluster/".
"""
