/*
 * floor.h — what the two floor clients of scripts/bench share.
 *
 * The floors are what PostgreSQL itself can deliver to a bare libpq client
 * on the same stack as pgoutbox: floor_drain (the throughput ceiling over a
 * backlog) and floor_latency (commit to receive of each transaction).  Both
 * stream pgoutput with exactly the options pgoutbox asks for (proto_version,
 * publication_names, messages), look at nothing past the CopyData envelope
 * and the first bytes of a pgoutput message, and answer the walsender like a
 * real client: keepalives that ask for a reply get one, and the position of
 * the last whole transaction is confirmed as written, flushed and applied.
 *
 * Not a part of pgoutbox and not installed: built by meson with
 * -Dbench=true, run by scripts/bench/bench.py.
 */
#ifndef PGOUTBOX_BENCH_FLOOR_H
#define PGOUTBOX_BENCH_FLOOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/* 'w' + Int64 start + Int64 end + Int64 send time */
#define FLOOR_XLOGDATA_HEADER 25
/* 'k' + Int64 WAL end + Int64 send time + Byte1 reply requested */
#define FLOOR_KEEPALIVE_LEN 18
/* Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch. */
#define FLOOR_PG_EPOCH_US INT64_C(946684800000000)

/* A replication connection in COPY BOTH mode, non-blocking. */
typedef struct floor_stream {
	PGconn  *conn;
	int      fd;
	uint64_t confirm_lsn;   /* end of the last whole transaction, or keepalive WAL end */
	int64_t  last_status_us; /* floor_now_us() of the last status update sent */
} floor_stream;

/*
 * Connect to CONNINFO (replication=database is added), and START_REPLICATION
 * on SLOT with pgoutput protocol PROTO, PUBLICATION, and messages 'true'
 * from protocol 2 on: as pgoutbox does.  Returns 0, or -1 with a message in
 * errbuf (the stream is then closed).
 */
int floor_stream_start(floor_stream *s, const char *conninfo, const char *slot,
                       const char *publication, int proto, char *errbuf, size_t errlen);

/*
 * Send a standby status update: LSN as written, flushed and applied.
 * Returns 0 or -1 with a message in errbuf.
 */
int floor_stream_status(floor_stream *s, uint64_t lsn, char *errbuf, size_t errlen);

/*
 * Confirm s->confirm_lsn, end the copy (CopyDone) and close.  Returns 0 or -1
 * with a message in errbuf; the connection is closed either way.
 */
int floor_stream_finish(floor_stream *s, char *errbuf, size_t errlen);

/* Close without a goodbye (after an error). */
void floor_stream_close(floor_stream *s);

/* Big-endian reads; p must hold 8 (4) bytes. */
uint64_t floor_be64(const unsigned char *p);
uint32_t floor_be32(const unsigned char *p);

/* Parse an LSN in PostgreSQL's X/Y notation.  Returns 0 or -1. */
int floor_parse_lsn(const char *text, uint64_t *lsn);

/* The wall clock (CLOCK_REALTIME) in microseconds since the Unix epoch:
 * the clock PostgreSQL stamps commits with, on the same machine. */
int64_t floor_now_us(void);

/* CLOCK_MONOTONIC in seconds, for durations. */
double floor_mono_s(void);

/* User and system CPU seconds of this process. */
void floor_cpu_s(double *user, double *sys);

#endif
