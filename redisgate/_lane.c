/* redisgate._lane: the steady state of one client connection with a dedicated upstream link,
 * in C. Optional: without it every byte takes the Python path (server.ClientConnection ->
 * session.Session), which decides the same things.
 *
 * Why: with one client waiting on each reply (redis-benchmark -c 1, a lone worker), the proxy's
 * cost is not its hot instruction count but its Python frames and objects, which run cold
 * after every wait. The lane keeps that round trip to two C calls, like a byte pipe's.
 *
 * A Lane stands for a session that Python "armed" (server.ClientConnection.arm_lane): logged in,
 * nothing pending but forwarded commands (their reply count is `due`), nothing buffered, no
 * transaction, no subscription, a dedicated upstream. While armed:
 *
 *   client_data(data)    passes `data` to the upstream as it came when it is whole canonical
 *                        requests (scan()'s form, within the parser's limits) that the session's
 *                        own inline judge would pass: each name is in `known` (Session._inline's
 *                        memo for the user, the very same dict) with an entry whose arity fits
 *                        and whose one key, if any, starts with one of its prefixes, is in its
 *                        exact set or passes its match. Then due += how many.
 *   upstream_data(data)  passes `data` to the client when it is nothing but whole flat replies
 *                        to due commands (count_flat()'s form). Then due -= how many.
 *
 * Anything else goes, untouched and whole, to the Python callable given for it (client_slow /
 * upstream_slow), which takes the due count back first (disarm()) and re-arms when it is done.
 * The lane never decides anything the Python path would decide otherwise: it only concludes
 * "forward" from an entry Python computed, and gives up on everything else. The memo being
 * cleared (a config reload, a new upstream version) makes every name a miss, so a reload is
 * seen at the next command.
 */
#include "_respscan.h"

typedef struct {
    PyObject_HEAD
    PyObject *known;            /* the memo dict while armed, else NULL */
    PyObject *upstream_write;   /* while armed */
    PyObject *client_write;     /* while armed */
    PyObject *client_slow;
    PyObject *upstream_slow;
    Py_ssize_t due;             /* replies still due to commands the lane forwarded */
    Py_ssize_t max_args, max_bulk;
    Py_ssize_t passed;          /* requests the lane forwarded (a statistic for tests) */
} Lane;

static void
lane_release(Lane *self)
{
    Py_CLEAR(self->known);
    Py_CLEAR(self->upstream_write);
    Py_CLEAR(self->client_write);
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->known);
    Py_VISIT(self->upstream_write);
    Py_VISIT(self->client_write);
    Py_VISIT(self->client_slow);
    Py_VISIT(self->upstream_slow);
    return 0;
}

static int
lane_clear(Lane *self)
{
    lane_release(self);
    Py_CLEAR(self->client_slow);
    Py_CLEAR(self->upstream_slow);
    return 0;
}

static void
lane_dealloc(Lane *self)
{
    PyObject_GC_UnTrack(self);
    lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
lane_init(Lane *self, PyObject *args, PyObject *kwds)
{
    PyObject *client_slow, *upstream_slow;
    static char *kwlist[] = {"client_slow", "upstream_slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Lane", kwlist, &client_slow, &upstream_slow))
        return -1;
    if (!PyCallable_Check(client_slow) || !PyCallable_Check(upstream_slow)) {
        PyErr_SetString(PyExc_TypeError, "Lane: the slow paths must be callable");
        return -1;
    }
    lane_clear(self);
    Py_INCREF(client_slow);
    Py_INCREF(upstream_slow);
    self->client_slow = client_slow;
    self->upstream_slow = upstream_slow;
    self->due = self->passed = 0;
    return 0;
}

