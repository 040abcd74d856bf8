/*
 * test_ledger.c — the confirmation rule, checked exhaustively.
 *
 * The ledger decides which LSN pgoutbox may confirm to PostgreSQL; a bug
 * here loses events.  Hand-written cases cover each rule; a randomized run
 * against a brute-force model covers the combinations.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ledger.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

static void
test_single(void)
{
	ledger l;
	ledger_seq s;

	ledger_init(&l, 10);
	CHECK(ledger_confirmable(&l) == 10);
	CHECK(ledger_begin(&l, 90, 0, &s) == LEDGER_OK);
	CHECK(ledger_add(&l, s) == LEDGER_OK);
	CHECK(ledger_add(&l, s) == LEDGER_OK);
	CHECK(ledger_pending(&l) == 2);
	CHECK(ledger_confirmable(&l) == 10);          /* open */
	CHECK(ledger_commit(&l, 100) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 10);          /* unacknowledged */
	CHECK(ledger_ack(&l, s) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 10);          /* one left */
	CHECK(ledger_ack(&l, s) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 100);         /* the Commit's end LSN */
	CHECK(ledger_is_idle(&l));
	CHECK(ledger_ack(&l, s) == LEDGER_UNKNOWN);   /* retired */
	ledger_free(&l);
}

static void
test_acked_before_commit(void)
{
	ledger l;
	ledger_seq s;

	ledger_init(&l, 0);
	ledger_begin(&l, 5, 0, &s);
	ledger_add(&l, s);
	CHECK(ledger_ack(&l, s) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 0);           /* acked but Commit not seen */
	ledger_commit(&l, 50);
	CHECK(ledger_confirmable(&l) == 50);
	ledger_free(&l);
}

static void
test_out_of_order(void)
{
	ledger l;
	ledger_seq s1, s2, s3;

	ledger_init(&l, 0);
	ledger_begin(&l, 1, 0, &s1); ledger_add(&l, s1); ledger_add(&l, s1); ledger_commit(&l, 100);
	ledger_begin(&l, 2, 0, &s2); ledger_add(&l, s2); ledger_commit(&l, 200);
	ledger_begin(&l, 3, 0, &s3); ledger_commit(&l, 300);    /* no outbox rows */
	CHECK(s1 != s2 && s2 != s3);
	CHECK(ledger_ack(&l, s2) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 0);           /* T1 still pending blocks T2, T3 */
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 0);
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 300);         /* whole prefix, incl. the empty T3 */
	CHECK(ledger_txns(&l) == 0);
	ledger_free(&l);
}

static void
test_empty_transaction(void)
{
	ledger l;
	ledger_seq s;

	ledger_init(&l, 0);
	ledger_begin(&l, 7, 0, &s);
	CHECK(ledger_confirmable(&l) == 0);
	ledger_commit(&l, 70);
	CHECK(ledger_confirmable(&l) == 70);
	ledger_free(&l);
}

static void
test_keepalive(void)
{
	ledger l;
	ledger_seq s;

	ledger_init(&l, 100);
	ledger_sent_position(&l, 150);                /* idle: confirmable at once */
	CHECK(ledger_confirmable(&l) == 150);
	ledger_sent_position(&l, 120);                /* never backwards */
	CHECK(ledger_confirmable(&l) == 150);
	ledger_begin(&l, 160, 0, &s);
	ledger_sent_position(&l, 500);                /* open transaction: not yet */
	CHECK(ledger_confirmable(&l) == 150);
	ledger_add(&l, s);
	ledger_commit(&l, 170);
	CHECK(ledger_confirmable(&l) == 150);         /* pending ack: not yet */
	ledger_ack(&l, s);
	/* Regression: a keepalive that arrived while a transaction was pending
	 * must be confirmed once it is acknowledged; the walsender sends no new
	 * keepalive after we reported that position as written. */
	CHECK(ledger_confirmable(&l) == 500);
	ledger_free(&l);
}

