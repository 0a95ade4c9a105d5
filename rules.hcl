# cachesync rules: how committed row changes in PostgreSQL become Redis effects.
#
# Written for the demo schema:
#   public.users    (id, email, org_id, name)
#   public.orders   (id, customer_id, total numeric, status)
#   public.products (id, name, price numeric, published bool, description)
#   public.page_views (page, views)  (write-behind)
#
# Templates are HCL expressions evaluated once per row image: `row` is the row
# (INSERT: the new row; DELETE: the old one; UPDATE: both, deduplicated), and
# `old`/`new` are the two images (null where absent). Functions come from
# go-cty's stdlib as Terraform names them (lower, upper, format, jsonencode,
# coalesce, ...). Every key, tag and namespace template starts with literal
# text ("user:"), so that a TRUNCATE can flush the rule's keys; a template
# that cannot must come with `keyspace = ["pattern:*"]` in its rule.
#
# Check this file with `cachesync validate --config rules.hcl`
# (add --database-url to check tables, columns and replica identity too).

# Where to stream from. Command-line flags and DATABASE_URL override url;
# env() is available in this block and in the redis block only.
postgres {
  url         = env("DATABASE_URL")
  slot        = "cachesync"
  publication = "cachesync"
}

# Where the caches live (REDIS_URL on the command line overrides it).
redis {
  url = env("REDIS_URL")
}

# Delete-on-write: any insert/update/delete of a user drops these keys.
# On UPDATE both the old and the new row's keys go (a moved email or tenant).
rule "user" {
  table = "public.users"
  invalidate {
    keys = ["user:${row.id}", "user:email:${lower(row.email)}"]
    tags = ["org:${row.org_id}"]          # DEL every key in the set tag:org:<id>, then the set
  }
}

# Version bump: list caches are keyed {ns}:v{n}:..., INCR version:{ns} retires them at once.
rule "order_lists" {
  table = "public.orders"
  bump_version {
    namespaces = ["orders:customer:${row.customer_id}"]
  }
}

# Write-through refresh: the committed row is written to the cache.
rule "product" {
  table = "public.products"
  when  = row.published                   # optional filter
  refresh {
    key    = "product:${row.id}"
    value  = jsonencode(row)
    ttl    = "1h"
    jitter = "5m"                         # TTL is ttl ± up to jitter
  }
}

# Write-behind: the application writes page_views:<page> and appends the row to
# the stream in one step (cacheaside.WriteBehind); cachesync drains the stream
# into public.page_views in batched upserts, exactly once in effect. An entry
# that cannot apply goes to wb:page_views:dead.
write_behind "page_views" {
  stream      = "wb:page_views"
  table       = "public.page_views"
  key_columns = ["page"]
}

# The upserts come back as WAL like any change: refresh the key with the bytes
# the application writes (jsonencode(row)), so direct SQL updates land too, in
# commit order.
rule "page_views" {
  table = "public.page_views"
  refresh {
    key   = "page_views:${row.page}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
