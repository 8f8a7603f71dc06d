/* The common claim's path in C: the answers of three Python functions for the claims most
 * calls carry, and None for every other claim, which the Python then answers.
 *
 *   parse_claim(data, bounds)         gatekeeper.api.validation.claim_from_request
 *                                     of CheckClaimRequest.FromString(data)
 *   decide_registered(items, records, codes, enforced)
 *                                     gatekeeper.core.rules.decide_claim, for claims whose
 *                                     practitioners have only ever been registered
 *   encode_allowed(decision, decision_id, registry_version, ok_message)
 *                                     CheckClaimResponse bytes of a decision that allows
 *                                     every item (gatekeeper.api.servicer.claim_response)
 *
 * Each declines (returns None) whenever its input is anything but plain: a field it does
 * not check the way the Python does (non-ASCII text, whitespace to trim, a field sent
 * twice, min_registry_version), an invalid request, a practitioner with any status but
 * registered. The Python is the reference: tests/unit/test_native.py compares both on
 * generated and mutated inputs. configure() hands over the core's types once (core/native.py).
 * Nothing here imports a module of the gatekeeper.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* PyMember_GetOne */
#include <stdint.h>
#include <string.h>

#include "_formats.h" /* digits, province codes, China Standard Time: shared with loader/_speedups.c */

static PyObject *Item, *Claim, *ItemDecision, *ClaimDecision, *PractitionerRecord, *StatusPeriod; /* msgspec structs */
static PyObject *ALLOW, *OK, *CLAIM_ALLOW; /* Verdict, Reason, ClaimVerdict members */
static PyObject *EMPTY, *ZERO;

/* The struct fields read here, each through its member descriptor when the object is of the
 * struct's own type: a slot read, where PyObject_GetAttr would search the type's MRO. */
enum {
    ITEM_FEEDETL_SN, ITEM_SERVICE_TIME, ITEM_AMOUNT_FEN, ITEM_PRACTITIONERS,
    RECORD_PERIODS, PERIOD_STATUS, PERIOD_BEGNTIME, PERIOD_ENDTIME,
    DECISION_ITEMS, DECISION_VERDICT, DECISION_ALLOWED, DECISION_BLOCKED, DECISION_ENFORCED,
    ITEM_VERDICT, ITEM_REASON, ITEM_WINDOW, ITEM_SN, ITEM_CODE, ITEM_AMOUNT, ITEM_ENFORCED,
    FIELDS
};
typedef struct {
    PyObject **type;
    const char *name;
    PyObject *interned, *descriptor;
    PyMemberDef *member;
} Field;
static Field fields[FIELDS] = {
    [ITEM_FEEDETL_SN] = {&Item, "feedetl_sn"},
    [ITEM_SERVICE_TIME] = {&Item, "service_time"},
    [ITEM_AMOUNT_FEN] = {&Item, "amount_fen"},
    [ITEM_PRACTITIONERS] = {&Item, "practitioners"},
    [RECORD_PERIODS] = {&PractitionerRecord, "periods"},
    [PERIOD_STATUS] = {&StatusPeriod, "status"},
    [PERIOD_BEGNTIME] = {&StatusPeriod, "begntime"},
    [PERIOD_ENDTIME] = {&StatusPeriod, "endtime"},
    [DECISION_ITEMS] = {&ClaimDecision, "items"},
    [DECISION_VERDICT] = {&ClaimDecision, "verdict"},
    [DECISION_ALLOWED] = {&ClaimDecision, "allowed_amount_fen"},
    [DECISION_BLOCKED] = {&ClaimDecision, "blocked_amount_fen"},
    [DECISION_ENFORCED] = {&ClaimDecision, "enforced"},
    [ITEM_VERDICT] = {&ItemDecision, "verdict"},
    [ITEM_REASON] = {&ItemDecision, "reason"},
    [ITEM_WINDOW] = {&ItemDecision, "window"},
    [ITEM_SN] = {&ItemDecision, "feedetl_sn"},
    [ITEM_CODE] = {&ItemDecision, "prac_psn_code"},
    [ITEM_AMOUNT] = {&ItemDecision, "amount_fen"},
    [ITEM_ENFORCED] = {&ItemDecision, "enforced"},
};

