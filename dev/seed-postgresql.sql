-- spangate demo seed data, PostgreSQL dialect: the rows of dev/seed.sql, row for row, for
-- dev/schema-postgresql.sql (see dev/seed.sql for what they are and the counts tests rely on).

INSERT INTO tenants (tenant_id, name) VALUES
  ('t1', 'Acme'),
  ('t2', 'Globex');

-- Customers -----------------------------------------------------------------
INSERT INTO customers (tenant_id, customer_id, name, email, created_at) VALUES
  ('t1', 'C-1', 'Wile E. Coyote', 'wile@acme.example',   '2026-01-02T09:00:00Z'::timestamptz),
  ('t1', 'C-2', 'Road Runner',    'beep@acme.example',   '2026-01-03T10:30:00Z'::timestamptz),
  ('t1', 'C-3', 'Elmer Fudd',     'elmer@acme.example',  '2026-01-04T11:15:00Z'::timestamptz),
  ('t2', 'C-1', 'Hank Scorpio',   'hank@globex.example', '2026-01-02T08:00:00Z'::timestamptz),
  ('t2', 'C-2', 'Homer Simpson',  'homer@globex.example', '2026-01-05T14:45:00Z'::timestamptz);

-- Orders --------------------------------------------------------------------
-- t1 (Acme, USD): one order in each status.
INSERT INTO orders (tenant_id, order_id, customer_id, status, total_cents, currency, created_at) VALUES
  ('t1', 'O-1001', 'C-1', 'PAID',      7499,  'USD', '2026-02-01T12:00:00Z'::timestamptz),
  ('t1', 'O-1002', 'C-2', 'OPEN',      1990,  'USD', '2026-02-03T09:20:00Z'::timestamptz),
  ('t1', 'O-1003', 'C-1', 'SHIPPED',   11795, 'USD', '2026-02-05T16:40:00Z'::timestamptz),
  ('t1', 'O-1004', 'C-3', 'CANCELLED', 1250,  'USD', '2026-02-07T08:05:00Z'::timestamptz);

-- t2 (Globex, EUR): O-1001 again, with a different customer, status and total.
INSERT INTO orders (tenant_id, order_id, customer_id, status, total_cents, currency, created_at) VALUES
  ('t2', 'O-1001', 'C-1', 'OPEN',    126400, 'EUR', '2026-02-02T10:00:00Z'::timestamptz),
  ('t2', 'O-1002', 'C-2', 'PAID',    3500,   'EUR', '2026-02-04T13:30:00Z'::timestamptz),
  ('t2', 'O-1003', 'C-1', 'SHIPPED', 9800,   'EUR', '2026-02-06T17:50:00Z'::timestamptz);

-- Order items -----------------------------------------------------------------
INSERT INTO order_items (tenant_id, order_id, item_id, sku, quantity, unit_price_cents) VALUES
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
