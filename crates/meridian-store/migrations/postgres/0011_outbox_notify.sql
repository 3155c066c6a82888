-- Wakes the outbox relay as soon as outbox rows commit instead of at its next poll.
-- A NOTIFY is delivered when its transaction commits (never for one that rolls back), and
-- identical notifications of one transaction are delivered once, so a transaction that
-- appends many rows sends one. The payload is the table's schema: a relay listens on the
-- one channel and ignores the other schemas of the same database.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meridian_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