/* A field of a struct (a new reference), or NULL with an exception. */
static PyObject *field(PyObject *object, int which) {
    Field *f = &fields[which];
    if (f->member != NULL && (PyObject *)Py_TYPE(object) == *f->type)
        return PyMember_GetOne((const char *)object, f->member);
    return PyObject_GetAttr(object, f->interned);
}

/* validation.py's bounds, handed over with each request (validation.wire_bounds): the
 * Python's constants are the only ones. */
typedef struct {
    long long max_items, max_id_length, max_code_length, max_text_length, max_amount_fen, earliest_time, end_of_time;
} Bounds;
#define BOUNDS 7
/* records.py */
#define STATUS_WITHDRAWN 0
#define STATUS_REGISTERED 1
#define OPEN_ENDED 0

static int configured(void) {
    if (Item == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "gatekeeper._speedups: configure() was not called");
        return 0;
    }
    return 1;
}

/* --- reading the protobuf wire format --------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
} Reader;

/* A varint of at most ``most`` bytes (10 for a value, 64 bits; 5 for a tag or a length, as upb
 * reads them: it refuses longer ones as corrupt); -1 when truncated or longer. */
static int read_varint(Reader *r, uint64_t *out, int most) {
    uint64_t value = 0;
    for (int shift = 0; shift < 7 * most && r->p < r->end; shift += 7) {
        uint8_t byte = *r->p++;
        if (shift == 63 && byte > 1) return -1;
        value |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 0;
        }
    }
    return -1;
}

typedef struct {
    const uint8_t *data;
    Py_ssize_t size;
} Span;

/* The next field: its number, wire type, and its varint value or length-delimited bytes.
 * 1: a field; 0: the end; -1: anything this reader declines (groups, truncation). */
static int next_field(Reader *r, uint32_t *number, int *wire_type, uint64_t *varint, Span *bytes) {
    if (r->p >= r->end) return 0;
    uint64_t tag, length;
    if (read_varint(r, &tag, 5) < 0 || tag > UINT32_MAX || (tag >> 3) == 0) return -1;
    *number = (uint32_t)(tag >> 3);
    *wire_type = (int)(tag & 7);
    switch (*wire_type) {
    case 0:
        return read_varint(r, varint, 10) < 0 ? -1 : 1;
    case 1:
    case 5: {
        Py_ssize_t width = *wire_type == 1 ? 8 : 4;
        if (r->end - r->p < width) return -1;
        r->p += width;
        return 1;
    }
    case 2:
        if (read_varint(r, &length, 5) < 0 || length >= INT32_MAX || length > (uint64_t)(r->end - r->p)) return -1;
        bytes->data = r->p;
        bytes->size = (Py_ssize_t)length;
        r->p += length;
        return 1;
    default:
        return -1;
    }
}

/* --- the checks of validation.py, on ASCII only ---------------------------------------- */

/* A field the Python trims: accepted only when there is nothing to trim or to decode
 * (printable ASCII without spaces), so that trimming is the identity. */
static int trimmed_ascii(Span s) {
    for (Py_ssize_t i = 0; i < s.size; i++)
        if (s.data[i] < 0x21 || s.data[i] > 0x7e) return 0;
    return 1;
}

/* A field kept as sent: ASCII (its length in characters is its length in bytes). */
static int ascii(Span s) {
    for (Py_ssize_t i = 0; i < s.size; i++)
        if (s.data[i] & 0x80) return 0;
    return 1;
}

/* codes.is_institution_code: H or P, a province, 9 digits. */
static int institution_code(Span s) {
    return s.size == 12 && (s.data[0] == 'H' || s.data[0] == 'P') && province(s.data + 1) && digits(s.data + 3, 9);
}

/* validation.service_time: "yyyy-MM-dd HH:mm:ss" China Standard Time from ``earliest`` to
 * before ``end`` (epoch seconds), as epoch seconds; 0 when it is anything else. */
