"""redisgate: an authenticating, policy-enforcing Redis (RESP) proxy."""
__version__ = "0.1.0"
