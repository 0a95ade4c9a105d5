package keyspace

// The fields and operations of a write-behind entry, the public format that
// cacheaside.WriteBehind appends and package writebehind drains:
//
//	XADD <stream> * op upsert row '<JSON object of column values>'
//	XADD <stream> * op delete row '<JSON object of the key columns>'
//
// They are here, beside the key names, because both sides must agree on
// them and neither may import the other (writebehind pulls in pgx).
const (
	WriteBehindFieldOp  = "op"
	WriteBehindFieldRow = "row"
	WriteBehindOpUpsert = "upsert"
	WriteBehindOpDelete = "delete"
)