static int service_time(Span s, const Bounds *bounds, int64_t *moment) {
    return cst_time(s.data, s.size, moment) && bounds->earliest_time <= *moment && *moment < bounds->end_of_time;
}

/* --- parse_claim ------------------------------------------------------------------------ */

typedef struct {
    Span feedetl_sn, fee_ocur_time, med_list_codg, ordering, executing;
    int64_t amount_fen, moment;
    int emergency;
} Line;

/* A LineItem's fields, checked as claim_from_request checks them; 0 to decline. */
static int read_line(Span message, const Bounds *bounds, Line *line) {
    Reader r = {message.data, message.data + message.size};
    memset(line, 0, sizeof *line);
    uint32_t number, seen = 0;
    int wire_type, status;
    uint64_t varint = 0;
    Span bytes = {NULL, 0};
    while ((status = next_field(&r, &number, &wire_type, &varint, &bytes)) == 1) {
        if (number > 7) continue; /* unknown: skipped, as protobuf keeps it aside */
        if (seen & (1u << number)) return 0;
        seen |= 1u << number;
        int want_varint = number == 4 || number == 7;
        if (wire_type != (want_varint ? 0 : 2)) return 0;
        switch (number) {
        case 1: line->feedetl_sn = bytes; break;
        case 2: line->fee_ocur_time = bytes; break;
        case 3: line->med_list_codg = bytes; break;
        case 4: line->amount_fen = (int64_t)varint; break;
        case 5: line->ordering = bytes; break;
        case 6: line->executing = bytes; break;
        case 7: line->emergency = varint != 0; break;
        }
    }
    if (status < 0) return 0;
    if (line->feedetl_sn.size == 0 || line->feedetl_sn.size > bounds->max_id_length ||
        !trimmed_ascii(line->feedetl_sn))
        return 0;
    if (line->ordering.size > bounds->max_code_length || !trimmed_ascii(line->ordering)) return 0;
    if (line->executing.size > bounds->max_code_length || !trimmed_ascii(line->executing)) return 0;
    if (line->med_list_codg.size > bounds->max_text_length || !ascii(line->med_list_codg)) return 0;
    if (line->amount_fen < -bounds->max_amount_fen || line->amount_fen > bounds->max_amount_fen) return 0;
    return service_time(line->fee_ocur_time, bounds, &line->moment);
}

static uint64_t hash_bytes(Span s) {
    uint64_t hash = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < s.size; i++) hash = (hash ^ s.data[i]) * 1099511628211ULL;
    return hash;
}

static int same(Span a, Span b) {
    return a.size == b.size && (a.size == 0 || memcmp(a.data, b.data, (size_t)a.size) == 0);
}

/* True when two lines share a serial number (an open-addressing set of them). */
static int repeated_serial_number(Line *lines, Py_ssize_t count) {
    size_t capacity = 16;
    while (capacity < (size_t)count * 2) capacity *= 2;
    Span **slots = PyMem_Calloc(capacity, sizeof *slots);
    if (slots == NULL) return -1;
    int repeated = 0;
    for (Py_ssize_t i = 0; i < count && !repeated; i++) {
        Span *sn = &lines[i].feedetl_sn;
        size_t slot = (size_t)hash_bytes(*sn) & (capacity - 1);
        while (slots[slot] != NULL && !(repeated = same(*slots[slot], *sn))) slot = (slot + 1) & (capacity - 1);
        slots[slot] = sn;
    }
    PyMem_Free(slots);
    return repeated;
}

static PyObject *ascii_str(Span s) {
    PyObject *text = PyUnicode_New(s.size, 127);
    if (text != NULL && s.size > 0) memcpy(PyUnicode_1BYTE_DATA(text), s.data, (size_t)s.size);
    return text;
}

/* The few practitioner codes of a claim, each made into a str once. */
#define CODES_KEPT 16
typedef struct {
    Span span[CODES_KEPT];
    PyObject *text[CODES_KEPT];
    int count;
} Codes;

