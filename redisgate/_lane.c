/* redisgate._lane: the steady state of one client connection in C, on its own upstream link or on
 * a shared one. Optional: without it every byte takes the Python path (server.ClientConnection ->
 * session.Session, mux.Demux), which decides the same things.
 *
 * Why: with one client waiting on each reply (redis-benchmark -c 1, a lone worker), the proxy's
 * cost is not its hot instruction count but its Python frames and objects, which run cold
 * after every wait. The lane keeps that round trip to two C calls, like a byte pipe's.
 *
 * A Lane stands for a session that Python "armed" (server.ClientConnection.arm_lane): logged in,
 * nothing pending but forwarded commands (their reply count is `due`), nothing buffered, no
 * transaction, no subscription. While armed:
 *
 *   client_data(data)    forwards `data` as it came when it is whole canonical requests
 *                        (scan()'s form, within the parser's limits) that the session's own
 *                        inline judge would pass: each name is in `known` (Session._inline's
 *                        memo for the user, the very same dict) with an entry whose arity fits
 *                        and whose one key, if any, starts with one of its prefixes, is in its
 *                        exact set or passes its match; an EVALSHA entry (session.SCRIPT)
 *                        holds the forms of the calls the judge allowed, per SHA1 and queue
 *                        (Session._lane_script), and the call must fit one (script_passes).
 *                        Then due += how many, never past `window` (a read that would pass
 *                        it goes to Python, which holds what does not fit: flow control).
 *                        On a dedicated link it writes the upstream; on
 *                        a shared one (`link`, `owner`) it does what ClientConnection.pump and
 *                        SharedLink.send do.
 *   upstream_data(data)  (dedicated link) passes `data` to the client when it is nothing but
 *                        whole replies to due commands (reply_end(): any canonical reply but
 *                        a push or an attribute); due -= how many.
 *
 * A Router is a shared link connection's data_received: it routes the whole replies at the head
 * of the link's Demux to clients whose lanes are armed on that link, keeping the Demux's books.
 *
 * Anything else goes, untouched and whole (a Router: the rest of the read), to the Python
 * callable given for it, which takes the due count back first (ClientConnection.disarm_lane)
 * and re-arms when it is done. The C side never decides anything the Python path would decide
 * otherwise: it only concludes "forward" from an entry Python computed, and "this client's
 * reply" from books Python keeps; it gives up on everything else. The memo being cleared (a
 * config reload, a new upstream version: Gate.forget_fast) makes every name a miss, so a
 * reload is seen at the next command.
 */
#include "_respscan.h"
#include <time.h>

/* Attribute names of server.SharedLink, mux.Demux and server.ClientConnection (interned). */
static PyObject *s_due, *s_ready, *s_out, *s_demux, *s_conn, *s_transport, *s_write, *s_send,
    *s_clean, *s_lane, *s_append, *s_popleft, *s_flush_soon;

/* ---- Metrics kept in C, read when /metrics is scraped (redisgate.metrics' collector) ----
 *
 * Counter: one uint64 per (user, command) (redisgate.metrics.forwarded_counter), the 8th item
 * of a memo entry (Session._inline); a lane adds the requests it forwarded under that entry's
 * name, and the Python path adds its own with Counter.add. Nothing else in C looks at it.
 *
 * `stats`: the client bytes the lanes and routers moved in C (the Python path counts its own),
 * and the time one read takes through an entry point of this module (Lane.client_data,
 * Lane.upstream_data, Router.data_received, the Python slow path included), sampled: one read
 * in LATENCY_SAMPLE is timed, into a histogram of LATENCY_BOUNDS_NS. Module-wide (one process,
 * one event loop thread, the GIL held: plain increments). */
typedef struct {
    PyObject_HEAD
    unsigned long long value;
} Counter;

static PyTypeObject CounterType;

#define LATENCY_SAMPLE 64   /* a power of two */
static const unsigned long long latency_bounds_ns[] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000,
    1000000, 2500000, 5000000, 10000000, 25000000, 50000000, 100000000};
#define LATENCY_BOUNDS ((int)(sizeof latency_bounds_ns / sizeof latency_bounds_ns[0]))

static struct {
    unsigned long long bytes_in, bytes_out;   /* client bytes taken / written in C */
    unsigned long long reads;                 /* reads through the entry points: the sampler */
    unsigned long long buckets[LATENCY_BOUNDS + 1];   /* per bucket (not cumulative); +Inf last */
    unsigned long long count, sum_ns;
} stats;

/* Whether this read is the one in LATENCY_SAMPLE to time (then *t0 is its start). */
static inline int
sample_start(struct timespec *t0)
{
    if ((++stats.reads & (LATENCY_SAMPLE - 1)) != 0)
        return 0;
    return clock_gettime(CLOCK_MONOTONIC, t0) == 0;
}

