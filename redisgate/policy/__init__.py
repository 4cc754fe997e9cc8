"""What a user may do, sans I/O: ACL rules and the judge, compiled verdicts (memo), Redis glob
patterns, Lua script contracts, the login decision, the login throttle, SCAN confinement, learn
mode, and which CONFIG GET patterns reveal secrets.

May import: redisgate.protocol (and the standard library). Never telemetry, session, io, config or
a product package (asynq registers itself through policy.contracts).
"""