static PyObject *code_str(Codes *codes, Span s) {
    for (int i = 0; i < codes->count; i++)
        if (same(codes->span[i], s)) return Py_NewRef(codes->text[i]);
    PyObject *text = ascii_str(s);
    if (text != NULL && codes->count < CODES_KEPT) {
        codes->span[codes->count] = s;
        codes->text[codes->count++] = Py_NewRef(text);
    }
    return text;
}

static PyObject *make_item(Line *line, int claim_emergency, Codes *codes) {
    PyObject *args[5] = {NULL, NULL, NULL, NULL, NULL}, *item = NULL, *ordering = NULL, *executing = NULL;
    if ((args[0] = ascii_str(line->feedetl_sn)) == NULL || (args[1] = PyLong_FromLongLong(line->moment)) == NULL ||
        (args[2] = PyLong_FromLongLong(line->amount_fen)) == NULL || (ordering = code_str(codes, line->ordering)) == NULL)
        goto done;
    if (line->executing.size > 0 && !same(line->executing, line->ordering)) {
        if ((executing = code_str(codes, line->executing)) == NULL) goto done;
        args[3] = PyTuple_Pack(2, ordering, executing);
    } else {
        args[3] = PyTuple_Pack(1, ordering);
    }
    if (args[3] == NULL) goto done;
    args[4] = Py_NewRef(claim_emergency || line->emergency ? Py_True : Py_False);
    item = PyObject_Vectorcall(Item, args, 5, NULL);
done:
    Py_XDECREF(ordering);
    Py_XDECREF(executing);
    for (int i = 0; i < 5; i++) Py_XDECREF(args[i]);
    return item;
}

/* The bounds tuple of validation.wire_bounds, read into ``bounds``; -1 with an exception. */
static int read_bounds(PyObject *tuple, Bounds *bounds) {
    long long *values[BOUNDS] = {&bounds->max_items,       &bounds->max_id_length,  &bounds->max_code_length,
                                 &bounds->max_text_length, &bounds->max_amount_fen, &bounds->earliest_time,
                                 &bounds->end_of_time};
    if (!PyTuple_Check(tuple) || PyTuple_GET_SIZE(tuple) != BOUNDS) {
        PyErr_SetString(PyExc_TypeError, "parse_claim's bounds: a tuple of 7 ints (validation.wire_bounds)");
        return -1;
    }
    for (int i = 0; i < BOUNDS; i++)
        if ((*values[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(tuple, i))) == -1 && PyErr_Occurred()) return -1;
    return 0;
}