static void
sample_end(const struct timespec *t0)
{
    struct timespec t1;
    unsigned long long ns;
    int i = 0;
    if (clock_gettime(CLOCK_MONOTONIC, &t1) != 0)
        return;
    ns = (unsigned long long)(t1.tv_sec - t0->tv_sec) * 1000000000ULL + t1.tv_nsec - t0->tv_nsec;
    while (i < LATENCY_BOUNDS && ns > latency_bounds_ns[i])
        i++;
    stats.buckets[i]++;
    stats.count++;
    stats.sum_ns += ns;
}

/* The counters a lane adds to when one read is forwarded whole: a few runs of names per read
 * (a pipeline mostly repeats one); more distinct ones than TALLY_RUNS send the read to Python,
 * which counts it itself. Each cell is held (a new reference) until committed or dropped. */
#define TALLY_RUNS 16
typedef struct {
    PyObject *cell[TALLY_RUNS];
    unsigned long long n[TALLY_RUNS];
    int len;
} Tally;

static int
tally_add(Tally *t, PyObject *cell)
{
    int i;
    if (t->len > 0 && t->cell[t->len - 1] == cell) {
        t->n[t->len - 1]++;
        return 0;
    }
    for (i = 0; i < t->len; i++) {
        if (t->cell[i] == cell) {
            t->n[i]++;
            return 0;
        }
    }
    if (t->len == TALLY_RUNS)
        return -1;
    Py_INCREF(cell);
    t->cell[t->len] = cell;
    t->n[t->len++] = 1;
    return 0;
}

static void
tally_drop(Tally *t)
{
    int i;
    for (i = 0; i < t->len; i++)
        Py_DECREF(t->cell[i]);
    t->len = 0;
}

static void
tally_commit(Tally *t)
{
    int i;
    for (i = 0; i < t->len; i++)
        ((Counter *)t->cell[i])->value += t->n[i];
    tally_drop(t);
}

/* The counter of a memo entry: its 8th item (NULL for a 7-item entry, which is not counted);
 * -1 when the entry has an 8th item that is no Counter (the lane gives up on it). */
static int
entry_counter(PyObject *entry, PyObject **cell)
{
    *cell = NULL;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 8)
        return 0;
    *cell = PyTuple_GET_ITEM(entry, 7);
    return Py_IS_TYPE(*cell, &CounterType) ? 0 : -1;
}

typedef struct {
    PyObject_HEAD
    PyObject *known;            /* the memo dict while armed, else NULL */
    PyObject *upstream_write;   /* while armed */
    PyObject *client_write;     /* while armed */
    PyObject *client_slow;
    PyObject *upstream_slow;
    PyObject *link;             /* on a shared link, while armed: the server.SharedLink... */
    PyObject *owner;            /* ...and the ClientConnection, which its Demux knows */
    PyObject *queue;            /* ...and the Demux's queue (link.demux.due, kept for life) */
    Py_ssize_t due;             /* replies still due to commands the lane forwarded */
    Py_ssize_t max_args, max_bulk;
    Py_ssize_t passed;          /* requests the lane forwarded (a statistic for tests) */
    Py_ssize_t window;          /* never more than this many replies due: past it, Python's
                                   path (server.ClientConnection's window) takes the read */
} Lane;

static void
lane_release(Lane *self)
{
    Py_CLEAR(self->known);
    Py_CLEAR(self->upstream_write);
    Py_CLEAR(self->client_write);
    Py_CLEAR(self->link);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->queue);
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->known);
    Py_VISIT(self->upstream_write);
    Py_VISIT(self->client_write);
    Py_VISIT(self->link);
    Py_VISIT(self->owner);
    Py_VISIT(self->queue);
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
    self->window = PY_SSIZE_T_MAX;
    return 0;
}

