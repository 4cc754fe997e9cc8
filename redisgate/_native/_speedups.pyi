"""Type stubs of the C module redisgate._native._speedups (redisgate/_native/_speedups.c, which has the
contracts; resp.py has a Python twin of each function). All arguments are positional-only."""

def scan(buf: bytes, pos: int, max_args: int, max_bulk: int, /) -> (
        tuple[list[list[bytes]], bytes, int, int] | None):
    """The whole canonical multibulk requests at buf[pos:]: (args, ends, same, stop), where
    `ends` holds one native Py_ssize_t per request; None when none was taken."""
def pending(buf: bytes, pos: int, max_args: int, max_bulk: int, /) -> bool:
    """buf[pos:] begins a request scan() would take, and it is not whole yet."""
def count_flat(data: bytes, most: int, start: int, /) -> tuple[int, int]:
    """(count, end) of the whole flat replies at data[start:], at most `most`."""
def count_replies(data: bytes, most: int, start: int = 0, /) -> tuple[int, int]:
    """(count, end) of the whole replies the C lane passes, at most `most`."""
