/* The snapshot loader's per-row work in C: parsing a snapshot's CSV rows in the parsing
 * workers, and the bookkeeping for every row in the loader's own process.
 *
 *   parse_rows(text, start, line, columns, width, buckets, pieces, into)
 *                                     loader/chunks.py parse_chunk's rows, from ``start``
 *                                     until the first record it does not take as the
 *                                     Python's fast path would (RowParser.encode),
 *                                     appended to ``into``
 *   split_first(codes, chg_ids, mask, code_crcs, chg_crcs)
 *                                     FirstRows.split: which rows are the first of their
 *                                     code and of their chg_id, which are not, and which of
 *                                     those are the first of their chg_id (Bloom filters
 *                                     over CRC-32s)
 *   gather(positions, buckets, width, fields, offsets, pending, base)
 *                                     BulkBuffer.add: each row's RESP fields appended to the
 *                                     byte string of its range of buckets, behind its
 *                                     bucket and length ("<II")
 *   grouped(gathered)                 BulkBuffer.commands: those entries grouped by bucket,
 *                                     (bucket, field count, fields), by bucket number
 *
 * The Python is the reference and is used where this was not built: parse_rows stops at any
 * record it does not read exactly as the Python does (bad values, whitespace, quoting the
 * csv module reads its own way, text that is not UTF-8) and the Python reads that record, or
 * the rest of the piece. tests/unit/test_loader_native.py holds each function to its Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../gatekeeper/_formats.h" /* digits, province codes, China Standard Time: shared with gatekeeper/_speedups.c */

/* --- parse_rows ------------------------------------------------------------------------ */

static Py_ssize_t max_chg_id_length, max_chg_rea_length, max_seq_digits;
static uint32_t crc_table[256];

static uint32_t crc32_of(const unsigned char *data, Py_ssize_t size) { /* zlib.crc32 */
    uint32_t crc = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < size; i++) crc = crc_table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Out;

static int reserve(Out *out, Py_ssize_t more) {
    if (out->size + more <= out->capacity) return 0;
    Py_ssize_t capacity = out->capacity ? out->capacity : 4096;
    while (capacity < out->size + more) capacity *= 2;
    char *grown = PyMem_Realloc(out->data, (size_t)capacity);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    out->data = grown;
    out->capacity = capacity;
    return 0;
}

static int put(Out *out, const void *data, Py_ssize_t size) {
    if (reserve(out, size) < 0) return -1;
    memcpy(out->data + out->size, data, (size_t)size);
    out->size += size;
    return 0;
}

static int put_u32(Out *out, uint32_t value) { return put(out, &value, 4); } /* array('I') */
static int put_u64(Out *out, uint64_t value) { return put(out, &value, 8); } /* array('Q') */

/* MessagePack, as msgspec writes it: the shortest form of each value. */
static int put_int(Out *out, uint64_t value) {
    unsigned char head[9];
    int size;
    if (value < 128) {
        head[0] = (unsigned char)value;
        size = 1;
    } else {
        int bytes = value < 256 ? 1 : value < 65536 ? 2 : value <= UINT32_MAX ? 4 : 8;
        head[0] = bytes == 1 ? 0xcc : bytes == 2 ? 0xcd : bytes == 4 ? 0xce : 0xcf;
        for (int i = 0; i < bytes; i++) head[1 + i] = (unsigned char)(value >> (8 * (bytes - 1 - i)));
        size = 1 + bytes;
    }
    return put(out, head, size);
}

static int put_sized(Out *out, const void *data, Py_ssize_t size, int binary) {
    unsigned char head[5];
    int length;
    if (!binary && size < 32) {
        head[0] = (unsigned char)(0xa0 | size);
        length = 1;
    } else if (size < 256) {
        head[0] = binary ? 0xc4 : 0xd9;
        head[1] = (unsigned char)size;
        length = 2;
    } else if (size < 65536) {
        head[0] = binary ? 0xc5 : 0xda;
        head[1] = (unsigned char)(size >> 8);
        head[2] = (unsigned char)size;
        length = 3;
    } else {
        head[0] = binary ? 0xc6 : 0xdb;
        for (int i = 0; i < 4; i++) head[1 + i] = (unsigned char)((uint64_t)size >> (8 * (3 - i)));
        length = 5;
    }
    if (put(out, head, length) < 0) return -1;
    return put(out, data, size);
}