static PyObject *parse_claim(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer data;
    Bounds bounds;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_claim(data, bounds)");
        return NULL;
    }
    if (!configured() || read_bounds(args[1], &bounds) < 0) return NULL;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) return NULL;

    PyObject *result = NULL;
    Line *lines = NULL;
    Codes codes = {.count = 0};
    Span claim_id = {NULL, 0}, fixmedins_code = {NULL, 0}, med_type = {NULL, 0}, mdtrt_id = {NULL, 0};
    Span min_version = {NULL, 0}, bytes = {NULL, 0};
    int emergency = 0, wire_type, status;
    uint32_t number, seen = 0;
    uint64_t varint = 0;
    Py_ssize_t count = 0;

    /* First the claim's own fields, counting its items (a flag may follow them). */
    Reader r = {data.buf, (const uint8_t *)data.buf + data.len};
    while ((status = next_field(&r, &number, &wire_type, &varint, &bytes)) == 1) {
        if (number > 7) continue;
        if (wire_type != (number == 4 ? 0 : 2)) goto decline;
        if (number == 5) {
            count++;
            continue;
        }
        if (seen & (1u << number)) goto decline;
        seen |= 1u << number;
        switch (number) {
        case 1: claim_id = bytes; break;
        case 2: fixmedins_code = bytes; break;
        case 3: med_type = bytes; break;
        case 4: emergency = varint != 0; break;
        case 6: mdtrt_id = bytes; break;
        case 7: min_version = bytes; break;
        }
    }
    if (status < 0 || count == 0 || count > bounds.max_items || min_version.size > 0) goto decline;
    if (claim_id.size == 0 || claim_id.size > bounds.max_id_length || !trimmed_ascii(claim_id)) goto decline;
    if (!institution_code(fixmedins_code)) goto decline;
    if (med_type.size > bounds.max_text_length || !ascii(med_type) || mdtrt_id.size > bounds.max_id_length ||
        !ascii(mdtrt_id))
        goto decline;

    /* Then each item. */
    lines = PyMem_Malloc((size_t)count * sizeof *lines);
    if (lines == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t index = 0;
    r.p = data.buf;
    while (next_field(&r, &number, &wire_type, &varint, &bytes) == 1)
        if (number == 5 && !read_line(bytes, &bounds, &lines[index++])) goto decline;
    int repeated = repeated_serial_number(lines, count);
    if (repeated < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (repeated) goto decline;

    PyObject *items = PyTuple_New(count);
    if (items == NULL) goto done;
    for (index = 0; index < count; index++) {
        PyObject *item = make_item(&lines[index], emergency, &codes);
        if (item == NULL) {
            Py_DECREF(items);
            goto done;
        }
        PyTuple_SET_ITEM(items, index, item);
    }
    PyObject *claim_args[3] = {ascii_str(claim_id), NULL, items};
    if (claim_args[0] != NULL && (claim_args[1] = ascii_str(fixmedins_code)) != NULL)
        result = PyObject_Vectorcall(Claim, claim_args, 3, NULL);
    for (int i = 0; i < 3; i++) Py_XDECREF(claim_args[i]);
    goto done;

decline:
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < codes.count; i++) Py_DECREF(codes.text[i]);
    PyMem_Free(lines);
    PyBuffer_Release(&data);
    return result;
}

/* --- decide_registered ------------------------------------------------------------------ */

/* A whole-number field: 0, its value in ``value``; 1, not one that fits in 64 bits (the caller
 * declines: the Python compares any int); -1, an error. */
static int long_field(PyObject *object, int which, long long *value) {
    PyObject *attribute = field(object, which);
    if (attribute == NULL) return -1;
    *value = PyLong_Check(attribute) ? PyLong_AsLongLong(attribute) : -1;
    int outside = !PyLong_Check(attribute) || (*value == -1 && PyErr_Occurred());
    Py_DECREF(attribute);
    if (!outside) return 0;
    if (PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
    }
    return 1;
}

/* rules._registered_only and rules._all_registered for one code: 1 when the code is
 * well-formed (in ``codes``), its periods are registrations (withdrawn ones aside) and one
 * covers ``moment``; 0 when not (or not plainly); -1 on an error. */
static int registered_at(PyObject *code, long long moment, PyObject *records, PyObject *codes) {
    int known = PySet_Contains(codes, code);
    if (known <= 0) return known;
    PyObject *record = PyDict_GetItemWithError(records, code); /* borrowed */
    if (record == NULL) return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(record); /* held while its fields are read */
    PyObject *periods = field(record, RECORD_PERIODS);
    Py_DECREF(record);
    if (periods == NULL) return -1;
    if (!PyTuple_Check(periods)) {
        Py_DECREF(periods);
        return 0;
    }
    int covered = 0, read;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(periods); i++) {
        PyObject *period = PyTuple_GET_ITEM(periods, i);
        long long status, begins, ends;
        if ((read = long_field(period, PERIOD_STATUS, &status)) != 0) break;
        if (status == STATUS_WITHDRAWN) continue;
        if (status != STATUS_REGISTERED) {
            covered = 0;
            break;
        }
        if (covered) continue;
        if ((read = long_field(period, PERIOD_BEGNTIME, &begins)) != 0 ||
            (read = long_field(period, PERIOD_ENDTIME, &ends)) != 0)
            break;
        covered = begins <= moment && (ends == OPEN_ENDED || moment < ends);
    }
    Py_DECREF(periods);
    if (read < 0) return -1;
    return read == 0 && covered;
}

