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
 *                        memo for the user, the very same dict) with a Verdict (below: built
 *                        by redisgate.memo from the user's compiled rules verdict) whose arity
 *                        fits: ALLOW, or ONE_KEY and its one key starts with one of its
 *                        prefixes, is in its exact set or passes its match, or SCRIPT and the
 *                        EVALSHA fits a ScriptForm the verdict learnt from calls the judge
 *                        allowed, per SHA1 and queue (Session._lane_script; script_passes).
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
#include <structmember.h>
#include <time.h>

/* Attribute names of server.SharedLink, mux.Demux and server.ClientConnection (interned). */
static PyObject *s_due, *s_ready, *s_out, *s_demux, *s_conn, *s_transport, *s_write, *s_send,
    *s_clean, *s_lane, *s_append, *s_popleft, *s_flush_soon;

/* ---- Metrics kept in C, read when /metrics is scraped (redisgate.metrics' collector) ----
 *
 * Counter: one uint64 per (user, command) (redisgate.metrics.forwarded_counter), the `counter`
 * of a memo Verdict (redisgate.memo); a lane adds the requests it forwarded under that entry's
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

/* ---- Verdicts: the decision data the lane reads, in a form it owns ----
 *
 * Verdict: one entry of Session._inline's memo (one per user and command name as sent; the very
 * same dict is the lane's `known`), built once by redisgate.memo from the user's compiled
 * rules.FastVerdict, never changed afterwards (but for a SCRIPT verdict's forms, learnt from calls
 * the judge allowed). Python reads it by attribute name (T_OBJECT_EX members: specialised by
 * CPython 3.11's LOAD_ATTR_SLOT); C reads the struct. Kinds (the module exports their names as
 * ALLOW, ONE_KEY, ASK, SCRIPT, the `kind` attribute being one of those very objects):
 *
 *   ALLOW    fewest <= argc <= most: forwarded whatever the arguments;
 *   ONE_KEY  fewest <= argc <= most, and the one key (argument `pos`) starts with one of
 *            `prefixes`, is in `exact` or passes `match` (a callable, or None);
 *   ASK      the judge decides (the lane gives up: Python asks it);
 *   SCRIPT   the judge decides, but the lane forwards an EVALSHA that fits a ScriptForm learnt
 *            (Verdict.learn) for its SHA1 and KEYS[1]'s queue: the text after `tag` (the
 *            script contracts' hash-tag opening, e.g. b"xyz:{", given at build time) up to the
 *            first '}'.
 *
 * Every argument is checked when the verdict is built (TypeError / ValueError, nothing kept), so
 * the lane trusts the struct. `counter` is the Counter the lane adds the requests it forwards
 * under this verdict to. */
typedef enum { V_ALLOW, V_ONE_KEY, V_ASK, V_SCRIPT } VerdictKind;
#define VERDICT_KINDS 4
static PyObject *kind_names[VERDICT_KINDS];   /* "allow", "one_key", "ask", "script" (interned) */

#define SCRIPT_MAX_ARGS 64
#define SCRIPT_MAX_SHAS 64     /* SHA1s remembered per verdict (then forgotten all at once) */
#define SCRIPT_MAX_QUEUES 64   /* queues per SHA1, likewise */

typedef struct {
    PyObject_HEAD
    PyObject *kind;          /* one of kind_names */
    PyObject *spec;          /* commands.Spec: Python's business */
    PyObject *fewest_o, *most_o, *pos_o;   /* the ints below, for Python (pos: None but ONE_KEY) */
    PyObject *prefixes;      /* a tuple of bytes (ONE_KEY), else () */
    PyObject *exact;         /* a frozenset (ONE_KEY), else an empty one */
    PyObject *match;         /* a callable or None */
    PyObject *counter;       /* a Counter */
    PyObject *tag;           /* bytes (SCRIPT), else None */
    PyObject *forms;         /* SCRIPT: {SHA1: {queue: ScriptForm}}, owned; else NULL */
    VerdictKind k;
    Py_ssize_t fewest, most, pos;
    int has_exact;
} Verdict;

/* The kinds of check of a ScriptForm (scripts.LaneCheckKind, by method name). */
typedef enum { CHECK_EXACT, CHECK_ONE_OF, CHECK_PREFIX, CHECK_DATE } CheckKind;

typedef struct {
    CheckKind kind;
    Py_ssize_t index;        /* 0 <= index < SCRIPT_MAX_ARGS */
    PyObject *value;         /* bytes; CHECK_ONE_OF: a non-empty tuple of bytes */
} FormCheck;

/* What every call of one script for one queue must look like to pass (scripts.LaneForm): numkeys
 * as written, at least `need` arguments, and each check. Built empty, filled by its methods, then
 * frozen when a verdict learns it. */
typedef struct {
    PyObject_HEAD
    PyObject *numkeys;       /* bytes */
    Py_ssize_t need;
    int n, frozen;
    FormCheck checks[SCRIPT_MAX_ARGS];
} ScriptForm;

static PyTypeObject VerdictType, ScriptFormType;

static int
script_form_passes(ScriptForm *form, const char *const *arg, const Py_ssize_t *len,
                   Py_ssize_t argc)
{
    int i;
    if (PyBytes_GET_SIZE(form->numkeys) != len[2]
            || memcmp(PyBytes_AS_STRING(form->numkeys), arg[2], len[2]) != 0 || argc < form->need)
        return 0;
    for (i = 0; i < form->n; i++) {
        const FormCheck *c = &form->checks[i];
        Py_ssize_t j, vlen, index = c->index;
        int ok = 0;
        if (index >= argc)
            return 0;
        if (c->kind == CHECK_ONE_OF) {
            for (j = 0; j < PyTuple_GET_SIZE(c->value) && !ok; j++) {
                PyObject *name = PyTuple_GET_ITEM(c->value, j);
                ok = PyBytes_GET_SIZE(name) == len[index]
                    && memcmp(PyBytes_AS_STRING(name), arg[index], len[index]) == 0;
            }
        } else {
            vlen = PyBytes_GET_SIZE(c->value);
            ok = len[index] >= vlen && memcmp(PyBytes_AS_STRING(c->value), arg[index], vlen) == 0
                && (c->kind == CHECK_EXACT ? len[index] == vlen
                    : c->kind == CHECK_PREFIX ? len[index] > vlen
                    : len[index] == vlen + 10 && is_date(arg[index] + vlen));
        }
        if (!ok)
            return 0;
    }
    return 1;
}

/* SCRIPT: an EVALSHA passes when the verdict learnt a form for its SHA1 and KEYS[1]'s queue and
 * the call fits it. Nothing here runs Python code, so the borrowed items stay valid. 1, 0 or -1
 * as passes(). */
static int
script_passes(Verdict *v, const char *req, const char *end, Py_ssize_t argc, Py_ssize_t max_bulk)
{
    const char *arg[SCRIPT_MAX_ARGS], *p, *close, *tag;
    Py_ssize_t len[SCRIPT_MAX_ARGS], i, taglen;
    PyObject *per, *form;

    if (argc < 4 || argc > SCRIPT_MAX_ARGS)
        return 0;
    p = arguments_at(req, end, argc);   /* (checked again: any disagreement gives up) */
    for (i = 0; i < argc; i++) {
        arg[i] = next_argument(p, end, max_bulk, &len[i], &p);
        if (arg[i] == NULL)
            return 0;
    }
    per = dict_item(v->forms, arg[1], len[1]);
    if (per == NULL)
        return PyErr_Occurred() ? -1 : 0;
    /* KEYS[1]'s queue: <tag><queue>}..., up to the first '}' (as scripts.queue_of) */
    tag = PyBytes_AS_STRING(v->tag);
    taglen = PyBytes_GET_SIZE(v->tag);
    if (len[3] < taglen + 2 || memcmp(arg[3], tag, taglen) != 0)
        return 0;
    close = (const char *)memchr(arg[3] + taglen, '}', len[3] - taglen);
    if (close == NULL || close == arg[3] + taglen)
        return 0;
    form = dict_item(per, arg[3] + taglen, close - arg[3] - taglen);
    if (form == NULL)
        return PyErr_Occurred() ? -1 : 0;
    return script_form_passes((ScriptForm *)form, arg, len, argc);
}

/* 1 if the verdict lets this request through, 0 if the lane must give up on it, -1 on a Python
 * error (`match` raised). */
static int
passes(Verdict *v, const char *req, const char *end, Py_ssize_t argc, Py_ssize_t max_bulk)
{
    Py_ssize_t klen, i;
    PyObject *key;
    const char *k;
    int ok;

    if (argc < v->fewest || argc > v->most)
        return 0;
    switch (v->k) {
    case V_ALLOW:
        return 1;
    case V_SCRIPT:
        return script_passes(v, req, end, argc, max_bulk);
    case V_ASK:
        return 0;
    case V_ONE_KEY:
        break;
    }
    if (v->pos >= argc)
        return 0;
    k = argument(req, end, v->pos, max_bulk, &klen);
    if (k == NULL)
        return 0;
    for (i = 0; i < PyTuple_GET_SIZE(v->prefixes); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(v->prefixes, i);
        if (PyBytes_GET_SIZE(prefix) <= klen
                && memcmp(PyBytes_AS_STRING(prefix), k, PyBytes_GET_SIZE(prefix)) == 0)
            return 1;
    }
    if (!v->has_exact && v->match == Py_None)
        return 0;
    key = PyBytes_FromStringAndSize(k, klen);
    if (key == NULL)
        return -1;
    ok = v->has_exact ? PySet_Contains(v->exact, key) : 0;
    if (ok == 0 && v->match != Py_None) {
        PyObject *r = PyObject_CallOneArg(v->match, key);
        ok = r == NULL ? -1 : PyObject_IsTrue(r);
        Py_XDECREF(r);
    }
    Py_DECREF(key);
    return ok;
}

static int
verdict_traverse(Verdict *self, visitproc visit, void *arg)
{
    Py_VISIT(self->spec);
    Py_VISIT(self->prefixes);
    Py_VISIT(self->exact);
    Py_VISIT(self->match);
    Py_VISIT(self->counter);
    Py_VISIT(self->forms);
    return 0;
}

static int
verdict_clear(Verdict *self)
{
    Py_CLEAR(self->spec);
    Py_CLEAR(self->fewest_o);
    Py_CLEAR(self->most_o);
    Py_CLEAR(self->pos_o);
    Py_CLEAR(self->prefixes);
    Py_CLEAR(self->exact);
    Py_CLEAR(self->match);
    Py_CLEAR(self->counter);
    Py_CLEAR(self->tag);
    Py_CLEAR(self->forms);
    Py_CLEAR(self->kind);
    return 0;
}

static void
verdict_dealloc(Verdict *self)
{
    PyObject_GC_UnTrack(self);
    verdict_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
verdict_new_refused(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyErr_SetString(PyExc_TypeError,
                    "Verdict: made by Verdict.allow(), one_key(), ask() or script()");
    return NULL;
}

/* The checks shared by every kind, then a new Verdict with its common fields (new references);
 * NULL with an exception, nothing kept, when one fails. */
static Verdict *
verdict_make(VerdictKind k, PyObject *spec, Py_ssize_t fewest, Py_ssize_t most, PyObject *counter)
{
    Verdict *v;
    if (fewest < 1 || most < fewest) {
        PyErr_Format(PyExc_ValueError, "Verdict: the arity %zd..%zd is empty", fewest, most);
        return NULL;
    }
    if (!Py_IS_TYPE(counter, &CounterType)) {
        PyErr_Format(PyExc_TypeError, "Verdict: counter must be a Counter, not %.100s",
                     Py_TYPE(counter)->tp_name);
        return NULL;
    }
    v = PyObject_GC_New(Verdict, &VerdictType);
    if (v == NULL)
        return NULL;
    v->k = k;
    v->fewest = fewest;
    v->most = most;
    v->pos = -1;
    v->has_exact = 0;
    v->kind = Py_NewRef(kind_names[k]);
    v->spec = Py_NewRef(spec);
    v->counter = Py_NewRef(counter);
    v->fewest_o = PyLong_FromSsize_t(fewest);
    v->most_o = PyLong_FromSsize_t(most);
    v->pos_o = Py_NewRef(Py_None);
    v->prefixes = PyTuple_New(0);
    v->exact = PyFrozenSet_New(NULL);
    v->match = Py_NewRef(Py_None);
    v->tag = Py_NewRef(Py_None);
    v->forms = NULL;
    PyObject_GC_Track(v);
    if (v->fewest_o == NULL || v->most_o == NULL || v->prefixes == NULL || v->exact == NULL) {
        Py_DECREF(v);
        return NULL;
    }
    return v;
}

/* Verdict.allow(*, spec, fewest, most, counter) and Verdict.ask(...): the same arguments. */
static PyObject *
verdict_plain(PyObject *args, PyObject *kwds, VerdictKind k, const char *format)
{
    PyObject *spec, *counter;
    Py_ssize_t fewest, most;
    static char *kwlist[] = {"spec", "fewest", "most", "counter", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, format, kwlist, &spec, &fewest, &most,
                                     &counter))
        return NULL;
    return (PyObject *)verdict_make(k, spec, fewest, most, counter);
}

static PyObject *
verdict_allow(PyObject *cls, PyObject *args, PyObject *kwds)
{
    return verdict_plain(args, kwds, V_ALLOW, "OnnO:allow");
}

static PyObject *
verdict_ask(PyObject *cls, PyObject *args, PyObject *kwds)
{
    return verdict_plain(args, kwds, V_ASK, "OnnO:ask");
}

/* Verdict.one_key(*, spec, fewest, most, pos, prefixes, exact, match, counter) */
static PyObject *
verdict_one_key(PyObject *cls, PyObject *args, PyObject *kwds)
{
    PyObject *spec, *prefixes, *exact, *match, *counter;
    Py_ssize_t fewest, most, pos, i;
    Verdict *v;
    static char *kwlist[] = {"spec", "fewest", "most", "pos", "prefixes", "exact", "match",
                             "counter", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnnO!O!OO:one_key", kwlist, &spec, &fewest,
                                     &most, &pos, &PyTuple_Type, &prefixes, &PyFrozenSet_Type,
                                     &exact, &match, &counter))
        return NULL;
    if (!PyTuple_CheckExact(prefixes) || !PyFrozenSet_CheckExact(exact)) {
        PyErr_SetString(PyExc_TypeError, "Verdict.one_key: prefixes must be a tuple and exact "
                        "a frozenset (not subclasses)");
        return NULL;
    }
    for (i = 0; i < PyTuple_GET_SIZE(prefixes); i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(prefixes, i))) {
            PyErr_SetString(PyExc_TypeError, "Verdict.one_key: prefixes must be bytes");
            return NULL;
        }
    }
    if (match != Py_None && !PyCallable_Check(match)) {
        PyErr_SetString(PyExc_TypeError, "Verdict.one_key: match must be callable or None");
        return NULL;
    }
    if (pos < 1 || pos >= most || fewest <= pos) {
        PyErr_Format(PyExc_ValueError, "Verdict.one_key: the key position %zd is not within "
                     "the arity %zd..%zd", pos, fewest, most);
        return NULL;
    }
    v = verdict_make(V_ONE_KEY, spec, fewest, most, counter);
    if (v == NULL)
        return NULL;
    v->pos = pos;
    Py_SETREF(v->pos_o, PyLong_FromSsize_t(pos));
    if (v->pos_o == NULL) {
        Py_DECREF(v);
        return NULL;
    }
    Py_SETREF(v->prefixes, Py_NewRef(prefixes));
    Py_SETREF(v->exact, Py_NewRef(exact));
    Py_SETREF(v->match, Py_NewRef(match));
    v->has_exact = PySet_GET_SIZE(exact) > 0;
    return (PyObject *)v;
}

