// Package wire defines the envelope in which tiercache stores values in L2
// (Redis): a fixed 30-byte header followed by the payload.
//
//	off len field
//	0   1   format byte, FormatV1 (0xC1)
//	1   1   flags: bits 0-2 codec, bits 3-4 compression, bit 5 tombstone, bits 6-7 reserved (0)
//	2   8   version, uint64 big-endian (read by the Lua scripts at VersionOffset)
//	10  8   logical expiry, unix milliseconds, int64 big-endian, 0 = none
//	18  8   fail-safe expiry, unix milliseconds, int64 big-endian, 0 = none
//	26  4   declared uncompressed payload length, uint32 big-endian
//	30  ..  payload: raw bytes, or one zstd frame, or one s2 block
//
// [Encoder] builds envelopes and decides whether compressing pays; [Decoder]
// validates and decodes them within [Limits], checking every declared size
// before it allocates. Nothing in this package panics on hostile input: bad
// bytes produce errors wrapping [ErrFormat], [ErrTruncated], [ErrFlags],
// [ErrTooLarge] or [ErrCorrupt].
//
// docs/WIRE_FORMAT.md describes the format byte by byte.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// HeaderSize is the length in bytes of the fixed envelope header.
const HeaderSize = 30

// FormatV1 is the format byte of tiercache envelope version 1, the first
// byte of every envelope.
const FormatV1 byte = 0xC1

// VersionOffset is the byte offset of the big-endian uint64 version. The Lua
// scripts in Redis read it there without decoding the rest, so it must not move.
const VersionOffset = 2

// Field offsets inside the header.
const (
	offFormat   = 0
	offFlags    = 1
	offVersion  = VersionOffset
	offExpiry   = 10
	offFailSafe = 18
	offRawLen   = 26
)

// Flag bit layout.
const (
	codecMask     = 0x07 // bits 0-2
	compShift     = 3
	compMask      = 0x03 << compShift // bits 3-4
	tombstoneBit  = 1 << 5
	reservedMask  = 0xC0 // bits 6-7
	maxRawPayload = math.MaxUint32
)

// Codec identifies how the payload bytes were produced from the user's value.
// Values 0 to [MaxCodec] are valid; 5 to 7 are free for user-defined codecs.
// The wire package stores the codec but never interprets it.
type Codec uint8

// Codecs with reserved meanings. Values 5..MaxCodec are for custom codecs.
const (
	CodecBytes  Codec = 0 // payload is the value itself ([]byte)
	CodecString Codec = 1 // payload is the bytes of a string
	CodecJSON   Codec = 2 // encoding/json
	CodecGob    Codec = 3 // encoding/gob
	CodecProto  Codec = 4 // protocol buffers
	MaxCodec    Codec = 7 // largest codec id that fits the 3 flag bits
)

// Compression identifies how the payload is compressed.
type Compression uint8

// Compression values. The 2-bit flag field value 3 is invalid.
const (
	CompressNone Compression = 0 // payload stored raw
	CompressZstd Compression = 1 // payload is one zstd frame (github.com/klauspost/compress/zstd)
	CompressS2   Compression = 2 // payload is one s2 block (github.com/klauspost/compress/s2)
)

// String returns "none", "zstd", "s2", or "compression(N)" for invalid values.
func (c Compression) String() string {
	switch c {
	case CompressNone:
		return "none"
	case CompressZstd:
		return "zstd"
	case CompressS2:
		return "s2"
	}
	return fmt.Sprintf("compression(%d)", uint8(c))
}

// Errors returned by this package. Returned errors wrap one of these with
// detail (the limit that was exceeded, declared versus actual lengths), so
// test them with errors.Is.
// prefix starts every error and panic message of the package.
const prefix = "tiercache: wire: "

var (
	// ErrFormat reports that the first byte is not FormatV1.
	ErrFormat = errors.New(prefix + "unknown format")
	// ErrTruncated reports that the envelope is shorter than its header or
	// than its declared payload.
	ErrTruncated = errors.New(prefix + "truncated")
	// ErrFlags reports reserved flag bits set, an invalid compression value,
	// or an invalid flag combination.
	ErrFlags = errors.New(prefix + "invalid flags")
	// ErrTooLarge reports a key, value or declared length over a Limits field;
	// the message names the limit.
	ErrTooLarge = errors.New(prefix + "too large")
	// ErrCorrupt reports an envelope that is well-formed on the outside but
	// whose contents are inconsistent: lengths that do not match, a tombstone
	// with a payload, a compressed payload that does not decode.
	ErrCorrupt = errors.New(prefix + "corrupt")
	// ErrEmptyKey reports an empty key passed to CheckKey.
	ErrEmptyKey = errors.New(prefix + "empty key")
)

// Header is the decoded fixed part of an envelope.
type Header struct {
	// Codec says how the payload encodes the value (0..MaxCodec).
	Codec Codec
	// Compression of the stored payload. Encoder sets it; callers' values are ignored.
	Compression Compression
	// Tombstone marks a deleted entry: no payload, RawLen 0, no compression.
	Tombstone bool
	// Version of the value, monotonic per key.
	Version uint64
	// Expiry is the logical expiry in unix milliseconds; 0 means none.
	Expiry int64
	// FailSafeExpiry is the end of the fail-safe window in unix milliseconds;
	// 0 means none. When both are set it is >= Expiry.
	FailSafeExpiry int64
	// RawLen is the uncompressed payload length. Encoder sets it; callers'
	// values are ignored.
	RawLen uint32
}

