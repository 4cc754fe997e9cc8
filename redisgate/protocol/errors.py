"""The exact error replies Redis sends, per upstream version. No I/O.

Every function returns the complete RESP error line, `-` and `\\r\\n` included, byte for byte what the
upstream Redis of that version would have sent, so a client cannot tell the proxy's refusal from the
server's. `version` is the upstream's version tuple, e.g. `(7, 0, 15)`; only the era matters:

  era  | versions        | source
  -----+-----------------+----------------------------------------------------------------------
  5    | < 6.0           | 5.0 src/server.c processCommand, each container's own syntax error
  6.0  | 6.0.x           | 6.0 src/server.c, src/acl.c
  6.2  | 6.2.x           | 6.2 src/server.c, src/acl.c
  7.0  | 7.0.x, 7.1.x    | 7.0 src/server.c processCommand, src/acl.c
  7.2  | >= 7.2          | 7.2 src/server.c commandCheckExistence, src/acl.c getAclErrorMessage

Redis < 6 has no ACLs, so it never sends NOPERM or WRONGPASS; for those upstreams the proxy uses the
6.2 wordings (the ones ACL-aware clients such as go-redis v9 expect). Likewise 6.0 had no channel
permissions: `noperm_channel` uses the 6.2 wording there.

Formatting follows Redis's C: arguments are C strings (an argument is cut at its first NUL byte),
`%.128s` truncates where Redis does, and `addReplyErrorFormat` turns every CR and LF in the message
into a space so that the reply stays one protocol line. Tests compare each wording with the real
5.0 / 6.2 / 7.0 servers (tests/test_errors.py); 6.0 and 7.2 wordings come from their sources.
"""
from __future__ import annotations

__all__ = [
    "era", "error_line", "noauth", "wrongpass", "unknown_command", "unknown_subcommand",
    "wrong_arity", "noperm_command", "noperm_key", "noperm_channel", "noperm_db", "noproto",
    "execabort", "noauth_hello", "not_in_multi", "legacy_hello", "pubsub_context",
    "max_clients",
]

Version = tuple[int, ...]  # (major, minor[, patch])


def era(version: Version) -> str:
    """The wording era of an upstream version: "5", "6.0", "6.2", "7.0" or "7.2"."""
    v = tuple(version[:2])
    if v < (6, 0):
        return "5"
    if v < (6, 2):
        return "6.0"
    if v < (7, 0):
        return "6.2"
    if v < (7, 2):
        return "7.0"
    return "7.2"


def _text(s: str | bytes) -> bytes:
    return s.encode("utf-8", "surrogateescape") if isinstance(s, str) else bytes(s)


def _c(arg: str | bytes, limit: int | None = None) -> bytes:
    """`%s` / `%.<limit>s` of a C string: cut at the first NUL, then at `limit` bytes."""
    b = _text(arg).split(b"\0", 1)[0]
    return b if limit is None else b[:limit]


def error_line(message: bytes, code: bytes = b"ERR") -> bytes:
    """`addReplyErrorFormat`: CR/LF become spaces; `-<code> ` is prefixed unless the message
    already starts with `-` (Redis's convention for errors carrying their own code)."""
    message = message.replace(b"\r", b" ").replace(b"\n", b" ")
    if message.startswith(b"-"):
        return message + b"\r\n"
    return b"-" + code + b" " + message + b"\r\n"


def noauth() -> bytes:
    """Any command but AUTH/HELLO (and QUIT) before authentication. Same text in every version."""
    return b"-NOAUTH Authentication required.\r\n"


def wrongpass(version: Version) -> bytes:
    """AUTH / HELLO AUTH with a bad username-password pair (or a disabled user)."""
    if era(version) == "6.0":
        return b"-WRONGPASS invalid username-password pair\r\n"
    return b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"


