/*
 * notify.c — sd_notify without libsystemd.  See notify.h.
 */
#include "notify.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct notifier {
	int                fd;
	struct sockaddr_un addr;
	socklen_t          addrlen;
	int64_t            watchdog_ms;
};

notifier *
notify_open(char *errbuf, size_t errlen)
{
	const char *path = getenv("NOTIFY_SOCKET");
	const char *wd = getenv("WATCHDOG_USEC");
	const char *wdpid = getenv("WATCHDOG_PID");
	notifier *n;
	size_t len;

	errbuf[0] = '\0';
	if (path == NULL || path[0] == '\0')
		return NULL;
	len = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || len >= sizeof(n->addr.sun_path)) {
		snprintf(errbuf, errlen, "NOTIFY_SOCKET \"%s\" is not a usable socket path", path);
		return NULL;
	}
	if ((n = calloc(1, sizeof(*n))) == NULL) {
		snprintf(errbuf, errlen, "out of memory");
		return NULL;
	}
	n->addr.sun_family = AF_UNIX;
	memcpy(n->addr.sun_path, path, len);
	if (path[0] == '@')
		n->addr.sun_path[0] = '\0';        /* abstract namespace */
	n->addrlen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len);
	n->fd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (n->fd < 0 || fcntl(n->fd, F_SETFD, FD_CLOEXEC) != 0 ||
	    fcntl(n->fd, F_SETFL, O_NONBLOCK) != 0) {
		snprintf(errbuf, errlen, "could not create the notify socket: %s", strerror(errno));
		notify_close(n);
		return NULL;
	}
	if (wd != NULL && (wdpid == NULL || atol(wdpid) == (long) getpid())) {
		char *end;
		unsigned long long usec = strtoull(wd, &end, 10);

		if (end != wd && *end == '\0' && usec > 0)
			n->watchdog_ms = (int64_t) (usec / 2000);   /* half the timeout */
		if (n->watchdog_ms == 0 && usec > 0)
			n->watchdog_ms = 1;
	}
	return n;
}

void
notify_close(notifier *n)
{
	if (n == NULL)
		return;
	if (n->fd >= 0)
		close(n->fd);
	free(n);
}

bool
notify_send(notifier *n, const char *state)
{
	if (n == NULL)
		return false;
	return sendto(n->fd, state, strlen(state), MSG_NOSIGNAL,
	              (const struct sockaddr *) &n->addr, n->addrlen) >= 0;
}

int64_t
notify_watchdog_ms(const notifier *n)
{
	return n ? n->watchdog_ms : 0;
}
