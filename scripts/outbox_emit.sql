-- outbox_emit.sql — the table-less outbox: write an event into the WAL inside
-- the business transaction, with no row, no bloat and no cleanup job.
--
--   BEGIN;
--   UPDATE orders SET status = 'paid' WHERE id = 42;
--   SELECT outbox_emit('order', '42', 'OrderPaid', '{"order": 42}');
--   COMMIT;
--
-- outbox_emit() builds the JSON object pgoutbox expects with jsonb_build_object
-- (so quoting is always right) and emits it with
-- pg_logical_emit_message(true, prefix, content): a *transactional* logical
-- decoding message, decoded only if the transaction commits, in commit order
-- with the transaction's other changes.  Run pgoutbox with
-- messages_prefix = outbox (or the prefix you pass) to publish them; routing,
-- key, headers and timestamp are those of a row of the outbox table:
--
--   {"id": "<uuid>", "aggregatetype": ..., "aggregateid": ..., "type": ...,
--    "payload": <any JSON, null for a tombstone>, "headers": {"name": "value", ...}}
--
-- Returns the generated event id (the Kafka "id" header).  Install with
-- `psql -f scripts/outbox_emit.sql` or `scripts/setup-slot.sh --create-emit-function`;
-- running it again replaces the function with the same one.
CREATE OR REPLACE FUNCTION outbox_emit(
    aggregatetype text,
    aggregateid   text,
    type          text,
    payload       jsonb,
    headers       jsonb DEFAULT NULL,
    prefix        text  DEFAULT 'outbox')
RETURNS uuid
LANGUAGE plpgsql
VOLATILE
AS $fn$
DECLARE
    event_id uuid := gen_random_uuid();
    content  jsonb;
BEGIN
    -- Positional references: the parameter names are also JSON keys.
    IF $1 IS NULL OR $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION 'outbox_emit: aggregatetype, aggregateid and type must not be NULL';
    END IF;
    IF $6 IS NULL OR $6 = '' THEN
        RAISE EXCEPTION 'outbox_emit: prefix must not be empty';
    END IF;
    content := jsonb_build_object('id', event_id::text, 'aggregatetype', $1,
                                  'aggregateid', $2, 'type', $3, 'payload', $4);
    IF $5 IS NOT NULL AND jsonb_typeof($5) <> 'null' THEN
        IF jsonb_typeof($5) <> 'object' THEN
            RAISE EXCEPTION 'outbox_emit: headers must be a JSON object, not %', jsonb_typeof($5);
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_each($5) h WHERE jsonb_typeof(h.value) <> 'string') THEN
            RAISE EXCEPTION 'outbox_emit: every header value must be a JSON string';
        END IF;
        content := content || jsonb_build_object('headers', $5);
    END IF;
    PERFORM pg_logical_emit_message(true, $6, content::text);
    RETURN event_id;
END
$fn$;

COMMENT ON FUNCTION outbox_emit(text, text, text, jsonb, jsonb, text) IS
    'pgoutbox: emit an outbox event as a transactional logical decoding message; returns its id';