def unknown_command(version: Version, args: list[bytes]) -> bytes:
    """`args[0]` is not a command: Redis echoes the name and up to ~128 bytes of arguments.

    5.x/6.x: ``unknown command `foo`, with args beginning with: `a`, `b`, `` (backquotes, commas);
    7.x: ``unknown command 'foo', with args beginning with: 'a' 'b' `` and the name cut at 128 bytes.
    Arguments are appended while the list is shorter than 128 bytes, each cut to what is left.
    """
    modern = era(version) in ("7.0", "7.2")
    quote, sep = (b"'", b" ") if modern else (b"`", b", ")
    listed = b""
    for arg in args[1:]:
        if len(listed) >= 128:
            break
        listed += quote + _c(arg, 128 - len(listed)) + quote + sep
    name = _c(args[0], 128 if modern else None)
    return error_line(b"unknown command " + quote + name + quote + b", with args beginning with: "
                      + listed)


def legacy_hello(version: Version, args: list[bytes]) -> bytes:
    """HELLO sent to a proxy in front of Redis < 6.0, which has no HELLO: that version's
    `unknown_command` reply, except that the arguments from the first `AUTH` on (compared as
    Redis's strcasecmp would: case-insensitive, up to a NUL byte) are left out, so credentials
    are never echoed. The reply still starts with ``ERR unknown command``, the prefix go-redis
    v9.0.x (Asynq v0.24) requires before it falls back to RESP2 + AUTH."""
    shown = [args[0]]
    for arg in args[1:]:
        if _c(arg).lower() == b"auth":
            break
        shown.append(arg)
    return unknown_command(version, shown)


# Redis < 7 had no subcommand table: each container command answered an unknown subcommand itself.
# Most used addReplySubcommandSyntaxError(); 5.0's CLIENT and MEMORY dropped the final period and
# 5.0's XINFO had its own text when no key followed. CLUSTER on a non-cluster server refuses before
# looking at it.
_LEGACY_SUBCOMMAND_QUIRKS_5 = {
    b"CLIENT": b"Unknown subcommand or wrong number of arguments for '%s'. Try CLIENT HELP",
    b"MEMORY": b"Unknown subcommand or wrong number of arguments for '%s'. Try MEMORY HELP",
    b"XINFO": b"syntax error, try 'XINFO HELP'",
}


def unknown_subcommand(version: Version, args: list[bytes]) -> bytes:
    """`args[0]` is a container command (CONFIG, CLIENT, ...) and `args[1]` is not one of its
    subcommands.

    7.x: ``unknown subcommand 'x'. Try CONFIG HELP.`` (x cut at 128 bytes);
    5.x/6.x: ``Unknown subcommand or wrong number of arguments for 'x'. Try CONFIG HELP.``
    """
    container = _c(args[0]).upper()  # sdstoupper: ASCII only, as bytes.upper()
    sub = args[1] if len(args) > 1 else b""
    e = era(version)
    if e in ("7.0", "7.2"):
        return error_line(b"unknown subcommand '" + _c(sub, 128) + b"'. Try " + container
                          + b" HELP.")
    if container == b"CLUSTER":
        return error_line(b"This instance has cluster support disabled")
    if e == "5" and container in _LEGACY_SUBCOMMAND_QUIRKS_5 and (container != b"XINFO"
                                                                 or len(args) < 3):
        # (5.0's XINFO with a key looks the key up, then answers the common text below.)
        return error_line(_LEGACY_SUBCOMMAND_QUIRKS_5[container].replace(b"%s", _c(sub)))
    return error_line(b"Unknown subcommand or wrong number of arguments for '" + _c(sub)
                      + b"'. Try " + container + b" HELP.")


# Before 7.0 these subcommands parsed their own arguments and answered a bad count this way.
_LEGACY_SYNTAX_ERROR_SUBCOMMANDS = frozenset({"client|kill", "client|list"})


def wrong_arity(version: Version, name: str, args: list[bytes] | None = None) -> bytes:
    """The argument count does not fit the command's arity. `name` is the command table name
    (`"get"`, `"config|get"`).

    7.x names the full name (`'config|get'`). Before 7.0 only top-level commands had an arity check;
    a container answered a bad count for its subcommand with its own error, which needs `args`
    (an extension of the contract): the unknown-subcommand text for most, `syntax error` for
    CLIENT KILL / CLIENT LIST. Without `args` the top-level wording is used.
    """
    e = era(version)
    if e not in ("7.0", "7.2") and "|" in name:
        if name in _LEGACY_SYNTAX_ERROR_SUBCOMMANDS:
            return b"-ERR syntax error\r\n"
        if args is not None and len(args) > 1:
            return unknown_subcommand(version, args)
        name = name.split("|", 1)[0]
    return error_line(b"wrong number of arguments for '" + _text(name) + b"' command")


