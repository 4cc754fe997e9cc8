"""Redis Cluster support (`upstream.cluster`): slots (`slots`), the slot map and redirects
(`topology`), the routing plan of one command (`route`), one client's commands over the cluster
(`router`), and the I/O around them (`io`: the proxy-wide map and its refreshes, each client's
connections to the nodes).

Everything but `io` is sans-I/O: it opens no socket, reads no clock and does not log; it imports
only the standard library, `hiredis` (to read replies the proxy itself consumes) and the protocol
helpers (`redisgate.protocol.resp`, `redisgate.protocol.commands`, `redisgate.protocol.errors`). See docs/ARCHITECTURE.md,
"cluster/".
"""
