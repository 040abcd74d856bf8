/*
 * main.c — pgoutbox the process: options, signals, and the one event loop.
 *
 * The work happens in pipelines (pipeline.h: one replication slot end to
 * end) that produce into one shared sink (sink.h; the Kafka producer of
 * kafka.h).  This file only wires them up and runs the loop: it poll()s the
 * pipelines' sockets, the pipe the sink signals when reports wait, and the
 * metrics listener, and is the only place that blocks.  Signal handlers
 * only set a flag.
 */
#define _GNU_SOURCE    /* ppoll */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "outbox.h"
#include "pipeline.h"
#include "rows.h"
#include "sink.h"
#include "source.h"

#ifndef PGOUTBOX_VERSION
#define PGOUTBOX_VERSION "unknown"
#endif

#define REBUILD_LIMIT        5       /* producer rebuilds allowed per window ... */
#define REBUILD_WINDOW_MS    600000  /* ... before a fatal error exits 2 */
#define PIPELINE_FDS         4       /* sockets one pipeline may watch */
#define MAX_PIPELINES        SINK_MAX_CLIENTS

static volatile sig_atomic_t stop_signals = 0;
static volatile sig_atomic_t reload_requested = 0;

static void
on_stop_signal(int sig)
{
	(void) sig;
	stop_signals++;
}

static void
on_hup_signal(int sig)
{
	(void) sig;
	reload_requested = 1;
}

typedef struct app {
	config       cfg;
	int          argc;             /* the command line, parsed again on SIGHUP */
	char       **argv;
	sink        *snk;
	pipeline    *pipes[MAX_PIPELINES];    /* one per source */
	bool         removing[MAX_PIPELINES]; /* dropped from the configuration: drains, then goes */
	bool         failed_early[MAX_PIPELINES];   /* stopped by itself before a shutdown signal */
	size_t       npipes;
	metrics_source msrc[MAX_PIPELINES];   /* what /metrics shows of them */
	uint64_t     test_fatal_after;
	bool         sink_woke;        /* the sink's pipe was readable: serve its reports */
	bool         stopping;
	bool         by_signal;        /* the stop came from SIGTERM/SIGINT (or endpos) */
	int          rebuilds;         /* producer rebuilds in the current window */
	int64_t      rebuild_window_ms;
	metrics_txn_stats txn_stats;   /* exactly-once: Kafka transactions, across rebuilds */
	uint64_t     test_abort_every; /* test hook: fail every Nth Kafka transaction at its commit */

	metrics     *mx;               /* the listener, NULL when metrics are off */
	char        *mx_addr;          /* the address mx listens on */
	int64_t      next_stats_ms;
	notifier    *nt;               /* systemd's $NOTIFY_SOCKET, or NULL */
	bool         ready_sent;
	char         last_status[300]; /* the last STATUS= sent */
	int64_t      next_watchdog_ms;
} app;

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Listen for metrics on addr (NULL: off), replacing the current listener.
 * On failure the current one stays and false is returned with errbuf set.
 */
static bool
metrics_listen(app *a, const char *addr, char *errbuf, size_t errlen)
{
	metrics *m = NULL;
	char *copy = NULL;

	if ((a->mx_addr == NULL && addr == NULL) ||
	    (a->mx_addr != NULL && addr != NULL && strcmp(a->mx_addr, addr) == 0))
		return true;
	if (addr != NULL) {
		if ((copy = strdup(addr)) == NULL) {
			snprintf(errbuf, errlen, "out of memory");
			return false;
		}
		if ((m = metrics_new(addr, PGOUTBOX_VERSION, errbuf, errlen)) == NULL) {
			free(copy);
			return false;
		}
		log_msg(LOG_INFO, "serving metrics on http://%s/metrics", addr);
	}
	metrics_free(a->mx);
	free(a->mx_addr);
	a->mx = m;
	a->mx_addr = copy;
	if (m != NULL) {
		metrics_set_sources(m, a->msrc, a->npipes);
		if (a->cfg.exactly_once)
			metrics_set_txn(m, &a->txn_stats);
	}
	return true;
}

/* What /metrics shows: the pipelines as they are now. */
static void
metrics_sources(app *a)
{
	for (size_t i = 0; i < a->npipes; i++)
		a->msrc[i] = (metrics_source) {
			.name = pipeline_name(a->pipes[i]), .slot = pipeline_slot(a->pipes[i]),
			.database = pipeline_database(a->pipes[i]), .st = pipeline_stats(a->pipes[i]),
		};
	if (a->mx != NULL)
		metrics_set_sources(a->mx, a->msrc, a->npipes);
}

