/*
 * pgoutput.h — the wire contract of PostgreSQL's logical replication stream,
 * as pgoutbox reads it.
 *
 * Two layers, both pure (bytes in, structs out, no I/O, no logging, no exit):
 *
 *   1. The CopyData envelope a walsender sends in COPY BOTH mode:
 *        'w' XLogData        Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte[n] data
 *        'k' Primary keepalive  Int64 walEnd, Int64 sendTime, Byte1 replyRequested
 *   2. pgoutput's logical replication messages carried in XLogData.data
 *      (src/include/replication/logicalproto.h, src/backend/replication/logical/proto.c).
 *
 * Every multi-byte integer is big-endian on the wire.  Every length read from
 * the wire is checked against the bytes that remain before it is used; short,
 * overlong or nonsensical input returns an error code with the byte offset at
 * which decoding stopped, never a read out of bounds.
 *
 * Ownership: decoded values are *views* into the caller's buffer (pgo_bytes)
 * or into the decoder's relation cache (pgo_relation).  They stay valid until
 * the caller's buffer is released or until the next pgo_decode_message() call
 * on the same decoder, whichever comes first.  The relation cache owns copies
 * of relation names and column metadata; a new Relation message for the same
 * OID (ALTER TABLE, or a new walsender session) replaces the cached entry.
 */
#ifndef PGOUTBOX_PGOUTPUT_H
#define PGOUTBOX_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t pgo_lsn;

/* PostgreSQL timestamps: microseconds since 2000-01-01 00:00:00 UTC. */
#define PGO_EPOCH_OFFSET_USEC INT64_C(946684800000000)

/* Protocol versions (proto_version option of pgoutput). */
#define PGO_PROTO_V1 1 /* PostgreSQL 10: base protocol */
#define PGO_PROTO_V2 2 /* PostgreSQL 14: streaming of in-progress transactions */
#define PGO_PROTO_V3 3 /* PostgreSQL 15: two-phase commit */
#define PGO_PROTO_V4 4 /* PostgreSQL 16: parallel streaming (Stream Abort LSN/time
                        * when the subscriber asks for streaming = parallel:
                        * see pgo_decoder_set_parallel_streaming) */

/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */
typedef enum pgo_rc {
	PGO_OK = 0,
	PGO_ERR_TRUNCATED,         /* fewer bytes than a field or length needs */
	PGO_ERR_TRAILING,          /* bytes left over after a complete message */
	PGO_ERR_UNKNOWN_TYPE,      /* message or envelope type byte not known */
	PGO_ERR_BAD_VALUE,         /* a field holds an impossible value */
	PGO_ERR_UNKNOWN_RELATION,  /* row change for a relation OID never described */
	PGO_ERR_NOMEM,             /* relation cache allocation failed */
} pgo_rc;

typedef struct pgo_error {
	pgo_rc      code;
	size_t      offset;        /* byte offset in the input where the bad or short
	                            * field starts (relative to the buffer passed in) */
	const char *reason;        /* static string, e.g. "string not terminated" */
} pgo_error;

/* Static name of an error code ("truncated input", ...). */
const char *pgo_rc_name(pgo_rc rc);

/* A view of bytes inside the caller's buffer. */
typedef struct pgo_bytes {
	const uint8_t *ptr;
	uint32_t       len;
} pgo_bytes;

/* ---------------------------------------------------------------------------
 * Layer 1: CopyData envelope
 * ------------------------------------------------------------------------- */
typedef enum pgo_copy_kind {
	PGO_COPY_XLOGDATA  = 'w',
	PGO_COPY_KEEPALIVE = 'k',
} pgo_copy_kind;

typedef struct pgo_copydata {
	pgo_copy_kind kind;
	pgo_lsn       wal_start;       /* 'w' only: LSN of the data's start */
	pgo_lsn       wal_end;         /* 'w': server's WAL end; 'k': position sent so far */
	int64_t       send_time;       /* server clock, PostgreSQL epoch */
	bool          reply_requested; /* 'k' only */
	pgo_bytes     data;            /* 'w' only: one pgoutput message */
} pgo_copydata;