static void
test_abandon(void)
{
	ledger l;
	ledger_seq s1, s2;

	ledger_init(&l, 0);
	ledger_begin(&l, 10, 0, &s1);
	ledger_add(&l, s1);
	ledger_stream_lost(&l);                       /* stream broke mid-transaction */
	CHECK(!ledger_is_open(&l));
	ledger_begin(&l, 10, 0, &s2);                    /* resent after reconnect */
	ledger_add(&l, s2);
	ledger_commit(&l, 200);
	CHECK(ledger_ack(&l, s2) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 0);           /* abandoned one still in flight */
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 200);
	ledger_free(&l);

	/* An abandoned transaction alone never advances the LSN. */
	ledger_init(&l, 5);
	ledger_begin(&l, 10, 0, &s1);
	ledger_stream_lost(&l);
	CHECK(ledger_confirmable(&l) == 5);
	ledger_stream_lost(&l);                       /* nothing open: no-op */
	CHECK(ledger_txns(&l) == 0);
	ledger_free(&l);

	/* The old stream's keepalive must not be confirmed after a reconnect:
	 * the transaction it covered is resent and not yet delivered. */
	ledger_init(&l, 5);
	ledger_begin(&l, 10, 0, &s1);
	ledger_add(&l, s1);
	ledger_sent_position(&l, 400);                /* keepalive mid-transaction */
	ledger_stream_lost(&l);
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);       /* old copy acknowledged */
	CHECK(ledger_confirmable(&l) == 5);           /* not 400: resend still due */
	ledger_free(&l);
}

static void
test_reset(void)
{
	ledger l;
	ledger_seq s1, s2, s3;

	ledger_init(&l, 0);
	ledger_begin(&l, 10, 0, &s1); ledger_add(&l, s1); ledger_commit(&l, 100);
	ledger_ack(&l, s1);
	CHECK(ledger_confirmable(&l) == 100);
	ledger_begin(&l, 110, 0, &s2); ledger_add(&l, s2); ledger_commit(&l, 200);
	ledger_sent_position(&l, 300);
	ledger_reset(&l);                             /* producer rebuilt */
	CHECK(ledger_confirmable(&l) == 100);         /* kept, not advanced */
	CHECK(ledger_pending(&l) == 0 && ledger_txns(&l) == 0);
	CHECK(ledger_ack(&l, s2) == LEDGER_UNKNOWN);  /* old producer's report */
	CHECK(ledger_begin(&l, 110, 0, &s3) == LEDGER_OK);
	CHECK(s3 != s2);                              /* sequence numbers never reused */
	ledger_add(&l, s3); ledger_commit(&l, 200); ledger_ack(&l, s3);
	CHECK(ledger_confirmable(&l) == 200);
	ledger_free(&l);
}

static void
test_misuse(void)
{
	ledger l;
	ledger_seq s1, s2;

	ledger_init(&l, 0);
	CHECK(ledger_commit(&l, 10) == LEDGER_STATE); /* nothing open */
	CHECK(ledger_ack(&l, 1) == LEDGER_UNKNOWN);
	CHECK(ledger_begin(&l, 1, 0, &s1) == LEDGER_OK);
	CHECK(ledger_begin(&l, 2, 0, &s2) == LEDGER_STATE); /* nested */
	CHECK(ledger_ack(&l, s1) == LEDGER_UNKNOWN);  /* nothing outstanding */
	ledger_commit(&l, 10);
	CHECK(ledger_add(&l, s1) == LEDGER_STATE);    /* sealed */
	CHECK(ledger_ack(&l, s1 + 1000) == LEDGER_UNKNOWN);
	CHECK(ledger_ack(&l, 0) == LEDGER_UNKNOWN);
	ledger_free(&l);
}

/* xorshift: deterministic and seedable, so failures reproduce. */
static uint64_t rng = 88172645463325252ULL;
static uint64_t
next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

typedef struct model_txn {
	uint64_t end;
	unsigned produced, acked;
	int sealed;     /* 0 open, 1 committed, 2 abandoned */
	int kept;       /* committed with messages outstanding: has an entry of its own */
	ledger_seq seq;
} model_txn;

/* Random interleavings of begin/add/commit/stream loss/ack/keepalive, with the
 * confirmable LSN checked after every operation against a direct scan. */