/* Verdict.script(*, spec, fewest, most, counter, tag) */
static PyObject *
verdict_script(PyObject *cls, PyObject *args, PyObject *kwds)
{
    PyObject *spec, *counter, *tag;
    Py_ssize_t fewest, most;
    Verdict *v;
    static char *kwlist[] = {"spec", "fewest", "most", "counter", "tag", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OnnOO!:script", kwlist, &spec, &fewest,
                                     &most, &counter, &PyBytes_Type, &tag))
        return NULL;
    if (!PyBytes_CheckExact(tag) || PyBytes_GET_SIZE(tag) == 0) {
        PyErr_SetString(PyExc_ValueError, "Verdict.script: tag must be non-empty bytes");
        return NULL;
    }
    v = verdict_make(V_SCRIPT, spec, fewest, most, counter);
    if (v == NULL)
        return NULL;
    Py_SETREF(v->tag, Py_NewRef(tag));
    v->forms = PyDict_New();
    if (v->forms == NULL) {
        Py_DECREF(v);
        return NULL;
    }
    return (PyObject *)v;
}

/* The arguments of knows() and learn(): a SCRIPT verdict, bytes, bytes. */
static int
verdict_script_args(Verdict *self, PyObject *sha, PyObject *queue, const char *what)
{
    if (self->k != V_SCRIPT) {
        PyErr_Format(PyExc_TypeError, "Verdict.%s: not a SCRIPT verdict", what);
        return -1;
    }
    if (!PyBytes_CheckExact(sha) || !PyBytes_CheckExact(queue)) {
        PyErr_Format(PyExc_TypeError, "Verdict.%s: the SHA1 and the queue must be bytes", what);
        return -1;
    }
    return 0;
}

