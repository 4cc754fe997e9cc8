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

#endif