static void
test_random_model(void)
{
	enum { N = 4000 };
	model_txn *m = calloc(N, sizeof(*m));
	ledger l;
	size_t ntx = 0, retired = 0;
	uint64_t lsn = 100, expect = 100, sent = 0;
	int bad = 0;

	ledger_init(&l, 100);
	for (int iter = 0; iter < 200000 && !bad; iter++) {
		unsigned op = (unsigned) (next_rand() % 100);
		int open = ntx > 0 && m[ntx - 1].sealed == 0;

		if (op < 15 && !open && ntx < N) {
			m[ntx].seq = 0;
			if (ledger_begin(&l, lsn, 0, &m[ntx].seq) != LEDGER_OK)
				bad = 1;
			ntx++;
		} else if (op < 40 && open) {
			if (ledger_add(&l, m[ntx - 1].seq) != LEDGER_OK)
				bad = 1;
			m[ntx - 1].produced++;
		} else if (op < 52 && open) {
			lsn += 1 + next_rand() % 50;
			m[ntx - 1].end = lsn;
			m[ntx - 1].sealed = 1;
			m[ntx - 1].kept = m[ntx - 1].acked < m[ntx - 1].produced;
			if (ledger_commit(&l, lsn) != LEDGER_OK)
				bad = 1;
		} else if (op < 53 && open) {
			m[ntx - 1].sealed = 2;
			sent = 0;
			ledger_stream_lost(&l);
		} else if (op < 95 && ntx > retired) {
			size_t i = retired + (size_t) (next_rand() % (ntx - retired));
			if (m[i].acked < m[i].produced) {
				m[i].acked++;
				if (ledger_ack(&l, m[i].seq) != LEDGER_OK)
					bad = 1;
			} else if (m[i].sealed == 0 && ledger_ack(&l, m[i].seq) != LEDGER_UNKNOWN) {
				/* over-ack must be refused (a sealed one's number may be
				 * handed out again once it folded: never acked again) */
				bad = 1;
			}
		} else {
			lsn += next_rand() % 20;
			sent = lsn > sent ? lsn : sent;
			ledger_sent_position(&l, lsn);
		}
		/* the model: retire the finished prefix */
		while (retired < ntx && m[retired].sealed && m[retired].acked == m[retired].produced) {
			if (m[retired].sealed == 1 && m[retired].end > expect)
				expect = m[retired].end;
			retired++;
		}
		if (ntx == retired && sent > expect)
			expect = sent;
		if (ledger_confirmable(&l) != expect) {
			fprintf(stderr, "iteration %d: ledger %" PRIu64 " model %" PRIu64 "\n",
			        iter, ledger_confirmable(&l), expect);
			bad = 1;
		}
		/* Folding: never more entries than unfinished transactions, and
		 * only those committed with messages out, the open one and the
		 * abandoned ones have one (an empty one after an abandoned one, or
		 * at the head, may keep its own). */
		if (ledger_txns(&l) > ntx - retired)
			bad = 1;
		{
			size_t busy = 0;
			for (size_t i = retired; i < ntx; i++)
				busy += m[i].kept || m[i].sealed == 0 ? 1 : m[i].sealed == 2 ? 2 : 0;
			if (ledger_txns(&l) > busy + 1) {
				fprintf(stderr, "iteration %d: %zu entries for %zu busy transactions\n",
				        iter, ledger_txns(&l), busy);
				bad = 1;
			}
		}
	}
	CHECK(!bad);
	CHECK(ntx > 1000);        /* the run exercised many transactions */
	ledger_free(&l);
	free(m);
}

/*
 * PostgreSQL 13 and 14 send Begin/Commit for every transaction of the
 * database, and logical messages of other prefixes make empty ones too: a
 * million of them while one event waits for Kafka must not grow the ring.
 */