static int put_resp(Out *out, const void *data, Py_ssize_t size) { /* a RESP bulk string */
    char head[32];
    int length = snprintf(head, sizeof head, "$%zd\r\n", size);
    if (put(out, head, length) < 0 || put(out, data, size) < 0) return -1;
    return put(out, "\r\n", 2);
}

typedef struct {
    const unsigned char *data;
    Py_ssize_t size;
} Text;

static int is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }

/* [A-Z]{1,2}, a province code, 10 digits (loader.rows._PRACTITIONER_CODE) */
static int is_practitioner_code(Text t) {
    Py_ssize_t letters = t.size - 12;
    if (letters < 1 || letters > 2 || !is_upper(t.data[0]) || (letters == 2 && !is_upper(t.data[1]))) return 0;
    return province(t.data + letters) && digits(t.data + letters, 12);
}

/* A registry time (rows._registry_time): a real China Standard Time after the epoch, as
 * epoch seconds; 0 otherwise (epoch 0 means "open-ended" in a record). */
static int64_t registry_time(Text t) {
    int64_t moment;
    return cst_time(t.data, t.size, &moment) && moment > 0 ? moment : 0;
}

/* [^\x1f]{0,max_chg_rea_length} of well-formed UTF-8 */
static int is_reason(Text t) {
    Py_ssize_t characters = 0;
    for (Py_ssize_t i = 0; i < t.size; characters++) {
        unsigned char c = t.data[i];
        if (c < 0x80) {
            if (c == 0x1f) return 0;
            i++;
            continue;
        }
        int extra = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : -1;
        if (extra < 0 || t.size - i - 1 < extra) return 0;
        unsigned char next = t.data[i + 1];
        if ((c == 0xe0 && next < 0xa0) || (c == 0xed && next > 0x9f) || (c == 0xf0 && next < 0x90) ||
            (c == 0xf4 && next > 0x8f))
            return 0; /* overlong, a surrogate, above U+10FFFF */
        for (int k = 1; k <= extra; k++)
            if ((t.data[i + k] & 0xc0) != 0x80) return 0;
        i += 1 + extra;
    }
    return characters <= max_chg_rea_length;
}

enum { CODE, TYPE, CHG_ID, STATUS, BEGNTIME, ENDTIME, BAN_ENDTIME, CHG_REA, VALI_FLAG, SEQ, USED };

/* What parse_rows appends to, in the order of its ``into`` argument: the ParsedChunk's
 * byte strings and arrays, each offset the end of a row's bytes in the whole (``base`` is
 * what the three byte strings held before). */
enum { PACKED, ROW_ENDS, LINES, CODE_CRCS, CHG_CRCS, BUCKETS, CHG_BUCKETS, RECORD_FIELDS, RECORD_ENDS,
       INDEX_ENTRIES, INDEX_ENDS, OUTPUTS };

typedef struct {
    Out out[OUTPUTS];
    uint64_t packed_base, record_base, index_base;
    Out record, scratch;
} Parsed;

/* One record's fields in FIELDS order, validated and written out; 0 when the Python's fast
 * path would not take them (the Python then reads the record), -1 on an error. */