/* arm(known, upstream_write, client_write, due, max_args, max_bulk[, link, owner]) */
static PyObject *
lane_arm(Lane *self, PyObject *args)
{
    PyObject *known, *upstream_write, *client_write, *link = NULL, *owner = NULL;
    Py_ssize_t due, max_args, max_bulk;
    if (!PyArg_ParseTuple(args, "O!OOnnn|OO:arm", &PyDict_Type, &known, &upstream_write,
                          &client_write, &due, &max_args, &max_bulk, &link, &owner))
        return NULL;
    if ((link == NULL) != (owner == NULL) || link == Py_None || owner == Py_None) {
        PyErr_SetString(PyExc_TypeError, "Lane.arm: a shared link needs its owner, and no None");
        return NULL;
    }
    if (self->known != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane.arm: already armed (disarm() first)");
        return NULL;
    }
    if (due < 0 || max_args < 1 || max_bulk < 0) {
        PyErr_SetString(PyExc_ValueError, "Lane.arm: due, max_args or max_bulk out of range");
        return NULL;
    }
    /* Everything that can fail comes before the first reference is taken: a failed arm
     * leaves no reference behind (tests/test_refcounts.py). */
    if (link != NULL) {
        PyObject *queue, *demux = PyObject_GetAttr(link, s_demux);
        if (demux == NULL)
            return NULL;
        queue = PyObject_GetAttr(demux, s_due);
        Py_DECREF(demux);
        if (queue == NULL)
            return NULL;
        if (self->known != NULL) {   /* (the lookups ran Python code: it could have armed us) */
            Py_DECREF(queue);
            PyErr_SetString(PyExc_RuntimeError, "Lane.arm: already armed (disarm() first)");
            return NULL;
        }
        Py_XSETREF(self->queue, queue);
    }
    Py_INCREF(known);
    Py_INCREF(upstream_write);
    Py_INCREF(client_write);
    Py_XINCREF(link);
    Py_XINCREF(owner);
    self->known = known;
    self->upstream_write = upstream_write;
    self->client_write = client_write;
    self->link = link;
    self->owner = owner;
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

/* The bytes of argument i of the request at p that walk() accepted (it ends at `end`, has
 * more than i arguments), and *len; or NULL when the checked re-walk disagrees (give up). */
static const char *
argument(const char *p, const char *end, Py_ssize_t i, Py_ssize_t max_bulk, Py_ssize_t *len)
{
    const char *bytes;
    int more;
    Py_ssize_t argc;
    if (p >= end || *p != '*' || i < 0)
        return NULL;
    /* (the header's count, read again only to bound i) */
    if (number_line(p + 1, end, PY_SSIZE_T_MAX, &argc, &more) == NULL || i >= argc)
        return NULL;
    p = arguments_at(p, end, argc);
    for (;;) {
        bytes = next_argument(p, end, max_bulk, len, &p);
        if (bytes == NULL || i-- == 0)
            return bytes;
    }
}

/* A borrowed item of a dict, looked up by the bytes p[0:n]; NULL with or without an error. */
static PyObject *
dict_item(PyObject *dict, const char *p, Py_ssize_t n)
{
    PyObject *item, *key = PyBytes_FromStringAndSize(p, n);
    if (key == NULL)
        return NULL;
    item = PyDict_GetItemWithError(dict, key);
    Py_DECREF(key);
    return item;
}

/* Whether p[0:10] is a YYYY-MM-DD date as scripts._DATE reads it (ASCII digits). */
static int
is_date(const char *p)
{
    int i;
    for (i = 0; i < 10; i++) {
        if (i == 4 || i == 7 ? p[i] != '-' : (p[i] < '0' || p[i] > '9'))
            return 0;
    }
    return 1;
}

/* The kinds of check in scripts._FastContract.lane_form. */
enum { LANE_EXACT, LANE_ONE_OF, LANE_PREFIX, LANE_DATE };
#define SCRIPT_MAX_ARGS 64

/* session.SCRIPT: an EVALSHA passes when the entry's memo ({SHA1: {queue: form}}, filled by
 * Session._lane_script from calls the judge allowed) has a form for its SHA1 and KEYS[1]'s
 * queue, and the call fits it: numkeys as written there, enough arguments, and each check of
 * scripts._FastContract.lane_form. Nothing here runs Python code, so the borrowed memo items
 * stay valid. 1, 0 or -1 as passes(). */
static int
script_passes(PyObject *shas, const char *req, const char *end, Py_ssize_t argc,
              Py_ssize_t max_bulk)
{
    const char *arg[SCRIPT_MAX_ARGS], *p, *close;
    Py_ssize_t len[SCRIPT_MAX_ARGS], i, need;
    PyObject *per, *form, *numkeys, *checks;

    if (!PyDict_CheckExact(shas) || argc < 4 || argc > SCRIPT_MAX_ARGS)
        return 0;
    p = arguments_at(req, end, argc);   /* (checked again: any disagreement gives up) */
    for (i = 0; i < argc; i++) {
        arg[i] = next_argument(p, end, max_bulk, &len[i], &p);
        if (arg[i] == NULL)
            return 0;
    }
    per = dict_item(shas, arg[1], len[1]);
    if (per == NULL || !PyDict_CheckExact(per))
        return PyErr_Occurred() ? -1 : 0;
    /* KEYS[1]'s queue: asynq:{<queue>}..., up to the first '}' (as Session._lane_script) */
    if (len[3] < 9 || memcmp(arg[3], "asynq:{", 7) != 0)
        return 0;
    close = (const char *)memchr(arg[3] + 7, '}', len[3] - 7);
    if (close == NULL || close == arg[3] + 7)
        return 0;
    form = dict_item(per, arg[3] + 7, close - arg[3] - 7);
    if (form == NULL || !PyTuple_CheckExact(form) || PyTuple_GET_SIZE(form) != 3)
        return PyErr_Occurred() ? -1 : 0;
    numkeys = PyTuple_GET_ITEM(form, 0);
    need = PyLong_AsSsize_t(PyTuple_GET_ITEM(form, 1));
    checks = PyTuple_GET_ITEM(form, 2);
    if (need == -1 && PyErr_Occurred())
        return -1;
    if (!PyBytes_CheckExact(numkeys) || PyBytes_GET_SIZE(numkeys) != len[2]
            || memcmp(PyBytes_AS_STRING(numkeys), arg[2], len[2]) != 0
            || argc < need || !PyTuple_CheckExact(checks))
        return 0;
    for (i = 0; i < PyTuple_GET_SIZE(checks); i++) {
        PyObject *check = PyTuple_GET_ITEM(checks, i), *value;
        Py_ssize_t index, kind, vlen, j;
        int ok = 0;
        if (!PyTuple_CheckExact(check) || PyTuple_GET_SIZE(check) != 3)
            return 0;
        index = PyLong_AsSsize_t(PyTuple_GET_ITEM(check, 0));
        kind = PyLong_AsSsize_t(PyTuple_GET_ITEM(check, 1));
        if (PyErr_Occurred())
            return -1;
        if (index < 0 || index >= argc)
            return 0;
        value = PyTuple_GET_ITEM(check, 2);
        if (kind == LANE_ONE_OF) {
            if (!PyTuple_CheckExact(value))
                return 0;
            for (j = 0; j < PyTuple_GET_SIZE(value) && !ok; j++) {
                PyObject *name = PyTuple_GET_ITEM(value, j);
                ok = PyBytes_CheckExact(name) && PyBytes_GET_SIZE(name) == len[index]
                    && memcmp(PyBytes_AS_STRING(name), arg[index], len[index]) == 0;
            }
        } else if (PyBytes_CheckExact(value)) {
            vlen = PyBytes_GET_SIZE(value);
            ok = len[index] >= vlen && memcmp(PyBytes_AS_STRING(value), arg[index], vlen) == 0
                && (kind == LANE_EXACT ? len[index] == vlen
                    : kind == LANE_PREFIX ? len[index] > vlen
                    : kind == LANE_DATE && len[index] == vlen + 10 && is_date(arg[index] + vlen));
        }
        if (!ok)
            return 0;
    }
    return 1;
}

/* 1 if the entry (Session._inline's tuple) lets this request through, 0 if the lane must give
 * up on it, -1 on a Python error. */
static int
passes(PyObject *entry, const char *req, const char *end, Py_ssize_t argc, Py_ssize_t max_bulk)
{
    Py_ssize_t fewest, most, pos, klen, i;
    PyObject *prefixes, *exact, *match, *key;
    const char *k;
    int ok, has_exact;

    if (!PyTuple_CheckExact(entry)
            || (PyTuple_GET_SIZE(entry) != 7 && PyTuple_GET_SIZE(entry) != 8))
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
    if (pos == -3)          /* session.SCRIPT: as the judge allowed before, per SHA1 and queue */
        return script_passes(PyTuple_GET_ITEM(entry, 4), req, end, argc, max_bulk);
    if (pos < 0 || pos >= argc)   /* session.ASK: the judge decides */
        return 0;
    k = argument(req, end, pos, max_bulk, &klen);
    if (k == NULL)
        return 0;
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
    has_exact = PyAnySet_Check(exact) && PySet_GET_SIZE(exact) > 0;
    if (!has_exact && match == Py_None)
        return 0;
    key = PyBytes_FromStringAndSize(k, klen);
    if (key == NULL)
        return -1;
    ok = has_exact ? PySet_Contains(exact, key) : 0;
    if (ok == 0 && match != Py_None) {
        PyObject *r = PyObject_CallOneArg(match, key);
        ok = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    Py_DECREF(key);
    return ok;
}

/* A non-negative Python int attribute as a Py_ssize_t; -1 with an exception set when it is not
 * one: TypeError (not an int), OverflowError (PyLong_AsSsize_t) or ValueError (negative). Every
 * negative result has an exception set, so callers test `< 0`. */
static Py_ssize_t
int_attr(PyObject *obj, PyObject *name)
{
    Py_ssize_t v;
    PyObject *o = PyObject_GetAttr(obj, name);
    if (o == NULL)
        return -1;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "redisgate._lane: %U must be an int, not %.100s", name,
                     Py_TYPE(o)->tp_name);
        v = -1;
    } else {
        v = PyLong_AsSsize_t(o);
        if (v < 0 && !PyErr_Occurred()) {
            PyErr_Format(PyExc_ValueError, "redisgate._lane: %U must be >= 0, not %zd", name, v);
            v = -1;
        }
    }
    Py_DECREF(o);
    return v;
}

