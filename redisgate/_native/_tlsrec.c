/* redisgate._native._tlsrec: a TLS listener connection's record layer in C, after a Python handshake.
 * Optional: without it every record goes through tls.TLSEngine (ssl.SSLObject over MemoryBIOs),
 * which does the same, more slowly.
 *
 * Why: the handshake runs in Python (tls.TLSEngine) so that every failed, garbage or slow one is
 * seen, audited and closed by redisgate itself (asyncio's and uvloop's TLS transports hide
 * them). Once it is done, each read costs the Python engine several calls (MemoryBIO.write,
 * SSLObject.read until SSLWantReadError is raised, MemoryBIO.read) and each reply as many more;
 * at one request per read that was 30-40 % of redisgate's plaintext throughput. Here a read is one
 * C call that decrypts and hands the plaintext on (to the C lane, usually), and a reply one C
 * call that encrypts and writes: the TLS connection's steady state stays in C, as plaintext's
 * does.
 *
 * How: the *same* OpenSSL connection as the Python engine's. `Record.start(sslobj, inbio, ...)`
 * takes the `_ssl._SSLSocket` under the engine's `ssl.SSLObject` and reads its `SSL *` (the
 * field after `Socket` in CPython's PySSLSocket, Modules/_ssl.c, the same from 3.7 to 3.13). It
 * refuses (TypeError) unless the object is of type `_ssl._SSLSocket` and that SSL's read BIO is
 * the `BIO *` of the engine's incoming `ssl.MemoryBIO` (PySSLMemoryBIO's first field): a layout
 * that does not hold is refused, not guessed. tls.py also checks that this module and Python's
 * ssl module run the same OpenSSL (one libssl.so.3 in the process). Everything else about the
 * connection (its certificate, its close_notify, a reload's context) stays with the Python
 * objects: they read the same SSL.
 *
 * Contract (server.TLSClientConnection uses it):
 *   rec = Record(slow)                 rec.data_received(data) calls slow(data) until started
 *   rec.start(sslobj, inbio, raw_write, owner, sink, on_fail, on_close)
 *       from then on data_received(data): decrypt every whole record; on a TLS error call
 *       on_fail(reason) (reason: OpenSSL's reason as _ssl names it, e.g.
 *       "DECRYPTION_FAILED_OR_BAD_RECORD_MAC") and nothing else; otherwise write what OpenSSL
 *       has to send (raw_write), hand the plaintext to sink(plain) unless owner.closed is true,
 *       and call on_close() if the peer sent close_notify.
 *   rec.write(data)                    encrypt and raw_write the records (dropped once the
 *                                      connection failed or a close_notify was sent)
 *   rec.started, rec.failed, rec.peer_closed
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <ctype.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

/* CPython's _ssl objects start with these fields (Modules/_ssl.c). */
typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    SSL *ssl;
} SSLSocketHead;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBIOHead;

static PyObject *s_closed;

typedef struct {
    PyObject_HEAD
    PyObject *slow;       /* data_received before start() */
    PyObject *sslobj;     /* the _ssl._SSLSocket (keeps the SSL alive) */
    PyObject *inbio;      /* the incoming MemoryBIO (keeps the BIO alive) */
    PyObject *raw_write;
    PyObject *owner;      /* its .closed says whether plaintext is still wanted */
    PyObject *sink;
    PyObject *on_fail;
    PyObject *on_close;
    SSL *ssl;
    int failed;
    int peer_closed;
} Record;

static int
record_traverse(Record *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow);
    Py_VISIT(self->sslobj);
    Py_VISIT(self->inbio);
    Py_VISIT(self->raw_write);
    Py_VISIT(self->owner);
    Py_VISIT(self->sink);
    Py_VISIT(self->on_fail);
    Py_VISIT(self->on_close);
    return 0;
}

static int
record_clear(Record *self)
{
    self->ssl = NULL;
    Py_CLEAR(self->slow);
    Py_CLEAR(self->sslobj);
    Py_CLEAR(self->inbio);
    Py_CLEAR(self->raw_write);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->on_fail);
    Py_CLEAR(self->on_close);
    return 0;
}