static int take_row(Parsed *p, Text *f, uint64_t line, uint64_t bucket_count, uint64_t piece_count) {
    Text code = f[CODE], chg_id = f[CHG_ID], chg_rea = f[CHG_REA], seq_text = f[SEQ];
    if (!is_practitioner_code(code)) return 0;
    if (f[TYPE].size != 1 || f[TYPE].data[0] < '1' || f[TYPE].data[0] > '4') return 0;
    if (chg_id.size < 1 || chg_id.size > max_chg_id_length) return 0;
    for (Py_ssize_t i = 0; i < chg_id.size; i++)
        if (chg_id.data[i] < '!' || chg_id.data[i] > '~') return 0;
    if (f[STATUS].size != 1 || f[STATUS].data[0] < '1' || f[STATUS].data[0] > '3') return 0;
    if (f[VALI_FLAG].size != 1 || (f[VALI_FLAG].data[0] != '0' && f[VALI_FLAG].data[0] != '1')) return 0;
    if (seq_text.size < 1 || seq_text.size > max_seq_digits || !digits(seq_text.data, seq_text.size)) return 0;
    if (!is_reason(chg_rea)) return 0;
    int64_t begins = registry_time(f[BEGNTIME]), ends = 0, ban_ends = 0;
    if (!begins) return 0;
    if (f[ENDTIME].size && !(ends = registry_time(f[ENDTIME]))) return 0;
    if (f[BAN_ENDTIME].size && !(ban_ends = registry_time(f[BAN_ENDTIME]))) return 0;
    if (ends && ends < begins) return 0;
    uint64_t seq = 0;
    for (Py_ssize_t i = 0; i < seq_text.size; i++) seq = seq * 10 + (uint64_t)(seq_text.data[i] - '0');
    int status = f[STATUS].data[0] - '0';
    int kept_reason = status != 1 && chg_rea.size > 0;
    uint32_t code_crc = crc32_of(code.data, code.size), chg_crc = crc32_of(chg_id.data, chg_id.size);

    /* The record: [prac_psn_type, [[status, begntime, chg_id, seq, endtime, ban_endtime,
     * chg_rea]]], trailing defaults left out (records.period_array). */
    Out *o = p->out, *r = &p->record;
    r->size = 0;
    int period_length = kept_reason ? 7 : ban_ends ? 6 : ends ? 5 : 4;
    unsigned char head[3] = {0x92, (unsigned char)(f[TYPE].data[0] - '0'), 0x91};
    unsigned char period_head = (unsigned char)(0x90 | period_length);
    if (put(r, head, 3) < 0 || put(r, &period_head, 1) < 0) return -1;
    if (put_int(r, f[VALI_FLAG].data[0] == '1' ? (uint64_t)status : 0) < 0 || put_int(r, (uint64_t)begins) < 0 ||
        put_sized(r, chg_id.data, chg_id.size, 0) < 0 || put_int(r, seq) < 0)
        return -1;
    if (period_length >= 5 && put_int(r, (uint64_t)ends) < 0) return -1;
    if (period_length >= 6 && put_int(r, (uint64_t)ban_ends) < 0) return -1;
    if (period_length == 7 && put_sized(r, chg_rea.data, chg_rea.size, 0) < 0) return -1;

    /* The EncodedRow (code, chg_id, record, seq), and the chg_id index entry: the chg_id's
     * tag and the bucket (keys.index_entry, keys.tag_of_crc). */
    uint64_t bucket = code_crc % bucket_count;
    uint32_t tag = (uint32_t)(chg_crc * 0x9E3779B1u) >> 16;
    unsigned char four = 0x94;
    unsigned char entry[5] = {(unsigned char)(tag >> 8), (unsigned char)tag, (unsigned char)(bucket >> 16),
                              (unsigned char)(bucket >> 8), (unsigned char)bucket};
    if (put(&o[PACKED], &four, 1) < 0 || put_sized(&o[PACKED], code.data, code.size, 0) < 0 ||
        put_sized(&o[PACKED], chg_id.data, chg_id.size, 0) < 0 || put_sized(&o[PACKED], r->data, r->size, 1) < 0 ||
        put_int(&o[PACKED], seq) < 0 || put_u64(&o[ROW_ENDS], p->packed_base + (uint64_t)o[PACKED].size) < 0)
        return -1;
    if (put_u64(&o[LINES], line) < 0 || put_u32(&o[CODE_CRCS], code_crc) < 0 || put_u32(&o[CHG_CRCS], chg_crc) < 0 ||
        put_u32(&o[BUCKETS], (uint32_t)bucket) < 0 || put_u32(&o[CHG_BUCKETS], (uint32_t)(chg_crc % piece_count)) < 0)
        return -1;
    if (put_resp(&o[RECORD_FIELDS], code.data, code.size) < 0 || put_resp(&o[RECORD_FIELDS], r->data, r->size) < 0 ||
        put_u64(&o[RECORD_ENDS], p->record_base + (uint64_t)o[RECORD_FIELDS].size) < 0)
        return -1;
    if (put(&o[INDEX_ENTRIES], entry, sizeof entry) < 0 ||
        put_u64(&o[INDEX_ENDS], p->index_base + (uint64_t)o[INDEX_ENTRIES].size) < 0)
        return -1;
    return 1;
}