/*
 * --backfill / --replay: the reader of the pipeline's backfill phase.  A
 * backfill creates the slot and reads in its snapshot; resumed, it reuses
 * the slot the interrupted run created; a replay never touches a slot.
 */
static rows_reader *
backfill_reader(const config *cfg, const config_source *cs, const char **nsp, const char **rel,
                size_t ntables, pipeline_config *pc, char *errbuf, size_t errlen)
{
	bool resume = cfg->backfill_resume[0] != '\0';
	rows_config rc = {
		.conninfo = cs->conninfo, .ntables = ntables, .nsp = nsp, .rel = rel,
		.create_slot = cfg->backfill && !resume ? cs->slot : NULL,
		.need_slot = cfg->backfill && resume ? cs->slot : NULL,
		.sel = {
			.since = cfg->backfill_since, .since_column = cfg->backfill_since_column,
			.order_column = cfg->backfill_order_column,
			.timestamp_column = cfg->backfill_timestamp_column, .batch = cfg->backfill_batch,
		},
	};

	if (resume) {
		const char *colon = strchr(cfg->backfill_resume, ':');

		rc.sel.resume_table = (size_t) strtoul(cfg->backfill_resume, NULL, 10) - 1;
		rc.sel.resume_from = colon + 1;
		pc->resume_table = rc.sel.resume_table;
		pc->resume_key = colon + 1;
	}
	pc->replay = cfg->replay;
	if (cs->messages_prefix[0] != '\0')
		log_msg(LOG_INFO, "logical messages (messages_prefix) are not in any table: the %s "
		        "publishes table rows only", cfg->replay ? "replay" : "backfill");
	return rows_reader_new(&rc, errbuf, errlen);
}

/*
 * A pipeline for source cs of cfg, attached to the sink; NULL with errbuf
 * filled on a bad mapping or when out of memory.
 */
