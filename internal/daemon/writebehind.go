package daemon

import (
	"context"
	"errors"

	"github.com/cachesync/cachesync/config"
)

// runWriteBehind drains one write_behind block's stream while the session
// streams: one goroutine per block, on the active instance only, each
// commit fenced by the lease. The worker retries its own failures; only a
// lost lease ends the session from here. A graceful stop rolls back the
// batch in flight (its entries stay pending and are claimed next time).
func (s *session) runWriteBehind(ctx context.Context, wb *config.WriteBehind) error {
	err := s.opts.WriteBehind(ctx, wb, s.fence)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) || err == nil {
		return nil
	}
	return err
}