/* knows(sha, queue) -> bool: a form for these is learnt. */
static PyObject *
verdict_knows(Verdict *self, PyObject *args)
{
    PyObject *sha, *queue, *per;
    if (!PyArg_ParseTuple(args, "OO:knows", &sha, &queue)
            || verdict_script_args(self, sha, queue, "knows") < 0)
        return NULL;
    per = PyDict_GetItemWithError(self->forms, sha);
    if (per == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_False);
    per = PyDict_GetItemWithError(per, queue);
    if (per == NULL)
        return PyErr_Occurred() ? NULL : Py_NewRef(Py_False);
    Py_RETURN_TRUE;
}

/* learn(sha, queue, form): from now on, calls of that script for that queue that fit the form
 * pass (the form is frozen). Bounded: SCRIPT_MAX_SHAS SHA1s, SCRIPT_MAX_QUEUES queues each (past
 * that, what was learnt for them is forgotten, and learnt again from the judge). */
static PyObject *
verdict_learn(Verdict *self, PyObject *args)
{
    PyObject *sha, *queue, *form, *per;
    if (!PyArg_ParseTuple(args, "OOO!:learn", &sha, &queue, &ScriptFormType, &form)
            || verdict_script_args(self, sha, queue, "learn") < 0)
        return NULL;
    if (PyBytes_GET_SIZE(queue) == 0) {
        PyErr_SetString(PyExc_ValueError, "Verdict.learn: an empty queue name");
        return NULL;
    }
    per = PyDict_GetItemWithError(self->forms, sha);
    if (per == NULL) {
        int rc;
        if (PyErr_Occurred())
            return NULL;
        if (PyDict_GET_SIZE(self->forms) >= SCRIPT_MAX_SHAS)
            PyDict_Clear(self->forms);
        per = PyDict_New();
        if (per == NULL)
            return NULL;
        rc = PyDict_SetItem(self->forms, sha, per);
        Py_DECREF(per);   /* (the dict holds it) */
        if (rc < 0)
            return NULL;
    } else if (PyDict_GET_SIZE(per) >= SCRIPT_MAX_QUEUES) {
        PyDict_Clear(per);
    }
    if (PyDict_SetItem(per, queue, form) < 0)
        return NULL;
    ((ScriptForm *)form)->frozen = 1;
    Py_RETURN_NONE;
}

