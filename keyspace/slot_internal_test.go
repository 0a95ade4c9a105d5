package keyspace

import (
	"strings"
	"testing"
)

func TestSlotTagsCoverEverySlot(t *testing.T) {
	t.Parallel()
	for slot := range SlotCount {
		tag := slotTag(slot)
		if tag == "" || len(tag) > 4 || strings.ContainsAny(tag, "{}") {
			t.Fatalf("slotTag(%d) = %q", slot, tag)
		}
		if got := Slot(tag); got != slot {
			t.Fatalf("slotTag(%d) = %q hashes to %d", slot, tag, got)
		}
	}
}

func TestCRC16CheckValue(t *testing.T) {
	t.Parallel()
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#04x, want 0x31c3", got)
	}
}