enum { RECORD, BLANK, DECLINED, UNKNOWN, END }; /* what read_record found */

/* The record at data[*at]: its fields (in ``spans``, at most ``width``; ``*count`` of them
 * in all), the newlines it holds and ends with; ``*at`` moved past it. UNKNOWN when its
 * quoting is any but RFC 4180's (where the csv module reads on its own way) or it holds a
 * NUL or a lone carriage return: where it ends is then the csv module's to say. */
static int read_record(const unsigned char *data, Py_ssize_t size, Py_ssize_t *at, Text *spans, Py_ssize_t width,
                       Py_ssize_t *count, uint64_t *newlines, Out *scratch) { /* scratch: room for the rest of data */
    Py_ssize_t p = *at;
    if (p >= size) return END;
    if (data[p] == '\n' || (data[p] == '\r' && p + 1 < size && data[p + 1] == '\n')) {
        *at = p + (data[p] == '\r' ? 2 : 1);
        *newlines = 1;
        return BLANK;
    }
    *count = 0;
    *newlines = 0;
    scratch->size = 0;
    /* A quoted field with doubled quotes is copied, undoubled, into the scratch buffer. */
    for (;;) {
        Text field;
        if (p < size && data[p] == '"') {
            Py_ssize_t begin = ++p;
            int doubled = 0;
            for (;; p++) {
                if (p >= size || data[p] == 0) return UNKNOWN;
                if (data[p] == '"') {
                    if (p + 1 < size && data[p + 1] == '"') {
                        doubled = 1;
                        p++;
                        continue;
                    }
                    break;
                }
                if (data[p] == '\n') ++*newlines;
                if (data[p] == '\r' && !(p + 1 < size && data[p + 1] == '\n')) return UNKNOWN;
            }
            field.data = data + begin;
            field.size = p - begin;
            p++; /* the closing quote */
            if (doubled) {
                            unsigned char *out = (unsigned char *)scratch->data + scratch->size;
                Py_ssize_t length = 0;
                for (Py_ssize_t i = 0; i < field.size; i++) {
                    out[length++] = field.data[i];
                    if (field.data[i] == '"') i++;
                }
                field.data = out;
                field.size = length;
                scratch->size += length;
            }
            if (p < size && data[p] != ',' && data[p] != '\n' && data[p] != '\r') return UNKNOWN;
        } else {
            Py_ssize_t begin = p;
            while (p < size && data[p] != ',' && data[p] != '\n' && data[p] != '\r') {
                if (data[p] == '"' || data[p] == 0) return UNKNOWN;
                p++;
            }
            field.data = data + begin;
            field.size = p - begin;
        }
        if (*count < width) spans[*count] = field;
        ++*count;
        if (p >= size) break;
        if (data[p] == ',') {
            p++;
            continue;
        }
        if (data[p] == '\r') {
            if (!(p + 1 < size && data[p + 1] == '\n')) return UNKNOWN;
            p++;
        }
        p++; /* the newline */
        ++*newlines;
        break;
    }
    *at = p;
    return *count == width ? RECORD : DECLINED;
}