static PyMemberDef verdict_members[] = {
    {"kind", T_OBJECT_EX, offsetof(Verdict, kind), READONLY,
     "ALLOW, ONE_KEY, ASK or SCRIPT (this module's constants)"},
    {"spec", T_OBJECT_EX, offsetof(Verdict, spec), READONLY, "the command's spec"},
    {"fewest", T_OBJECT_EX, offsetof(Verdict, fewest_o), READONLY, "the fewest arguments"},
    {"most", T_OBJECT_EX, offsetof(Verdict, most_o), READONLY, "the most arguments"},
    {"pos", T_OBJECT_EX, offsetof(Verdict, pos_o), READONLY, "ONE_KEY: the key's index, else None"},
    {"prefixes", T_OBJECT_EX, offsetof(Verdict, prefixes), READONLY, "ONE_KEY: key prefixes"},
    {"exact", T_OBJECT_EX, offsetof(Verdict, exact), READONLY, "ONE_KEY: exact key names"},
    {"match", T_OBJECT_EX, offsetof(Verdict, match), READONLY, "ONE_KEY: the key test, or None"},
    {"counter", T_OBJECT_EX, offsetof(Verdict, counter), READONLY, "the forwarded Counter"},
    {"tag", T_OBJECT_EX, offsetof(Verdict, tag), READONLY, "SCRIPT: the queue's hash-tag opening"},
    {NULL},
};