static int
set_int_attr(PyObject *obj, PyObject *name, Py_ssize_t v)
{
    int rc;
    PyObject *o = PyLong_FromSsize_t(v);
    if (o == NULL)
        return -1;
    rc = PyObject_SetAttr(obj, name, o);
    Py_DECREF(o);
    return rc;
}

/* mux.Demux.sent(owner, count) on the Demux's deque of [owner, replies due]. */
static int
demux_sent(PyObject *queue, PyObject *owner, Py_ssize_t count)
{
    Py_ssize_t n = PyObject_Length(queue);
    PyObject *entry, *r;
    if (n < 0)
        return -1;
    if (n > 0) {
        PyObject *last = PySequence_GetItem(queue, n - 1);
        if (last == NULL)
            return -1;
        if (PyList_CheckExact(last) && PyList_GET_SIZE(last) == 2
                && PyList_GET_ITEM(last, 0) == owner) {
            Py_ssize_t due = PyLong_AsSsize_t(PyList_GET_ITEM(last, 1));
            PyObject *now;
            if (due == -1 && PyErr_Occurred()) {
                Py_DECREF(last);
                return -1;
            }
            now = PyLong_FromSsize_t(due + count);
            if (now == NULL || PyList_SetItem(last, 1, now) < 0) {
                Py_DECREF(last);
                return -1;
            }
            Py_DECREF(last);
            return 0;
        }
        Py_DECREF(last);
    }
    entry = Py_BuildValue("[On]", owner, count);
    if (entry == NULL)
        return -1;
    r = PyObject_CallMethodOneArg(queue, s_append, entry);
    Py_DECREF(entry);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Forwarded commands on a shared link: what ClientConnection.pump and SharedLink.send do. An
 * idle, connected link (nothing in flight, nothing queued) is written at once, after its Demux
 * learnt whose replies come next; on a busy one whose flush is already scheduled for this loop
 * turn the bytes join the queue; anything else (the turn's first queued bytes, a link still
 * connecting) is SharedLink.send's business. */
static PyObject *
shared_send(Lane *self, PyObject *data, Py_ssize_t count)
{
    PyObject *link = self->link, *queue = self->queue, *ready = NULL, *out = NULL;
    PyObject *conn = NULL, *transport = NULL, *r = NULL;
    Py_ssize_t total;
    int idle;

    Py_INCREF(link);   /* (the calls below run Python code that could disarm the lane) */
    Py_INCREF(queue);
    total = int_attr(link, s_due);
    if (total < 0)
        goto done;
    ready = PyObject_GetAttr(link, s_ready);
    out = PyObject_GetAttr(link, s_out);
    if (ready == NULL || out == NULL)
        goto done;
    idle = total == 0 && ready == Py_True && PyList_CheckExact(out) && PyList_GET_SIZE(out) == 0;
    if (!idle && ready == Py_True && PyList_CheckExact(out)) {
        PyObject *soon = PyObject_GetAttr(link, s_flush_soon);
        int queued = soon == Py_True;
        Py_XDECREF(soon);
        if (soon == NULL)
            goto done;
        if (queued) {
            if (demux_sent(queue, self->owner, count) < 0 || set_int_attr(link, s_due, total + count) < 0
                    || PyList_Append(out, data) < 0)
                goto done;
            r = Py_None;
            Py_INCREF(r);
            goto done;
        }
    }
    if (!idle) {
        PyObject *n = PyLong_FromSsize_t(count);
        if (n != NULL)
            r = PyObject_CallMethodObjArgs(link, s_send, self->owner, data, n, NULL);
        Py_XDECREF(n);
        goto done;
    }
    if (demux_sent(queue, self->owner, count) < 0
            || set_int_attr(link, s_due, count) < 0
            || (conn = PyObject_GetAttr(link, s_conn)) == NULL
            || (transport = PyObject_GetAttr(conn, s_transport)) == NULL)
        goto done;
    r = PyObject_CallMethodOneArg(transport, s_write, data);
done:
    Py_XDECREF(transport);
    Py_XDECREF(conn);
    Py_XDECREF(out);
    Py_XDECREF(ready);
    Py_DECREF(queue);
    Py_DECREF(link);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
lane_client_data_(Lane *self, PyObject *data)
{
    const char *base, *p, *end, *name = NULL;
    Py_ssize_t count = 0, name_len = 0;
    PyObject *entry = NULL, *cell = NULL, *r;
    Tally tally;

    tally.len = 0;

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
        if (n == NULL)
            goto slow;
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
            if (entry_counter(entry, &cell) < 0)
                goto slow;
        }
        ok = passes(entry, p, next, argc, self->max_bulk);
        if (ok < 0)
            goto error;
        if (ok == 0 || self->known == NULL)   /* (a match callable could have disarmed us) */
            goto slow;
        if (self->due + count >= self->window)   /* (the window is full: Python holds the rest) */
            goto slow;
        if (cell != NULL && tally_add(&tally, cell) < 0)   /* (too many names: Python counts) */
            goto slow;
        count++;
        p = next;
    }
    Py_XDECREF(entry);
    tally_commit(&tally);
    self->due += count;
    self->passed += count;
    stats.bytes_in += (unsigned long long)PyBytes_GET_SIZE(data);
    if (self->link != NULL)
        return shared_send(self, data, count);
    r = PyObject_CallOneArg(self->upstream_write, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
slow:
    Py_XDECREF(entry);
    tally_drop(&tally);
    return PyObject_CallOneArg(self->client_slow, data);
error:
    Py_XDECREF(entry);
    tally_drop(&tally);
    return NULL;
}

/* client_data(data): the above, one read in LATENCY_SAMPLE timed (the slow path included). */
static PyObject *
lane_client_data(Lane *self, PyObject *data)
{
    struct timespec t0;
    PyObject *r;
    if (!sample_start(&t0))
        return lane_client_data_(self, data);
    r = lane_client_data_(self, data);
    sample_end(&t0);
    return r;
}

static PyObject *
lane_upstream_data_(Lane *self, PyObject *data)
{
    Py_ssize_t count = 0;
    const char *base, *end;
    PyObject *r;

    if (self->known == NULL || self->due <= 0 || !PyBytes_CheckExact(data))
        goto slow;
    base = PyBytes_AS_STRING(data);
    end = base + PyBytes_GET_SIZE(data);
    if (run_of(reply_end, base, end, self->due, &count) != end || count == 0)
        goto slow;
    self->due -= count;
    stats.bytes_out += (unsigned long long)(end - base);
    r = PyObject_CallOneArg(self->client_write, data);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
slow:
    return PyObject_CallOneArg(self->upstream_slow, data);
}

static PyObject *
lane_upstream_data(Lane *self, PyObject *data)
{
    struct timespec t0;
    PyObject *r;
    if (!sample_start(&t0))
        return lane_upstream_data_(self, data);
    r = lane_upstream_data_(self, data);
    sample_end(&t0);
    return r;
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
lane_get_shared(Lane *self, void *closure)
{
    return PyBool_FromLong(self->link != NULL);
}

static PyObject *
lane_get_passed(Lane *self, void *closure)
{
    return PyLong_FromSsize_t(self->passed);
}

static PyObject *
lane_get_window(Lane *self, void *closure)
{
    return PyLong_FromSsize_t(self->window);
}

static int
lane_set_window(Lane *self, PyObject *value, void *closure)
{
    Py_ssize_t v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Lane.window cannot be deleted");
        return -1;
    }
    v = PyLong_AsSsize_t(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 1) {
        PyErr_SetString(PyExc_ValueError, "Lane.window must be at least 1");
        return -1;
    }
    self->window = v;
    return 0;
}

static PyGetSetDef lane_getset[] = {
    {"armed", (getter)lane_get_armed, NULL, "whether the lane is taking traffic", NULL},
    {"due", (getter)lane_get_due, NULL, "replies still due to commands the lane forwarded", NULL},
    {"passed", (getter)lane_get_passed, NULL, "requests the lane has forwarded", NULL},
    {"shared", (getter)lane_get_shared, NULL, "armed on a shared upstream link", NULL},
    {"window", (getter)lane_get_window, (setter)lane_set_window,
     "the most replies that may be due: a read that would pass it goes to Python", NULL},
    {NULL},
};

static PyMethodDef lane_methods[] = {
    {"arm", (PyCFunction)lane_arm, METH_VARARGS,
     "arm(known, upstream_write, client_write, due, max_args, max_bulk[, link, owner]): take "
     "traffic (on a shared link: the server.SharedLink and the ClientConnection)."},
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

/* Router: the data_received of a shared link's connection (server._LinkConnection). While the
 * replies at the head of the link's Demux belong to clients whose lanes are armed on it, and are
 * whole replies (reply_end), it hands each client its bytes and keeps the Demux's books (its queue, the
 * link's `due`) as Demux.received and SharedLink.data_received would. From the first reply it
 * cannot place that way, the rest of the read goes to the Python path (`slow`). */
typedef struct {
    PyObject_HEAD
    PyObject *link;    /* server.SharedLink */
    PyObject *conn;    /* the _LinkConnection this router reads for */
    PyObject *slow;
    PyObject *demux;   /* link.demux and its queue: a link keeps both for life */
    PyObject *queue;
} Router;

static int
router_traverse(Router *self, visitproc visit, void *arg)
{
    Py_VISIT(self->link);
    Py_VISIT(self->conn);
    Py_VISIT(self->slow);
    Py_VISIT(self->demux);
    Py_VISIT(self->queue);
    return 0;
}

static int
router_clear(Router *self)
{
    Py_CLEAR(self->link);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->demux);
    Py_CLEAR(self->queue);
    return 0;
}

static void
router_dealloc(Router *self)
{
    PyObject_GC_UnTrack(self);
    router_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
router_init(Router *self, PyObject *args, PyObject *kwds)
{
    PyObject *link, *conn, *slow, *demux, *queue;
    static char *kwlist[] = {"link", "conn", "slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Router", kwlist, &link, &conn, &slow))
        return -1;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "Router: the slow path must be callable");
        return -1;
    }
    demux = PyObject_GetAttr(link, s_demux);
    if (demux == NULL)
        return -1;
    queue = PyObject_GetAttr(demux, s_due);
    if (queue == NULL) {
        Py_DECREF(demux);
        return -1;
    }
    router_clear(self);
    Py_INCREF(link);
    Py_INCREF(conn);
    Py_INCREF(slow);
    self->link = link;
    self->conn = conn;
    self->slow = slow;
    self->demux = demux;
    self->queue = queue;
    return 0;
}

