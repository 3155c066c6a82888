-- Order holds (docs/fulfillment.md): an order a fraud screen or an operator holds keeps its
-- status and reserved stock, but its shipments get no label and do not ship until the hold
-- is released. The last screening result is kept beside it. All NULL for an order that was
-- never held or screened. Nullable columns without defaults: adding them rewrites nothing.
ALTER TABLE orders
    ADD COLUMN hold_reason        text,
    ADD COLUMN hold_source        text,
    ADD COLUMN held_at            timestamptz,
    ADD COLUMN screening_decision text
        CHECK (screening_decision IN ('hold', 'approve')),
    ADD COLUMN screening_reason   text,
    ADD COLUMN screening_source   text,
    ADD COLUMN screened_at        timestamptz,
    ADD CONSTRAINT orders_hold_complete
        CHECK ((hold_reason IS NULL) = (held_at IS NULL) AND (hold_source IS NULL) = (held_at IS NULL));