/* Decode one CopyData payload as returned by PQgetCopyData(). */
pgo_rc pgo_decode_copydata(const uint8_t *buf, size_t len, pgo_copydata *out,
                           pgo_error *err);

/* ---------------------------------------------------------------------------
 * Layer 2: pgoutput messages.  Enum values are the wire bytes.
 * ------------------------------------------------------------------------- */
typedef enum pgo_msg_type {
	PGO_MSG_BEGIN             = 'B', /* v1 */
	PGO_MSG_COMMIT            = 'C', /* v1 */
	PGO_MSG_ORIGIN            = 'O', /* v1 */
	PGO_MSG_RELATION          = 'R', /* v1 */
	PGO_MSG_TYPE              = 'Y', /* v1 */
	PGO_MSG_INSERT            = 'I', /* v1 */
	PGO_MSG_UPDATE            = 'U', /* v1 */
	PGO_MSG_DELETE            = 'D', /* v1 */
	PGO_MSG_TRUNCATE          = 'T', /* v1 (PostgreSQL 11) */
	PGO_MSG_MESSAGE           = 'M', /* v1 (PostgreSQL 14, option messages) */
	PGO_MSG_STREAM_START      = 'S', /* v2 */
	PGO_MSG_STREAM_STOP       = 'E', /* v2 */
	PGO_MSG_STREAM_COMMIT     = 'c', /* v2 */
	PGO_MSG_STREAM_ABORT      = 'A', /* v2; v4 adds abort LSN and time (streaming = parallel only) */
	PGO_MSG_BEGIN_PREPARE     = 'b', /* v3 */
	PGO_MSG_PREPARE           = 'P', /* v3 */
	PGO_MSG_COMMIT_PREPARED   = 'K', /* v3 */
	PGO_MSG_ROLLBACK_PREPARED = 'r', /* v3 */
	PGO_MSG_STREAM_PREPARE    = 'p', /* v3 */
} pgo_msg_type;

/* Kind byte of one column in TupleData. */
typedef enum pgo_datum_kind {
	PGO_DATUM_NULL      = 'n',
	PGO_DATUM_UNCHANGED = 'u', /* unchanged TOASTed value (updates only) */
	PGO_DATUM_TEXT      = 't',
	PGO_DATUM_BINARY    = 'b',
} pgo_datum_kind;

typedef struct pgo_datum {
	pgo_datum_kind kind;
	pgo_bytes      value;     /* TEXT/BINARY only; not NUL-terminated */
} pgo_datum;

typedef struct pgo_tuple {
	uint16_t         natts;
	const pgo_datum *atts;    /* natts entries; owned by the decoder (scratch) */
} pgo_tuple;

#define PGO_COLUMN_KEY 0x01   /* column is part of the replica identity */

typedef struct pgo_column {
	char    *name;
	uint32_t type_oid;
	int32_t  typmod;
	uint8_t  flags;           /* PGO_COLUMN_KEY */
} pgo_column;

typedef struct pgo_relation {
	uint32_t    oid;
	char       *nspname;      /* "pg_catalog" when the wire sends "" */
	char       *relname;
	char        replident;    /* 'd', 'n', 'f' or 'i' */
	uint16_t    natts;
	pgo_column *atts;
} pgo_relation;

