/* The national formats both C extensions check, written once: gatekeeper/_speedups.c (claims)
 * and loader/_speedups.c (registry rows) include it.
 *
 *   digits            [0-9]{count}
 *   set_provinces     codes.PROVINCE_CODES, handed over by each extension's configure()
 *   province          one of them
 *   cst_time          "yyyy-MM-dd HH:mm:ss" China Standard Time as epoch seconds, when it is a
 *                     real time (core/cst.py parse_cst); each caller applies its own bounds
 *
 * The functions are static: each extension has its own copy, and its own province table.
 */
#ifndef GATEKEEPER_FORMATS_H
#define GATEKEEPER_FORMATS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int digits(const uint8_t *p, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++)
        if (p[i] < '0' || p[i] > '9') return 0;
    return 1;
}

static char provinces[64][2];
static int province_count;

/* The province codes from a tuple of two-character strings; -1 with an exception. */
static int set_provinces(PyObject *codes) {
    Py_ssize_t count = PyTuple_Check(codes) ? PyTuple_GET_SIZE(codes) : -1;
    if (count < 0 || count > (Py_ssize_t)(sizeof provinces / sizeof *provinces)) {
        PyErr_SetString(PyExc_TypeError, "configure: PROVINCE_CODES must be a tuple of at most 64 codes");
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t size;
        PyObject *code = PyTuple_GET_ITEM(codes, i);
        const char *text = PyUnicode_Check(code) ? PyUnicode_AsUTF8AndSize(code, &size) : NULL;
        if (text == NULL || size != 2) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "configure: a province code is two characters");
            return -1;
        }
        memcpy(provinces[i], text, 2);
    }
    province_count = (int)count;
    return 0;
}

static int province(const uint8_t *p) {
    for (int i = 0; i < province_count; i++)
        if (p[0] == provinces[i][0] && p[1] == provinces[i][1]) return 1;
    return 0;
}

static int two_digits(const uint8_t *p) { return (p[0] - '0') * 10 + (p[1] - '0'); }

static int64_t days_from_civil(int64_t year, int month, int day) { /* days since 1970-01-01 */
    year -= month <= 2;
    int64_t era = (year >= 0 ? year : year - 399) / 400;
    int64_t year_of_era = year - era * 400;
    int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
    int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

/* 1 and ``*moment`` when p[0:size] is "yyyy-MM-dd HH:mm:ss", ASCII digits, of a real date
 * (year 1 to 9999) and time of day; 0 otherwise. */
static int cst_time(const uint8_t *p, Py_ssize_t size, int64_t *moment) {
    if (size != 19 || p[4] != '-' || p[7] != '-' || p[10] != ' ' || p[13] != ':' || p[16] != ':') return 0;
    if (!digits(p, 4) || !digits(p + 5, 2) || !digits(p + 8, 2) || !digits(p + 11, 2) || !digits(p + 14, 2) ||
        !digits(p + 17, 2))
        return 0;
    int year = two_digits(p) * 100 + two_digits(p + 2), month = two_digits(p + 5), day = two_digits(p + 8);
    int hour = two_digits(p + 11), minute = two_digits(p + 14), second = two_digits(p + 17);
    static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (year < 1 || month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59) return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day < 1 || day > month_days[month - 1] + (month == 2 && leap)) return 0;
    *moment = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - 8 * 3600;
    return 1;
}

#endif
