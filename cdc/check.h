/*
 * check.h — how --check results travel from source and sink to main.
 *
 * source_check() and kafka_check() inspect their side and report each item
 * through a check_report_fn; main prints the lines and decides the exit
 * status.  Details never contain a password (source and sink redact what
 * their libraries say; main redacts again before printing).
 */
#ifndef PGOUTBOX_CHECK_H
#define PGOUTBOX_CHECK_H

typedef enum check_status {
	CHECK_OK = 0,
	CHECK_WARN,       /* worth knowing, does not fail the check */
	CHECK_FAIL,
} check_status;

/* check is a short name ("slot", "wal_level"); detail says what was found. */
typedef void (*check_report_fn)(void *ctx, check_status st, const char *check,
                                const char *detail);

#endif /* PGOUTBOX_CHECK_H */
