/*
 * cleanup.c — delete confirmed outbox rows.  See cleanup.h.
 */
#include "cleanup.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define LSN_FMT "%X/%X"
#define LSN_ARGS(lsn) (unsigned) ((lsn) >> 32), (unsigned) (lsn)

typedef enum cstate {
	C_IDLE = 0,       /* until next_ms */
	C_PICKING,
	C_WAITING,        /* for the slot to be confirmed at upto */
	C_DELETING,
} cstate;

struct cleanup {
	char          *name;
	rows_cleaner  *c;
	metrics_stats *st;
	size_t         ntables, table;
	size_t         batch;
	int            interval_ms;
	cstate         state;
	int64_t        next_ms;
	uint64_t       confirmed;    /* what the pipeline confirmed last */
	uint64_t       upto;         /* the pick's bound */
	size_t         picked, left;
	bool           failing;      /* the last step failed (logged once until one works) */
	bool           in_flight;    /* a pick or delete waits for the server */
};

cleanup *
cleanup_new(const cleanup_config *cfg, rows_cleaner *c, metrics_stats *st)
{
	cleanup *cl = calloc(1, sizeof(*cl));

	if (cl == NULL || (cl->name = strdup(cfg->name ? cfg->name : "")) == NULL) {
		free(cl);
		c->ops->destroy(c);
		return NULL;
	}
	cl->c = c;
	cl->st = st;
	cl->ntables = cfg->ntables ? cfg->ntables : 1;
	cl->batch = cfg->batch > 0 ? (size_t) cfg->batch : 500;
	cl->interval_ms = cfg->interval_ms;
	return cl;
}

void
cleanup_free(cleanup *cl)
{
	if (cl == NULL)
		return;
	cl->c->ops->destroy(cl->c);
	free(cl->name);
	free(cl);
}

void
cleanup_confirmed(cleanup *cl, uint64_t pos)
{
	if (pos > cl->confirmed)
		cl->confirmed = pos;
}

void
cleanup_reset(cleanup *cl)
{
	cl->c->ops->close(cl->c);
	cl->confirmed = 0;
	cl->state = C_IDLE;
	cl->picked = 0;
	cl->in_flight = false;
}

static void
failed(cleanup *cl, const char *what, const char *err, int64_t now)
{
	if (!cl->failing)
		log_msg(LOG_WARNING, "%scleanup: could not %s (retrying in %d s; nothing is deleted "
		        "meanwhile): %s", cl->name, what, CLEANUP_RETRY_MS / 1000, err);
	cl->failing = true;
	cl->c->ops->close(cl->c);
	cl->state = C_IDLE;
	cl->picked = 0;
	cl->in_flight = false;
	cl->next_ms = now + CLEANUP_RETRY_MS;
}

void
cleanup_serve(cleanup *cl, int64_t now)
{
	char err[512];
	uint64_t deleted;
	rows_rc rc;

	for (;;) {
		switch (cl->state) {
		case C_IDLE:
			if (now < cl->next_ms || cl->confirmed == 0)
				return;
			cl->state = C_PICKING;
			continue;
		case C_PICKING:
			rc = cl->c->ops->pick(cl->c, cl->table, cl->batch * CLEANUP_PICK_BATCHES, &cl->picked,
			                      &cl->upto, err, sizeof(err));
			cl->in_flight = rc == ROWS_AGAIN;
			if (rc == ROWS_AGAIN)
				return;
			if (rc != ROWS_OK) {
				failed(cl, "pick rows to delete", err, now);
				return;
			}
			if (cl->picked == 0) {
				cl->table = (cl->table + 1) % cl->ntables;
				cl->state = C_IDLE;
				cl->next_ms = now + CLEANUP_IDLE_MS;
				return;
			}
			cl->left = cl->picked;
			cl->state = C_WAITING;
			continue;
		case C_WAITING:
			/* The one rule: nothing is deleted before the slot is confirmed past it. */
			if (cl->confirmed < cl->upto)
				return;
			cl->state = C_DELETING;
			continue;
		case C_DELETING:
			if (!cl->in_flight && now < cl->next_ms)
				return;
			rc = cl->c->ops->remove(cl->c, cl->batch, &deleted, &cl->left, err, sizeof(err));
			cl->in_flight = rc == ROWS_AGAIN;
			if (rc == ROWS_AGAIN)
				return;
			if (rc != ROWS_OK) {
				failed(cl, "delete confirmed rows", err, now);
				return;
			}
			if (cl->failing)
				log_msg(LOG_INFO, "%scleanup: deleting confirmed rows again", cl->name);
			cl->failing = false;
			cl->st->cleanup_deleted += deleted;
			log_msg(LOG_DEBUG, "%scleanup: deleted %" PRIu64 " rows committed before " LSN_FMT
			        " (confirmed " LSN_FMT ")", cl->name, deleted, LSN_ARGS(cl->upto),
			        LSN_ARGS(cl->confirmed));
			cl->next_ms = now + cl->interval_ms;      /* the rate limit */
			if (cl->left > 0)
				return;
			/* The pick is done: a full one means more rows wait, else go on to the next table. */
			cl->state = C_IDLE;
			if (cl->picked < cl->batch * CLEANUP_PICK_BATCHES) {
				cl->table = (cl->table + 1) % cl->ntables;
				if (cl->table == 0 && cl->next_ms < now + CLEANUP_IDLE_MS)
					cl->next_ms = now + CLEANUP_IDLE_MS;
			}
			cl->picked = 0;
			return;
		}
	}
}

int
cleanup_pollfds(cleanup *cl, struct pollfd *pfd, int max)
{
	if (!cl->in_flight)
		return 0;
	return cl->c->ops->pollfds(cl->c, pfd, max);
}

int64_t
cleanup_deadline(const cleanup *cl, int64_t now)
{
	int64_t d;

	switch (cl->state) {
	case C_IDLE:
		return cl->confirmed == 0 ? now + 60000 : cl->next_ms;
	case C_WAITING:
		return now + 60000;    /* cleanup_confirmed() comes from a turn of the loop anyway */
	case C_DELETING:
		if (!cl->in_flight)
			return cl->next_ms;
		d = cl->c->ops->deadline(cl->c);
		return d >= 0 ? d : now + 1000;
	default:
		d = cl->c->ops->deadline(cl->c);
		return d >= 0 ? d : now + 1000;
	}
}
