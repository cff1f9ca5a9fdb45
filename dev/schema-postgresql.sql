-- spangate demo schema: the multi-tenant shop of dev/schema.sql, PostgreSQL dialect.
--
-- The same tables, keys, interleaving and index, named as PostgreSQL schemas usually are
-- (snake_case: PostgreSQL folds unquoted names to lower case). The example PostgreSQL policy
-- (policy.example.postgresql.yaml) returns its columns under the GoogleSQL shop's names
-- (AS "OrderId"), so callers get the same answers from either database.
--
-- Loaded by gateway.dev.database.load_demo_sql(..., "postgresql") / create_database(...,
-- dialect="postgresql"); statements are separated by ';'.

CREATE TABLE tenants (
  tenant_id varchar(36) NOT NULL,
  name      text NOT NULL,
  PRIMARY KEY (tenant_id)
);

-- created_at accepts SPANNER.PENDING_COMMIT_TIMESTAMP() for new rows.
CREATE TABLE customers (
  tenant_id   varchar(36) NOT NULL,
  customer_id varchar(36) NOT NULL,
  name        text,
  email       text,
  created_at  spanner.commit_timestamp NOT NULL,
  PRIMARY KEY (tenant_id, customer_id)
) INTERLEAVE IN PARENT tenants ON DELETE CASCADE;

-- status is one of OPEN, PAID, SHIPPED, CANCELLED; money is in minor units.
CREATE TABLE orders (
  tenant_id   varchar(36) NOT NULL,
  order_id    varchar(36) NOT NULL,
  customer_id varchar(36) NOT NULL,
  status      varchar(16) NOT NULL,
  total_cents int8 NOT NULL,
  currency    varchar(3) NOT NULL,
  created_at  spanner.commit_timestamp NOT NULL,
  PRIMARY KEY (tenant_id, order_id)
) INTERLEAVE IN PARENT tenants ON DELETE CASCADE;

CREATE TABLE order_items (
  tenant_id        varchar(36) NOT NULL,
  order_id         varchar(36) NOT NULL,
  item_id          int8 NOT NULL,
  sku              varchar(64) NOT NULL,
  quantity         int8 NOT NULL,
  unit_price_cents int8 NOT NULL,
  PRIMARY KEY (tenant_id, order_id, item_id)
) INTERLEAVE IN PARENT orders ON DELETE CASCADE;

CREATE INDEX orders_by_status ON orders (tenant_id, status, created_at DESC);