/* Routes the whole replies at the head of data[pos:] to the head entry of `queue` if its
 * owner's lane is armed on this link: returns the new pos (unchanged when it could not), or -1
 * with an exception set. *stop is set when nothing more may be routed in C. */
static Py_ssize_t
route_head(Router *self, PyObject *data, Py_ssize_t pos, PyObject *queue, int *stop)
{
    const char *base = PyBytes_AS_STRING(data), *end = base + PyBytes_GET_SIZE(data), *next;
    PyObject *entry = NULL, *lane_obj = NULL, *chunk = NULL, *r = NULL;
    Lane *lane;
    Py_ssize_t n, count = 0, total, result = -1;

    *stop = 1;
    n = PyObject_Length(queue);
    if (n <= 0)
        return n < 0 ? -1 : pos;   /* (nobody is due replies: the Python path says so) */
    entry = PySequence_GetItem(queue, 0);
    if (entry == NULL)
        return -1;
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 2) {
        result = pos;
        goto done;
    }
    lane_obj = PyObject_GetAttr(PyList_GET_ITEM(entry, 0), s_lane);
    if (lane_obj == NULL) {   /* (the link's own setup commands have no lane) */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            goto done;
        PyErr_Clear();
        result = pos;
        goto done;
    }
    lane = (Lane *)lane_obj;
    n = PyLong_AsSsize_t(PyList_GET_ITEM(entry, 1));
    if (n == -1 && PyErr_Occurred())
        goto done;
    if (!Py_IS_TYPE(lane_obj, &LaneType) || lane->known == NULL || lane->link != self->link
            || lane->owner != PyList_GET_ITEM(entry, 0) || n <= 0) {
        result = pos;
        goto done;
    }
    next = run_of(reply_end, base + pos, end, n, &count);
    if (count == 0 || count > lane->due) {
        result = pos;
        goto done;
    }
    total = int_attr(self->link, s_due);
    if (total < 0)
        goto done;
    if (count == n) {
        r = PyObject_CallMethodNoArgs(queue, s_popleft);
        if (r == NULL)
            goto done;
        Py_CLEAR(r);
    } else {
        PyObject *left = PyLong_FromSsize_t(n - count);
        if (left == NULL || PyList_SetItem(entry, 1, left) < 0)
            goto done;
    }
    if (set_int_attr(self->link, s_due, total - count) < 0)
        goto done;
    lane->due -= count;
    if (pos == 0 && next == end) {
        chunk = data;
        Py_INCREF(chunk);
    } else {
        chunk = PyBytes_FromStringAndSize(base + pos, next - (base + pos));
        if (chunk == NULL)
            goto done;
    }
    stats.bytes_out += (unsigned long long)PyBytes_GET_SIZE(chunk);
    r = PyObject_CallOneArg(lane->client_write, chunk);
    if (r == NULL)
        goto done;
    Py_CLEAR(r);
    result = next - base;
    *stop = count < n;   /* what follows (if anything) is not a whole reply of this owner's */
