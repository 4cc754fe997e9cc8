/* redisgate._native._speedups: resp.py's hot loops in C (optional: resp.py has the same logic in
 * Python, its "twins", and uses them when this module is not built). Four functions, no I/O:
 * scan() for RequestParser.take_batch(), pending() for RequestParser.next(), count_flat() for
 * ReplyScanner.count_flat(), each fuzzed against its twin in tests/test_fastpath.py; and
 * count_replies(), which exposes the reply walker of the C lane (_lane.c) to those tests.
 *
 * scan(buf, pos, max_args, max_bulk) takes the run of whole canonical multibulk requests that
 * starts at buf[pos]: "*<n>\r\n" then n times "$<len>\r\n<len bytes>\r\n", every number written
 * the one way Redis's string2ll accepts (no sign, no leading zero), 1 <= n <= max_args,
 * 0 <= len <= max_bulk. It stops at the first request that is not whole or not of that form
 * ("*0", inline commands, anything Redis would refuse or read differently): the caller's
 * careful parser takes it from there with Redis's exact checks. It never raises on input.
 *
 * Returns None when no request was taken, else (args, ends, same, stop):
 *   args  list of lists of bytes, one per request (args[j][0] the command name as sent);
 *   ends  bytes holding one native Py_ssize_t per request: where request j ends in buf;
 *   same  how many requests at the head share the first one's argument count and command name
 *         (byte for byte), when that is at least SAME_MIN; else 0;
 *   stop  where the last request ends.
 *
 * Nothing is allocated from a declared size: a request is first walked without allocating,
 * and its objects are made only once all of its bytes are known to be there.
 */
#include "_respscan.h"

#define SAME_MIN 4

/* The argument list of the request at p that walk() accepted (it ends at `end`): NULL with an
 * exception set on an error, NULL without one when the checked re-walk disagrees with walk()
 * (scan() then stops there, and the careful parser takes that request). */