/* arm(known, upstream_write, client_write, due, max_args, max_bulk) */
static PyObject *
lane_arm(Lane *self, PyObject *args)
{
    PyObject *known, *upstream_write, *client_write;
    Py_ssize_t due, max_args, max_bulk;
    if (!PyArg_ParseTuple(args, "O!OOnnn:arm", &PyDict_Type, &known, &upstream_write,
                          &client_write, &due, &max_args, &max_bulk))
        return NULL;
    if (self->known != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane.arm: already armed (disarm() first)");
        return NULL;
    }
    if (due < 0 || max_args < 1 || max_bulk < 0) {
        PyErr_SetString(PyExc_ValueError, "Lane.arm: due, max_args or max_bulk out of range");
        return NULL;
    }
    Py_INCREF(known);
    Py_INCREF(upstream_write);
    Py_INCREF(client_write);
    self->known = known;
    self->upstream_write = upstream_write;
    self->client_write = client_write;
    self->due = due;
    self->max_args = max_args;
    self->max_bulk = max_bulk;
    Py_RETURN_NONE;
}

/* disarm() -> due: the lane lets go; the caller owns the `due` replies from now on. */
static PyObject *
lane_disarm(Lane *self, PyObject *unused)
{
    Py_ssize_t due = self->known != NULL ? self->due : 0;
    lane_release(self);
    self->due = 0;
    return PyLong_FromSsize_t(due);
}

/* The bytes of argument i of the request at p that walk() accepted. */
static const char *
argument(const char *p, const char *end, Py_ssize_t i, Py_ssize_t max_bulk, Py_ssize_t *len)
{
    int more;
    p = (const char *)memchr(p, '\n', end - p) + 1;   /* past "*<n>\r\n" */
    for (;;) {
        p = number_line(p + 1, end, max_bulk, len, &more);   /* walk() proved it is there */
        if (i-- == 0)
            return p;
        p += *len + 2;
    }
}

/* 1 if the entry (Session._inline's tuple) lets this request through, 0 if the lane must give
 * up on it, -1 on a Python error. */
static int
passes(PyObject *entry, const char *req, const char *end, Py_ssize_t argc, Py_ssize_t max_bulk)
{
    Py_ssize_t fewest, most, pos, klen, i;
    PyObject *prefixes, *exact, *match, *key;
    const char *k;
    int ok;

    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 7)
        return 0;
    fewest = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
    most = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2));
    pos = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 3));
    if (PyErr_Occurred())
        return -1;
    if (argc < fewest || argc > most)
        return 0;
    if (pos == -1)          /* session.NO_KEY: allowed whatever the arguments */
        return 1;
    if (pos < 0 || pos >= argc)   /* session.ASK: the judge decides */
        return 0;
    k = argument(req, end, pos, max_bulk, &klen);
    prefixes = PyTuple_GET_ITEM(entry, 4);
    if (PyTuple_CheckExact(prefixes)) {
        for (i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
            PyObject *prefix = PyTuple_GET_ITEM(prefixes, i);
            if (PyBytes_CheckExact(prefix) && PyBytes_GET_SIZE(prefix) <= klen
                    && memcmp(PyBytes_AS_STRING(prefix), k, PyBytes_GET_SIZE(prefix)) == 0)
                return 1;
        }
    } else {
        return 0;
    }
    exact = PyTuple_GET_ITEM(entry, 5);
    match = PyTuple_GET_ITEM(entry, 6);
    if (!(PyAnySet_Check(exact) && PySet_GET_SIZE(exact) > 0) && match == Py_None)
        return 0;
    key = PyBytes_FromStringAndSize(k, klen);
    if (key == NULL)
        return -1;
    ok = 0;
    if (PyAnySet_Check(exact) && PySet_GET_SIZE(exact) > 0)
        ok = PySet_Contains(exact, key);
    if (ok == 0 && match != Py_None) {
        PyObject *r = PyObject_CallOneArg(match, key);
        ok = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    Py_DECREF(key);
    return ok;
}

