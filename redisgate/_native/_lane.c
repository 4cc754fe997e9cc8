/* redisgate._native._lane: the steady state of one client connection in C, on its own upstream link or on
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
 *                        by redisgate.policy.memo from the user's compiled rules verdict) whose arity
 *                        fits: ALLOW, or ONE_KEY and its one key starts with one of its
 *                        prefixes, is in its exact set or passes its match, or SCRIPT and the
 *                        EVALSHA fits a ScriptForm the verdict learnt from calls the judge
 *                        allowed, per SHA1 and queue (Session._lane_script; script_passes).
 *                        Then due += how many, never past `window` (a read that would pass
 *                        it goes to Python, which holds what does not fit: flow control).
 *                        On a dedicated link it writes the upstream; on a shared one (`link`,
 *                        its LinkState, and `owner`) it calls the link's own send, in C
 *                        (linkstate_send: SharedLink.send is the same call).
 *   upstream_data(data)  (dedicated link) passes `data` to the client when it is nothing but
 *                        whole replies to due commands (reply_end(): any canonical reply but
 *                        a push or an attribute); due -= how many.
 *
 * A LinkState is a shared link's books, kept once, in C fields: the queue of whose replies come
 * next (each run with the owner's Lane), the count due, `out` and whether its flush is scheduled,
 * ready, clean, and the connection attached. server.SharedLink and mux.Demux keep theirs in it
 * (redisgate/protocol/linkstate.py has its Python twin, used when this module is not built).
 *
 * A Router is a shared link connection's data_received: it routes the whole replies at the head
 * of the link's LinkState queue to clients whose lanes are armed on that link, keeping the books.
 *
 * Anything else goes, untouched and whole (a Router: the rest of the read), to the Python
 * callable given for it, which takes the due count back first (ClientConnection.disarm_lane)
 * and re-arms when it is done. The C side never decides anything the Python path would decide
 * otherwise: it only concludes "forward" from an entry Python computed, and "this client's
 * reply" from the LinkState books both sides keep; it gives up on everything else. Nothing here
 * looks up a Python attribute by name: what C reads comes through the signatures in _lane.pyi. The memo being cleared (a
 * config reload, a new upstream version: Gate.forget_fast) makes every name a miss, so a
 * reload is seen at the next command.
 */
#include "_respscan.h"
#include <structmember.h>
#include <time.h>

static PyTypeObject LaneType, LinkStateType;

/* ---- Metrics kept in C, read when /metrics is scraped (redisgate.telemetry.metrics' collector) ----
 *
 * Counter: one uint64 per (user, command) (redisgate.telemetry.metrics.forwarded_counter), the `counter`
 * of a memo Verdict (redisgate.policy.memo); a lane adds the requests it forwarded under that entry's
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
    PyObject *link;             /* on a shared link, while armed: its LinkState... */
    PyObject *owner;            /* ...and the ClientConnection, the owner its queue knows */
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
}