static PyObject *parse_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "parse_rows(text, start, line, columns, width, buckets, pieces, into)");
        return NULL;
    }
    PyObject *into = args[7];
    if (!PyBytes_Check(args[0]) || !PyTuple_Check(args[3]) || PyTuple_GET_SIZE(args[3]) != USED ||
        !PyTuple_Check(into) || PyTuple_GET_SIZE(into) != OUTPUTS) {
        PyErr_SetString(PyExc_TypeError, "parse_rows: text is bytes, columns 10 positions, into 11 bytearrays");
        return NULL;
    }
    for (int i = 0; i < OUTPUTS; i++) {
        if (!PyByteArray_Check(PyTuple_GET_ITEM(into, i))) {
            PyErr_SetString(PyExc_TypeError, "parse_rows: into holds bytearrays");
            return NULL;
        }
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t at = PyLong_AsSsize_t(args[1]), width = PyLong_AsSsize_t(args[4]);
    uint64_t line = PyLong_AsUnsignedLongLong(args[2]), bucket_count = PyLong_AsUnsignedLongLong(args[5]);
    uint64_t piece_count = PyLong_AsUnsignedLongLong(args[6]);
    Py_ssize_t columns[USED];
    for (int i = 0; i < USED; i++) columns[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(args[3], i));
    if (PyErr_Occurred()) return NULL;
    if (at < 0 || at > size || width < USED || bucket_count < 1 || bucket_count >= 1 << 24 || piece_count < 1 ||
        piece_count > bucket_count || province_count == 0) {
        PyErr_SetString(PyExc_ValueError, "parse_rows: start, width, buckets or pieces out of range, or not configured");
        return NULL;
    }
    for (int i = 0; i < USED; i++) {
        if (columns[i] < 0 || columns[i] >= width) {
            PyErr_SetString(PyExc_ValueError, "parse_rows: a column is out of range");
            return NULL;
        }
    }
    Parsed p = {0};
    p.packed_base = (uint64_t)PyByteArray_GET_SIZE(PyTuple_GET_ITEM(into, PACKED));
    p.record_base = (uint64_t)PyByteArray_GET_SIZE(PyTuple_GET_ITEM(into, RECORD_FIELDS));
    p.index_base = (uint64_t)PyByteArray_GET_SIZE(PyTuple_GET_ITEM(into, INDEX_ENTRIES));
    PyObject *result = NULL;
    Text *spans = PyMem_Malloc((size_t)width * sizeof *spans);
    if (spans == NULL) return PyErr_NoMemory();
    /* Spans point into the scratch buffer: sized once for the longest record there can be. */
    if (reserve(&p.scratch, size - at + 1) < 0) goto release;
    Py_ssize_t rows = 0, stop = size, stop_end = size;
    for (;;) {
        Py_ssize_t begin = at, count;
        uint64_t newlines;
        int kind = read_record(data, size, &at, spans, width, &count, &newlines, &p.scratch);
        if (kind < 0) goto release;
        if (kind == END) break;
        if (kind == RECORD) {
            Text fields[USED];
            for (int i = 0; i < USED; i++) fields[i] = spans[columns[i]];
            int taken = take_row(&p, fields, line, bucket_count, piece_count);
            if (taken < 0) goto release;
            kind = taken ? RECORD : DECLINED;
        }
        if (kind == RECORD || kind == BLANK) {
            rows += kind == RECORD;
            line += newlines;
            continue;
        }
        stop = begin; /* the Python reads this record (DECLINED), or the rest (UNKNOWN) */
        stop_end = kind == DECLINED ? at : size;
        break;
    }
    for (int i = 0; i < OUTPUTS; i++) {
        PyObject *target = PyTuple_GET_ITEM(into, i);
        Py_ssize_t had = PyByteArray_GET_SIZE(target);
        if (p.out[i].size == 0) continue;
        if (PyByteArray_Resize(target, had + p.out[i].size) < 0) goto release;
        memcpy(PyByteArray_AS_STRING(target) + had, p.out[i].data, (size_t)p.out[i].size);
    }
    result = Py_BuildValue("(nnKn)", rows, stop, (unsigned long long)line, stop_end);
release:
    PyMem_Free(spans);
    for (int i = 0; i < OUTPUTS; i++) PyMem_Free(p.out[i].data);
    PyMem_Free(p.record.data);
    PyMem_Free(p.scratch.data);
    return result;
}