done:
    Py_XDECREF(chunk);
    Py_XDECREF(lane_obj);
    Py_XDECREF(entry);
    return result;
}

static PyObject *
router_data_received_(Router *self, PyObject *data)
{
    PyObject *current = NULL, *clean = NULL, *rest, *r;
    Py_ssize_t pos = 0, size;
    int stop = 0;

    if (self->slow == NULL || self->queue == NULL)   /* (cleared by the collector) */
        Py_RETURN_NONE;
    if (self->link == NULL || !PyBytes_CheckExact(data))
        return PyObject_CallOneArg(self->slow, data);
    Py_INCREF(self);   /* (a write may run Python code) */
    size = PyBytes_GET_SIZE(data);
    if ((current = PyObject_GetAttr(self->link, s_conn)) == NULL
            || (clean = PyObject_GetAttr(self->demux, s_clean)) == NULL)
        goto error;
    if (current == self->conn && clean == Py_True) {
        while (pos < size && !stop) {
            pos = route_head(self, data, pos, self->queue, &stop);
            if (pos < 0)
                goto error;
        }
    }
    Py_DECREF(current);
    Py_DECREF(clean);
    if (pos == size) {
        Py_DECREF(self);
        Py_RETURN_NONE;
    }
    if (pos == 0) {
        rest = data;
        Py_INCREF(rest);
    } else {
        rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + pos, size - pos);
        if (rest == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    r = PyObject_CallOneArg(self->slow, rest);
    Py_DECREF(rest);
    Py_DECREF(self);
    return r;
error:
    Py_XDECREF(current);
    Py_XDECREF(clean);
    Py_DECREF(self);
    return NULL;
}

static PyObject *
router_data_received(Router *self, PyObject *data)
{
    struct timespec t0;
    PyObject *r;
    if (!sample_start(&t0))
        return router_data_received_(self, data);
    r = router_data_received_(self, data);
    sample_end(&t0);
    return r;
}

static PyMethodDef router_methods[] = {
    {"data_received", (PyCFunction)router_data_received, METH_O,
     "data_received(data): bytes from the shared link (a Protocol's data_received)."},
    {NULL},
};

static PyTypeObject RouterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._lane.Router",
    .tp_basicsize = sizeof(Router),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reply routing of a shared link for clients whose lanes are armed; see _lane.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)router_init,
    .tp_dealloc = (destructor)router_dealloc,
    .tp_traverse = (traverseproc)router_traverse,
    .tp_clear = (inquiry)router_clear,
    .tp_methods = router_methods,
};

