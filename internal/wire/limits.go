package wire

import "fmt"

// Limits bounds what the cache accepts and what a Decoder will decode. A zero
// or negative field means the value in DefaultLimits. Limits is a plain value:
// safe to copy and to use from many goroutines.
type Limits struct {
	// MaxKeyLen is the longest key in bytes (default 512). Checked by CheckKey
	// before any write or read.
	MaxKeyLen int
	// MaxValueLen is the largest encoded envelope in bytes, header included
	// (default 8 MiB). Checked by CheckValue before a write and by
	// Decoder.Decode before it looks at anything else.
	MaxValueLen int
	// MaxDecodedLen is the largest uncompressed payload in bytes (default
	// 32 MiB). Checked by CheckPayload before a write, and by Decoder.Decode
	// against the declared length and the compressed frame's own declared
	// size before it allocates.
	MaxDecodedLen int
}

// DefaultLimits are the limits used for zero fields of a Limits value.
var DefaultLimits = Limits{
	MaxKeyLen:     512,
	MaxValueLen:   8 << 20,
	MaxDecodedLen: 32 << 20,
}

// WithDefaults returns l with every zero or negative field replaced by the
// corresponding field of DefaultLimits.
func (l Limits) WithDefaults() Limits {
	if l.MaxKeyLen <= 0 {
		l.MaxKeyLen = DefaultLimits.MaxKeyLen
	}
	if l.MaxValueLen <= 0 {
		l.MaxValueLen = DefaultLimits.MaxValueLen
	}
	if l.MaxDecodedLen <= 0 {
		l.MaxDecodedLen = DefaultLimits.MaxDecodedLen
	}
	return l
}

// CheckKey returns an error wrapping ErrEmptyKey for an empty key, or
// ErrTooLarge naming MaxKeyLen when key is longer than lim allows, for example
// "tiercache: wire: too large: key is 600 bytes, limit MaxKeyLen 512".
func CheckKey(key string, lim Limits) error {
	if key == "" {
		return ErrEmptyKey
	}
	lim = lim.WithDefaults()
	if len(key) > lim.MaxKeyLen {
		return fmt.Errorf("%w: key is %d bytes, limit MaxKeyLen %d", ErrTooLarge, len(key), lim.MaxKeyLen)
	}
	return nil
}

// CheckValue returns an error wrapping ErrTooLarge and naming MaxValueLen when
// an encoded envelope of n bytes (the length Encoder.Encode produced, header
// included) is over the limit. The cache calls it before writing anything,
// so an oversized value is never partly written.
func (l Limits) CheckValue(n int) error {
	l = l.WithDefaults()
	if n > l.MaxValueLen {
		return fmt.Errorf("%w: value is %d bytes encoded, limit MaxValueLen %d", ErrTooLarge, n, l.MaxValueLen)
	}
	return nil
}

// CheckPayload returns an error wrapping ErrTooLarge and naming MaxDecodedLen
// when an uncompressed payload of n bytes is over the limit. A payload that
// compresses under MaxValueLen but is over MaxDecodedLen would be written and
// then refused by every reader, so the cache calls CheckPayload as well as
// CheckValue before writing.
func (l Limits) CheckPayload(n int) error {
	l = l.WithDefaults()
	if n > l.MaxDecodedLen {
		return fmt.Errorf("%w: payload is %d bytes uncompressed, limit MaxDecodedLen %d", ErrTooLarge, n, l.MaxDecodedLen)
	}
	return nil
}