static PyObject *
build(const char *p, const char *end, Py_ssize_t argc, Py_ssize_t max_bulk)
{
    Py_ssize_t i, len;
    PyObject *list = PyList_New(argc);
    if (list == NULL)
        return NULL;
    p = arguments_at(p, end, argc);
    for (i = 0; i < argc; i++) {
        PyObject *arg;
        const char *bytes = next_argument(p, end, max_bulk, &len, &p);
        if (bytes == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        arg = PyBytes_FromStringAndSize(bytes, len);
        if (arg == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, arg);
    }
    if (p != end) {
        Py_DECREF(list);
        return NULL;
    }
    return list;
}

static PyObject *
scan(PyObject *module, PyObject *args)
{
    PyObject *buf, *reqs = NULL, *ends_bytes = NULL, *result = NULL;
    Py_ssize_t pos, max_args, max_bulk, argc, first_argc = 0, same = 0, count = 0, cap = 0;
    Py_ssize_t *ends = NULL;
    const char *base, *p, *end, *first_name = NULL;
    Py_ssize_t first_len = 0;
    int in_run = 1, more;

    if (!PyArg_ParseTuple(args, "O!nnn:scan", &PyBytes_Type, &buf, &pos, &max_args, &max_bulk))
        return NULL;
    base = PyBytes_AS_STRING(buf);
    end = base + PyBytes_GET_SIZE(buf);
    if (pos < 0 || pos >= PyBytes_GET_SIZE(buf) || max_args < 1 || max_bulk < 0)
        Py_RETURN_NONE;
    p = base + pos;
    reqs = PyList_New(0);
    if (reqs == NULL)
        return NULL;
    while (p < end) {
        const char *next = walk(p, end, max_args, max_bulk, &argc, &more);
        PyObject *req;
        if (next == NULL)
            break;
        req = build(p, next, argc, max_bulk);
        if (req == NULL && !PyErr_Occurred())
            break;
        if (req == NULL || PyList_Append(reqs, req) < 0) {
            Py_XDECREF(req);
            goto done;
        }
        Py_DECREF(req);
        if (count == cap) {
            Py_ssize_t *grown;
            cap = cap ? cap * 2 : 64;
            grown = PyMem_Realloc(ends, cap * sizeof(Py_ssize_t));
            if (grown == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            ends = grown;
        }
        ends[count++] = next - base;
        if (in_run) {
            PyObject *name = PyList_GET_ITEM(req, 0);
            if (count == 1) {
                first_argc = argc;
                first_name = PyBytes_AS_STRING(name);
                first_len = PyBytes_GET_SIZE(name);
                same = 1;
            } else if (argc == first_argc && PyBytes_GET_SIZE(name) == first_len
                       && memcmp(PyBytes_AS_STRING(name), first_name, first_len) == 0) {
                same++;
            } else {
                in_run = 0;
            }
        }
        p = next;
    }
    if (count == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    ends_bytes = PyBytes_FromStringAndSize((const char *)ends, count * sizeof(Py_ssize_t));
    if (ends_bytes == NULL)
        goto done;
    result = Py_BuildValue("(OOnn)", reqs, ends_bytes, same >= SAME_MIN ? same : 0,
                           ends[count - 1]);
done:
    PyMem_Free(ends);
    Py_XDECREF(ends_bytes);
    Py_DECREF(reqs);
    return result;
}

/* pending(buf, pos, max_args, max_bulk) -> bool: the bytes at buf[pos:] are the beginning of
 * one request scan() would take, not whole yet (the caller may wait for the rest and scan it
 * then, instead of feeding it to the careful parser). */
static PyObject *
pending(PyObject *module, PyObject *args)
{
    PyObject *buf;
    Py_ssize_t pos, max_args, max_bulk, argc;
    const char *base;
    int more = 0;

    if (!PyArg_ParseTuple(args, "O!nnn:pending", &PyBytes_Type, &buf, &pos, &max_args, &max_bulk))
        return NULL;
    if (pos < 0 || pos >= PyBytes_GET_SIZE(buf) || max_args < 1 || max_bulk < 0)
        Py_RETURN_FALSE;
    base = PyBytes_AS_STRING(buf);
    if (walk(base + pos, base + PyBytes_GET_SIZE(buf), max_args, max_bulk, &argc, &more) != NULL)
        Py_RETURN_FALSE;   /* whole: not pending */
    return PyBool_FromLong(more);
}

/* The flat reply at p (a simple string, error, integer, bulk string of at most 1024 bytes, the
 * null bulk, RESP3's null): where it ends, or NULL. */
static const char *
flat_end(const char *p, const char *end)
{
    const char *cr = line_end(p + 1, end);
    if (cr == NULL)
        return NULL;
    if (*p == '$') {
        Py_ssize_t n = cr - p - 1, size = 0, i;
        const char *next;
        if (n == 2 && p[1] == '-' && p[2] == '1')
            return cr + 2;
        if (n < 1 || n > 4 || (p[1] == '0' && n > 1))
            return NULL;
        for (i = 1; i <= n; i++) {
            if (p[i] < '0' || p[i] > '9')
                return NULL;
            size = size * 10 + (p[i] - '0');
        }
        if (size > 1024)
            return NULL;
        /* "$<size>\r\n" ends at cr + 2; size bytes and a CRLF must follow, before end
         * (compared as lengths: a pointer past end + 1 must not even be formed) */
        if (end - cr < size + 4)
            return NULL;
        next = cr + 4 + size;
        return next[-2] != '\r' || next[-1] != '\n' ? NULL : next;
    }
    if (*p == '+' || *p == '-')
        return cr + 2;
    if (*p == '_')   /* RESP3's null: nothing else on the line */
        return cr == p + 1 ? cr + 2 : NULL;
    if (*p == ':')
        return is_ll(p + 1, cr - p - 1) ? cr + 2 : NULL;
    return NULL;
}

/* (count, end) of run_of(one) over data[start:], at most `most`. */
static PyObject *
counted(PyObject *args, const char *format, reply_at one)
{
    PyObject *data;
    Py_ssize_t most, start = 0, count = 0;
    const char *base, *p;

    if (!PyArg_ParseTuple(args, format, &PyBytes_Type, &data, &most, &start))
        return NULL;
    base = PyBytes_AS_STRING(data);
    if (start < 0 || start > PyBytes_GET_SIZE(data))
        return Py_BuildValue("(nn)", (Py_ssize_t)0, start);
    p = run_of(one, base + start, base + PyBytes_GET_SIZE(data), most, &count);
    return Py_BuildValue("(nn)", count, (Py_ssize_t)(p - base));
}

/* count_flat(data, most, start) -> (count, end): how many whole flat replies (flat_end) lie back
 * to back in data from `start`, at most `most`, and where they end. It stops at anything else.
 * The same as the loop of resp.ReplyScanner.count_flat, which checks the scanner's state first. */
static PyObject *
count_flat(PyObject *module, PyObject *args)
{
    return counted(args, "O!nn:count_flat", flat_end);
}

/* count_replies(data, most[, start]) -> (count, end): the same for any whole reply the C lane
 * passes (_respscan.h's reply_end), for the tests. */
static PyObject *
count_replies(PyObject *module, PyObject *args)
{
    return counted(args, "O!n|n:count_replies", reply_end);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(buf, pos, max_args, max_bulk) -> None | (args, ends, same, stop): the whole canonical "
     "multibulk requests at buf[pos:]; see the module source for the contract."},
    {"pending", pending, METH_VARARGS,
     "pending(buf, pos, max_args, max_bulk) -> bool: buf[pos:] begins a request scan() would "
     "take, and it is not whole yet."},
    {"count_flat", count_flat, METH_VARARGS,
     "count_flat(data, most, start) -> (count, end): the whole flat replies at data[start:], at "
     "most `most` (see resp.ReplyScanner.count_flat)."},
    {"count_replies", count_replies, METH_VARARGS,
     "count_replies(data, most[, start]) -> (count, end): the whole replies the C lane passes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "redisgate._native._speedups",
    "resp.py's hot loops in C (see the source for the contracts).", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