static PyObject *decide_registered(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decide_registered(items, records, codes, enforced)");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *items = args[0], *records = args[1], *codes = args[2];
    if (!PyTuple_Check(items) || !PyDict_Check(records) || !PyAnySet_Check(codes)) {
        PyErr_SetString(PyExc_TypeError, "decide_registered takes a tuple, a dict and a set");
        return NULL;
    }
    int enforced_flag = PyObject_IsTrue(args[3]);
    if (enforced_flag < 0) return NULL;
    PyObject *enforced = enforced_flag ? Py_True : Py_False;
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    if (count == 0) Py_RETURN_NONE;

    PyObject *decisions = PyTuple_New(count), *result = NULL;
    long long allowed = 0;
    if (decisions == NULL) return NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        long long moment, amount;
        int read = long_field(item, ITEM_SERVICE_TIME, &moment);
        if (read != 0) goto declined_or_error;
        PyObject *practitioners = field(item, ITEM_PRACTITIONERS);
        if (practitioners == NULL) goto done;
        int registered = PyTuple_Check(practitioners);
        for (Py_ssize_t k = 0; registered > 0 && k < PyTuple_GET_SIZE(practitioners); k++)
            registered = registered_at(PyTuple_GET_ITEM(practitioners, k), moment, records, codes);
        Py_DECREF(practitioners);
        if (registered < 0) goto done;
        if (registered == 0) goto declined;
        /* The sum as decide_claim's, unless it leaves 64 bits (validated amounts never do). */
        read = long_field(item, ITEM_AMOUNT_FEN, &amount);
        if (read == 0 && __builtin_add_overflow(allowed, amount, &allowed)) read = 1;
        if (read != 0) goto declined_or_error;
        PyObject *decision_args[7] = {field(item, ITEM_FEEDETL_SN), ALLOW, OK, EMPTY, Py_None, enforced, NULL};
        if (decision_args[0] == NULL) goto done;
        decision_args[6] = field(item, ITEM_AMOUNT_FEN);
        PyObject *decision = decision_args[6] == NULL ? NULL : PyObject_Vectorcall(ItemDecision, decision_args, 7, NULL);
        Py_DECREF(decision_args[0]);
        Py_XDECREF(decision_args[6]);
        if (decision == NULL) goto done;
        PyTuple_SET_ITEM(decisions, i, decision);
        continue;
    declined_or_error:
        if (read < 0) goto done;
    declined:
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *sum = PyLong_FromLongLong(allowed);
    if (sum != NULL) {
        PyObject *claim_args[6] = {CLAIM_ALLOW, decisions, sum, ZERO, enforced, ZERO};
        result = PyObject_Vectorcall(ClaimDecision, claim_args, 6, NULL);
        Py_DECREF(sum);
    }
done:
    Py_DECREF(decisions);
    return result;
}

/* --- encode_allowed --------------------------------------------------------------------- */

static Py_ssize_t varint_size(uint64_t value) {
    Py_ssize_t size = 1;
    while (value >= 0x80) {
        value >>= 7;
        size++;
    }
    return size;
}

static uint8_t *put_varint(uint8_t *p, uint64_t value) {
    while (value >= 0x80) {
        *p++ = (uint8_t)(value | 0x80);
        value >>= 7;
    }
    *p++ = (uint8_t)value;
    return p;
}

/* The size of a field holding ``size`` bytes (none when empty, as proto3 writes it). */
static Py_ssize_t text_size(Py_ssize_t size) { return size == 0 ? 0 : 1 + varint_size((uint64_t)size) + size; }

static uint8_t *put_text(uint8_t *p, uint8_t tag, const char *text, Py_ssize_t size) {
    if (size == 0) return p;
    *p++ = tag;
    p = put_varint(p, (uint64_t)size);
    memcpy(p, text, (size_t)size);
    return p + size;
}

static Py_ssize_t int_size(long long value) { return value == 0 ? 0 : 1 + varint_size((uint64_t)value); }

static uint8_t *put_int(uint8_t *p, uint8_t tag, long long value) {
    if (value == 0) return p;
    *p++ = tag;
    return put_varint(p, (uint64_t)value);
}

