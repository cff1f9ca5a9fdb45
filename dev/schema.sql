-- spangate demo schema: a multi-tenant shop (GoogleSQL dialect).
--
-- Every table's primary key starts with TenantId and every child table is
-- interleaved in its parent, so one tenant's rows are stored together and a
-- tenant can be removed with a single DELETE on Tenants (ON DELETE CASCADE).
-- The gateway's policies rely on TenantId being the first key column: a
-- whitelisted statement always binds @tenant_id from the caller's identity.
--
-- Loaded by gateway.dev.database.load_demo_sql / create_database; statements
-- are separated by ';' (split_statements ignores '--' comments and semicolons
-- inside string literals).

-- One row per tenant (customer organisation of the gateway).
CREATE TABLE Tenants (
  TenantId STRING(36) NOT NULL,
  Name     STRING(MAX) NOT NULL,
) PRIMARY KEY (TenantId);

-- A tenant's customers. CreatedAt accepts PENDING_COMMIT_TIMESTAMP() for new
-- rows; the seed rows carry explicit timestamps so tests can predict them.
CREATE TABLE Customers (
  TenantId   STRING(36) NOT NULL,
  CustomerId STRING(36) NOT NULL,
  Name       STRING(MAX),
  Email      STRING(MAX),
  CreatedAt  TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (TenantId, CustomerId),
  INTERLEAVE IN PARENT Tenants ON DELETE CASCADE;

-- Orders belong to a tenant; CustomerId refers to Customers(TenantId, CustomerId)
-- by convention (no foreign key, to keep the demo's writes cheap).
-- Status is one of OPEN, PAID, SHIPPED, CANCELLED; money is in minor units.
CREATE TABLE Orders (
  TenantId   STRING(36) NOT NULL,
  OrderId    STRING(36) NOT NULL,
  CustomerId STRING(36) NOT NULL,
  Status     STRING(16) NOT NULL,
  TotalCents INT64 NOT NULL,
  Currency   STRING(3) NOT NULL,
  CreatedAt  TIMESTAMP NOT NULL OPTIONS (allow_commit_timestamp = true),
) PRIMARY KEY (TenantId, OrderId),
  INTERLEAVE IN PARENT Tenants ON DELETE CASCADE;

-- Line items of an order, numbered 1..n within the order.
CREATE TABLE OrderItems (
  TenantId       STRING(36) NOT NULL,
  OrderId        STRING(36) NOT NULL,
  ItemId         INT64 NOT NULL,
  Sku            STRING(64) NOT NULL,
  Quantity       INT64 NOT NULL,
  UnitPriceCents INT64 NOT NULL,
) PRIMARY KEY (TenantId, OrderId, ItemId),
  INTERLEAVE IN PARENT Orders ON DELETE CASCADE;

-- "A tenant's orders in a given status, newest first".
CREATE INDEX OrdersByStatus ON Orders (TenantId, Status, CreatedAt DESC);
