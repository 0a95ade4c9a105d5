package keyspace

import (
	"strings"
	"sync"
)

// SlotCount is the number of Redis Cluster hash slots.
const SlotCount = 16384

// Slot returns the Redis Cluster hash slot of key, as CLUSTER KEYSLOT does:
// CRC16 (XMODEM) of the key's hash tag if it has one, else of the whole key,
// modulo 16384.
func Slot(key string) int {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	return int(crc16(key) % SlotCount)
}

// hashTag returns the part of key between its first '{' and the first '}'
// after it, if that part is not empty. Only that part is hashed.
func hashTag(key string) (string, bool) {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return "", false
	}
	closing := strings.IndexByte(key[open+1:], '}')
	if closing <= 0 { // no '}' after the '{', or "{}"
		return "", false
	}
	return key[open+1 : open+1+closing], true
}

// crc16Table is the lookup table of CRC-16/XMODEM (polynomial 0x1021, initial
// value 0, no reflection), the checksum Redis Cluster uses.
var crc16Table = func() (table [256]uint16) {
	for i := range table {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		table[i] = crc
	}
	return table
}()

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^s[i]]
	}
	return crc
}

// slotTag returns a short string of lower-case letters and digits that
// hashes to slot: the shortest such string, the first in the order of the
// search below. The table is built on first use (a few milliseconds), and is
// the same in every process, so the daemon and the client derive the same
// guard names.
func slotTag(slot int) string { return slotTags()[slot] }

// SlotTag returns a short hash tag whose keys hash to slot: a key named
// "…{" + SlotTag(n) + "}…" lives in slot n.
func SlotTag(slot int) string { return slotTag(slot % SlotCount) }

var slotTags = sync.OnceValue(func() *[SlotCount]string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	var tags [SlotCount]string
	missing := SlotCount
	buf := make([]byte, 0, 4)
	// Breadth first by length: every string of length n before any of n+1.
	var visit func(length int) bool
	visit = func(length int) bool {
		if len(buf) == length {
			s := string(buf)
			if slot := crc16(s) % SlotCount; tags[slot] == "" {
				tags[slot] = s
				missing--
			}
			return missing == 0
		}
		for i := 0; i < len(alphabet); i++ {
			buf = append(buf, alphabet[i])
			done := visit(length)
			buf = buf[:len(buf)-1]
			if done {
				return true
			}
		}
		return false
	}
	for length := 1; ; length++ {
		if visit(length) {
			return &tags
		}
		if length == 4 {
			// 36^4 strings cover every slot many times over; this is unreachable.
			panic("keyspace: no tag found for every hash slot")
		}
	}
})