/* ---- Counter and stats() (see "Metrics kept in C" above) */

static PyObject *
counter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Counter", kwlist))
        return NULL;
    return type->tp_alloc(type, 0);   /* (zeroed: value 0) */
}

static PyObject *
counter_add(Counter *self, PyObject *n)
{
    unsigned long long v;
    if (!PyLong_Check(n)) {
        PyErr_Format(PyExc_TypeError, "Counter.add: an int, not %.100s", Py_TYPE(n)->tp_name);
        return NULL;
    }
    v = PyLong_AsUnsignedLongLong(n);   /* (OverflowError for a negative or huge one) */
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    self->value += v;
    Py_RETURN_NONE;
}

static PyObject *
counter_get_value(Counter *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->value);
}

static PyGetSetDef counter_getset[] = {
    {"value", (getter)counter_get_value, NULL, "the count so far", NULL},
    {NULL},
};

static PyMethodDef counter_methods[] = {
    {"add", (PyCFunction)counter_add, METH_O, "add(n): count n more (an int >= 0)."},
    {NULL},
};

static PyTypeObject CounterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._lane.Counter",
    .tp_basicsize = sizeof(Counter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A uint64 counter that lanes add to in C (a memo entry's 8th item); see _lane.c.",
    .tp_new = counter_new,
    .tp_methods = counter_methods,
    .tp_getset = counter_getset,
};

/* stats() -> {"bytes_in", "bytes_out", "reads", "latency_buckets", "latency_count",
 * "latency_sum_ns"}: a copy of the module's counters (latency_buckets per bucket, not
 * cumulative, one more than LATENCY_BOUNDS_NS: the last is +Inf). */
static PyObject *
lane_stats(PyObject *module, PyObject *unused)
{
    PyObject *buckets = PyTuple_New(LATENCY_BOUNDS + 1), *r;
    int i;
    if (buckets == NULL)
        return NULL;
    for (i = 0; i <= LATENCY_BOUNDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(stats.buckets[i]);
        if (v == NULL) {
            Py_DECREF(buckets);
            return NULL;
        }
        PyTuple_SET_ITEM(buckets, i, v);
    }
    r = Py_BuildValue("{sKsKsKsOsKsK}", "bytes_in", stats.bytes_in, "bytes_out", stats.bytes_out,
                      "reads", stats.reads, "latency_buckets", buckets,
                      "latency_count", stats.count, "latency_sum_ns", stats.sum_ns);
    Py_DECREF(buckets);
    return r;
}

static PyMethodDef module_methods[] = {
    {"stats", (PyCFunction)lane_stats, METH_NOARGS,
     "stats() -> dict: the client bytes moved in C and the sampled read latency histogram."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "redisgate._lane",
    "The steady state of one client connection in C (see the source for the contract).", -1,
    module_methods,
};

static int
add_type(PyObject *m, const char *name, PyTypeObject *type)
{
    Py_INCREF(type);
    if (PyModule_AddObject(m, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

static int
intern(PyObject **slot, const char *name)
{
    *slot = PyUnicode_InternFromString(name);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__lane(void)
{
    PyObject *m, *bounds = NULL;
    int i;
    if (intern(&s_due, "due") < 0 || intern(&s_ready, "ready") < 0 || intern(&s_out, "out") < 0
            || intern(&s_demux, "demux") < 0 || intern(&s_conn, "conn") < 0
            || intern(&s_transport, "transport") < 0 || intern(&s_write, "write") < 0
            || intern(&s_send, "send") < 0 || intern(&s_clean, "clean") < 0
            || intern(&s_lane, "lane") < 0 || intern(&s_append, "append") < 0
            || intern(&s_popleft, "popleft") < 0 || intern(&s_flush_soon, "_flush_soon") < 0)
        return NULL;
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&RouterType) < 0
            || PyType_Ready(&CounterType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    bounds = PyTuple_New(LATENCY_BOUNDS);
    if (bounds == NULL)
        goto error;
    for (i = 0; i < LATENCY_BOUNDS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(latency_bounds_ns[i]);
        if (v == NULL)
            goto error;
        PyTuple_SET_ITEM(bounds, i, v);
    }
    if (add_type(m, "Lane", &LaneType) < 0 || add_type(m, "Router", &RouterType) < 0
            || add_type(m, "Counter", &CounterType) < 0
            || PyModule_AddIntConstant(m, "LATENCY_SAMPLE", LATENCY_SAMPLE) < 0
            || PyModule_AddObject(m, "LATENCY_BOUNDS_NS", bounds) < 0)
        goto error;
    return m;
error:
    Py_XDECREF(bounds);
    Py_DECREF(m);
    return NULL;
}
