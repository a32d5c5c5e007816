package wire

import (
	"fmt"
	"slices"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// DefaultThreshold is the smallest payload, in bytes, that an Encoder built
// with threshold 0 tries to compress.
const DefaultThreshold = 1024

// Encoder builds envelopes. It is safe for concurrent use: its only state is
// read-only configuration and a zstd encoder whose EncodeAll is
// concurrency-safe (it keeps up to GOMAXPROCS internal encoders; calls beyond
// that wait for one to be free).
type Encoder struct {
	comp      Compression   // CompressNone when compression is off
	threshold int           // smallest payload worth compressing
	zenc      *zstd.Encoder // non-nil iff comp == CompressZstd
}

// NewEncoder returns an Encoder that compresses payloads with c. threshold is
// the smallest payload length worth compressing: 0 means DefaultThreshold,
// a negative value turns compression off (as does c == CompressNone). It
// returns an error wrapping ErrFlags for an unknown Compression.
func NewEncoder(c Compression, threshold int) (*Encoder, error) {
	e := &Encoder{comp: c, threshold: threshold}
	if threshold == 0 {
		e.threshold = DefaultThreshold
	}
	switch c {
	case CompressNone:
	case CompressS2:
	case CompressZstd:
		if threshold < 0 {
			break
		}
		zenc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedDefault),
			// Values are small and encoded whole: a 1 MiB window covers
			// most of them without the memory of the 8 MiB default.
			zstd.WithWindowSize(1<<20),
			// Single-segment frames always carry their content size (without
			// it, frames under 256 bytes would omit it), which Decoder checks
			// against the declared length before decoding.
			zstd.WithSingleSegment(true),
		)
		if err != nil {
			return nil, fmt.Errorf(prefix+"zstd encoder: %w", err)
		}
		e.zenc = zenc
	default:
		return nil, fmt.Errorf("%w: unknown compression %d", ErrFlags, uint8(c))
	}
	if threshold < 0 {
		e.comp = CompressNone
	}
	return e, nil
}

// Compression returns the compression e applies to payloads that are at
// least Threshold bytes long, CompressNone when compression is off.
func (e *Encoder) Compression() Compression { return e.comp }

// Threshold returns the smallest payload length e tries to compress.
func (e *Encoder) Threshold() int { return e.threshold }

// Append appends the envelope for h and payload to dst and returns the
// extended slice; see Encode.
func (e *Encoder) Append(dst []byte, h Header, payload []byte) []byte {
	out, _ := e.Encode(dst, h, payload)
	return out
}

// Encode appends the envelope for h and payload to dst and returns the
// extended slice and the bytes compression saved (RawLen minus the stored
// payload length, 0 when stored raw). It sets h.RawLen and h.Compression
// itself, ignoring the caller's values: the payload is compressed only when
// compression is on, it is at least Threshold bytes, and the compressed form
// is smaller; otherwise it is stored raw with CompressNone. Tombstones are
// never compressed.
//
// dst may be nil; passing a reused buffer (dst[:0]) avoids allocation. Encode
// does not retain dst or payload, and payload must not overlap the spare
// capacity of dst.
//
// Encode panics if h.Validate(len(payload)) fails: a codec over MaxCodec, a
// payload on a tombstone, a fail-safe expiry before the logical one, or a
// payload over 4 GiB are programmer errors. Check sizes against Limits first.
func (e *Encoder) Encode(dst []byte, h Header, payload []byte) (out []byte, saved int) {
	if err := h.Validate(len(payload)); err != nil {
		panic(prefix + "Encode: " + err.Error())
	}
	start := len(dst)
	dst = slices.Grow(dst, HeaderSize+len(payload))
	dst = dst[:start+HeaderSize]
	h.RawLen = uint32(len(payload))
	h.Compression = CompressNone

	if !h.Tombstone && e.comp != CompressNone && len(payload) >= e.threshold && len(payload) > 0 {
		body := start + HeaderSize
		switch e.comp {
		case CompressZstd:
			z := e.zenc.EncodeAll(payload, dst)
			if n := len(z) - body; n < len(payload) {
				dst, h.Compression, saved = z, CompressZstd, len(payload)-n
			} else {
				dst = z[:body] // keep the possibly larger buffer, drop the frame
			}
		case CompressS2:
			if need := s2.MaxEncodedLen(len(payload)); need > 0 {
				dst = slices.Grow(dst, need)
				enc := s2.Encode(dst[body:body+need], payload)
				if n := len(enc); n < len(payload) {
					dst, h.Compression, saved = dst[:body+n], CompressS2, len(payload)-n
				}
			}
		}
	}
	if h.Compression == CompressNone {
		dst = append(dst, payload...)
	}
	putHeader(dst[start:], h)
	return dst, saved
}