static void
test_empty_fold(void)
{
	ledger l;
	ledger_seq s, e;
	size_t cap_before;

	ledger_init(&l, 0);
	ledger_begin(&l, 10, 0, &s);
	ledger_add(&l, s);
	ledger_commit(&l, 20);
	cap_before = l.cap;
	for (uint64_t i = 0; i < 1000000; i++) {
		ledger_begin(&l, 30 + 2 * i, 0, &e);
		ledger_commit(&l, 31 + 2 * i);
	}
	CHECK(ledger_txns(&l) == 1);                 /* all folded into the pending one */
	CHECK(l.cap == cap_before);                  /* no growth */
	CHECK(ledger_confirmable(&l) == 0);          /* still waiting for its event */
	CHECK(ledger_ack(&l, s) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 31 + 2 * 999999);   /* and confirms them all with it */
	CHECK(ledger_is_idle(&l));

	/* Interleaved: events every 1000th transaction, acked out of order. */
	{
		ledger_seq seqs[100];
		uint64_t lsn = 10000000, last_end = 0;

		for (int k = 0; k < 100; k++) {
			ledger_begin(&l, lsn++, 0, &seqs[k]);
			ledger_add(&l, seqs[k]);
			ledger_commit(&l, lsn++);
			for (int j = 0; j < 999; j++) {
				ledger_begin(&l, lsn++, 0, &e);
				ledger_commit(&l, lsn++);
			}
			last_end = lsn - 1;
		}
		CHECK(ledger_txns(&l) == 100);           /* one per transaction with an event */
		for (int k = 99; k >= 1; k--)
			CHECK(ledger_ack(&l, seqs[k]) == LEDGER_OK);
		CHECK(ledger_confirmable(&l) == 31 + 2 * 999999);   /* the first still pending */
		CHECK(ledger_ack(&l, seqs[0]) == LEDGER_OK);
		CHECK(ledger_confirmable(&l) == last_end);
	}

	/* An abandoned transaction (stream lost) keeps its place: the empty one
	 * after it must not inherit a position through it. */
	ledger_begin(&l, 20000000, 0, &s);
	ledger_add(&l, s);
	ledger_stream_lost(&l);
	ledger_begin(&l, 20000002, 0, &e);
	ledger_commit(&l, 20000003);
	CHECK(ledger_txns(&l) == 2);
	CHECK(ledger_get(&l, s)->end_lsn == 0);
	CHECK(ledger_ack(&l, s) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 20000003);
	ledger_free(&l);
}

/* A dead-letter copy added from the delivery report of a refused message. */
static void
test_add_to_sealed(void)
{
	ledger l;
	ledger_seq s1, s2;

	ledger_init(&l, 0);
	ledger_begin(&l, 10, 0, &s1);
	ledger_add(&l, s1);
	ledger_commit(&l, 20);
	ledger_begin(&l, 30, 0, &s2);
	ledger_add(&l, s2);
	ledger_commit(&l, 40);
	CHECK(ledger_add(&l, s1) == LEDGER_STATE);      /* sealed: ledger_add refuses */
	CHECK(ledger_add_to(&l, s1) == LEDGER_OK);      /* the copy, before the refused one's ack */
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);         /* the refused message is done */
	CHECK(ledger_ack(&l, s2) == LEDGER_OK);
	CHECK(ledger_pending(&l) == 1);
	CHECK(ledger_confirmable(&l) == 0);             /* the copy is still out */
	CHECK(ledger_ack(&l, s1) == LEDGER_OK);
	CHECK(ledger_confirmable(&l) == 40);
	CHECK(ledger_add_to(&l, s1) == LEDGER_STATE);   /* retired */
	/* sealed with nothing outstanding may be retired any moment: refused */
	ledger_begin(&l, 50, 0, &s1);
	ledger_commit(&l, 60);
	CHECK(ledger_add_to(&l, s1) == LEDGER_STATE);
	/* open: allowed, like ledger_add */
	ledger_begin(&l, 70, 0, &s2);
	CHECK(ledger_add_to(&l, s2) == LEDGER_OK);
	ledger_free(&l);
}

int
main(void)
{
	test_single();
	test_acked_before_commit();
	test_out_of_order();
	test_empty_transaction();
	test_keepalive();
	test_abandon();
	test_reset();
	test_misuse();
	test_add_to_sealed();
	test_empty_fold();
	test_random_model();
	printf("ledger: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
