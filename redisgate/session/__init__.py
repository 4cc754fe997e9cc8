"""The per-connection protocol state machine (sans I/O): see machine.py."""
from .machine import CLOSE, DROP, FWD, LOCAL, SUB, SUBDROP, Session, State, shareable

__all__ = ["CLOSE", "DROP", "FWD", "LOCAL", "SUB", "SUBDROP", "Session", "State", "shareable"]