static PyMethodDef verdict_methods[] = {
    {"allow", (PyCFunction)(void (*)(void))verdict_allow, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "allow(*, spec, fewest, most, counter): forwarded whatever the arguments."},
    {"one_key", (PyCFunction)(void (*)(void))verdict_one_key,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "one_key(*, spec, fewest, most, pos, prefixes, exact, match, counter): forwarded when the "
     "key args[pos] passes."},
    {"ask", (PyCFunction)(void (*)(void))verdict_ask, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "ask(*, spec, fewest, most, counter): the judge decides."},
    {"script", (PyCFunction)(void (*)(void))verdict_script,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "script(*, spec, fewest, most, counter, tag): the judge decides; the lane forwards calls "
     "that fit a learnt ScriptForm."},
    {"knows", (PyCFunction)verdict_knows, METH_VARARGS,
     "knows(sha, queue) -> bool: a form for them is learnt (SCRIPT)."},
    {"learn", (PyCFunction)verdict_learn, METH_VARARGS,
     "learn(sha, queue, form): calls that fit the form pass from now on (SCRIPT)."},
    {NULL},
};

static PyTypeObject VerdictType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._lane.Verdict",
    .tp_basicsize = sizeof(Verdict),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One memo entry: how a user's command (a name as sent) is decided inline; see "
              "_lane.c.",
    .tp_new = verdict_new_refused,
    .tp_dealloc = (destructor)verdict_dealloc,
    .tp_traverse = (traverseproc)verdict_traverse,
    .tp_clear = (inquiry)verdict_clear,
    .tp_methods = verdict_methods,
    .tp_members = verdict_members,
};

