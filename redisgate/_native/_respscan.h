/* The RESP byte walkers that redisgate's C modules share (_speedups.c, _lane.c): pure
 * functions over a byte range, no Python objects. Included, not linked: each module is one
 * translation unit and gets its own static copy. */
#ifndef REDISGATE_RESPSCAN_H
#define REDISGATE_RESPSCAN_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A canonical non-negative decimal at p (before end) followed by CRLF, at most `limit`.
 * Returns the position after the CRLF and sets *value, or NULL when the bytes are not that;
 * then *more is set if they could still become that: they stop short, valid so far. */
static const char *
number_line(const char *p, const char *end, Py_ssize_t limit, Py_ssize_t *value, int *more)
{
    const char *start = p;
    Py_ssize_t v = 0;
    if (p < end && *p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            int digit = *p - '0';
            if (digit > limit || v > (limit - digit) / 10)   /* v * 10 + digit > limit */
                return NULL;
            v = v * 10 + digit;
            p++;
        }
        if (p == start && p < end)
            return NULL;
    }
    if (end - p < 2) {
        *more = p == end || p[0] == '\r';
        return NULL;
    }
    if (p[0] != '\r' || p[1] != '\n')
        return NULL;
    *value = v;
    return p + 2;
}

/* Walks one request at p; returns where it ends (and its argument count), or NULL: then *more
 * says whether the bytes are the beginning of such a request, valid so far. */
static const char *
walk(const char *p, const char *end, Py_ssize_t max_args, Py_ssize_t max_bulk, Py_ssize_t *argc,
     int *more)
{
    Py_ssize_t n, len, i;
    *more = 0;
    if (p >= end || *p != '*') {
        *more = p >= end;
        return NULL;
    }
    p = number_line(p + 1, end, max_args, &n, more);
    if (p == NULL || n < 1)
        return NULL;
    for (i = 0; i < n; i++) {
        if (p >= end || *p != '$') {
            *more = p >= end;
            return NULL;
        }
        p = number_line(p + 1, end, max_bulk, &len, more);
        if (p == NULL)
            return NULL;
        if (end - p - 2 < len) {   /* (len + 2 could overflow) */
            *more = end - p <= len || p[len] == '\r';
            return NULL;
        }
        if (p[len] != '\r' || p[len + 1] != '\n')
            return NULL;
        p += len + 2;
    }
    *argc = n;
    return p;
}

/* Re-walks of a request that walk() accepted (build(), argument(), script_passes()). Each step
 * is checked again instead of trusting that walk() proved it: a disagreement (a walker bug, a
 * caller passing the wrong range) gives NULL, and the caller gives up on the request (the Python
 * path decides it), never reading outside [p, end). */

/* Where the arguments of the request at p begin: past "*<argc>\r\n"; or NULL. */
static const char *
arguments_at(const char *p, const char *end, Py_ssize_t argc)
{
    Py_ssize_t n;
    int more;
    if (p >= end || *p != '*')
        return NULL;
    p = number_line(p + 1, end, argc, &n, &more);
    return p == NULL || n != argc ? NULL : p;
}

/* The argument at p, "$<len>\r\n<len bytes>\r\n" with len <= max_bulk, all before end: returns
 * its bytes, sets *len and *next (where it ends); or NULL (then *next is NULL too). */
static const char *
next_argument(const char *p, const char *end, Py_ssize_t max_bulk, Py_ssize_t *len,
              const char **next)
{
    const char *q;
    int more;
    *next = NULL;
    if (p == NULL || p >= end || *p != '$')
        return NULL;
    q = number_line(p + 1, end, max_bulk, len, &more);
    if (q == NULL || end - q - 2 < *len || q[*len] != '\r' || q[*len + 1] != '\n')
        return NULL;
    *next = q + *len + 2;
    return q;
}

/* Whether p[0:n] is a long long as Redis's string2ll reads it: an optional '-', digits, no
 * leading zero, not "-0", fewer than 21 characters, within range. */