static PyObject *
lane_client_data(Lane *self, PyObject *data)
{
    const char *base, *p, *end, *name = NULL;
    Py_ssize_t count = 0, name_len = 0;
    PyObject *entry = NULL, *r;

    if (self->known == NULL || !PyBytes_CheckExact(data) || PyBytes_GET_SIZE(data) == 0)
        goto slow;
    base = PyBytes_AS_STRING(data);
    end = base + PyBytes_GET_SIZE(data);
    p = base;
    while (p < end) {
        Py_ssize_t argc, len;
        int more, ok;
        const char *n;
        const char *next = walk(p, end, self->max_args, self->max_bulk, &argc, &more);
        if (next == NULL)
            goto slow;
        n = argument(p, next, 0, self->max_bulk, &len);
        if (entry == NULL || len != name_len || memcmp(n, name, len) != 0) {
            /* (a pipeline mostly repeats one name: look it up once per run) */
            PyObject *key = PyBytes_FromStringAndSize(n, len);
            if (key == NULL)
                goto error;
            Py_XDECREF(entry);
            entry = PyDict_GetItemWithError(self->known, key);
            Py_DECREF(key);
            if (entry == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto slow;
            }
            Py_INCREF(entry);
            name = n;
            name_len = len;
        }
        ok = passes(entry, p, next, argc, self->max_bulk);
        if (ok < 0)
            goto error;
        if (ok == 0 || self->known == NULL)   /* (a match callable could have disarmed us) */
            goto slow;
        count++;
        p = next;
    }
    Py_XDECREF(entry);
    self->due += count;
    self->passed += count;
    r = PyObject_CallOneArg(self->upstream_write, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
slow:
    Py_XDECREF(entry);
    return PyObject_CallOneArg(self->client_slow, data);
error:
    Py_XDECREF(entry);
    return NULL;
}

static PyObject *
lane_upstream_data(Lane *self, PyObject *data)
{
    Py_ssize_t count = 0;
    const char *base, *end;
    PyObject *r;

    if (self->known == NULL || self->due <= 0 || !PyBytes_CheckExact(data))
        goto slow;
    base = PyBytes_AS_STRING(data);
    end = base + PyBytes_GET_SIZE(data);
    if (flat_run(base, end, self->due, &count) != end || count == 0)
        goto slow;
    self->due -= count;
    r = PyObject_CallOneArg(self->client_write, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
slow:
    return PyObject_CallOneArg(self->upstream_slow, data);
}

static PyObject *
lane_get_armed(Lane *self, void *closure)
{
    return PyBool_FromLong(self->known != NULL);
}

static PyObject *
lane_get_due(Lane *self, void *closure)
{
    return PyLong_FromSsize_t(self->due);
}

static PyObject *
lane_get_passed(Lane *self, void *closure)
{
    return PyLong_FromSsize_t(self->passed);
}

static PyGetSetDef lane_getset[] = {
    {"armed", (getter)lane_get_armed, NULL, "whether the lane is taking traffic", NULL},
    {"due", (getter)lane_get_due, NULL, "replies still due to commands the lane forwarded", NULL},
    {"passed", (getter)lane_get_passed, NULL, "requests the lane has forwarded", NULL},
    {NULL},
};

static PyMethodDef lane_methods[] = {
    {"arm", (PyCFunction)lane_arm, METH_VARARGS,
     "arm(known, upstream_write, client_write, due, max_args, max_bulk): take traffic."},
    {"disarm", (PyCFunction)lane_disarm, METH_NOARGS,
     "disarm() -> due: stop taking traffic; the caller owns the replies still due."},
    {"client_data", (PyCFunction)lane_client_data, METH_O,
     "client_data(data): bytes from the client (a Protocol's data_received)."},
    {"upstream_data", (PyCFunction)lane_upstream_data, METH_O,
     "upstream_data(data): bytes from the upstream (a Protocol's data_received)."},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The steady state of one client connection in C; see _lane.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)lane_init,
    .tp_dealloc = (destructor)lane_dealloc,
    .tp_traverse = (traverseproc)lane_traverse,
    .tp_clear = (inquiry)lane_clear,
    .tp_methods = lane_methods,
    .tp_getset = lane_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "redisgate._lane",
    "The steady state of one client connection in C (see the source for the contract).", -1,
};

PyMODINIT_FUNC
PyInit__lane(void)
{
    PyObject *m;
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
