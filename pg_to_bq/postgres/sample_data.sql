-- The demo database: a small shop with related tables, comments and a realistic mix of
-- types, about 100k rows in all. Deterministic (setseed) so every demo looks the same.
SELECT setseed(0.42);

CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');

CREATE TABLE customers (
    id           bigint PRIMARY KEY,
    email        text NOT NULL UNIQUE,
    full_name    text NOT NULL,
    country      char(2) NOT NULL,
    signup_ip    inet,
    birth_date   date,
    is_active    boolean NOT NULL DEFAULT true,
    password_hash text,
    preferences  jsonb,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
COMMENT ON TABLE customers IS 'People who signed up to the shop';
COMMENT ON COLUMN customers.email IS 'Login e-mail address';
COMMENT ON COLUMN customers.country IS 'ISO 3166-1 alpha-2 country code';
COMMENT ON COLUMN customers.password_hash IS 'Never leaves PostgreSQL: excluded by the sensitive-column rule';
COMMENT ON COLUMN customers.preferences IS 'UI and notification preferences';

CREATE TABLE products (
    id          integer PRIMARY KEY,
    sku         uuid NOT NULL,
    name        text NOT NULL,
    price       numeric(12,2) NOT NULL,
    weight_kg   real,
    tags        text[],
    description text,
    updated_at  timestamptz NOT NULL
);
COMMENT ON TABLE products IS 'Catalogue of things for sale';
COMMENT ON COLUMN products.price IS 'Unit price in EUR';

CREATE TABLE orders (
    id            bigint PRIMARY KEY,
    customer_id   bigint NOT NULL REFERENCES customers(id),
    status        order_status NOT NULL,
    ordered_at    timestamptz NOT NULL,
    delivery_slot tstzrange,
    local_time    timestamp NOT NULL,
    total         numeric(14,2) NOT NULL,
    updated_at    timestamptz NOT NULL
);
COMMENT ON TABLE orders IS 'One row per checkout';
COMMENT ON COLUMN orders.local_time IS 'Wall-clock time in the shop''s time zone';

CREATE TABLE order_items (
    order_id    bigint NOT NULL REFERENCES orders(id),
    line_no     smallint NOT NULL,
    product_id  integer NOT NULL REFERENCES products(id),
    quantity    integer NOT NULL,
    unit_price  numeric(12,2) NOT NULL,
    PRIMARY KEY (order_id, line_no)
);
COMMENT ON TABLE order_items IS 'Lines of each order';

CREATE TABLE page_views (
    viewed_at   timestamptz NOT NULL,
    customer_id bigint REFERENCES customers(id),
    path        text NOT NULL,
    duration    interval,
    referrer    text
) PARTITION BY RANGE (viewed_at);
COMMENT ON TABLE page_views IS 'Web analytics, partitioned by month (loaded once, through the parent)';
CREATE TABLE page_views_2026_09 PARTITION OF page_views
    FOR VALUES FROM ('2026-09-01') TO ('2026-10-01');
CREATE TABLE page_views_2026_10 PARTITION OF page_views
    FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE page_views_2026_11 PARTITION OF page_views
    FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');

CREATE TABLE audit_log (
    happened_at timestamptz NOT NULL,
    actor       text,
    action      text NOT NULL,
    payload     json
);
COMMENT ON TABLE audit_log IS 'Append-only log without a primary key (replaced on each load)';

CREATE TABLE "顧客メモ" (
    id        integer PRIMARY KEY,
    "顧客ID"  bigint REFERENCES customers(id),
    "メモ"    text
);
COMMENT ON TABLE "顧客メモ" IS 'Customer notes, named in Japanese';

INSERT INTO customers
SELECT g,
       'customer' || g || '@example.com',
       initcap(md5(g::text)::text),
       (ARRAY['JP','DE','FR','US','GB','NL'])[1 + (g % 6)],
       ('10.' || (g % 250) || '.' || (g % 200) || '.' || (g % 100))::inet,
       DATE '1950-01-01' + (g * 37 % 20000),
       g % 11 <> 0,
       md5('secret' || g),
       CASE WHEN g % 3 = 0 THEN jsonb_build_object('newsletter', g % 2 = 0, 'theme', 'dark') END,
       TIMESTAMPTZ '2024-01-01 00:00:00+00' + g * interval '17 minutes',
       now() - (g % 500) * interval '1 minute'
FROM generate_series(1, 5000) g;

INSERT INTO products
SELECT g,
       md5('sku' || g)::uuid,
       'Product ' || g,
       round((random() * 200 + 1)::numeric, 2),
       CASE WHEN g % 7 = 0 THEN NULL ELSE (random() * 10)::real END,
       CASE WHEN g % 4 = 0 THEN ARRAY['sale', 'new'] WHEN g % 4 = 1 THEN ARRAY['classic'] END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'A fine product, number ' || g END,
       now() - g * interval '1 hour'
FROM generate_series(1, 500) g;

INSERT INTO orders
SELECT g,
       1 + (g * 7919) % 5000,
       (ARRAY['pending','paid','shipped','cancelled']::order_status[])[1 + (g % 4)],
       TIMESTAMPTZ '2025-01-01 00:00:00+00' + g * interval '23 minutes',
       CASE WHEN g % 2 = 0 THEN tstzrange(
           TIMESTAMPTZ '2025-01-02 09:00:00+00' + g * interval '23 minutes',
           TIMESTAMPTZ '2025-01-02 12:00:00+00' + g * interval '23 minutes') END,
       TIMESTAMP '2025-01-01 09:00:00' + g * interval '23 minutes',
       0,
       now() - (g % 1000) * interval '1 minute'
FROM generate_series(1, 20000) g;

INSERT INTO order_items
SELECT o.id, l.line_no, 1 + (o.id * 31 + l.line_no * 17) % 500, 1 + (o.id + l.line_no) % 5, p.price
FROM orders o
CROSS JOIN LATERAL generate_series(1, 1 + (o.id % 5)::int) AS l(line_no)
JOIN products p ON p.id = 1 + (o.id * 31 + l.line_no * 17) % 500;

UPDATE orders o SET total = s.total
FROM (SELECT order_id, sum(quantity * unit_price) AS total FROM order_items GROUP BY order_id) s
WHERE s.order_id = o.id;

INSERT INTO page_views
SELECT TIMESTAMPTZ '2026-09-01 00:00:00+00' + g * interval '7 minutes',
       CASE WHEN g % 4 = 0 THEN NULL ELSE 1 + (g * 13) % 5000 END,
       (ARRAY['/', '/products', '/cart', '/checkout', '/account'])[1 + g % 5],
       make_interval(secs => (g % 600)),
       CASE WHEN g % 3 = 0 THEN 'https://search.example/?q=' || g END
FROM generate_series(1, 18000) g;

INSERT INTO audit_log
SELECT TIMESTAMPTZ '2026-11-01 00:00:00+00' + g * interval '1 minute',
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'user' || (g % 50) END,
       (ARRAY['login', 'logout', 'update_profile', 'export'])[1 + g % 4],
       json_build_object('request_id', g, 'ok', g % 9 <> 0)
FROM generate_series(1, 4000) g;
-- Two identical rows: a table without a key keeps duplicates as they are.
INSERT INTO audit_log VALUES ('2026-11-02 00:00:00+00', 'user1', 'login', '{"dup": true}'),
                             ('2026-11-02 00:00:00+00', 'user1', 'login', '{"dup": true}');

INSERT INTO "顧客メモ"
SELECT g, 1 + g * 3, 'メモ ' || g FROM generate_series(1, 300) g;

ANALYZE;
