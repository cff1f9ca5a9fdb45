-- spangate demo seed data, applied by gateway.dev.database.create_database in
-- one read-write transaction right after dev/schema.sql.
--
-- Two tenants: t1 "Acme" (USD) and t2 "Globex" (EUR).
-- Ids deliberately overlap across tenants so tenant-isolation tests can tell
-- the rows apart only by TenantId:
--   * customer C-1 exists in both tenants;
--   * order O-1001 exists in both tenants, with different totals
--     (t1: 7499 USD cents, t2: 126400 EUR cents).
-- Every order's TotalCents equals SUM(Quantity * UnitPriceCents) of its items.
--
-- Row counts (tests depend on them):
--            Customers  Orders  OrderItems
--   t1            3        4         6
--   t2            2        3         4
-- Seed rows carry explicit CreatedAt timestamps (UTC) so results are stable;
-- rows written later may use PENDING_COMMIT_TIMESTAMP().

INSERT INTO Tenants (TenantId, Name) VALUES
  ('t1', 'Acme'),
  ('t2', 'Globex');

-- Customers -----------------------------------------------------------------
INSERT INTO Customers (TenantId, CustomerId, Name, Email, CreatedAt) VALUES
  ('t1', 'C-1', 'Wile E. Coyote', 'wile@acme.example',   TIMESTAMP '2026-01-02T09:00:00Z'),
  ('t1', 'C-2', 'Road Runner',    'beep@acme.example',   TIMESTAMP '2026-01-03T10:30:00Z'),
  ('t1', 'C-3', 'Elmer Fudd',     'elmer@acme.example',  TIMESTAMP '2026-01-04T11:15:00Z'),
  ('t2', 'C-1', 'Hank Scorpio',   'hank@globex.example', TIMESTAMP '2026-01-02T08:00:00Z'),
  ('t2', 'C-2', 'Homer Simpson',  'homer@globex.example', TIMESTAMP '2026-01-05T14:45:00Z');

-- Orders --------------------------------------------------------------------
-- t1 (Acme, USD): one order in each status.
INSERT INTO Orders (TenantId, OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt) VALUES
  ('t1', 'O-1001', 'C-1', 'PAID',      7499,  'USD', TIMESTAMP '2026-02-01T12:00:00Z'),
  ('t1', 'O-1002', 'C-2', 'OPEN',      1990,  'USD', TIMESTAMP '2026-02-03T09:20:00Z'),
  ('t1', 'O-1003', 'C-1', 'SHIPPED',   11795, 'USD', TIMESTAMP '2026-02-05T16:40:00Z'),
  ('t1', 'O-1004', 'C-3', 'CANCELLED', 1250,  'USD', TIMESTAMP '2026-02-07T08:05:00Z');

-- t2 (Globex, EUR): O-1001 again, with a different customer, status and total.
INSERT INTO Orders (TenantId, OrderId, CustomerId, Status, TotalCents, Currency, CreatedAt) VALUES
  ('t2', 'O-1001', 'C-1', 'OPEN',    126400, 'EUR', TIMESTAMP '2026-02-02T10:00:00Z'),
  ('t2', 'O-1002', 'C-2', 'PAID',    3500,   'EUR', TIMESTAMP '2026-02-04T13:30:00Z'),
  ('t2', 'O-1003', 'C-1', 'SHIPPED', 9800,   'EUR', TIMESTAMP '2026-02-06T17:50:00Z');

-- Order items -----------------------------------------------------------------
INSERT INTO OrderItems (TenantId, OrderId, ItemId, Sku, Quantity, UnitPriceCents) VALUES
  ('t1', 'O-1001', 1, 'SKU-WIDGET',   2,  1250),  -- 2500
  ('t1', 'O-1001', 2, 'SKU-GADGET',   1,  4999),  -- 4999  => 7499
  ('t1', 'O-1002', 1, 'SKU-SPROCKET', 10, 199),   -- 1990  => 1990
  ('t1', 'O-1003', 1, 'SKU-GADGET',   2,  4999),  -- 9998
  ('t1', 'O-1003', 2, 'SKU-CABLE',    3,  599),   -- 1797  => 11795
  ('t1', 'O-1004', 1, 'SKU-WIDGET',   1,  1250),  -- 1250  => 1250
  ('t2', 'O-1001', 1, 'SKU-TURBINE',  1,  125000), -- 125000
  ('t2', 'O-1001', 2, 'SKU-BOLT',     40, 35),    -- 1400  => 126400
  ('t2', 'O-1002', 1, 'SKU-BOLT',     100, 35),   -- 3500  => 3500
  ('t2', 'O-1003', 1, 'SKU-VALVE',    4,  2450);  -- 9800  => 9800
