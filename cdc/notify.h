/*
 * notify.h — the systemd service notification protocol, spoken directly.
 *
 * When $NOTIFY_SOCKET names an AF_UNIX datagram socket (a path, or "@name"
 * for the abstract namespace), each notify_send() writes one datagram such
 * as "READY=1" or "STATUS=...".  $WATCHDOG_USEC (for this process, per
 * $WATCHDOG_PID when set) asks for "WATCHDOG=1" at least that often;
 * notify_watchdog_ms() says how often to send it (half the timeout).
 * Without $NOTIFY_SOCKET everything here is a no-op.  Nothing blocks: a
 * datagram that does not fit is dropped, as libsystemd's sd_notify does.
 */
#ifndef PGOUTBOX_NOTIFY_H
#define PGOUTBOX_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct notifier notifier;

/* NULL when $NOTIFY_SOCKET is unset; errbuf filled when it is set but unusable. */
notifier *notify_open(char *errbuf, size_t errlen);
void      notify_close(notifier *n);
/* Send state lines ("READY=1\nSTATUS=streaming"); returns false when not sent. */
bool      notify_send(notifier *n, const char *state);
/* Interval (ms) at which to send WATCHDOG=1, or 0 when no watchdog is asked for. */
int64_t   notify_watchdog_ms(const notifier *n);

#endif /* PGOUTBOX_NOTIFY_H */
