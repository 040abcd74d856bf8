/*
 * ledger.h — which LSN may be confirmed to PostgreSQL.
 *
 * The ledger is the one piece that decides pgoutbox's delivery guarantee, so
 * it is pure: no libpq, no librdkafka, no clock, no logging.  It records the
 * transactions received from the walsender in commit order, how many of each
 * transaction's messages Kafka has not acknowledged yet, and from that the
 * *confirmable* LSN: the end LSN of the longest prefix of transactions that
 * are complete (Commit received) and fully acknowledged.  When nothing is
 * open or pending, a keepalive's WAL position may be confirmed too, so that
 * an idle outbox never pins WAL.
 *
 * The seam between "Kafka has this" and "confirm this" is ledger_ack(),
 * called through the sink interface (sink.h): by the delivery report of each
 * message in at-least-once mode, per message of a committed Kafka
 * transaction in exactly-once mode.
 *
 * Transactions are named by a sequence number (ledger_seq) handed out by
 * ledger_begin(); it travels with each Kafka message as its opaque.
 */
#ifndef PGOUTBOX_LEDGER_H
#define PGOUTBOX_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint64_t ledger_lsn;
typedef uint64_t ledger_seq;

typedef struct ledger_txn {
	ledger_lsn commit_lsn;   /* Begin's final LSN: names the transaction in logs */
	ledger_lsn end_lsn;      /* Commit's end LSN; 0 while open or when abandoned */
	int64_t    commit_time;  /* of the last transaction it stands for (folded ones too) */
	uint32_t   outstanding;  /* messages produced but not yet acknowledged */
	bool       sealed;       /* Commit received (or abandoned) */
} ledger_txn;

typedef struct ledger {
	ledger_txn *ring;        /* circular buffer of transactions in flight */
	size_t      cap;         /* capacity of ring (power of two) */
	size_t      head;        /* index of the oldest transaction */
	size_t      count;       /* transactions in ring */
	ledger_seq  head_seq;    /* sequence number of ring[head] */
	ledger_lsn  confirmed;   /* highest confirmable LSN so far (monotonic until a rebase) */
	int64_t     confirmed_time;  /* commit time of the transaction confirmed last; 0: unknown */
	ledger_lsn  sent_upto;   /* highest keepalive position of this stream */
	uint64_t    pending;     /* total outstanding messages */
} ledger;

typedef enum ledger_rc {
	LEDGER_OK = 0,
	LEDGER_NOMEM,            /* could not grow the ring */
	LEDGER_STATE,            /* call out of order: begin while open, commit when none open */
	LEDGER_UNKNOWN,          /* ack for a sequence number not in flight or with nothing outstanding */
} ledger_rc;

void      ledger_init(ledger *l, ledger_lsn start);
void      ledger_free(ledger *l);

/* A Begin: opens a transaction; *seq names it for ledger_add/ack. */
ledger_rc ledger_begin(ledger *l, ledger_lsn commit_lsn, int64_t commit_time, ledger_seq *seq);
/* One more message of the open transaction handed to Kafka. */
ledger_rc ledger_add(ledger *l, ledger_seq seq);
/*
 * One more message for transaction seq, which may be sealed already, as long
 * as it is still in flight because one of its messages is unacknowledged.
 * For a dead-letter copy produced from the delivery report of a refused
 * message: add the copy first, then ack the refused one, and the transaction
 * stays unconfirmable until the copy is acknowledged.  LEDGER_STATE when seq
 * is not in flight or has nothing outstanding.
 */
ledger_rc ledger_add_to(ledger *l, ledger_seq seq);
/*
 * The Commit of the open transaction; end_lsn is the Commit's end LSN.  A
 * transaction with nothing outstanding folds into the one before it (that
 * one's end moves to end_lsn), so the ledger's memory is bounded by the
 * transactions with messages in flight, not by the transactions seen; its
 * sequence number is then handed out again by the next ledger_begin().
 */
ledger_rc ledger_commit(ledger *l, ledger_lsn end_lsn);
/*
 * The stream broke.  A transaction still open is sealed without an LSN: its
 * messages still count (they must be acknowledged before later transactions
 * can be confirmed past it), but it never advances the confirmed LSN itself;
 * the walsender resends it from the confirmed LSN after reconnecting.  The
 * keepalive position of the old stream is forgotten too, since what it
 * vouched for will be sent again.
 */
void      ledger_stream_lost(ledger *l);
/*
 * Forget every transaction in flight but keep the confirmed LSN: the
 * producer was rebuilt, its unacknowledged messages are gone, and the
 * stream restarts from the slot's confirmed position.
 */
void      ledger_reset(ledger *l);
/*
 * Start over at pos, which may be lower than what was confirmed: a session
 * with another server (a promoted standby, another timeline) begins at its
 * own slot's confirmed position, and nothing learnt from the previous
 * server may be confirmed to this one.  Forgets every transaction in
 * flight, like ledger_reset().
 */
void      ledger_rebase(ledger *l, ledger_lsn pos);
/* Kafka acknowledged one message of transaction seq. */
ledger_rc ledger_ack(ledger *l, ledger_seq seq);

/*
 * A keepalive: the walsender has sent everything up to pos.  pos becomes
 * confirmable as soon as nothing is open or pending, whether that is now or
 * after the transactions in flight are acknowledged.
 */
void      ledger_sent_position(ledger *l, ledger_lsn pos);

/* Retire the finished prefix and return the confirmable LSN (monotonic). */
ledger_lsn ledger_confirmable(ledger *l);

static inline bool ledger_is_open(const ledger *l)
{
	return l->count > 0 && !l->ring[(l->head + l->count - 1) & (l->cap - 1)].sealed;
}
static inline bool ledger_is_idle(const ledger *l) { return l->count == 0; }
static inline size_t ledger_txns(const ledger *l) { return l->count; }
static inline uint64_t ledger_pending(const ledger *l) { return l->pending; }
/* The transaction named by seq, or NULL when it is no longer in flight. */
const ledger_txn *ledger_get(const ledger *l, ledger_seq seq);

#endif /* PGOUTBOX_LEDGER_H */
