-- The demo schema that rules.hcl is written for, run once by the postgres image's
-- entrypoint (as the superuser "postgres", in the database "app") when the data
-- volume is empty. To run it again: docker compose down -v && docker compose up.

-- cachesync's role: REPLICATION to stream, CREATE on the database to create the
-- publication, and ownership of every table the rules read (PostgreSQL lets only
-- a table's owner add it to a publication). The password is for this demo only.
CREATE ROLE cachesync LOGIN REPLICATION PASSWORD 'cachesync';
GRANT CREATE ON DATABASE app TO cachesync;

CREATE TABLE public.users (
  id     int PRIMARY KEY,
  email  text NOT NULL,
  org_id int,
  name   text
);
-- The user rule's keys and tag read email and org_id: the old row must carry them.
ALTER TABLE public.users REPLICA IDENTITY FULL;

CREATE TABLE public.orders (
  id          int PRIMARY KEY,
  customer_id int NOT NULL,
  total       numeric(10,2) NOT NULL,
  status      text NOT NULL
);
-- The order_lists rule's namespace reads customer_id: the old row must carry it.
ALTER TABLE public.orders REPLICA IDENTITY FULL;

-- The product rule's key reads only id, the primary key: the default replica
-- identity is enough (value and when read the new row).
CREATE TABLE public.products (
  id          int PRIMARY KEY,
  name        text NOT NULL,
  price       numeric(10,2) NOT NULL,
  published   bool NOT NULL DEFAULT false,
  description text
);

-- The write_behind block's table: the worker upserts into it (the owner may), and
-- the page_views rule refreshes its keys from the upserts' WAL.
CREATE TABLE public.page_views (
  page  text PRIMARY KEY,
  views bigint NOT NULL
);

ALTER TABLE public.users      OWNER TO cachesync;
ALTER TABLE public.orders     OWNER TO cachesync;
ALTER TABLE public.products   OWNER TO cachesync;
ALTER TABLE public.page_views OWNER TO cachesync;