typedef struct {
    PyObject *sn_text, *code_text; /* held until the bytes are written: their UTF-8 is copied then */
    const char *sn, *code;
    Py_ssize_t sn_size, code_size, size; /* size: the ItemDecision message's */
    long long amount;
    int enforced;
} Allowed;

/* One item decision read for encode_allowed: 0, read (an allowed item for reason OK, with
 * no window); 1, another kind of item (the caller declines); -1, an error. */
static int read_allowed(PyObject *item, Allowed *a) {
    static const int kinds[3] = {ITEM_VERDICT, ITEM_REASON, ITEM_WINDOW};
    PyObject *const plain[3] = {ALLOW, OK, Py_None};
    for (int k = 0; k < 3; k++) {
        PyObject *value = field(item, kinds[k]);
        if (value == NULL) return -1;
        Py_DECREF(value); /* compared by identity only */
        if (value != plain[k]) return 1;
    }
    if ((a->sn_text = field(item, ITEM_SN)) == NULL || (a->code_text = field(item, ITEM_CODE)) == NULL) return -1;
    if ((a->sn = PyUnicode_AsUTF8AndSize(a->sn_text, &a->sn_size)) == NULL ||
        (a->code = PyUnicode_AsUTF8AndSize(a->code_text, &a->code_size)) == NULL)
        return -1;
    int read = long_field(item, ITEM_AMOUNT, &a->amount);
    if (read != 0) return read;
    PyObject *flag = field(item, ITEM_ENFORCED);
    if (flag == NULL) return -1;
    a->enforced = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    return a->enforced < 0 ? -1 : 0;
}

static PyObject *encode_allowed(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "encode_allowed(decision, decision_id, registry_version, ok_message)");
        return NULL;
    }
    if (!configured()) return NULL;
    PyObject *decision = args[0];
    Py_ssize_t id_size, version_size, message_size;
    const char *id = PyUnicode_AsUTF8AndSize(args[1], &id_size);
    const char *version = id == NULL ? NULL : PyUnicode_AsUTF8AndSize(args[2], &version_size);
    const char *message = version == NULL ? NULL : PyUnicode_AsUTF8AndSize(args[3], &message_size);
    if (message == NULL) return NULL;

    PyObject *items = field(decision, DECISION_ITEMS), *result = NULL;
    if (items == NULL) return NULL;
    if (!PyTuple_Check(items)) {
        Py_DECREF(items);
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(items);
    Allowed *allowed = PyMem_Calloc((size_t)(count ? count : 1), sizeof *allowed);
    if (allowed == NULL) {
        Py_DECREF(items);
        return PyErr_NoMemory();
    }
    long long verdict, allowed_fen, blocked_fen;
    int enforced, read;
    PyObject *flag;
    if ((read = long_field(decision, DECISION_VERDICT, &verdict)) != 0 ||
        (read = long_field(decision, DECISION_ALLOWED, &allowed_fen)) != 0 ||
        (read = long_field(decision, DECISION_BLOCKED, &blocked_fen)) != 0)
        goto declined_or_error;
    if ((flag = field(decision, DECISION_ENFORCED)) == NULL) goto done;
    enforced = PyObject_IsTrue(flag);
    Py_DECREF(flag);
    if (enforced < 0) goto done;

    /* Every item allowed for its reason OK, with no window: the one message for all. */
    Py_ssize_t size = text_size(id_size) + text_size(version_size) + int_size(verdict) + int_size(allowed_fen) +
                      int_size(blocked_fen) + (enforced ? 2 : 0);
    for (Py_ssize_t i = 0; i < count; i++) {
        Allowed *a = &allowed[i];
        if ((read = read_allowed(PyTuple_GET_ITEM(items, i), a)) != 0) goto declined_or_error;
        a->size = text_size(a->sn_size) + 4 + text_size(a->code_size) + (a->enforced ? 2 : 0) +
                  int_size(a->amount) + text_size(message_size);
        size += 1 + varint_size((uint64_t)a->size) + a->size;
    }

    result = PyBytes_FromStringAndSize(NULL, size);
    if (result == NULL) goto done;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(result);
    p = put_text(p, 0x0a, id, id_size);
    p = put_text(p, 0x12, version, version_size);
    p = put_int(p, 0x18, verdict);
    p = put_int(p, 0x20, allowed_fen);
    p = put_int(p, 0x28, blocked_fen);
    for (Py_ssize_t i = 0; i < count; i++) {
        Allowed *a = &allowed[i];
        *p++ = 0x32;
        p = put_varint(p, (uint64_t)a->size);
        p = put_text(p, 0x0a, a->sn, a->sn_size);
        *p++ = 0x10; /* verdict: VERDICT_ALLOW */
        *p++ = 1;
        *p++ = 0x18; /* reason: REASON_OK */
        *p++ = 1;
        p = put_text(p, 0x22, a->code, a->code_size);
        if (a->enforced) {
            *p++ = 0x40;
            *p++ = 1;
        }
        p = put_int(p, 0x48, a->amount);
        p = put_text(p, 0x52, message, message_size);
    }
    if (enforced) {
        *p++ = 0x38;
        *p++ = 1;
    }
    assert(p == (uint8_t *)PyBytes_AS_STRING(result) + size);
    goto done;

declined_or_error:
    if (read > 0) result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_XDECREF(allowed[i].sn_text);
        Py_XDECREF(allowed[i].code_text);
    }
    PyMem_Free(allowed);
    Py_DECREF(items);
    return result;
}

