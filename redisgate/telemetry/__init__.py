"""What an operator sees: the audit trail (typed events, one emitter) and the Prometheus metrics.

May import: the standard library, prometheus-client. Nothing else of redisgate: every layer
above reports through it.
"""