static pipeline *
start_source(app *a, const config *cfg, const config_source *cs, char *errbuf, size_t errlen)
{
	outbox_config oc = {
		.tables = cs->tables, .ntables = cs->ntables,
		.messages_prefix = cs->messages_prefix, .messages = cs->messages,
	};
	source_config sc = {
		.conninfo = cs->conninfo, .slot = cs->slot, .publication = cs->publication,
		.proto_version = 0, .messages_prefix = cs->messages_prefix,
	};
	pipeline_config pc = {
		.name = cs->name, .slot = cs->slot, .publication = cs->publication, .outbox = &oc,
		.on_error_dlq = cs->on_error_dlq, .dlq_topic = cs->dlq_topic,
		.status_interval_ms = cs->status_interval_ms,
		.replication_timeout_s = cs->replication_timeout_s,
		.kafka_stall_timeout_s = cfg->kafka_stall_timeout_s,
		.shutdown_timeout_s = cfg->shutdown_timeout_s, .endpos = cs->endpos,
		.test_fatal_after = a->test_fatal_after,
	};
	const char **nsp = NULL, **rel = NULL;
	outbox *probe;
	source *src = NULL;
	pipeline *p = NULL;

	/* The table names the source verifies, as the mapping parsed them. */
	if ((probe = outbox_new(&oc, errbuf, errlen)) == NULL)
		return NULL;
	sc.ntables = outbox_tables(probe);
	if ((nsp = calloc(sc.ntables, sizeof(*nsp))) == NULL ||
	    (rel = calloc(sc.ntables, sizeof(*rel))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < sc.ntables; i++)
		outbox_table_ident(probe, i, &nsp[i], &rel[i]);
	sc.table_nsp = nsp;
	sc.table_rel = rel;
	if ((cfg->backfill || cfg->replay) &&
	    (pc.backfill = backfill_reader(cfg, cs, nsp, rel, sc.ntables, &pc, errbuf, errlen)) == NULL)
		goto out;
	if (cfg->cleanup_delete && !cfg->replay) {
		if ((pc.cleaner = rows_cleaner_new(cs->conninfo, sc.ntables, nsp, rel, errbuf, errlen)) == NULL)
			goto out;
		pc.cleanup_batch = cfg->cleanup_batch;
		pc.cleanup_interval_ms = cfg->cleanup_interval_ms;
	}
	if ((src = source_libpq_new(&sc, errbuf, errlen)) != NULL) {
		p = pipeline_new(&pc, src, a->snk, errbuf, errlen);    /* owns src, reader, cleaner from here */
		pc.backfill = NULL;
		pc.cleaner = NULL;
	}
out:
	if (pc.backfill != NULL)
		pc.backfill->ops->destroy(pc.backfill);
	if (pc.cleaner != NULL)
		pc.cleaner->ops->destroy(pc.cleaner);
	free(nsp);
	free(rel);
	outbox_free(probe);
	return p;
}

/*
 * SIGHUP: load the command line and the -c file again.  A configuration with
 * errors is reported and changes nothing; otherwise the reloadable settings
 * take effect at once.
 */
static void
reload_config(app *a)
{
	config next;
	char err[1024];
	int n;

	switch (config_load(&next, a->argc, a->argv, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		config_free(&next);
		return;
	case CONFIG_ERROR:
		log_detail(LOG_ERROR, "the running configuration is kept",
		           "could not reload the configuration: %s", err);
		return;
	}
	n = config_reload(&a->cfg, &next);
	/* Sources added start now; sources no longer configured drain and go. */
	for (size_t i = 0; i < next.nsources; i++) {
		const config_source *cs = &next.sources[i];
		bool running = false;
		pipeline *p;

		for (size_t j = 0; j < a->npipes && !running; j++)
			running = !a->removing[j] && strcmp(pipeline_name(a->pipes[j]), cs->name) == 0;
		if (running)
			continue;
		if (a->npipes == MAX_PIPELINES) {
			log_msg(LOG_ERROR, "cannot add source %s: at most %d sources", cs->name, MAX_PIPELINES);
			continue;
		}
		if ((p = start_source(a, &next, cs, err, sizeof(err))) == NULL) {
			log_msg(LOG_ERROR, "cannot add source %s: %s", cs->name, err);
			continue;
		}
		log_msg(LOG_INFO, "source %s added", cs->name);
		a->removing[a->npipes] = a->failed_early[a->npipes] = false;
		a->pipes[a->npipes++] = p;
		n++;
	}
	for (size_t j = 0; j < a->npipes; j++)
		if (!a->removing[j] && config_find_source(&next, pipeline_name(a->pipes[j])) == NULL) {
			log_msg(LOG_INFO, "source %s removed from the configuration: draining it",
			        pipeline_name(a->pipes[j]));
			a->removing[j] = true;
			pipeline_stop(a->pipes[j], 0, now_ms());
			n++;
		}
	metrics_sources(a);
	if (n == 0)
		log_msg(LOG_INFO, "configuration reloaded: no reloadable setting changed");
	else
		log_msg(LOG_INFO, "configuration reloaded");
	config_free(&next);
	log_set_level((log_level) a->cfg.log_level);
	log_set_format((log_format) a->cfg.log_format);
	a->next_stats_ms = 0;      /* restart the stats period */
	if (!metrics_listen(a, a->cfg.metrics, err, sizeof(err)))
		log_detail(LOG_ERROR, a->mx_addr ? "metrics stay on the previous address" : "metrics stay off",
		           "%s", err);
}

/*
 * Tell systemd a reload began (it then waits for READY=1); its clock
 * reading lets systemd tell this reload from an earlier one.  Only once
 * READY=1 was sent: before that, systemd still waits for the start.
 */
static void
notify_reloading(app *a)
{
	struct timespec ts;
	char msg[64];

	if (a->nt == NULL || !a->ready_sent)
		return;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%lld",
	         (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
	notify_send(a->nt, msg);
}

/* READY=1 once a pipeline streams; STATUS= whenever what they say changes. */
static void
notify_state(app *a)
{
	char status[300];
	size_t streaming = 0;
	const metrics_stats *st = NULL;

	if (a->nt == NULL)
		return;
	for (size_t i = 0; i < a->npipes; i++) {
		st = pipeline_stats(a->pipes[i]);
		streaming += st->streaming && st->health[0] == '\0';
	}
	if (a->npipes == 1 && streaming == 1)
		snprintf(status, sizeof(status), "STATUS=streaming from slot \"%.200s\"", a->cfg.slot);
	else if (a->npipes == 1)
		snprintf(status, sizeof(status), "STATUS=%.250s", st->health);
	else
		snprintf(status, sizeof(status), "STATUS=streaming from %zu of %zu sources", streaming,
		         a->npipes);
	if (streaming > 0 && !a->ready_sent) {
		char msg[320];
		snprintf(msg, sizeof(msg), "READY=1\n%s", status);
		if (notify_send(a->nt, msg))
			a->ready_sent = true;
		snprintf(a->last_status, sizeof(a->last_status), "%s", status);
	} else if (strcmp(status, a->last_status) != 0) {
		notify_send(a->nt, status);
		snprintf(a->last_status, sizeof(a->last_status), "%s", status);
	}
}

static void
begin_stop(app *a, int code)
{
	int64_t now = now_ms();

	if (!a->stopping)
		notify_send(a->nt, "STOPPING=1\nSTATUS=stopping: draining in-flight events");
	a->stopping = true;
	for (size_t i = 0; i < a->npipes; i++)
		pipeline_stop(a->pipes[i], code, now);
}

/* The sink of the configured delivery; NULL with errbuf filled. */
static sink *
make_sink(app *a, char *errbuf, size_t errlen)
{
	kafka_txn_config tc = {
		.brokers = a->cfg.brokers, .props = a->cfg.kafka, .nprops = a->cfg.nkafka,
		.transactional_id = a->cfg.transactional_id, .state_topic = a->cfg.state_topic,
		.max_ms = a->cfg.txn_max_ms, .max_events = a->cfg.txn_max_events,
		.stats = &a->txn_stats, .test_abort_every = a->test_abort_every,
	};

	if (a->cfg.exactly_once)
		return kafka_txn_sink_new(&tc, errbuf, errlen);
	return kafka_sink_new(a->cfg.brokers, a->cfg.kafka, a->cfg.nkafka, errbuf, errlen);
}

/*
 * The producer hit a fatal error (e.g. the idempotence guarantee broke).
 * Its unacknowledged messages are lost to it, but not to us: nothing past
 * them was confirmed, so a new producer and new streams from the slots'
 * confirmed positions deliver them again.  Repeated failures exit 2.
 */
static void
rebuild_producer(app *a, const char *cause)
{
	char err[512];
	int64_t now = now_ms();

	if (now - a->rebuild_window_ms > REBUILD_WINDOW_MS) {
		a->rebuild_window_ms = now;
		a->rebuilds = 0;
	}
	if (++a->rebuilds > REBUILD_LIMIT) {
		log_msg(LOG_ERROR, "Kafka producer failed fatally %d times in %d minutes: giving up",
		        REBUILD_LIMIT + 1, REBUILD_WINDOW_MS / 60000);
		begin_stop(a, 2);
		return;
	}
	log_detail(LOG_WARNING, cause,
	           "rebuilding the Kafka producer after a fatal error; resuming from the slot's confirmed position");
	for (size_t i = 0; i < a->npipes; i++)
		pipeline_sink_lost(a->pipes[i]);
	sink_free(a->snk);
	a->snk = make_sink(a, err, sizeof(err));
	if (a->snk == NULL) {
		log_msg(LOG_ERROR, "%s", err);
		return;
	}
	for (size_t i = 0; i < a->npipes; i++)
		if (!pipeline_attach(a->pipes[i], a->snk))
			log_msg(LOG_ERROR, "internal error: could not attach a pipeline to the new producer");
	a->sink_woke = true;
}

/* Pipeline i is gone from the configuration and done: free it. */
static void
drop_pipeline(app *a, size_t i)
{
	pipeline_finish(a->pipes[i]);
	log_msg(LOG_INFO, "source %s stopped and removed", pipeline_name(a->pipes[i]));
	pipeline_free(a->pipes[i]);
	memmove(&a->pipes[i], &a->pipes[i + 1], (a->npipes - i - 1) * sizeof(a->pipes[0]));
	memmove(&a->removing[i], &a->removing[i + 1], (a->npipes - i - 1) * sizeof(a->removing[0]));
	memmove(&a->failed_early[i], &a->failed_early[i + 1],
	        (a->npipes - i - 1) * sizeof(a->failed_early[0]));
	a->npipes--;
	metrics_sources(a);
}

/*
 * A source stopped by itself (its slot is gone, a poison event, ...):
 * with on_source_failure = stop-all everything stops; with continue the
 * others stream on, and the process ends once no source runs.
 */
static void
source_stopped(app *a, size_t i)
{
	int code = pipeline_exit_code(a->pipes[i]);

	if (a->stopping || code == 0)
		return;
	a->failed_early[i] = true;
	if (a->npipes > 1) {
		if (a->cfg.on_source_failure_stop_all) {
			log_msg(LOG_ERROR, "source %s failed: stopping every source (on_source_failure = stop-all)",
			        pipeline_name(a->pipes[i]));
			begin_stop(a, 2);
		} else {
			log_msg(LOG_WARNING, "source %s failed and is stopped; the other sources stream on "
			        "(on_source_failure = continue)", pipeline_name(a->pipes[i]));
		}
	}
}

static int
run(app *a)
{
	char err[512];
	struct pollfd pfd[1 + MAX_PIPELINES * PIPELINE_FDS + METRICS_MAX_CLIENTS + 1];
	int pipe_at[MAX_PIPELINES], pipe_n[MAX_PIPELINES];
	int nfds = 0, code = 0;

	memset(pipe_n, 0, sizeof(pipe_n));
	memset(pipe_at, 0, sizeof(pipe_at));
	for (;;) {
		int64_t now = now_ms();
		int64_t due;
		int mx_idx = 0, mx_n = 0, nready;
		bool all_done = true;

		if (stop_signals > 0 && !a->stopping) {
			log_msg(LOG_INFO, "received shutdown signal: draining in-flight events (up to %d s)",
			        a->cfg.shutdown_timeout_s);
			a->by_signal = true;
			begin_stop(a, 0);
		}
		if (reload_requested) {
			reload_requested = 0;
			log_msg(LOG_INFO, "received SIGHUP: reloading the configuration");
			notify_reloading(a);
			reload_config(a);
			if (a->nt != NULL && a->ready_sent)
				notify_send(a->nt, "READY=1");
			/* The poll array no longer matches the pipelines: no revents this turn. */
			memset(pipe_n, 0, sizeof(pipe_n));
		}
		if (stop_signals > 1) {
			log_msg(LOG_WARNING, "second shutdown signal: exiting without waiting for Kafka");
			break;
		}
		if (!a->stopping && sink_fatal(a->snk, err, sizeof(err))) {
			if (sink_misconfigured(a->snk)) {
				/* No new producer can do better: a configuration error. */
				log_msg(LOG_ERROR, "%s", err);
				begin_stop(a, 1);
			} else {
				rebuild_producer(a, err);
			}
		}
		if (a->snk == NULL) {
			code = 2;
			break;
		}

		/* Kafka's reports first: they make room and confirm. */
		if (a->sink_woke || a->stopping) {
			a->sink_woke = false;
			sink_serve(a->snk);
		}
		now = now_ms();
		for (size_t i = 0; i < a->npipes; i++) {
			bool was_done = pipeline_finished(a->pipes[i]);

			pipeline_serve(a->pipes[i], pfd + pipe_at[i], pipe_n[i], now);
			if (!pipeline_done(a->pipes[i], now)) {
				all_done = false;
				continue;
			}
			pipeline_finish(a->pipes[i]);
			if (!was_done)
				source_stopped(a, i);
		}
		for (size_t i = a->npipes; i-- > 0;)
			if (a->removing[i] && pipeline_finished(a->pipes[i])) {
				drop_pipeline(a, i);
				memset(pipe_n, 0, sizeof(pipe_n));
			}
		/* Every source stopped: by a signal, at endpos, or failing. */
		if (all_done)
			break;
		notify_state(a);

		if (a->cfg.stats_interval_s > 0) {
			if (a->next_stats_ms == 0)
				a->next_stats_ms = now + (int64_t) a->cfg.stats_interval_s * 1000;
			else if (now >= a->next_stats_ms) {
				for (size_t i = 0; i < a->npipes; i++)
					if (!pipeline_finished(a->pipes[i]))
						pipeline_log_stats(a->pipes[i]);
				a->next_stats_ms = now + (int64_t) a->cfg.stats_interval_s * 1000;
			}
		}

		/* Sleep until a socket, Kafka or a timer needs us. */
		due = now + 1000;
		for (size_t i = 0; i < a->npipes; i++) {
			int64_t d = pipeline_deadline(a->pipes[i], now);
			if (d < due)
				due = d;
		}
		if (notify_watchdog_ms(a->nt) > 0) {
			if (now >= a->next_watchdog_ms) {
				notify_send(a->nt, "WATCHDOG=1");
				a->next_watchdog_ms = now + notify_watchdog_ms(a->nt);
			}
			if (a->next_watchdog_ms < due)
				due = a->next_watchdog_ms;
		}
		if (a->cfg.stats_interval_s > 0 && a->next_stats_ms < due)
			due = a->next_stats_ms;
		if (a->mx != NULL) {
			int64_t d = metrics_next_deadline(a->mx);
			if (d >= 0 && d < due)
				due = d;
		}

		nfds = 0;
		pfd[nfds++] = (struct pollfd) {.fd = sink_fd(a->snk), .events = POLLIN};
		for (size_t i = 0; i < a->npipes; i++) {
			pipe_at[i] = nfds;
			pipe_n[i] = pipeline_pollfds(a->pipes[i], pfd + nfds, PIPELINE_FDS);
			nfds += pipe_n[i];
		}
		if (a->mx != NULL) {
			mx_idx = nfds;
			mx_n = metrics_pollfds(a->mx, pfd + nfds, (int) (sizeof(pfd) / sizeof(pfd[0])) - nfds);
			nfds += mx_n;
		}
		{
			/* Microseconds: a nap while catching up is shorter than a ms. */
			int64_t wait_us = due > now ? (due - now) * 1000 : 0;
			struct timespec ts;

			for (size_t i = 0; i < a->npipes; i++) {
				int64_t nap = pipeline_nap_us(a->pipes[i]);
				if (nap > 0 && nap < wait_us)
					wait_us = nap;
			}
			ts.tv_sec = (time_t) (wait_us / 1000000);
			ts.tv_nsec = (long) (wait_us % 1000000) * 1000;
			nready = ppoll(pfd, (nfds_t) nfds, &ts, NULL);
		}
		if (nready < 0 && errno != EINTR) {
			log_msg(LOG_ERROR, "poll failed: %s", strerror(errno));
			begin_stop(a, 2);
			code = 2;
			break;
		}
		if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP))
			a->sink_woke = true;
		if (a->mx != NULL && mx_n > 0)
			metrics_serve(a->mx, pfd + mx_idx, mx_n, now_ms());
	}

	/* Confirm what Kafka acknowledged before leaving. */
	if (a->snk != NULL)
		sink_serve(a->snk);
	/*
	 * Exit 2 when a source failed, except that sources which had already
	 * failed before a shutdown signal (on_source_failure = continue) were
	 * reported then: a clean stop of the others is exit 0.
	 */
	for (size_t i = 0; i < a->npipes; i++) {
		pipeline_finish(a->pipes[i]);
		if (a->by_signal && a->failed_early[i])
			continue;
		if (pipeline_exit_code(a->pipes[i]) > code)
			code = pipeline_exit_code(a->pipes[i]);
	}
	return code;
}

/* --check ---------------------------------------------------------------- */

#define CHECK_KAFKA_TIMEOUT_MS 5000
#define CHECK_MAX_COLUMNS      16

typedef struct check_ctx {
	const config *cfg;
	const char   *pg_secret;
	int           fails, warns;
} check_ctx;

/* Print one result; whatever the libraries said, no password gets through. */
static void
print_check(void *ctx, check_status st, const char *check, const char *detail)
{
	check_ctx *c = ctx;
	char line[2048];
	size_t n;

	/* One line per item: libpq's multi-line messages are joined. */
	for (n = 0; *detail != '\0' && n + 1 < sizeof(line); detail++) {
		if (*detail == '\n' || *detail == '\t' || *detail == '\r') {
			if (n > 0 && line[n - 1] != ' ')
				line[n++] = ' ';
			continue;
		}
		line[n++] = *detail;
	}
	line[n] = '\0';
	redact_secret(line, sizeof(line), c->pg_secret);
	for (size_t i = 0; i < c->cfg->nkafka; i++)
		if (strstr(c->cfg->kafka[i].name, "password") || strstr(c->cfg->kafka[i].name, "secret"))
			redact_secret(line, sizeof(line), c->cfg->kafka[i].value);
	if (st == CHECK_FAIL)
		c->fails++;
	else if (st == CHECK_WARN)
		c->warns++;
	printf("%-4s  %s: %s\n", st == CHECK_OK ? "ok" : st == CHECK_WARN ? "warn" : "FAIL",
	       check, line);
	fflush(stdout);
}

/*
 * The columns the template routes by: each ${name} not listed yet, copied
 * into buf (NUL separated) and appended to cols[0..n).  Returns the new count.
 */
static size_t
template_columns(const char *tpl, char *buf, size_t buflen, const char **cols, size_t n,
                 size_t max)
{
	size_t used = 0;
	const char *p = tpl;

	while (n < max && (p = strstr(p, "${")) != NULL) {
		const char *end = strchr(p + 2, '}');
		size_t len;

		if (end == NULL)
			break;
		len = (size_t) (end - p - 2);
		if (used + len + 1 > buflen)
			break;
		memcpy(buf + used, p + 2, len);
		buf[used + len] = '\0';
		p = end + 1;
		for (size_t i = 0; i < n && buf[used] != '\0'; i++)
			if (strcmp(cols[i], buf + used) == 0)
				buf[used] = '\0';
		if (buf[used] == '\0')
			continue;
		cols[n++] = buf + used;
		used += len + 1;
	}
	return n;
}

/* What --check verifies of one outbox table: the columns its mapping reads. */
typedef struct check_table_cols {
	const char *cols[CHECK_MAX_COLUMNS + 1];
	const char *notnull[3];
	char        buf[1024];
} check_table_cols;

/*
 * --check: configuration errors exit 1, a failed check 2, all passed
 * (warnings allowed) 0.  Blocking is fine here: nothing streams.
 */
/*
 * --check of one source: its PostgreSQL side, every outbox table against its
 * own mapping.  *fixed_topic: the fixed topic every table so far routes to
 * (NULL: none, or they differ; *any_table false before the first).  The
 * source is kept in *srcp, so that its password stays known for redaction.
 * Returns false on a configuration error (printed).
 */
static bool
check_source(check_ctx *c, const config_source *cs, const char **fixed_topic, bool *any_table,
             source **srcp)
{
	char err[1024];
	source_config sc = {.conninfo = cs->conninfo, .slot = cs->slot, .publication = cs->publication,
	                    .messages_prefix = cs->messages_prefix};
	const char **nsp = NULL, **rel = NULL;
	outbox_config oc = {
		.tables = cs->tables, .ntables = cs->ntables,
		.messages_prefix = cs->messages_prefix, .messages = cs->messages,
	};
	check_table_cols *tc = NULL;
	source_check_spec *specs = NULL;
	outbox *ob;
	bool ok = false, is_message;

	if ((ob = outbox_new(&oc, err, sizeof(err))) == NULL) {
		fprintf(stderr, "pgoutbox: %s%s%s%s\n", cs->name[0] ? "source " : "", cs->name,
		        cs->name[0] ? ": " : "", err);
		return false;
	}
	if ((tc = calloc(cs->ntables, sizeof(*tc))) == NULL ||
	    (specs = calloc(cs->ntables, sizeof(*specs))) == NULL ||
	    (nsp = calloc(cs->ntables, sizeof(*nsp))) == NULL ||
	    (rel = calloc(cs->ntables, sizeof(*rel))) == NULL) {
		fprintf(stderr, "pgoutbox: out of memory\n");
		goto out;
	}
	for (size_t i = 0; i < cs->ntables; i++) {
		const outbox_mapping *map = &cs->tables[i].map;
		size_t n;

		tc[i].cols[0] = map->col_id;
		tc[i].cols[1] = map->col_key;
		tc[i].cols[2] = map->col_type;
		tc[i].cols[3] = map->col_payload;
		n = template_columns(map->topic_template, tc[i].buf, sizeof(tc[i].buf), tc[i].cols, 4,
		                     CHECK_MAX_COLUMNS);
		tc[i].cols[n] = NULL;
		tc[i].notnull[0] = map->col_id;
		tc[i].notnull[1] = map->col_key;
		outbox_table_ident(ob, i, &nsp[i], &rel[i]);
		specs[i] = (source_check_spec) {.table = outbox_source_name(ob, (unsigned) i, &is_message),
		                                .nsp = nsp[i],
		                                .rel = rel[i], .columns = tc[i].cols,
		                                .notnull = tc[i].notnull};
		/* A fixed topic (no ${...}) shared by all tables can be looked up. */
		if (!*any_table && strstr(map->topic_template, "${") == NULL)
			*fixed_topic = map->topic_template;
		else if (*fixed_topic != NULL && strcmp(*fixed_topic, map->topic_template) != 0)
			*fixed_topic = NULL;
		*any_table = true;
	}
	sc.ntables = cs->ntables;
	sc.table_nsp = nsp;
	sc.table_rel = rel;
	if ((*srcp = source_libpq_new(&sc, err, sizeof(err))) == NULL) {
		fprintf(stderr, "pgoutbox: %s\n", err);
		goto out;
	}
	c->pg_secret = source_libpq_secret(*srcp);
	if (cs->name[0]) {
		printf("source %s:\n", cs->name);
		fflush(stdout);
	}
	source_check(*srcp, specs, cs->ntables, print_check, c);
	{
		/* The tables' size, oldest row and retention against the slot's loss window. */
		rows_check_spec *rs = calloc(cs->ntables, sizeof(*rs));

		if (rs != NULL) {
			for (size_t i = 0; i < cs->ntables; i++)
				rs[i] = (rows_check_spec) {.table = specs[i].table, .nsp = nsp[i], .rel = rel[i],
				                           .time_column = c->cfg->backfill_since_column[0]
				                                          ? c->cfg->backfill_since_column
				                                          : c->cfg->backfill_timestamp_column};
			rows_check(cs->conninfo, rs, cs->ntables, c->cfg->cleanup_delete, print_check, c);
			free(rs);
		}
	}
	ok = true;
out:
	free(specs);
	free(tc);
	free(nsp);
	free(rel);
	outbox_free(ob);
	return ok;
}

/*
 * --check: configuration errors exit 1, a failed check 2, all passed
 * (warnings allowed) 0.  Blocking is fine here: nothing streams.  Every
 * source is checked, then Kafka once.
 */
static int
run_check(const config *cfg)
{
	char err[1024];
	check_ctx c = {.cfg = cfg};
	source **srcs = calloc(cfg->nsources ? cfg->nsources : 1, sizeof(*srcs));
	const char *fixed_topic = NULL;
	bool any_table = false;
	int kafka = 0, code = 1;

	if (srcs == NULL) {
		fprintf(stderr, "pgoutbox: out of memory\n");
		return 1;
	}
	/* The producer's properties are validated as the daemon would. */
	if (!kafka_config_valid(cfg->brokers, cfg->kafka, cfg->nkafka, err, sizeof(err))) {
		fprintf(stderr, "pgoutbox: %s\n", err);
		goto out;
	}
	for (size_t i = 0; i < cfg->nsources; i++)
		if (!check_source(&c, &cfg->sources[i], &fixed_topic, &any_table, &srcs[i]))
			goto out;
	/* The last source's password is redacted here; Kafka's lines hold none of PostgreSQL's. */
	if (cfg->nsources > 1) {
		printf("kafka:\n");
		fflush(stdout);
	}
	kafka = kafka_check(cfg->brokers, cfg->kafka, cfg->nkafka, fixed_topic,
	                    CHECK_KAFKA_TIMEOUT_MS, print_check, &c);
	if (kafka < 0)
		goto out;
	if (cfg->exactly_once) {
		kafka_txn_config tc = {
			.brokers = cfg->brokers, .props = cfg->kafka, .nprops = cfg->nkafka,
			.transactional_id = cfg->transactional_id, .state_topic = cfg->state_topic,
			.max_ms = cfg->txn_max_ms, .max_events = cfg->txn_max_events,
		};

		if (kafka_txn_check(&tc, CHECK_KAFKA_TIMEOUT_MS, print_check, &c) < 0)
			goto out;
	}
	printf("%s: %d failed, %d warning(s)\n", c.fails ? "check failed" : "all checks passed",
	       c.fails, c.warns);
	code = c.fails ? 2 : 0;
out:
	for (size_t i = 0; i < cfg->nsources; i++)
		source_free(srcs[i]);
	free(srcs);
	return code;
}

int
main(int argc, char **argv)
{
	app a;
	char err[1024];
	struct sigaction sa;
	int code;

	memset(&a, 0, sizeof(a));
	a.argc = argc;
	a.argv = argv;
	switch (config_load(&a.cfg, argc, argv, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		if (a.cfg.show_help)
			config_usage(stdout);
		else if (a.cfg.list_settings)
			config_list_settings(stdout);
		else
			printf("pgoutbox %s\n", PGOUTBOX_VERSION);
		return 0;
	case CONFIG_ERROR:
		fprintf(stderr, "pgoutbox: %s\nTry \"pgoutbox --help\" for more information.\n", err);
		return 1;
	}
	log_set_level((log_level) a.cfg.log_level);
	log_set_format((log_format) a.cfg.log_format);
	if (a.cfg.check) {
		code = run_check(&a.cfg);
		config_free(&a.cfg);
		return code;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup_signal;
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	code = 1;
	{
		const char *v = getenv("PGOUTBOX_TEST_FATAL_AFTER");   /* test hook; not a setting */

		if (v != NULL)
			a.test_fatal_after = strtoull(v, NULL, 10);
		if ((v = getenv("PGOUTBOX_TEST_ABORT_EVERY")) != NULL)  /* test hook; not a setting */
			a.test_abort_every = strtoull(v, NULL, 10);
	}
	if ((a.snk = make_sink(&a, err, sizeof(err))) == NULL) {
		log_msg(LOG_ERROR, "%s", err);
		goto out;
	}
	if (a.cfg.nsources > MAX_PIPELINES) {
		log_msg(LOG_ERROR, "%zu sources configured: at most %d", a.cfg.nsources, MAX_PIPELINES);
		goto out;
	}
	for (size_t i = 0; i < a.cfg.nsources; i++) {
		if ((a.pipes[i] = start_source(&a, &a.cfg, &a.cfg.sources[i], err, sizeof(err))) == NULL) {
			if (a.cfg.sources[i].name[0])
				log_msg(LOG_ERROR, "source %s: %s", a.cfg.sources[i].name, err);
			else
				log_msg(LOG_ERROR, "%s", err);
			goto out;
		}
		a.npipes++;
	}
	metrics_sources(&a);
	a.sink_woke = true;
	log_msg(LOG_INFO, "pgoutbox %s starting (librdkafka %s)", PGOUTBOX_VERSION,
	        kafka_library_version());
	a.nt = notify_open(err, sizeof(err));
	if (a.nt == NULL && err[0] != '\0')
		log_msg(LOG_WARNING, "%s; not notifying systemd", err);
	if (!metrics_listen(&a, a.cfg.metrics, err, sizeof(err))) {
		log_msg(LOG_ERROR, "%s", err);
		code = 1;
		goto out;
	}
	code = run(&a);

out:
	for (size_t i = 0; i < a.npipes; i++)
		pipeline_free(a.pipes[i]);
	sink_free(a.snk);
	metrics_free(a.mx);
	free(a.mx_addr);
	notify_close(a.nt);
	config_free(&a.cfg);
	return code;
}
