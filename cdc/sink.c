/*
 * sink.c — what every sink shares: clients, opaque packing, fair shares of
 * the queue, and event copies.  See sink.h.
 */
#include "sink.h"

#include <stdlib.h>
#include <string.h>

#define CLIENT_OF(packed) ((unsigned) ((packed) >> SINK_OPAQUE_BITS))
#define OPAQUE_OF(packed) ((packed) & ((UINT64_C(1) << SINK_OPAQUE_BITS) - 1))

void
sink_init(sink *s, const sink_ops *ops, uint64_t queue_messages)
{
	memset(s, 0, sizeof(*s));
	s->ops = ops;
	s->queue_messages = queue_messages;
}

int
sink_attach(sink *s, sink_delivery_fn fn, void *ctx)
{
	if (s->nclients >= SINK_MAX_CLIENTS)
		return -1;
	s->clients[s->nclients] = (sink_client) {.fn = fn, .ctx = ctx, .queued = 0};
	return (int) s->nclients++;
}

/*
 * A client over its share of a queue that is half full waits, so that the
 * others still find room.  A client under its share never does: the queue
 * drains as the greedy ones are acknowledged.  A client alone has it all.
 */
static bool
over_share(const sink *s, unsigned client)
{
	uint64_t total = 0, share;

	if (s->nclients < 2 || s->queue_messages == 0)
		return false;
	for (unsigned i = 0; i < s->nclients; i++)
		total += s->clients[i].queued;
	share = s->queue_messages / s->nclients;
	return s->clients[client].queued >= share && total >= s->queue_messages / 2;
}

sink_rc
sink_produce(sink *s, unsigned client, const sink_event *ev, uint64_t opaque, sink_error *err)
{
	sink_rc rc;

	if (client >= s->nclients || opaque >> SINK_OPAQUE_BITS != 0) {
		err->cls = SINK_CLASS_PERMANENT;
		err->name = "INVALID_ARG";
		strcpy(err->text, "internal error: bad client or opaque");
		return SINK_REFUSED;
	}
	if (over_share(s, client))
		return SINK_FULL;
	rc = s->ops->produce(s, ev, ((uint64_t) client << SINK_OPAQUE_BITS) | opaque, err);
	if (rc == SINK_OK)
		s->clients[client].queued++;
	return rc;
}

void
sink_txn_end(sink *s, unsigned client, uint64_t end_lsn)
{
	if (s->ops->txn_end != NULL)
		s->ops->txn_end(s, client, end_lsn);
}

void
sink_session(sink *s, unsigned client, const sink_origin *o)
{
	if (s->ops->session != NULL)
		s->ops->session(s, client, o);
}

void
sink_idle(sink *s, unsigned client, bool ended)
{
	if (s->ops->idle != NULL)
		s->ops->idle(s, client, ended);
}

void
sink_dispatch(sink *s, uint64_t packed, const sink_report *rep)
{
	unsigned client = CLIENT_OF(packed);
	sink_client *c;

	if (client >= s->nclients)
		return;
	c = &s->clients[client];
	if (c->queued > 0)
		c->queued--;
	if (!s->discard)
		c->fn(c->ctx, OPAQUE_OF(packed), rep);
}

void
sink_free(sink *s)
{
	if (s == NULL)
		return;
	s->discard = true;
	s->ops->destroy(s);
}

sink_event *
sink_event_dup(const sink_event *ev)
{
	size_t need = sizeof(*ev) + strlen(ev->topic) + 1 + ev->key_len + ev->value_len;
	sink_event *copy;
	char *p;

	for (size_t i = 0; i < ev->nheaders; i++)
		need += strlen(ev->headers[i].name) + 1 + ev->headers[i].len;
	if ((copy = malloc(need)) == NULL)
		return NULL;
	*copy = *ev;
	p = (char *) (copy + 1);
#define DUP(dst, src, n) do { if ((n) > 0) memcpy(p, (src), (n)); (dst) = p; p += (n); } while (0)
	DUP(copy->topic, ev->topic, strlen(ev->topic) + 1);
	if (ev->key != NULL)
		DUP(copy->key, ev->key, ev->key_len);
	if (ev->value != NULL)
		DUP(copy->value, ev->value, ev->value_len);
	for (size_t i = 0; i < ev->nheaders; i++) {
		DUP(copy->headers[i].name, ev->headers[i].name, strlen(ev->headers[i].name) + 1);
		if (ev->headers[i].value != NULL)
			DUP(copy->headers[i].value, ev->headers[i].value, ev->headers[i].len);
	}
#undef DUP
	return copy;
}