def noperm_command(version: Version, user: str | bytes, name: str) -> bytes:
    """The user may not run this command (or subcommand). `name` is the table name.

    7.0: ``this user has no permissions to run the 'config|get' command``;
    6.x (and < 6): ``... run the 'config' command or its subcommand`` (top-level name);
    7.2: ``User alice has no permissions to run the 'config|get' command``.
    """
    e = era(version)
    if e == "7.2":
        return (b"-NOPERM User " + _text(user) + b" has no permissions to run the '"
                + _text(name) + b"' command\r\n")
    if e == "7.0":
        return b"-NOPERM this user has no permissions to run the '" + _text(name) + b"' command\r\n"
    return (b"-NOPERM this user has no permissions to run the '" + _text(name.split("|", 1)[0])
            + b"' command or its subcommand\r\n")


def noperm_key(version: Version, user: str | bytes) -> bytes:
    """A key argument matches none of the user's key patterns (the key is never named)."""
    if era(version) == "7.2":
        return b"-NOPERM No permissions to access a key\r\n"
    return b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n"


def noperm_channel(version: Version, user: str | bytes) -> bytes:
    """A Pub/Sub channel argument matches none of the user's channel patterns."""
    if era(version) == "7.2":
        return b"-NOPERM No permissions to access a channel\r\n"
    return (b"-NOPERM this user has no permissions to access one of the channels used as "
            b"arguments\r\n")


def noperm_db(version: Version, user: str | bytes, db: int) -> bytes:
    """SELECT of a database the user may not use. Redis has no per-database permission, so this is
    the proxy's own refusal, worded as Redis's refusal of the SELECT command itself."""
    return noperm_command(version, user, "select")


def max_clients() -> bytes:
    """A connection past `maxclients` (networking.c acceptCommonHandler, 5.0 to 7.2); redisgate
    sends it past limits.max_clients or limits.max_clients_per_user, then closes."""
    return b"-ERR max number of clients reached\r\n"


def noauth_hello() -> bytes:
    """HELLO without AUTH option on a connection that is not authenticated (6.0+)."""
    return (b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            b"HELLO AUTH <user> <pass> option can be used to authenticate the client and select "
            b"the RESP protocol version at the same time\r\n")


def not_in_multi(version: Version | None = None) -> bytes:
    """A command that may not be queued in MULTI (7.0's CMD_NO_MULTI refusal; the proxy also uses
    it for AUTH/HELLO, which it answers itself and so cannot queue)."""
    return b"-ERR Command not allowed inside a transaction\r\n"


def noproto() -> bytes:
    """HELLO with a protocol version other than 2 or 3 (6.0+)."""
    return b"-NOPROTO unsupported protocol version\r\n"


def execabort() -> bytes:
    """EXEC after a command was refused while queueing."""
    return b"-EXECABORT Transaction discarded because of previous errors.\r\n"


def pubsub_context(version: Version, name: str) -> bytes:
    """A command other than (P|S)SUBSCRIBE, (P|S)UNSUBSCRIBE, PING, QUIT, RESET on a RESP2
    connection in subscribed mode (processCommand; the proxy needs it for AUTH and HELLO, which
    it answers itself). `name` is the command's (full) name in lower case."""
    e = era(version)
    if e in ("5", "6.0"):
        return b"-ERR only (P)SUBSCRIBE / (P)UNSUBSCRIBE / PING / QUIT allowed in this context\r\n"
    if e == "6.2":   # (6.2 names the command, not the subcommand: 'client', not 'client|reply')
        return error_line(b"Can't execute '" + _c(name.split("|")[0]) + b"': only (P)SUBSCRIBE / "
                          b"(P)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
    return error_line(b"Can't execute '" + _c(name) + b"': only (P|S)SUBSCRIBE / "
                      b"(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
