package main

import (
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/cachesync/cachesync/journal"
)

// flags returns the command's own flags after the ones every command takes, so
// that they can follow the command name (cachesync run --config rules.hcl).
// A command that talks to Redis also gets the TLS flags.
func flags(own ...cli.Flag) []cli.Flag {
	all := append([]cli.Flag{
		&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Value: "rules.hcl", EnvVars: []string{"CACHESYNC_CONFIG"}, Usage: "rules file"},
		&cli.StringFlag{Name: "log-format", Value: "json", EnvVars: []string{"CACHESYNC_LOG_FORMAT"}, Usage: "json or console"},
		&cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"CACHESYNC_LOG_LEVEL"}, Usage: "debug, info, warn or error"},
	}, own...)
	for _, f := range own {
		if slices.Contains(f.Names(), "redis-url") {
			all = append(all,
				&cli.StringFlag{Name: "redis-ca-file", EnvVars: []string{"REDIS_CA_FILE"}, Usage: "PEM file of the CAs that sign Redis's certificate (with a rediss:// URL; default: the system's)"},
				&cli.StringFlag{Name: "redis-cert-file", EnvVars: []string{"REDIS_CERT_FILE"}, Usage: "PEM client certificate, for Redis servers that require one (with --redis-key-file)"},
				&cli.StringFlag{Name: "redis-key-file", EnvVars: []string{"REDIS_KEY_FILE"}, Usage: "PEM private key of --redis-cert-file"},
			)
		}
	}
	return all
}

func databaseURLFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "database-url", EnvVars: []string{"DATABASE_URL"}, Usage: "PostgreSQL URL (overrides postgres.url in the rules file)"}
}

func redisURLFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "redis-url", EnvVars: []string{"REDIS_URL"}, Usage: "Redis URL (overrides redis.url in the rules file)"}
}

// journalFlags are the flags of the commands that write the journal.
func journalFlags() []cli.Flag {
	return []cli.Flag{
		dataDirFlag(),
		&cli.DurationFlag{Name: "journal-max-age", Value: journal.DefaultMaxAge, EnvVars: []string{"CACHESYNC_JOURNAL_MAX_AGE"}, Usage: "keep journaled batches this long (replay reaches back this far)"},
		sizeFlag("journal-max-bytes", journal.DefaultMaxBytes, "CACHESYNC_JOURNAL_MAX_BYTES", "keep at most this much journal (bytes, or a size with a unit: 512MiB, 1GB)"),
	}
}

// allowEvictionFlag downgrades the refusal of a Redis whose maxmemory
// policy may evict cachesync's bookkeeping keys to a warning.
func allowEvictionFlag() cli.Flag {
	return &cli.BoolFlag{Name: "allow-eviction", EnvVars: []string{"CACHESYNC_ALLOW_EVICTION"},
		Usage: "start even if Redis's maxmemory-policy may evict tag sets, guards or version keys (stale reads after an eviction; see docs/operations.md)"}
}

func dataDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "data-dir", EnvVars: []string{"CACHESYNC_DATA_DIR"}, Usage: "local state: the replay journal (default: .cachesync beside the rules file)"}
}