static void
script_form_dealloc(ScriptForm *self)
{
    int i;
    for (i = 0; i < self->n; i++)
        Py_DECREF(self->checks[i].value);
    Py_XDECREF(self->numkeys);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ScriptForm(numkeys, need) */
static PyObject *
script_form_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *numkeys;
    Py_ssize_t need;
    ScriptForm *self;
    static char *kwlist[] = {"numkeys", "need", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!n:ScriptForm", kwlist, &PyBytes_Type,
                                     &numkeys, &need))
        return NULL;
    if (!PyBytes_CheckExact(numkeys) || need < 4 || need > SCRIPT_MAX_ARGS) {
        PyErr_Format(PyExc_ValueError, "ScriptForm: numkeys must be bytes and need within "
                     "4..%d", SCRIPT_MAX_ARGS);
        return NULL;
    }
    self = (ScriptForm *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->numkeys = Py_NewRef(numkeys);
    self->need = need;
    return (PyObject *)self;
}

/* One more check (every method below): index, then a value of the kind's type. */
static PyObject *
script_form_add(ScriptForm *self, PyObject *args, CheckKind kind, const char *format)
{
    Py_ssize_t index, i;
    PyObject *value;
    if (!PyArg_ParseTuple(args, format, &index, &value))
        return NULL;
    if (self->frozen) {
        PyErr_SetString(PyExc_RuntimeError, "ScriptForm: learnt by a verdict, so frozen");
        return NULL;
    }
    if (index < 1 || index >= SCRIPT_MAX_ARGS || self->n >= SCRIPT_MAX_ARGS) {
        PyErr_Format(PyExc_ValueError, "ScriptForm: index %zd not within 1..%d, or too many "
                     "checks", index, SCRIPT_MAX_ARGS - 1);
        return NULL;
    }
    if (kind == CHECK_ONE_OF) {
        if (!PyTuple_CheckExact(value) || PyTuple_GET_SIZE(value) == 0) {
            PyErr_SetString(PyExc_TypeError, "ScriptForm.one_of: a non-empty tuple of bytes");
            return NULL;
        }
        for (i = 0; i < PyTuple_GET_SIZE(value); i++) {
            if (!PyBytes_CheckExact(PyTuple_GET_ITEM(value, i))) {
                PyErr_SetString(PyExc_TypeError, "ScriptForm.one_of: a non-empty tuple of bytes");
                return NULL;
            }
        }
    } else if (!PyBytes_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "ScriptForm: the value must be bytes");
        return NULL;
    }
    self->checks[self->n].kind = kind;
    self->checks[self->n].index = index;
    self->checks[self->n].value = Py_NewRef(value);
    self->n++;
    Py_RETURN_NONE;
}