static void
record_dealloc(Record *self)
{
    PyObject_GC_UnTrack(self);
    record_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
record_init(Record *self, PyObject *args, PyObject *kw)
{
    PyObject *slow;
    if (!PyArg_ParseTuple(args, "O:Record", &slow))
        return -1;
    Py_INCREF(slow);
    Py_XSETREF(self->slow, slow);
    return 0;
}

static PyObject *
record_start(Record *self, PyObject *args)
{
    PyObject *sslobj, *inbio, *raw_write, *owner, *sink, *on_fail, *on_close;
    SSL *ssl;
    if (!PyArg_ParseTuple(args, "OOOOOOO:start", &sslobj, &inbio, &raw_write, &owner, &sink,
                          &on_fail, &on_close))
        return NULL;
    if (strcmp(Py_TYPE(sslobj)->tp_name, "_ssl._SSLSocket") != 0
            || strcmp(Py_TYPE(inbio)->tp_name, "_ssl.MemoryBIO") != 0) {
        PyErr_SetString(PyExc_TypeError, "start() needs an _ssl._SSLSocket and its _ssl.MemoryBIO");
        return NULL;
    }
    ssl = ((SSLSocketHead *)sslobj)->ssl;
    if (ssl == NULL || ((MemoryBIOHead *)inbio)->bio == NULL
            || SSL_get_rbio(ssl) != ((MemoryBIOHead *)inbio)->bio) {
        PyErr_SetString(PyExc_TypeError, "start(): this Python's _ssl objects are not laid out "
                        "as _tlsrec.c expects");
        return NULL;
    }
    Py_INCREF(sslobj);
    Py_INCREF(inbio);
    Py_INCREF(raw_write);
    Py_INCREF(owner);
    Py_INCREF(sink);
    Py_INCREF(on_fail);
    Py_INCREF(on_close);
    Py_XSETREF(self->sslobj, sslobj);
    Py_XSETREF(self->inbio, inbio);
    Py_XSETREF(self->raw_write, raw_write);
    Py_XSETREF(self->owner, owner);
    Py_XSETREF(self->sink, sink);
    Py_XSETREF(self->on_fail, on_fail);
    Py_XSETREF(self->on_close, on_close);
    self->ssl = ssl;
    Py_RETURN_NONE;
}

/* OpenSSL's error queue must be empty before SSL_read_ex / SSL_write_ex for SSL_get_error to be
 * right. ERR_clear_error walks every slot of the thread's queue each time; ERR_peek_error only
 * looks whether there is anything (and is what SSL_get_error consults), so the queue is cleared
 * only when it holds something. */
static inline void
clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* Write what OpenSSL queued in the outgoing BIO to the socket; 0, or -1 with an exception. */
static int
flush_out(Record *self)
{
    BIO *wbio = SSL_get_wbio(self->ssl);
    size_t pending = BIO_ctrl_pending(wbio);
    PyObject *out, *r;
    int n;
    if (pending == 0)
        return 0;
    if (pending > PY_SSIZE_T_MAX || pending > INT_MAX) {
        PyErr_NoMemory();
        return -1;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)pending);
    if (out == NULL)
        return -1;
    n = BIO_read(wbio, PyBytes_AS_STRING(out), (int)pending);
    if (n != (int)pending) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, "BIO_read returned less than BIO_ctrl_pending");
        return -1;
    }
    r = PyObject_CallOneArg(self->raw_write, out);
    Py_DECREF(out);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* OpenSSL's reason for the last error, as _ssl's SSLError.reason spells it ("BAD_RECORD_MAC"). */
static PyObject *
error_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *text = e ? ERR_reason_error_string(e) : NULL;
    char buf[128];
    size_t i;
    ERR_clear_error();
    if (text == NULL)
        return PyUnicode_FromString("UNEXPECTED_EOF_WHILE_READING");
    for (i = 0; text[i] && i < sizeof(buf) - 1; i++)
        buf[i] = text[i] == ' ' ? '_' : (char)toupper((unsigned char)text[i]);
    buf[i] = 0;
    return PyUnicode_FromString(buf);
}