/* --- the module ------------------------------------------------------------------------- */

static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(Item, Claim, ItemDecision, ClaimDecision, PractitionerRecord, StatusPeriod, "
                        "Verdict.ALLOW, Reason.OK, ClaimVerdict.ALLOW, PROVINCE_CODES)");
        return NULL;
    }
    if (set_provinces(args[9]) < 0) return NULL;
    PyObject **slots[9] = {&Item,         &Claim,        &ItemDecision, &ClaimDecision, &PractitionerRecord,
                           &StatusPeriod, &ALLOW,        &OK,           &CLAIM_ALLOW};
    for (int i = 0; i < 9; i++) Py_XSETREF(*slots[i], Py_NewRef(args[i]));
    for (int i = 0; i < FIELDS; i++) {
        Field *f = &fields[i];
        Py_CLEAR(f->descriptor);
        f->member = NULL;
        PyObject *descriptor = PyObject_GetAttr(*f->type, f->interned);
        if (descriptor == NULL) return NULL; /* not a field of the type: a wrong type handed over */
        if (Py_IS_TYPE(descriptor, &PyMemberDescr_Type)) {
            f->descriptor = descriptor;
            f->member = ((PyMemberDescrObject *)descriptor)->d_member;
        } else {
            Py_DECREF(descriptor); /* read by name */
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "Hand over the core's types: Item, Claim, ItemDecision, ClaimDecision, PractitionerRecord, StatusPeriod, "
     "Verdict.ALLOW, Reason.OK, ClaimVerdict.ALLOW, and codes.PROVINCE_CODES."},
    {"parse_claim", (PyCFunction)(void (*)(void))parse_claim, METH_FASTCALL,
     "parse_claim(data, bounds): the Claim that claim_from_request makes of a plain serialized "
     "CheckClaimRequest, or None."},
    {"decide_registered", (PyCFunction)(void (*)(void))decide_registered, METH_FASTCALL,
     "decide_registered(items, records, codes, enforced): decide_claim's ClaimDecision when every "
     "practitioner has only ever been registered and is at the item's time, or None."},
    {"encode_allowed", (PyCFunction)(void (*)(void))encode_allowed, METH_FASTCALL,
     "encode_allowed(decision, decision_id, registry_version, ok_message): the serialized "
     "CheckClaimResponse of a decision allowing every item for reason OK, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "gatekeeper._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    for (int i = 0; i < FIELDS; i++)
        if ((fields[i].interned = PyUnicode_InternFromString(fields[i].name)) == NULL) return NULL;
    if ((EMPTY = PyUnicode_New(0, 127)) == NULL || (ZERO = PyLong_FromLong(0)) == NULL) return NULL;
    return PyModule_Create(&module_definition);
}