static PyObject *
script_form_exact(ScriptForm *self, PyObject *args)
{
    return script_form_add(self, args, CHECK_EXACT, "nO:exact");
}

static PyObject *
script_form_one_of(ScriptForm *self, PyObject *args)
{
    return script_form_add(self, args, CHECK_ONE_OF, "nO:one_of");
}

static PyObject *
script_form_prefix(ScriptForm *self, PyObject *args)
{
    return script_form_add(self, args, CHECK_PREFIX, "nO:prefix");
}

static PyObject *
script_form_date(ScriptForm *self, PyObject *args)
{
    return script_form_add(self, args, CHECK_DATE, "nO:date");
}

static PyObject *
script_form_get_checks(ScriptForm *self, void *closure)
{
    return PyLong_FromLong(self->n);
}

static PyMethodDef script_form_methods[] = {
    {"exact", (PyCFunction)script_form_exact, METH_VARARGS,
     "exact(index, value): args[index] == value."},
    {"one_of", (PyCFunction)script_form_one_of, METH_VARARGS,
     "one_of(index, values): args[index] is one of the tuple `values`."},
    {"prefix", (PyCFunction)script_form_prefix, METH_VARARGS,
     "prefix(index, value): args[index] starts with value and is longer."},
    {"date", (PyCFunction)script_form_date, METH_VARARGS,
     "date(index, value): args[index] is value then a YYYY-MM-DD date."},
    {NULL},
};