static PyObject *configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "configure(province_codes, max_chg_id_length, max_chg_rea_length, max_seq_digits)");
        return NULL;
    }
    if (set_provinces(args[0]) < 0) return NULL;
    max_chg_id_length = PyLong_AsSsize_t(args[1]);
    max_chg_rea_length = PyLong_AsSsize_t(args[2]);
    max_seq_digits = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* --- the loader's own process ------------------------------------------------------------- */

/* A buffer of unsigned integers of one struct format ("B" a bytearray, "I" array('I'),
 * "Q" array('Q')), to be released by PyBuffer_Release. Returns 0 on success. */
static int unsigned_buffer(PyObject *object, Py_buffer *view, const char *format, const char *name, int writable) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    Py_ssize_t itemsize = format[0] == 'B' ? 1 : format[0] == 'I' ? 4 : 8;
    if (view->itemsize != itemsize || view->format == NULL || strcmp(view->format, format) != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a buffer of format %s", name, format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *split_first(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "split_first(codes, chg_ids, mask, code_crcs, chg_crcs)");
        return NULL;
    }
    Py_buffer codes, chg_ids, code_crcs, chg_crcs;
    PyObject *first = NULL, *others = NULL, *new_chg_ids = NULL, *result = NULL;
    uint64_t mask = PyLong_AsUnsignedLongLong(args[2]);
    if (mask == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    if (unsigned_buffer(args[0], &codes, "B", "codes", 1) < 0) return NULL;
    if (unsigned_buffer(args[1], &chg_ids, "B", "chg_ids", 1) < 0) goto release_codes;
    if (unsigned_buffer(args[3], &code_crcs, "I", "code_crcs", 0) < 0) goto release_chg_ids;
    if (unsigned_buffer(args[4], &chg_crcs, "I", "chg_crcs", 0) < 0) goto release_code_crcs;
    Py_ssize_t rows = code_crcs.len / 4;
    if (chg_crcs.len / 4 != rows) {
        PyErr_SetString(PyExc_ValueError, "split_first: code_crcs and chg_crcs differ in length");
        goto release;
    }
    if (mask == 0 || (mask & (mask + 1)) || mask > UINT32_MAX || (mask >> 3) >= (uint64_t)codes.len ||
        (mask >> 3) >= (uint64_t)chg_ids.len) {
        PyErr_SetString(PyExc_ValueError, "split_first: the mask is not 2**k - 1 (k <= 32) within both filters");
        goto release;
    }
    if ((first = PyList_New(0)) == NULL || (others = PyList_New(0)) == NULL || (new_chg_ids = PyList_New(0)) == NULL)
        goto release;
    uint8_t *code_bits = codes.buf, *chg_bits = chg_ids.buf;
    const uint32_t *code_crc = code_crcs.buf, *chg_crc = chg_crcs.buf;
    int shift = 32;
    for (uint64_t rest = mask; rest; rest >>= 1) shift--;
    for (Py_ssize_t i = 0; i < rows; i++) {
        int seen[2];
        for (int filter = 0; filter < 2; filter++) {
            uint8_t *bits = filter ? chg_bits : code_bits;
            uint32_t crc = filter ? chg_crc[i] : code_crc[i];
            uint64_t one = crc & mask, two = (uint32_t)(crc * 0x9E3779B1u) >> shift; /* bulk.second_bit */
            seen[filter] = (bits[one >> 3] >> (one & 7) & 1) && (bits[two >> 3] >> (two & 7) & 1);
            bits[one >> 3] |= (uint8_t)(1u << (one & 7));
            bits[two >> 3] |= (uint8_t)(1u << (two & 7));
        }
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || PyList_Append(seen[0] || seen[1] ? others : first, position) < 0 ||
            ((seen[0] && !seen[1]) && PyList_Append(new_chg_ids, position) < 0)) {
            Py_XDECREF(position);
            goto release;
        }
        Py_DECREF(position);
    }
    result = PyTuple_Pack(3, first, others, new_chg_ids);