// Validate reports whether h can be encoded with a payload of payloadLen
// bytes: Codec at most MaxCodec, no payload on a tombstone, FailSafeExpiry not
// before Expiry when both are set, and payloadLen within uint32. Compression
// and RawLen are not checked because Encoder sets them. Encoder.Encode panics
// on a header that Validate rejects, so callers building headers from
// untrusted input should call it first.
func (h Header) Validate(payloadLen int) error {
	if h.Codec > MaxCodec {
		return fmt.Errorf("%w: codec %d, max %d", ErrFlags, h.Codec, MaxCodec)
	}
	if h.Tombstone && payloadLen != 0 {
		return fmt.Errorf("%w: tombstone with %d-byte payload", ErrCorrupt, payloadLen)
	}
	if h.Expiry != 0 && h.FailSafeExpiry != 0 && h.FailSafeExpiry < h.Expiry {
		return fmt.Errorf("%w: fail-safe expiry %d before logical expiry %d", ErrCorrupt, h.FailSafeExpiry, h.Expiry)
	}
	if payloadLen < 0 || uint64(payloadLen) > maxRawPayload {
		return fmt.Errorf("%w: payload is %d bytes, the envelope holds at most %d", ErrTooLarge, payloadLen, uint64(maxRawPayload))
	}
	return nil
}

// putHeader writes h into b[:HeaderSize].
func putHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	b[offFormat] = FormatV1
	flags := byte(h.Codec)&codecMask | byte(h.Compression)<<compShift&compMask
	if h.Tombstone {
		flags |= tombstoneBit
	}
	b[offFlags] = flags
	binary.BigEndian.PutUint64(b[offVersion:], h.Version)
	binary.BigEndian.PutUint64(b[offExpiry:], uint64(h.Expiry))
	binary.BigEndian.PutUint64(b[offFailSafe:], uint64(h.FailSafeExpiry))
	binary.BigEndian.PutUint32(b[offRawLen:], h.RawLen)
}

// ParseHeader parses and validates the header at the start of b, whatever
// follows it (a whole envelope, part of one, or nothing: the header alone is
// what a revalidation returns): the format byte, the flags (no reserved bits,
// compression 0-2, a tombstone has no compression) and the expiry order. It
// never panics and allocates nothing.
func ParseHeader(b []byte) (Header, error) {
	if len(b) == 0 {
		return Header{}, fmt.Errorf("%w: empty envelope", ErrTruncated)
	}
	if b[offFormat] != FormatV1 {
		return Header{}, fmt.Errorf("%w: format byte 0x%02x, want 0x%02x", ErrFormat, b[offFormat], FormatV1)
	}
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: envelope is %d bytes, header needs %d", ErrTruncated, len(b), HeaderSize)
	}
	flags := b[offFlags]
	if flags&reservedMask != 0 {
		return Header{}, fmt.Errorf("%w: reserved bits set in flags 0x%02x", ErrFlags, flags)
	}
	h := Header{
		Codec:          Codec(flags & codecMask),
		Compression:    Compression(flags & compMask >> compShift),
		Tombstone:      flags&tombstoneBit != 0,
		Version:        binary.BigEndian.Uint64(b[offVersion:]),
		Expiry:         int64(binary.BigEndian.Uint64(b[offExpiry:])),
		FailSafeExpiry: int64(binary.BigEndian.Uint64(b[offFailSafe:])),
		RawLen:         binary.BigEndian.Uint32(b[offRawLen:]),
	}
	if h.Compression > CompressS2 {
		return Header{}, fmt.Errorf("%w: compression %d", ErrFlags, h.Compression)
	}
	if h.Expiry != 0 && h.FailSafeExpiry != 0 && h.FailSafeExpiry < h.Expiry {
		return Header{}, fmt.Errorf("%w: fail-safe expiry %d before logical expiry %d", ErrCorrupt, h.FailSafeExpiry, h.Expiry)
	}
	if h.Tombstone && h.Compression != CompressNone {
		return Header{}, fmt.Errorf("%w: tombstone with compression %v", ErrFlags, h.Compression)
	}
	return h, nil
}

// DecodeHeader parses and validates the header of the envelope b (see
// ParseHeader) and checks it against the payload that follows: a raw payload
// must be exactly RawLen bytes; a tombstone has an empty payload and RawLen 0;
// a compressed payload is not empty. It does not look inside a compressed
// payload and applies no Limits; Decoder.Decode does both. It never panics
// and allocates nothing.
func DecodeHeader(b []byte) (Header, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return Header{}, err
	}
	n := len(b) - HeaderSize
	switch {
	case h.Tombstone:
		if n != 0 || h.RawLen != 0 {
			return Header{}, fmt.Errorf("%w: tombstone with %d-byte payload, declared %d", ErrCorrupt, n, h.RawLen)
		}
	case h.Compression == CompressNone:
		if uint64(n) < uint64(h.RawLen) {
			return Header{}, fmt.Errorf("%w: raw payload is %d bytes, declared %d", ErrTruncated, n, h.RawLen)
		}
		if uint64(n) > uint64(h.RawLen) {
			return Header{}, fmt.Errorf("%w: raw payload is %d bytes, declared %d", ErrCorrupt, n, h.RawLen)
		}
	default:
		if n == 0 {
			return Header{}, fmt.Errorf("%w: empty %v payload, declared %d", ErrTruncated, h.Compression, h.RawLen)
		}
	}
	return h, nil
}

// Version returns the version stored in envelope b without decoding or
// validating the rest. It reports false when b is shorter than HeaderSize or
// does not start with FormatV1. It never panics and allocates nothing.
func Version(b []byte) (uint64, bool) {
	if len(b) < HeaderSize || b[offFormat] != FormatV1 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[offVersion:]), true
}
