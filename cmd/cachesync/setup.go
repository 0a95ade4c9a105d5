package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func setupCommand() *cli.Command {
	return &cli.Command{
		Name:  "setup",
		Usage: "create or update the publication, create the slot and flush the rules' key spaces; idempotent",
		Flags: flags(append(journalFlags(), databaseURLFlag(), redisURLFlag(), allowEvictionFlag())...),
		Action: func(c *cli.Context) error {
			e, err := setupEnv(c, true)
			if err != nil {
				return err
			}
			s, err := e.stack(c, true, nil)
			if err != nil {
				return err
			}
			defer s.close()
			d, err := e.daemon(c, s, false, nil)
			if err != nil {
				return err
			}
			if err := d.Setup(c.Context); err != nil {
				return &exitError{code: 1, msg: "cachesync setup: " + err.Error()}
			}
			fmt.Fprintf(c.App.Writer, "publication %q and slot %q are ready\n", e.cfg.Postgres.Publication, e.cfg.Postgres.Slot)
			return nil
		},
	}
}
