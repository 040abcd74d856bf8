/*
 * test_cleanup.c — cleanup = delete against a fake cleaner: rows are
 * deleted only once the slot is confirmed at or past the position their
 * pick returned, a batch per interval, and a reset (another server) or a
 * failure forgets the pick.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "rows.h"

static int passed, failed;

#define CHECK(cond) do { \
	if (cond) passed++; \
	else { failed++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

typedef struct fake_cleaner {
	rows_cleaner base;
	size_t   rows;           /* in the table */
	uint64_t wal;            /* pg_current_wal_insert_lsn() */
	size_t   picked, left;
	uint64_t upto;
	uint64_t confirmed_seen; /* what the test says is confirmed, checked at each delete */
	uint64_t *confirmed;
	int      picks, removes, closes;
	bool     fail_next;
	bool     early;          /* a delete came before its pick's position was confirmed */
} fake_cleaner;

static rows_rc
fc_pick(rows_cleaner *base, size_t t, size_t max, size_t *n, uint64_t *upto, char *e, size_t el)
{
	fake_cleaner *c = (fake_cleaner *) base;

	(void) t;
	if (c->fail_next) {
		c->fail_next = false;
		snprintf(e, el, "connection refused");
		return ROWS_FAIL;
	}
	c->picks++;
	c->picked = c->left = c->rows < max ? c->rows : max;
	c->upto = c->wal;
	*n = c->picked;
	*upto = c->upto;
	return ROWS_OK;
}

static rows_rc
fc_remove(rows_cleaner *base, size_t max, uint64_t *deleted, size_t *left, char *e, size_t el)
{
	fake_cleaner *c = (fake_cleaner *) base;
	size_t n = c->left < max ? c->left : max;

	(void) e;
	(void) el;
	c->removes++;
	if (*c->confirmed < c->upto)
		c->early = true;
	c->left -= n;
	c->rows -= n;
	*deleted = n;
	*left = c->left;
	return ROWS_OK;
}

static int fc_pollfds(rows_cleaner *c, struct pollfd *p, int m) { (void) c; (void) p; (void) m; return 0; }
static int64_t fc_deadline(const rows_cleaner *c) { (void) c; return -1; }
static void fc_close(rows_cleaner *c) { ((fake_cleaner *) c)->closes++; }
static void fc_destroy(rows_cleaner *c) { (void) c; }

static const rows_cleaner_ops fc_ops = {
	.pick = fc_pick, .remove = fc_remove, .pollfds = fc_pollfds, .deadline = fc_deadline,
	.close = fc_close, .destroy = fc_destroy,
};

static void
test_waits_for_confirmation(void)
{
	fake_cleaner c = {.base.ops = &fc_ops, .rows = 25, .wal = 200};
	uint64_t confirmed = 0;
	metrics_stats st;
	cleanup_config cfg = {.name = "", .ntables = 1, .batch = 10, .interval_ms = 50};
	cleanup *cl;
	int64_t now = 1000;

	c.confirmed = &confirmed;
	memset(&st, 0, sizeof(st));
	cl = cleanup_new(&cfg, &c.base, &st);
	cleanup_serve(cl, now);
	CHECK(c.picks == 0);                 /* nothing confirmed yet: no pick */
	confirmed = 100;
	cleanup_confirmed(cl, confirmed);
	cleanup_serve(cl, now);
	CHECK(c.picks == 1 && c.picked == 25);
	CHECK(c.removes == 0);               /* picked at 200, confirmed 100 */
	confirmed = 199;
	cleanup_confirmed(cl, confirmed);
	for (int i = 0; i < 5; i++)
		cleanup_serve(cl, now += 100);
	CHECK(c.removes == 0);
	confirmed = 200;
	cleanup_confirmed(cl, confirmed);
	cleanup_serve(cl, now += 1);
	CHECK(c.removes == 1 && c.rows == 15 && st.cleanup_deleted == 10);
	cleanup_serve(cl, now += 10);        /* within the interval: the rate limit */
	CHECK(c.removes == 1);
	cleanup_serve(cl, now += 50);
	cleanup_serve(cl, now += 50);
	CHECK(c.removes == 3 && c.rows == 0 && st.cleanup_deleted == 25);
	/* The pick was not full: the next waits the idle time. */
	c.rows = 5;
	c.wal = 300;
	cleanup_serve(cl, now += 100);
	CHECK(c.picks == 1);
	cleanup_serve(cl, now += CLEANUP_IDLE_MS);
	CHECK(c.picks == 2);
	cleanup_serve(cl, now += 100);
	CHECK(c.removes == 3);               /* 300 not confirmed */
	/* Another server: its positions mean nothing here. */
	cleanup_reset(cl);
	CHECK(c.closes == 1);
	confirmed = 250;
	cleanup_confirmed(cl, confirmed);
	cleanup_serve(cl, now += CLEANUP_IDLE_MS);
	CHECK(c.picks == 3);                 /* picked again, at 300 */
	cleanup_serve(cl, now += 100);
	CHECK(c.removes == 3);
	CHECK(!c.early);
	cleanup_free(cl);
}

static void
test_failure_backs_off(void)
{
	fake_cleaner c = {.base.ops = &fc_ops, .rows = 3, .wal = 10, .fail_next = true};
	uint64_t confirmed = 10;
	metrics_stats st;
	cleanup_config cfg = {.name = "", .ntables = 2, .batch = 10, .interval_ms = 0};
	cleanup *cl;
	int64_t now = 0;

	c.confirmed = &confirmed;
	memset(&st, 0, sizeof(st));
	cl = cleanup_new(&cfg, &c.base, &st);
	cleanup_confirmed(cl, confirmed);
	cleanup_serve(cl, now += 1);
	CHECK(c.picks == 0 && c.closes == 1);
	cleanup_serve(cl, now += CLEANUP_RETRY_MS - 10);
	CHECK(c.picks == 0);
	cleanup_serve(cl, now += 20);
	CHECK(c.picks == 1 && c.removes == 1 && c.rows == 0);
	CHECK(!c.early);
	cleanup_free(cl);
}

int
main(void)
{
	log_set_level((log_level) (LOG_FATAL + 1));
	test_waits_for_confirmation();
	test_failure_backs_off();
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
