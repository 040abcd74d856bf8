/*
 * ledger.c — transactions in flight and the confirmable LSN.  See ledger.h.
 */
#include "ledger.h"

#include <stdlib.h>
#include <string.h>

#define LEDGER_MIN_CAP 64

void
ledger_init(ledger *l, ledger_lsn start)
{
	memset(l, 0, sizeof(*l));
	l->confirmed = start;
	l->head_seq = 1;
}

void
ledger_free(ledger *l)
{
	free(l->ring);
	l->ring = NULL;
	l->cap = l->count = l->head = 0;
}

static ledger_txn *
slot_of(const ledger *l, size_t i)
{
	return &l->ring[(l->head + i) & (l->cap - 1)];
}

/* Double the ring, unrolling it so the oldest entry lands at index 0. */
static ledger_rc
grow(ledger *l)
{
	size_t ncap = l->cap ? l->cap * 2 : LEDGER_MIN_CAP;
	ledger_txn *n;

	if (ncap < l->cap || ncap > SIZE_MAX / sizeof(*n))
		return LEDGER_NOMEM;
	n = malloc(ncap * sizeof(*n));
	if (n == NULL)
		return LEDGER_NOMEM;
	for (size_t i = 0; i < l->count; i++)
		n[i] = *slot_of(l, i);
	free(l->ring);
	l->ring = n;
	l->cap = ncap;
	l->head = 0;
	return LEDGER_OK;
}

ledger_rc
ledger_begin(ledger *l, ledger_lsn commit_lsn, int64_t commit_time, ledger_seq *seq)
{
	ledger_txn *t;

	if (ledger_is_open(l))
		return LEDGER_STATE;
	if (l->count == l->cap) {
		ledger_rc rc = grow(l);
		if (rc != LEDGER_OK)
			return rc;
	}
	t = slot_of(l, l->count);
	t->commit_lsn = commit_lsn;
	t->commit_time = commit_time;
	t->end_lsn = 0;
	t->outstanding = 0;
	t->sealed = false;
	*seq = l->head_seq + l->count;
	l->count++;
	return LEDGER_OK;
}

static ledger_txn *
find(const ledger *l, ledger_seq seq)
{
	if (seq < l->head_seq || seq - l->head_seq >= l->count)
		return NULL;
	return slot_of(l, (size_t) (seq - l->head_seq));
}

const ledger_txn *
ledger_get(const ledger *l, ledger_seq seq)
{
	return find(l, seq);
}

/* One more outstanding message for t (the callers decide whether t may take it). */
static ledger_rc
count_message(ledger *l, ledger_txn *t)
{
	if (t->outstanding == UINT32_MAX)
		return LEDGER_NOMEM;
	t->outstanding++;
	l->pending++;
	return LEDGER_OK;
}

ledger_rc
ledger_add(ledger *l, ledger_seq seq)
{
	ledger_txn *t = find(l, seq);

	if (t == NULL || t->sealed || seq != l->head_seq + l->count - 1)
		return LEDGER_STATE;
	return count_message(l, t);
}

ledger_rc
ledger_add_to(ledger *l, ledger_seq seq)
{
	ledger_txn *t = find(l, seq);

	if (t == NULL || (t->sealed && t->outstanding == 0))
		return LEDGER_STATE;
	return count_message(l, t);
}

ledger_rc
ledger_commit(ledger *l, ledger_lsn end_lsn)
{
	ledger_txn *t;

	if (!ledger_is_open(l))
		return LEDGER_STATE;
	t = slot_of(l, l->count - 1);
	t->end_lsn = end_lsn;
	t->sealed = true;
	/*
	 * Nothing of it waits for Kafka: it needs no entry of its own.  Its end
	 * moves the previous transaction's end instead, which is confirmed no
	 * sooner than before (when that one is acknowledged) and confirms this
	 * one with it.  An abandoned predecessor (end 0) must not confirm
	 * anything itself, so it keeps its place.  With only this entry left,
	 * ledger_confirmable() retires it.  So the ring holds transactions with
	 * messages in flight, however many empty ones stream by.
	 */
	if (t->outstanding == 0 && l->count >= 2) {
		ledger_txn *prev = slot_of(l, l->count - 2);

		if (prev->end_lsn != 0) {
			prev->end_lsn = end_lsn;
			prev->commit_time = t->commit_time;
			l->count--;
		}
	}
	return LEDGER_OK;
}

void
ledger_stream_lost(ledger *l)
{
	l->sent_upto = 0;
	if (ledger_is_open(l)) {
		ledger_txn *t = slot_of(l, l->count - 1);
		t->end_lsn = 0;
		t->sealed = true;
	}
}

void
ledger_reset(ledger *l)
{
	l->head_seq += l->count;    /* old sequence numbers stay unknown */
	l->count = 0;
	l->head = 0;
	l->pending = 0;
	l->sent_upto = 0;
}

void
ledger_rebase(ledger *l, ledger_lsn pos)
{
	ledger_reset(l);
	l->confirmed = pos;
	l->confirmed_time = 0;
}

ledger_rc
ledger_ack(ledger *l, ledger_seq seq)
{
	ledger_txn *t = find(l, seq);

	if (t == NULL || t->outstanding == 0)
		return LEDGER_UNKNOWN;
	t->outstanding--;
	l->pending--;
	return LEDGER_OK;
}

void
ledger_sent_position(ledger *l, ledger_lsn pos)
{
	if (pos > l->sent_upto)
		l->sent_upto = pos;
}

ledger_lsn
ledger_confirmable(ledger *l)
{
	while (l->count > 0) {
		ledger_txn *t = slot_of(l, 0);

		if (!t->sealed || t->outstanding > 0)
			break;
		if (t->end_lsn > l->confirmed) {
			l->confirmed = t->end_lsn;
			l->confirmed_time = t->commit_time;
		}
		l->head = (l->head + 1) & (l->cap - 1);
		l->head_seq++;
		l->count--;
	}
	/* Everything the walsender vouched for was received and acknowledged. */
	if (l->count == 0 && l->sent_upto > l->confirmed)
		l->confirmed = l->sent_upto;
	return l->confirmed;
}
