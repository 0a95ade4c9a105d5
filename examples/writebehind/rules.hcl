# cachesync rules for examples/writebehind: page-hit counters written to Redis by the
# application (cacheaside.WriteBehind) and to PostgreSQL by cachesync.
#
#   go run ./examples/writebehind -wait 0                      # creates page_hits, writes
#   cachesync run --config examples/writebehind/rules.hcl      # drains the stream
#
# Check it with `cachesync validate --config examples/writebehind/rules.hcl`.

postgres {
  url         = env("DATABASE_URL")
  slot        = "cachesync_writebehind"
  publication = "cachesync_writebehind"
}

redis {
  url = env("REDIS_URL")
}

# The application appends `op upsert row '{"hits":3,"page":"home"}'` (and `op delete`)
# to the stream; cachesync applies them in batched upserts and deletes, exactly once.
# The hash tag {counters} puts the stream in the cache keys' Redis Cluster slot, which
# the one script that writes both requires.
write_behind "page_hits" {
  stream      = "{counters}:wb"
  table       = "public.page_hits"
  key_columns = ["page"]
}

# Closing the loop: the upserts' own changes come back through cachesync. A refresh
# rule writes the committed row, the very bytes the application cached (jsonencode
# sorts the keys: PageHits has its fields in that order), and its LSN guard keeps an
# older change from overwriting a newer one. An invalidate rule would delete the value just written:
# harmless, but the next read would be a miss.
rule "page_hits" {
  table = "public.page_hits"
  refresh {
    key   = "{counters}:page:${row.page}"
    value = jsonencode(row)
    ttl   = "1h"
  }
}