static int
lane_traverse(Lane *self, visitproc visit, void *arg)
{
    Py_VISIT(self->known);
    Py_VISIT(self->upstream_write);
    Py_VISIT(self->client_write);
    Py_VISIT(self->link);
    Py_VISIT(self->owner);
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

/* arm(known, upstream_write, client_write, due, max_args, max_bulk, link=None, owner=None):
 * max_args and max_bulk are the request parser's limits (resp.RequestParser.limits); on a
 * shared link, `link` is its LinkState and `owner` the ClientConnection. Nothing is looked up
 * by name: a failed arm takes no reference. */
static PyObject *
lane_arm(Lane *self, PyObject *args, PyObject *kwds)
{
    PyObject *known, *upstream_write, *client_write, *link = Py_None, *owner = Py_None;
    Py_ssize_t due, max_args, max_bulk;
    static char *kwlist[] = {"known", "upstream_write", "client_write", "due", "max_args",
                             "max_bulk", "link", "owner", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOnnn|OO:arm", kwlist, &PyDict_Type, &known,
                                     &upstream_write, &client_write, &due, &max_args, &max_bulk,
                                     &link, &owner))
        return NULL;
    if ((link == Py_None) != (owner == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "Lane.arm: a shared link needs its owner");
        return NULL;
    }
    if (link != Py_None && !Py_IS_TYPE(link, &LinkStateType)) {
        PyErr_Format(PyExc_TypeError, "Lane.arm: link must be a LinkState, not %.100s",
                     Py_TYPE(link)->tp_name);
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
    self->known = Py_NewRef(known);
    self->upstream_write = Py_NewRef(upstream_write);
    self->client_write = Py_NewRef(client_write);
    self->link = link == Py_None ? NULL : Py_NewRef(link);
    self->owner = owner == Py_None ? NULL : Py_NewRef(owner);
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
 * same dict is the lane's `known`), built once by redisgate.policy.memo from the user's compiled
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
    .tp_name = "redisgate._native._lane.Verdict",
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
    .tp_name = "redisgate._native._lane.ScriptForm",
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

/* ---- LinkState: a shared link's reply accounting, kept here once ----
 *
 * One per server.SharedLink, for life. It holds what the link's Python side (SharedLink, whose
 * mux.Demux cuts the reply stream) and the C side (a Lane armed on the link, the link's Router)
 * both act on, as C fields: the queue of whose replies come next and how many (`sent`,
 * `put_first`, `took`, `forget`), the clients' replies due all together (`due`), whether the
 * link is ready, the bytes waiting for this loop turn's flush (`out`) and whether that flush is
 * scheduled, whether no reply is half read by the Python path (`clean`), and the connection the
 * link reads and writes now (`attach`: its identity and its transport's write). `send` and
 * `flush` are SharedLink.send and SharedLink.flush: the only copy of that logic. What needs the
 * event loop (scheduling the flush, opening the link) is the `after_send` callable's: it is
 * called when bytes were queued and nothing will write them yet (the turn's first queued bytes,
 * or a link not ready). redisgate/protocol/linkstate.py is the pure-Python twin (no _lane built). */
typedef struct {
    PyObject *owner;   /* strong */
    PyObject *lane;    /* strong or NULL: the owner's Lane, which the Router hands replies to
                          while it is armed on this link for this owner */
    Py_ssize_t n;      /* replies still due, > 0 */
} DueEntry;

typedef struct {
    PyObject_HEAD
    DueEntry *ring;               /* a ring buffer of `len` entries from `head`, `cap` slots */
    Py_ssize_t cap, head, len;
    Py_ssize_t pending;           /* the sum of the entries' n */
    Py_ssize_t due;               /* clients' replies due, all together (SharedLink.due) */
    int ready, flush_soon, clean;
    PyObject *out;                /* a list of bytes, for life */
    PyObject *conn;               /* the connection now (identity only), or NULL */
    PyObject *write;              /* its transport's write, or NULL */
    PyObject *after_send;         /* callable(owner, size, replies) */
} LinkState;

static inline DueEntry *
due_at(LinkState *st, Py_ssize_t i)
{
    return &st->ring[(st->head + i) % st->cap];
}

static int
due_grow(LinkState *st)
{
    Py_ssize_t cap = st->cap ? st->cap * 2 : 8, i;
    DueEntry *ring;
    if (st->len < st->cap)
        return 0;
    if (cap > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(DueEntry)) {
        PyErr_NoMemory();
        return -1;
    }
    ring = PyMem_Malloc((size_t)cap * sizeof(DueEntry));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (i = 0; i < st->len; i++)
        ring[i] = *due_at(st, i);
    PyMem_Free(st->ring);
    st->ring = ring;
    st->cap = cap;
    st->head = 0;
    return 0;
}

/* `owner`'s commands asking for n replies were written after everything before (Demux.sent). */
static int
due_sent(LinkState *st, PyObject *owner, PyObject *lane, Py_ssize_t n)
{
    DueEntry *e;
    if (n <= 0)
        return 0;
    if (n > PY_SSIZE_T_MAX - st->pending) {
        PyErr_SetString(PyExc_OverflowError, "LinkState: too many replies due");
        return -1;
    }
    if (st->len > 0) {
        e = due_at(st, st->len - 1);
        if (e->owner == owner) {
            if (lane != NULL && e->lane != lane) {
                PyObject *old = e->lane;
                e->lane = Py_NewRef(lane);
                Py_XDECREF(old);
            }
            e->n += n;
            st->pending += n;
            return 0;
        }
    }
    if (due_grow(st) < 0)
        return -1;
    e = due_at(st, st->len);
    e->owner = Py_NewRef(owner);
    e->lane = Py_XNewRef(lane);
    e->n = n;
    st->len++;
    st->pending += n;
    return 0;
}

/* `count` of the head entry's replies arrived (0 < count <= its n): popped when none is left.
 * The caller holds what it needs of the entry. */
static void
due_took(LinkState *st, Py_ssize_t count)
{
    DueEntry *e = due_at(st, 0);
    e->n -= count;
    st->pending -= count;
    if (e->n == 0) {
        PyObject *owner = e->owner, *lane = e->lane;
        st->head = (st->head + 1) % st->cap;
        st->len--;
        Py_DECREF(owner);   /* (after the ring is consistent: a destructor may run) */
        Py_XDECREF(lane);
    }
}

/* Empties the queue (the state is consistent before the first reference is dropped). */
static void
due_clear(LinkState *st)
{
    DueEntry *ring = st->ring;
    Py_ssize_t i, len = st->len, head = st->head, cap = st->cap;
    st->ring = NULL;
    st->cap = st->head = st->len = st->pending = 0;
    for (i = 0; i < len; i++) {
        DueEntry *e = &ring[(head + i) % cap];
        Py_DECREF(e->owner);
        Py_XDECREF(e->lane);
    }
    PyMem_Free(ring);
}

static int
linkstate_traverse(LinkState *self, visitproc visit, void *arg)
{
    Py_ssize_t i;
    for (i = 0; i < self->len; i++) {
        Py_VISIT(due_at(self, i)->owner);
        Py_VISIT(due_at(self, i)->lane);
    }
    Py_VISIT(self->out);
    Py_VISIT(self->conn);
    Py_VISIT(self->write);
    Py_VISIT(self->after_send);
    return 0;
}

static int
linkstate_clear(LinkState *self)
{
    due_clear(self);
    Py_CLEAR(self->out);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->write);
    Py_CLEAR(self->after_send);
    return 0;
}

static void
linkstate_dealloc(LinkState *self)
{
    PyObject_GC_UnTrack(self);
    linkstate_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
linkstate_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *after_send, *out;
    LinkState *self;
    static char *kwlist[] = {"after_send", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:LinkState", kwlist, &after_send))
        return NULL;
    if (!PyCallable_Check(after_send)) {
        PyErr_SetString(PyExc_TypeError, "LinkState: after_send must be callable");
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL)
        return NULL;
    self = (LinkState *)type->tp_alloc(type, 0);   /* (zeroed) */
    if (self == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    self->out = out;
    self->after_send = Py_NewRef(after_send);
    self->clean = 1;
    return (PyObject *)self;
}

/* A Lane, or NULL for None; -1 with TypeError for anything else. */
static int
lane_or_none(PyObject *o, PyObject **lane)
{
    if (o == Py_None) {
        *lane = NULL;
        return 0;
    }
    if (!Py_IS_TYPE(o, &LaneType)) {
        PyErr_Format(PyExc_TypeError, "LinkState: lane must be a Lane or None, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    *lane = o;
    return 0;
}

/* SharedLink.send: `owner`'s `data` asks for `replies` replies. The queue learns whose they are
 * first; an idle, ready link (nothing in flight, nothing queued) is written at once; else the
 * bytes join `out`, and after_send is told when nothing will write them yet. Holds its own
 * references across the calls out (they run Python code). */
static int
linkstate_send(LinkState *st, PyObject *owner, PyObject *lane, PyObject *data, Py_ssize_t replies)
{
    PyObject *r = NULL;
    int idle, rc = -1;
    if (replies < 0) {
        PyErr_SetString(PyExc_ValueError, "LinkState.send: replies must be >= 0");
        return -1;
    }
    if (replies > PY_SSIZE_T_MAX - st->due) {
        PyErr_SetString(PyExc_OverflowError, "LinkState: too many replies due");
        return -1;
    }
    if (due_sent(st, owner, lane, replies) < 0)
        return -1;
    idle = st->due == 0;
    st->due += replies;
    Py_INCREF(st);
    if (idle && st->ready && st->write != NULL && PyList_GET_SIZE(st->out) == 0) {
        /* Nothing in flight: nobody to wait for (one client alone pays no extra turn). A busy
         * link collects the turn's commands and writes them at once. */
        PyObject *write = Py_NewRef(st->write);
        r = PyObject_CallOneArg(write, data);
        Py_DECREF(write);
    } else if (PyList_Append(st->out, data) < 0) {
        goto done;
    } else if (st->ready && st->flush_soon) {
        r = Py_NewRef(Py_None);
    } else {
        PyObject *size = PyLong_FromSsize_t(PyBytes_GET_SIZE(data)), *n = NULL;
        if (st->ready)
            st->flush_soon = 1;   /* (after_send schedules it) */
        if (size != NULL && (n = PyLong_FromSsize_t(replies)) != NULL)
            r = PyObject_CallFunctionObjArgs(st->after_send, owner, size, n, NULL);
        Py_XDECREF(size);
        Py_XDECREF(n);
        if (r == NULL)
            st->flush_soon = 0;   /* (not scheduled after all: the next send tries again) */
    }
    if (r != NULL) {
        Py_DECREF(r);
        rc = 0;
    }
done:
    Py_DECREF(st);
    return rc;
}

/* sent(owner, replies, lane=None) */
static PyObject *
linkstate_py_sent(LinkState *self, PyObject *args, PyObject *kwds)
{
    PyObject *owner, *lane_o = Py_None, *lane;
    Py_ssize_t n;
    static char *kwlist[] = {"owner", "replies", "lane", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On|O:sent", kwlist, &owner, &n, &lane_o)
            || lane_or_none(lane_o, &lane) < 0 || due_sent(self, owner, lane, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* put_first(owner, replies): the link's own commands, ahead of everything queued */
static PyObject *
linkstate_put_first(LinkState *self, PyObject *args)
{
    PyObject *owner;
    Py_ssize_t n;
    DueEntry *e;
    if (!PyArg_ParseTuple(args, "On:put_first", &owner, &n))
        return NULL;
    if (n <= 0 || n > PY_SSIZE_T_MAX - self->pending) {
        PyErr_SetString(PyExc_ValueError, "LinkState.put_first: replies out of range");
        return NULL;
    }
    if (due_grow(self) < 0)
        return NULL;
    self->head = (self->head + self->cap - 1) % self->cap;
    self->len++;
    e = due_at(self, 0);
    e->owner = Py_NewRef(owner);
    e->lane = NULL;
    e->n = n;
    self->pending += n;
    Py_RETURN_NONE;
}

/* took(count) -> left: `count` replies of the head owner's arrived; what it is still due */
static PyObject *
linkstate_py_took(LinkState *self, PyObject *arg)
{
    Py_ssize_t count = PyLong_AsSsize_t(arg), left;
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (self->len == 0 || count <= 0 || count > due_at(self, 0)->n) {
        PyErr_SetString(PyExc_ValueError, "LinkState.took: more replies than the head is due");
        return NULL;
    }
    left = due_at(self, 0)->n - count;
    due_took(self, count);
    return PyLong_FromSsize_t(left);
}

/* forget() -> [owner, ...]: the queue emptied; each owner that was due replies once, oldest
 * first. `clean` again. */
static PyObject *
linkstate_forget(LinkState *self, PyObject *unused)
{
    PyObject *owners = PyList_New(0), *seen = PySet_New(NULL);
    Py_ssize_t i;
    if (owners == NULL || seen == NULL)
        goto error;
    for (i = 0; i < self->len; i++) {
        PyObject *owner = due_at(self, i)->owner, *key = PyLong_FromVoidPtr(owner);
        int known;
        if (key == NULL)
            goto error;
        known = PySet_Contains(seen, key);
        if (known == 0 && (PySet_Add(seen, key) < 0 || PyList_Append(owners, owner) < 0))
            known = -1;
        Py_DECREF(key);
        if (known < 0)
            goto error;
    }
    Py_DECREF(seen);
    due_clear(self);
    self->clean = 1;
    return owners;
error:
    Py_XDECREF(owners);
    Py_XDECREF(seen);
    return NULL;
}

/* due_owners() -> [owner, ...]: the owner of each reply due, in order (tests, debugging) */
static PyObject *
linkstate_due_owners(LinkState *self, PyObject *unused)
{
    PyObject *owners = PyList_New(0);
    Py_ssize_t i, j;
    if (owners == NULL)
        return NULL;
    for (i = 0; i < self->len; i++) {
        DueEntry *e = due_at(self, i);
        for (j = 0; j < e->n; j++) {
            if (PyList_Append(owners, e->owner) < 0) {
                Py_DECREF(owners);
                return NULL;
            }
        }
    }
    return owners;
}

/* send(owner, data, replies, lane=None) */
static PyObject *
linkstate_py_send(LinkState *self, PyObject *args, PyObject *kwds)
{
    PyObject *owner, *data, *lane_o = Py_None, *lane;
    Py_ssize_t n;
    static char *kwlist[] = {"owner", "data", "replies", "lane", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!n|O:send", kwlist, &owner, &PyBytes_Type,
                                     &data, &n, &lane_o)
            || lane_or_none(lane_o, &lane) < 0 || linkstate_send(self, owner, lane, data, n) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* flush(): the bytes the turn collected, written at once (when ready) */
static PyObject *
linkstate_flush(LinkState *self, PyObject *unused)
{
    PyObject *out = self->out, *data, *write, *r;
    Py_ssize_t n = PyList_GET_SIZE(out);
    self->flush_soon = 0;
    if (n == 0 || !self->ready || self->write == NULL)
        Py_RETURN_NONE;
    if (n == 1) {
        data = Py_NewRef(PyList_GET_ITEM(out, 0));
    } else {
        Py_ssize_t i, size = 0;
        char *at;
        for (i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(out, i);
            if (!PyBytes_Check(item) || PyBytes_GET_SIZE(item) > PY_SSIZE_T_MAX - size) {
                PyErr_SetString(PyExc_TypeError, "LinkState.flush: out holds bytes only");
                return NULL;
            }
            size += PyBytes_GET_SIZE(item);
        }
        data = PyBytes_FromStringAndSize(NULL, size);
        if (data == NULL)
            return NULL;
        at = PyBytes_AS_STRING(data);
        for (i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(out, i);
            memcpy(at, PyBytes_AS_STRING(item), (size_t)PyBytes_GET_SIZE(item));
            at += PyBytes_GET_SIZE(item);
        }
    }
    if (PyList_SetSlice(out, 0, n, NULL) < 0) {
        Py_DECREF(data);
        return NULL;
    }
    write = Py_NewRef(self->write);
    r = PyObject_CallOneArg(write, data);
    Py_DECREF(write);
    Py_DECREF(data);
    return r;
}

/* attach(conn, write): the link reads and writes `conn` now; attach(None, None): no connection */
static PyObject *
linkstate_attach(LinkState *self, PyObject *args)
{
    PyObject *conn, *write;
    if (!PyArg_ParseTuple(args, "OO:attach", &conn, &write))
        return NULL;
    if ((conn == Py_None) != (write == Py_None) || (write != Py_None && !PyCallable_Check(write))) {
        PyErr_SetString(PyExc_TypeError,
                        "LinkState.attach: a connection and a callable write, or None and None");
        return NULL;
    }
    Py_XSETREF(self->conn, conn == Py_None ? NULL : Py_NewRef(conn));
    Py_XSETREF(self->write, write == Py_None ? NULL : Py_NewRef(write));
    Py_RETURN_NONE;
}

static PyObject *
linkstate_get_due(LinkState *self, void *closure)
{
    return PyLong_FromSsize_t(self->due);
}

static int
linkstate_set_due(LinkState *self, PyObject *value, void *closure)
{
    Py_ssize_t v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "LinkState.due cannot be deleted");
        return -1;
    }
    v = PyLong_AsSsize_t(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "LinkState.due must be >= 0");
        return -1;
    }
    self->due = v;
    return 0;
}

static int
set_flag(int *flag, PyObject *value, const char *what)
{
    int v;
    if (value == NULL) {
        PyErr_Format(PyExc_AttributeError, "LinkState.%s cannot be deleted", what);
        return -1;
    }
    if (!PyBool_Check(value)) {
        PyErr_Format(PyExc_TypeError, "LinkState.%s must be a bool", what);
        return -1;
    }
    v = value == Py_True;
    *flag = v;
    return 0;
}

static PyObject *
linkstate_get_ready(LinkState *self, void *closure)
{
    return PyBool_FromLong(self->ready);
}

static int
linkstate_set_ready(LinkState *self, PyObject *value, void *closure)
{
    return set_flag(&self->ready, value, "ready");
}

static PyObject *
linkstate_get_clean(LinkState *self, void *closure)
{
    return PyBool_FromLong(self->clean);
}

static int
linkstate_set_clean(LinkState *self, PyObject *value, void *closure)
{
    return set_flag(&self->clean, value, "clean");
}

static PyObject *
linkstate_get_flush_soon(LinkState *self, void *closure)
{
    return PyBool_FromLong(self->flush_soon);
}

static PyObject *
linkstate_get_out(LinkState *self, void *closure)
{
    return Py_NewRef(self->out);
}

static PyObject *
linkstate_get_conn(LinkState *self, void *closure)
{
    return Py_NewRef(self->conn != NULL ? self->conn : Py_None);
}

static PyObject *
linkstate_get_pending(LinkState *self, void *closure)
{
    return PyLong_FromSsize_t(self->pending);
}

static PyObject *
linkstate_get_head_owner(LinkState *self, void *closure)
{
    return Py_NewRef(self->len ? due_at(self, 0)->owner : Py_None);
}

static PyObject *
linkstate_get_head_due(LinkState *self, void *closure)
{
    return PyLong_FromSsize_t(self->len ? due_at(self, 0)->n : 0);
}

static PyGetSetDef linkstate_getset[] = {
    {"due", (getter)linkstate_get_due, (setter)linkstate_set_due,
     "clients' replies still due, all together (not the link's own commands')", NULL},
    {"ready", (getter)linkstate_get_ready, (setter)linkstate_set_ready,
     "the link is open and authenticated: send and flush write it", NULL},
    {"clean", (getter)linkstate_get_clean, (setter)linkstate_set_clean,
     "no reply is half read by the Python path (the Router may count the next bytes)", NULL},
    {"flush_soon", (getter)linkstate_get_flush_soon, NULL,
     "this loop turn's flush is scheduled", NULL},
    {"out", (getter)linkstate_get_out, NULL, "the bytes waiting for the flush (a list, for life)",
     NULL},
    {"conn", (getter)linkstate_get_conn, NULL, "the connection attached now, or None", NULL},
    {"pending", (getter)linkstate_get_pending, NULL, "replies due, the link's own included", NULL},
    {"head_owner", (getter)linkstate_get_head_owner, NULL,
     "the owner of the next reply, or None", NULL},
    {"head_due", (getter)linkstate_get_head_due, NULL,
     "how many replies in a row the head owner is due (0: nobody is)", NULL},
    {NULL},
};

static PyMethodDef linkstate_methods[] = {
    {"sent", (PyCFunction)(void (*)(void))linkstate_py_sent, METH_VARARGS | METH_KEYWORDS,
     "sent(owner, replies, lane=None): owner's commands asking for `replies` replies were "
     "written after everything before (no write, no `due`: Demux.sent)."},
    {"put_first", (PyCFunction)linkstate_put_first, METH_VARARGS,
     "put_first(owner, replies): the link's own commands, whose replies come before all."},
    {"took", (PyCFunction)linkstate_py_took, METH_O,
     "took(count) -> left: `count` of the head owner's replies arrived; what it is still due."},
    {"forget", (PyCFunction)linkstate_forget, METH_NOARGS,
     "forget() -> owners: empty the queue; each owner that was due replies, once, oldest first."},
    {"due_owners", (PyCFunction)linkstate_due_owners, METH_NOARGS,
     "due_owners() -> owners: the owner of each reply due, in order (for tests and debugging)."},
    {"send", (PyCFunction)(void (*)(void))linkstate_py_send, METH_VARARGS | METH_KEYWORDS,
     "send(owner, data, replies, lane=None): SharedLink.send (see _lane.c)."},
    {"flush", (PyCFunction)linkstate_flush, METH_NOARGS,
     "flush(): write what the loop turn collected (if ready)."},
    {"attach", (PyCFunction)linkstate_attach, METH_VARARGS,
     "attach(conn, write): the connection read and written now (None, None: none)."},
    {NULL},
};

static PyTypeObject LinkStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._native._lane.LinkState",
    .tp_basicsize = sizeof(LinkState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A shared link's reply accounting and write queue, kept once; see _lane.c.",
    .tp_new = linkstate_new,
    .tp_dealloc = (destructor)linkstate_dealloc,
    .tp_traverse = (traverseproc)linkstate_traverse,
    .tp_clear = (inquiry)linkstate_clear,
    .tp_methods = linkstate_methods,
    .tp_getset = linkstate_getset,
};

/* Forwarded commands on a shared link: the link's own send (LinkState, above). */
static PyObject *
shared_send(Lane *self, PyObject *data, Py_ssize_t count)
{
    PyObject *link = Py_NewRef(self->link), *owner = Py_NewRef(self->owner);
    int rc;
    Py_INCREF(self);   /* (the calls out run Python code that could disarm the lane) */
    rc = linkstate_send((LinkState *)link, owner, (PyObject *)self, data, count);
    Py_DECREF(self);
    Py_DECREF(owner);
    Py_DECREF(link);
    if (rc < 0)
        return NULL;
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
    {"arm", (PyCFunction)(void (*)(void))lane_arm, METH_VARARGS | METH_KEYWORDS,
     "arm(known, upstream_write, client_write, due, max_args, max_bulk, link=None, owner=None): "
     "take traffic (max_args, max_bulk: the parser's limits; on a shared link: its LinkState "
     "and the ClientConnection)."},
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
    .tp_name = "redisgate._native._lane.Lane",
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
 * replies at the head of the link's LinkState queue belong to clients whose lanes are armed on
 * it, and are whole replies (reply_end), it hands each client its bytes and keeps the books (the
 * queue, the link's `due`) in the LinkState's fields, as Demux.received and
 * SharedLink.data_received would. From the first reply it cannot place that way, the rest of the
 * read goes to the Python path (`slow`). */
typedef struct {
    PyObject_HEAD
    PyObject *link;    /* the link's LinkState */
    PyObject *conn;    /* the _LinkConnection this router reads for */
    PyObject *slow;
} Router;

static int
router_traverse(Router *self, visitproc visit, void *arg)
{
    Py_VISIT(self->link);
    Py_VISIT(self->conn);
    Py_VISIT(self->slow);
    return 0;
}

static int
router_clear(Router *self)
{
    Py_CLEAR(self->link);
    Py_CLEAR(self->conn);
    Py_CLEAR(self->slow);
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
    PyObject *link, *conn, *slow;
    static char *kwlist[] = {"link", "conn", "slow", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO:Router", kwlist, &LinkStateType, &link,
                                     &conn, &slow))
        return -1;
    if (!PyCallable_Check(slow)) {
        PyErr_SetString(PyExc_TypeError, "Router: the slow path must be callable");
        return -1;
    }
    router_clear(self);
    self->link = Py_NewRef(link);
    self->conn = Py_NewRef(conn);
    self->slow = Py_NewRef(slow);
    return 0;
}

/* Routes the whole replies at the head of data[pos:] to the head entry of the link's queue if
 * its owner's lane is armed on this link: returns the new pos (unchanged when it could not), or
 * -1 with an exception set. *stop is set when nothing more may be routed in C. */
static Py_ssize_t
route_head(Router *self, PyObject *data, Py_ssize_t pos, int *stop)
{
    const char *base = PyBytes_AS_STRING(data), *end = base + PyBytes_GET_SIZE(data), *next;
    LinkState *st = (LinkState *)self->link;
    PyObject *chunk, *write, *r;
    DueEntry *e;
    Lane *lane;
    Py_ssize_t n, count = 0;

    *stop = 1;
    if (st->len == 0)
        return pos;   /* (nobody is due replies: the Python path says so) */
    e = due_at(st, 0);
    lane = (Lane *)e->lane;   /* (the link's own commands have none) */
    n = e->n;
    if (lane == NULL || lane->known == NULL || lane->link != self->link || lane->owner != e->owner)
        return pos;
    next = run_of(reply_end, base + pos, end, n, &count);
    if (count == 0 || count > lane->due || count > st->due)
        return pos;   /* (inconsistent books: the Python path sorts it out) */
    if (pos == 0 && next == end) {
        chunk = Py_NewRef(data);
    } else {
        chunk = PyBytes_FromStringAndSize(base + pos, next - (base + pos));
        if (chunk == NULL)
            return -1;
    }
    /* The books first (nothing below can fail before the write), then the write. */
    Py_INCREF(lane);
    write = Py_NewRef(lane->client_write);
    st->due -= count;
    lane->due -= count;
    due_took(st, count);   /* (may drop the entry's references: ours are held) */
    stats.bytes_out += (unsigned long long)PyBytes_GET_SIZE(chunk);
    r = PyObject_CallOneArg(write, chunk);
    Py_DECREF(write);
    Py_DECREF(chunk);
    Py_DECREF(lane);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    *stop = count < n;   /* what follows (if anything) is not a whole reply of this owner's */
    return next - base;
}

static PyObject *
router_data_received_(Router *self, PyObject *data)
{
    PyObject *rest, *r;
    LinkState *st;
    Py_ssize_t pos = 0, size;
    int stop = 0;

    if (self->slow == NULL || self->link == NULL)   /* (cleared by the collector) */
        Py_RETURN_NONE;
    if (!PyBytes_CheckExact(data))
        return PyObject_CallOneArg(self->slow, data);
    Py_INCREF(self);   /* (a write may run Python code) */
    st = (LinkState *)self->link;
    size = PyBytes_GET_SIZE(data);
    if (st->conn == self->conn && st->clean) {
        while (pos < size && !stop) {
            pos = route_head(self, data, pos, &stop);
            if (pos < 0) {
                Py_DECREF(self);
                return NULL;
            }
            if (self->link == NULL || st->conn != self->conn)
                stop = 1;   /* (a write ran Python code that replaced the connection) */
        }
    }
    if (pos == size || self->slow == NULL) {
        Py_DECREF(self);
        Py_RETURN_NONE;
    }
    if (pos == 0) {
        rest = Py_NewRef(data);
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
    .tp_name = "redisgate._native._lane.Router",
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
    .tp_name = "redisgate._native._lane.Counter",
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
    PyModuleDef_HEAD_INIT, "redisgate._native._lane",
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
    if (intern(&kind_names[V_ALLOW], "allow") < 0 || intern(&kind_names[V_ONE_KEY], "one_key") < 0
            || intern(&kind_names[V_ASK], "ask") < 0 || intern(&kind_names[V_SCRIPT], "script") < 0)
        return NULL;
    if (PyType_Ready(&LaneType) < 0 || PyType_Ready(&RouterType) < 0
            || PyType_Ready(&CounterType) < 0 || PyType_Ready(&VerdictType) < 0
            || PyType_Ready(&ScriptFormType) < 0 || PyType_Ready(&LinkStateType) < 0)
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
            || add_type(m, "LinkState", &LinkStateType) < 0
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