release:
    Py_XDECREF(first);
    Py_XDECREF(others);
    Py_XDECREF(new_chg_ids);
    PyBuffer_Release(&chg_crcs);
release_code_crcs:
    PyBuffer_Release(&code_crcs);
release_chg_ids:
    PyBuffer_Release(&chg_ids);
release_codes:
    PyBuffer_Release(&codes);
    return result;
}

static PyObject *gather(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "gather(positions, buckets, width, fields, offsets, pending, base)");
        return NULL;
    }
    PyObject *positions = args[0], *pending = args[5], *result = NULL;
    if (!PyList_Check(positions) || !PyList_Check(pending)) {
        PyErr_SetString(PyExc_TypeError, "gather: positions and pending must be lists");
        return NULL;
    }
    Py_ssize_t width = PyLong_AsSsize_t(args[2]), base = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred()) return NULL;
    if (width < 1 || base < 0) {
        PyErr_SetString(PyExc_ValueError, "gather: width must be positive and base not negative");
        return NULL;
    }
    Py_buffer buckets, fields, offsets;
    if (unsigned_buffer(args[1], &buckets, "I", "buckets", 0) < 0) return NULL;
    if (PyObject_GetBuffer(args[3], &fields, PyBUF_C_CONTIGUOUS) < 0) goto release_buckets;
    if (unsigned_buffer(args[4], &offsets, "Q", "offsets", 0) < 0) goto release_fields;
    const uint32_t *bucket_of = buckets.buf;
    const uint64_t *offset_of = offsets.buf;
    Py_ssize_t rows = buckets.len / 4, bounds = offsets.len / 8;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(positions); i++) {
        Py_ssize_t position = PyLong_AsSsize_t(PyList_GET_ITEM(positions, i));
        if (position == -1 && PyErr_Occurred()) goto release;
        if (position < 0 || position >= rows || position + 1 >= bounds) {
            PyErr_SetString(PyExc_IndexError, "gather: a position is out of range");
            goto release;
        }
        uint32_t bucket = bucket_of[position];
        uint64_t start = offset_of[position], end = offset_of[position + 1];
        if (start > end || end > (uint64_t)fields.len || end - start > UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "gather: offsets do not fit the fields");
            goto release;
        }
        Py_ssize_t part = base + (Py_ssize_t)(bucket / (uint64_t)width);
        if (part >= PyList_GET_SIZE(pending) || !PyByteArray_Check(PyList_GET_ITEM(pending, part))) {
            PyErr_SetString(PyExc_IndexError, "gather: no bytearray pending for a row's range of buckets");
            goto release;
        }
        PyObject *gathered = PyList_GET_ITEM(pending, part);
        Py_ssize_t size = PyByteArray_GET_SIZE(gathered), length = (Py_ssize_t)(end - start);
        if (PyByteArray_Resize(gathered, size + 8 + length) < 0) goto release;
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(gathered) + size;
        uint32_t header[2] = {bucket, (uint32_t)length};
        for (int k = 0; k < 2; k++) /* little-endian, as struct "<II" */
            for (int b = 0; b < 4; b++) *out++ = (unsigned char)(header[k] >> (8 * b));
        memcpy(out, (const char *)fields.buf + start, (size_t)length);
    }
    result = Py_NewRef(Py_None);
release:
    PyBuffer_Release(&offsets);
release_fields:
    PyBuffer_Release(&fields);
release_buckets:
    PyBuffer_Release(&buckets);
    return result;
}

