-- Order holds (docs/fulfillment.md): an order a fraud screen or an operator holds keeps its
-- status and reserved stock, but its shipments get no label and do not ship until the hold
-- is released. The last screening result is kept beside it. All NULL for an order that was
-- never held or screened; hold_reason, hold_source and held_at are set and cleared together.
ALTER TABLE orders ADD COLUMN hold_reason TEXT;
ALTER TABLE orders ADD COLUMN hold_source TEXT;
ALTER TABLE orders ADD COLUMN held_at TEXT;
ALTER TABLE orders ADD COLUMN screening_decision TEXT
    CHECK (screening_decision IS NULL OR screening_decision = 'hold' OR screening_decision = 'approve');
ALTER TABLE orders ADD COLUMN screening_reason TEXT;
ALTER TABLE orders ADD COLUMN screening_source TEXT;
ALTER TABLE orders ADD COLUMN screened_at TEXT;
