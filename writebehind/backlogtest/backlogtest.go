// Package backlogtest builds write-behind streams in a given state, for the
// tests of what reads their backlog (writebehind.ReadBacklog, metrics,
// status).
package backlogtest

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/cachesync/cachesync/writebehind"
)

// Stream is a stream's state.
type Stream struct {
	// IDs are the entries' IDs ("<ms>-<seq>"), in order.
	IDs []string
	// Group creates the consumer group writebehind.Group at the start;
	// Deliver entries are then read by it (pending), and Ack of them
	// acknowledged.
	Group   bool
	Deliver int64
	Ack     []string
	// Dead letters appended to the dead-letter stream.
	Dead int
}

// Build makes stream as s says.
func Build(t testing.TB, rdb redis.UniversalClient, stream string, s Stream) {
	t.Helper()
	ctx := context.Background()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("building %s: %s: %v", stream, what, err)
		}
	}
	for _, id := range s.IDs {
		must("XADD", rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, ID: id,
			Values: []string{writebehind.FieldOp, writebehind.OpUpsert, writebehind.FieldRow, `{"id":1}`}}).Err())
	}
	if s.Group {
		must("XGROUP CREATE", rdb.XGroupCreate(ctx, stream, writebehind.Group, "0").Err())
	}
	if s.Deliver > 0 {
		must("XREADGROUP", rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: writebehind.Group, Consumer: "w", Streams: []string{stream, ">"}, Count: s.Deliver}).Err())
	}
	if len(s.Ack) > 0 {
		must("XACK", rdb.XAck(ctx, stream, writebehind.Group, s.Ack...).Err())
	}
	for i := range s.Dead {
		must("XADD dead letter", rdb.XAdd(ctx, &redis.XAddArgs{Stream: writebehind.DeadLetterStream(stream),
			Values: []string{writebehind.FieldID, fmt.Sprintf("%d-0", i+1), writebehind.FieldError, "bad"}}).Err())
	}
}