static PyObject *
record_data_received(Record *self, PyObject *data)
{
    Py_buffer in;
    PyObject *plain = NULL, *r, *closed;
    Py_ssize_t have = 0, room;
    SSL *ssl = self->ssl;
    BIO *rbio;
    int ok, err;
    size_t got;

    if (ssl == NULL)
        return PyObject_CallOneArg(self->slow, data);
    if (self->failed)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    clear_errors();
    rbio = SSL_get_rbio(ssl);
    if (in.len > INT_MAX || (in.len && BIO_write(rbio, in.buf, (int)in.len) != in.len)) {
        PyBuffer_Release(&in);
        return PyErr_NoMemory();
    }
    /* The plaintext of these records is shorter than they are; more would be a bigger buffer. */
    room = in.len + (Py_ssize_t)SSL_pending(ssl) + 1;
    PyBuffer_Release(&in);
    plain = PyBytes_FromStringAndSize(NULL, room);
    if (plain == NULL)
        return NULL;
    for (;;) {
        if (have == room) {
            room *= 2;
            if (_PyBytes_Resize(&plain, room) < 0)
                return NULL;
        }
        ok = SSL_read_ex(ssl, PyBytes_AS_STRING(plain) + have, (size_t)(room - have), &got);
        if (ok) {
            have += (Py_ssize_t)got;
            /* No ciphertext left and no plaintext buffered: the next SSL_read could only say
             * "want read" (a record's worth of OpenSSL's bookkeeping per read saved). */
            if (BIO_ctrl_pending(rbio) == 0 && SSL_pending(ssl) == 0)
                break;
            continue;
        }
        err = SSL_get_error(ssl, 0);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            clear_errors();
            break;
        }
        if (err == SSL_ERROR_ZERO_RETURN) {
            clear_errors();
            self->peer_closed = 1;
            break;
        }
        /* A corrupt record, an unexpected message: the connection is done. */
        self->failed = 1;
        Py_DECREF(plain);
        {
            PyObject *reason = error_reason();
            if (reason == NULL)
                return NULL;
            r = PyObject_CallOneArg(self->on_fail, reason);
            Py_DECREF(reason);
        }
        return r;
    }
    if (flush_out(self) < 0) {
        Py_DECREF(plain);
        return NULL;
    }
    if (have) {
        if (_PyBytes_Resize(&plain, have) < 0)
            return NULL;
        Py_INCREF(self);   /* (the sink may run Python code that drops us) */
        closed = PyObject_GetAttr(self->owner, s_closed);
        if (closed == NULL) {
            Py_DECREF(plain);
            Py_DECREF(self);
            return NULL;
        }
        ok = PyObject_IsTrue(closed);
        Py_DECREF(closed);
        r = ok == 0 ? PyObject_CallOneArg(self->sink, plain) : (ok < 0 ? NULL : Py_NewRef(Py_None));
        Py_DECREF(plain);
        if (r == NULL) {
            Py_DECREF(self);
            return NULL;
        }
        Py_DECREF(r);
        if (self->peer_closed && self->on_close != NULL) {
            r = PyObject_CallNoArgs(self->on_close);
            Py_DECREF(self);
            return r;
        }
        Py_DECREF(self);
        Py_RETURN_NONE;
    }
    Py_DECREF(plain);
    if (self->peer_closed)
        return PyObject_CallNoArgs(self->on_close);
    Py_RETURN_NONE;
}

static PyObject *
record_write(Record *self, PyObject *data)
{
    Py_buffer in;
    const char *p;
    size_t left, done;
    SSL *ssl = self->ssl;
    if (ssl == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "write() before start()");
        return NULL;
    }
    if (self->failed || (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN))
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    clear_errors();
    p = in.buf;
    left = (size_t)in.len;
    while (left) {
        if (!SSL_write_ex(ssl, p, left, &done)) {
            /* Not possible over a memory BIO but for a broken connection: drop the rest. */
            self->failed = 1;
            clear_errors();
            break;
        }
        p += done;
        left -= done;
    }
    PyBuffer_Release(&in);
    if (flush_out(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
record_get_started(Record *self, void *closure)
{
    return PyBool_FromLong(self->ssl != NULL);
}

static PyObject *
record_get_failed(Record *self, void *closure)
{
    return PyBool_FromLong(self->failed);
}

static PyObject *
record_get_peer_closed(Record *self, void *closure)
{
    return PyBool_FromLong(self->peer_closed);
}

static PyGetSetDef record_getset[] = {
    {"started", (getter)record_get_started, NULL, "start() was called", NULL},
    {"failed", (getter)record_get_failed, NULL, "a TLS error ended the connection", NULL},
    {"peer_closed", (getter)record_get_peer_closed, NULL, "the peer sent close_notify", NULL},
    {NULL},
};

static PyMethodDef record_methods[] = {
    {"start", (PyCFunction)record_start, METH_VARARGS,
     "start(sslobj, inbio, raw_write, owner, sink, on_fail, on_close): records in C from now on"},
    {"data_received", (PyCFunction)record_data_received, METH_O,
     "data_received(data): the raw protocol's data_received (see the module's contract)"},
    {"write", (PyCFunction)record_write, METH_O, "write(data): encrypt and write"},
    {NULL},
};

static PyTypeObject RecordType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "redisgate._native._tlsrec.Record",
    .tp_basicsize = sizeof(Record),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A TLS connection's record layer after a Python handshake; see _tlsrec.c.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)record_init,
    .tp_dealloc = (destructor)record_dealloc,
    .tp_traverse = (traverseproc)record_traverse,
    .tp_clear = (inquiry)record_clear,
    .tp_methods = record_methods,
    .tp_getset = record_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "redisgate._native._tlsrec",
    "A TLS connection's record layer in C after a Python handshake (see the source).", -1,
};

PyMODINIT_FUNC
PyInit__tlsrec(void)
{
    PyObject *m;
    s_closed = PyUnicode_InternFromString("closed");
    if (s_closed == NULL || PyType_Ready(&RecordType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RecordType);
    if (PyModule_AddObject(m, "Record", (PyObject *)&RecordType) < 0
            || PyModule_AddIntConstant(m, "OPENSSL_VERSION_NUMBER",
                                       (long)OpenSSL_version_num()) < 0) {
        Py_DECREF(&RecordType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