static int
is_ll(const char *p, Py_ssize_t n)
{
    unsigned long long v = 0, limit = 9223372036854775807ULL;
    Py_ssize_t i = 0;
    if (n == 0 || n >= 21)
        return 0;
    if (p[0] == '-') {
        limit += 1;   /* -2^63 */
        i = 1;
        if (n == 1 || p[1] == '0')
            return 0;
    } else if (p[0] == '0') {
        return n == 1;
    }
    for (; i < n; i++) {
        unsigned d;
        if (p[i] < '0' || p[i] > '9')
            return 0;
        d = (unsigned)(p[i] - '0');
        if (v > (limit - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    return 1;
}

/* The CR of the first CRLF at or after p (before end), or NULL when there is none yet. */
static const char *
line_end(const char *p, const char *end)
{
    for (;;) {
        p = (const char *)memchr(p, '\r', end - p);
        if (p == NULL || p + 1 >= end)
            return NULL;
        if (p[1] == '\n')
            return p;
        p++;
    }
}

/* Where the whole reply at p ends, or NULL: not whole before end, not in its canonical form,
 * a push or an attribute (not replies to a command), a blob error or verbatim string (not
 * worth it), or nested deeper than `depth`. Canonical RESP frames one way only, so a reply this
 * accepts ends where resp.ReplyScanner.feed() ends it (tests/test_fastpath.py checks that). */
static const char *
reply_within(const char *p, const char *end, int depth)
{
    const char *cr, *q;
    Py_ssize_t n, i;
    int more;

    if (end - p < 3)
        return NULL;
    switch (*p) {
    case '+': case '-': case ',': case '(':
        cr = line_end(p + 1, end);
        return cr == NULL ? NULL : cr + 2;
    case ':':
        cr = line_end(p + 1, end);
        return cr == NULL || !is_ll(p + 1, cr - p - 1) ? NULL : cr + 2;
    case '_':
        return p[1] == '\r' && p[2] == '\n' ? p + 3 : NULL;
    case '#':
        return end - p >= 4 && (p[1] == 't' || p[1] == 'f') && p[2] == '\r' && p[3] == '\n'
            ? p + 4 : NULL;
    case '$':
        if (end - p >= 5 && memcmp(p, "$-1\r\n", 5) == 0)
            return p + 5;
        q = number_line(p + 1, end, PY_SSIZE_T_MAX / 2, &n, &more);
        if (q == NULL || end - q - 2 < n || q[n] != '\r' || q[n + 1] != '\n')
            return NULL;
        return q + n + 2;
    case '*': case '%': case '~':
        if (*p == '*' && end - p >= 5 && memcmp(p, "*-1\r\n", 5) == 0)
            return p + 5;
        if (depth <= 0)
            return NULL;
        q = number_line(p + 1, end, (Py_ssize_t)1 << 30, &n, &more);
        if (q == NULL)
            return NULL;
        if (*p == '%')
            n *= 2;
        for (i = 0; i < n && q != NULL; i++)
            q = reply_within(q, end, depth - 1);
        return q;
    default:
        return NULL;
    }
}

/* reply_within(), nested at most 16 deep: the whole replies the C lane passes. */
static const char *
reply_end(const char *p, const char *end)
{
    return reply_within(p, end, 16);
}

/* One reply at p: where it ends, or NULL when it is not one of the kind asked for. */
typedef const char *(*reply_at)(const char *p, const char *end);

/* The replies back to back from p that `one` accepts, at most `most`: returns where they end,
 * *counted how many. */
static const char *
run_of(reply_at one, const char *p, const char *end, Py_ssize_t most, Py_ssize_t *counted)
{
    Py_ssize_t count = 0;
    const char *next;
    while (count < most && p < end && (next = one(p, end)) != NULL) {
        p = next;
        count++;
    }
    *counted = count;
    return p;
}

#endif