/* Decoded message.  Only the member named by `type` is meaningful. */
typedef struct pgo_msg {
	pgo_msg_type type;
	bool         has_xid;     /* inside a streamed block: `xid` is the streamed xid
	                           * (of the change's own transaction: may be a
	                           * subtransaction of the Stream Start xid) */
	uint32_t     xid;
	union {
		struct { pgo_lsn final_lsn; int64_t commit_time; uint32_t xid; } begin;
		struct { uint8_t flags; pgo_lsn commit_lsn; pgo_lsn end_lsn; int64_t commit_time; } commit;
		struct { pgo_lsn commit_lsn; pgo_bytes name; } origin;
		struct { const pgo_relation *rel; } relation;
		struct { uint32_t oid; pgo_bytes nspname; pgo_bytes name; } type; /* nspname: static "pg_catalog" when the wire sends "" */
		struct { uint32_t relid; const pgo_relation *rel; pgo_tuple newtup; } insert;
		struct {
			uint32_t relid; const pgo_relation *rel;
			char oldkind;            /* 0 (none), 'K' (key) or 'O' (old row) */
			pgo_tuple oldtup;        /* valid when oldkind != 0 */
			pgo_tuple newtup;
		} update;
		struct { uint32_t relid; const pgo_relation *rel; char oldkind; pgo_tuple oldtup; } del;
		struct { uint32_t nrelids; uint8_t options; pgo_bytes relids; /* nrelids Int32 */ } truncate;
		struct { uint8_t flags; pgo_lsn lsn; pgo_bytes prefix; pgo_bytes content; } message;
		struct { uint32_t xid; uint8_t first_segment; } stream_start;
		struct { uint32_t xid; uint8_t flags; pgo_lsn commit_lsn; pgo_lsn end_lsn; int64_t commit_time; } stream_commit;
		struct { uint32_t xid; uint32_t subxid; bool has_lsn; pgo_lsn abort_lsn; int64_t abort_time; } stream_abort; /* has_lsn: the decoder was told streaming = parallel */
		struct { pgo_lsn prepare_lsn; pgo_lsn end_lsn; int64_t prepare_time; uint32_t xid; pgo_bytes gid; } begin_prepare;
		struct { uint8_t flags; pgo_lsn prepare_lsn; pgo_lsn end_lsn; int64_t prepare_time; uint32_t xid; pgo_bytes gid; } prepare; /* also STREAM_PREPARE */
		struct { uint8_t flags; pgo_lsn commit_lsn; pgo_lsn end_lsn; int64_t commit_time; uint32_t xid; pgo_bytes gid; } commit_prepared;
		struct { uint8_t flags; pgo_lsn prepare_end_lsn; pgo_lsn rollback_end_lsn; int64_t prepare_time; int64_t rollback_time; uint32_t xid; pgo_bytes gid; } rollback_prepared;
	} u;
} pgo_msg;

#define PGO_MESSAGE_TRANSACTIONAL 0x01

/* ---------------------------------------------------------------------------
 * Decoder: relation cache + scratch space + streaming state.
 * ------------------------------------------------------------------------- */
typedef struct pgo_decoder pgo_decoder;

/*
 * Returns NULL when out of memory or when proto_version is not
 * PGO_PROTO_V1..V4.  Messages of a later version than the decoder's are
 * decoded all the same (the server sends only what the client negotiated).
 */
pgo_decoder *pgo_decoder_new(int proto_version);
void         pgo_decoder_free(pgo_decoder *d);

/*
 * Say whether the client asked for streaming = parallel (v4 and later; off
 * by default).  It decides the one layout that the protocol version does not:
 * with it, Stream Abort carries abort LSN and time, without it, it does not.
 * The two forms differ only in length, so a decoder that accepted both would
 * take a truncated parallel Stream Abort for a complete one.  Returns false,
 * changing nothing, when asked to turn it on for a version before v4.
 */
bool pgo_decoder_set_parallel_streaming(pgo_decoder *d, bool parallel);

/*
 * Decode one pgoutput message (the data of one XLogData).  On success fills
 * *out and returns PGO_OK.  On failure returns the code, fills *err (unless
 * err is NULL), and leaves the relation cache and the stream state as they
 * were before the call; *out is then unspecified.
 */
pgo_rc pgo_decode_message(pgo_decoder *d, const uint8_t *buf, size_t len,
                          pgo_msg *out, pgo_error *err);

/* The cached relation for an OID, or NULL. Valid until the next decode call. */
const pgo_relation *pgo_decoder_relation(const pgo_decoder *d, uint32_t oid);

/* Forget streaming state (not the relation cache) after a reconnect. */
void pgo_decoder_reset_stream(pgo_decoder *d);

#endif /* PGOUTBOX_PGOUTPUT_H */