static PyMemberDef script_form_members[] = {
    {"numkeys", T_OBJECT_EX, offsetof(ScriptForm, numkeys), READONLY, "numkeys as written"},
    {"need", T_PYSSIZET, offsetof(ScriptForm, need), READONLY, "the fewest arguments"},
    {NULL},
};

static PyGetSetDef script_form_getset[] = {
    {"checks", (getter)script_form_get_checks, NULL, "how many checks", NULL},
    {NULL},
};

static PyTypeObject ScriptFormType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._lane.ScriptForm",
    .tp_basicsize = sizeof(ScriptForm),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What every call of one script for one queue must look like to pass in C (a "
              "scripts.LaneForm); see _lane.c.",
    .tp_new = script_form_new,
    .tp_dealloc = (destructor)script_form_dealloc,
    .tp_methods = script_form_methods,
    .tp_members = script_form_members,
    .tp_getset = script_form_getset,
};

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
    /* (one at a time: no attribute is looked up with an exception pending) */
    if ((ready = PyObject_GetAttr(link, s_ready)) == NULL
            || (out = PyObject_GetAttr(link, s_out)) == NULL)
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
            PyObject *found = PyDict_GetItemWithError(self->known, key);
            Py_DECREF(key);
            Py_CLEAR(entry);
            if (found == NULL) {
                if (PyErr_Occurred())
                    goto error;
                goto slow;
            }
            if (!Py_IS_TYPE(found, &VerdictType))
                goto slow;   /* (only Verdicts are read: anything else is Python's) */
            entry = Py_NewRef(found);
            name = n;
            name_len = len;
            cell = ((Verdict *)entry)->counter;
        }
        ok = passes((Verdict *)entry, p, next, argc, self->max_bulk);
        if (ok < 0)
            goto error;
        if (ok == 0 || self->known == NULL)   /* (a match callable could have disarmed us) */
            goto slow;
        if (self->due + count >= self->window)   /* (the window is full: Python holds the rest) */
            goto slow;
        if (tally_add(&tally, cell) < 0)   /* (too many names: Python counts) */
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
    .tp_doc = "A uint64 counter that lanes add to in C (a memo Verdict's counter); see _lane.c.",
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
    if (intern(&kind_names[V_ALLOW], "allow") < 0 || intern(&kind_names[V_ONE_KEY], "one_key") < 0
            || intern(&kind_names[V_ASK], "ask") < 0 || intern(&kind_names[V_SCRIPT], "script") < 0)
        return NULL;
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&RouterType) < 0
            || PyType_Ready(&CounterType) < 0 || PyType_Ready(&VerdictType) < 0
            || PyType_Ready(&ScriptFormType) < 0)
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
            || add_type(m, "Verdict", &VerdictType) < 0
            || add_type(m, "ScriptForm", &ScriptFormType) < 0
            || PyModule_AddObjectRef(m, "ALLOW", kind_names[V_ALLOW]) < 0
            || PyModule_AddObjectRef(m, "ONE_KEY", kind_names[V_ONE_KEY]) < 0
            || PyModule_AddObjectRef(m, "ASK", kind_names[V_ASK]) < 0
            || PyModule_AddObjectRef(m, "SCRIPT", kind_names[V_SCRIPT]) < 0
            || PyModule_AddIntConstant(m, "LATENCY_SAMPLE", LATENCY_SAMPLE) < 0
            || PyModule_AddObject(m, "LATENCY_BOUNDS_NS", bounds) < 0)
        goto error;
    return m;
error:
    Py_XDECREF(bounds);
    Py_DECREF(m);
    return NULL;
}