typedef struct {
    uint32_t bucket;
    uint32_t size;
    Py_ssize_t offset; /* of the field bytes, also the entry's order */
} Entry;

static int by_bucket_then_order(const void *left, const void *right) {
    const Entry *a = left, *b = right;
    if (a->bucket != b->bucket) return a->bucket < b->bucket ? -1 : 1;
    return a->offset < b->offset ? -1 : a->offset > b->offset;
}

static uint32_t little_endian(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static PyObject *grouped(PyObject *module, PyObject *gathered_object) {
    Py_buffer gathered;
    if (PyObject_GetBuffer(gathered_object, &gathered, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    const unsigned char *data = gathered.buf;
    Py_ssize_t length = gathered.len, count = 0, capacity = 0;
    Entry *entries = NULL;
    PyObject *result = NULL;
    for (Py_ssize_t at = 0; at < length;) {
        if (length - at < 8 || (Py_ssize_t)little_endian(data + at + 4) > length - at - 8) {
            PyErr_SetString(PyExc_ValueError, "grouped: an entry runs past the end");
            goto release;
        }
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 1024;
            Entry *grown = PyMem_Realloc(entries, (size_t)capacity * sizeof *entries);
            if (grown == NULL) {
                PyErr_NoMemory();
                goto release;
            }
            entries = grown;
        }
        entries[count].bucket = little_endian(data + at);
        entries[count].size = little_endian(data + at + 4);
        entries[count].offset = at + 8;
        at += 8 + (Py_ssize_t)entries[count].size;
        count++;
    }
    if (count) qsort(entries, (size_t)count, sizeof *entries, by_bucket_then_order);
    if ((result = PyList_New(0)) == NULL) goto release;
    for (Py_ssize_t first = 0; first < count;) {
        Py_ssize_t last = first, size = 0;
        while (last < count && entries[last].bucket == entries[first].bucket) size += entries[last++].size;
        PyObject *fields = PyBytes_FromStringAndSize(NULL, size);
        if (fields == NULL) goto fail;
        char *out = PyBytes_AS_STRING(fields);
        for (Py_ssize_t i = first; i < last; i++) {
            memcpy(out, data + entries[i].offset, entries[i].size);
            out += entries[i].size;
        }
        PyObject *group = Py_BuildValue("(knN)", (unsigned long)entries[first].bucket, last - first, fields);
        if (group == NULL || PyList_Append(result, group) < 0) {
            Py_XDECREF(group);
            goto fail;
        }
        Py_DECREF(group);
        first = last;
    }
    goto release;
fail:
    Py_CLEAR(result);
release:
    PyMem_Free(entries);
    PyBuffer_Release(&gathered);
    return result;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(province_codes, max_chg_id_length, max_chg_rea_length, max_seq_digits): the row rules' bounds."},
    {"parse_rows", (PyCFunction)(void (*)(void))parse_rows, METH_FASTCALL,
     "parse_rows(text, start, line, columns, width, buckets, pieces, into): append to into's 11 bytearrays the rows "
     "from start as parse_chunk packs them, up to the first record the Python must read; returns how many, "
     "where that record starts, its line, and where the Python's reading ends."},
    {"split_first", (PyCFunction)(void (*)(void))split_first, METH_FASTCALL,
     "split_first(codes, chg_ids, mask, code_crcs, chg_crcs): the positions of the rows first of their "
     "code and chg_id, of the others, and of those others first of their chg_id; every row marked seen."},
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL,
     "gather(positions, buckets, width, fields, offsets, pending, base): append each row's fields, behind "
     "its bucket and length, to pending[base + bucket // width]."},
    {"grouped", (PyCFunction)grouped, METH_O,
     "grouped(gathered): the gathered entries as (bucket, field count, fields), by bucket number."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {PyModuleDef_HEAD_INIT, "loader._speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) crc = crc & 1 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
        crc_table[n] = crc;
    }
    return PyModule_Create(&module_definition);
}
