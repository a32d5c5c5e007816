package wire

import (
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Decoder validates and decodes envelopes within its Limits. It is safe for
// concurrent use: it holds one zstd decoder whose DecodeAll is
// concurrency-safe (up to GOMAXPROCS decodes run at once; more wait).
type Decoder struct {
	lim  Limits        // with defaults applied
	zdec *zstd.Decoder // DecodeAll only; never used as a stream
}

// NewDecoder returns a Decoder enforcing lim (zero fields mean DefaultLimits).
func NewDecoder(lim Limits) *Decoder {
	lim = lim.WithDefaults()
	zdec, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxMemory(uint64(lim.MaxDecodedLen)),
		zstd.WithDecoderMaxWindow(max(uint64(lim.MaxDecodedLen), zstd.MinWindowSize)),
		// DecodeAll writes no more than cap(dst), which Decode sets to the
		// declared length: a frame that lies about its size, or a second
		// frame after the first, cannot make it allocate past that.
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		// Only reachable with invalid options, which the values above are not.
		panic(prefix + "zstd decoder: " + err.Error())
	}
	return &Decoder{lim: lim, zdec: zdec}
}

// Limits returns the limits d enforces, with defaults applied.
func (d *Decoder) Limits() Limits { return d.lim }

// Decode validates envelope b and returns its header and uncompressed payload.
//
// Before allocating anything it checks len(b) against MaxValueLen, the header
// (see DecodeHeader), the declared length against MaxDecodedLen, and for a
// compressed payload the size the zstd frame header or s2 block header
// declares, which must equal the envelope's declared length. It then
// allocates exactly RawLen bytes for the output, and a payload that does not
// decode to exactly RawLen bytes is ErrCorrupt. Errors wrap ErrFormat,
// ErrTruncated, ErrFlags, ErrTooLarge or ErrCorrupt (and, where there is one,
// the decompressor's error). Decode never panics.
//
// For a raw (uncompressed) payload the returned slice is a subslice of b, not
// a copy, with its capacity clipped so appends cannot overwrite b; the caller
// must copy it to keep it after b is reused or modified. A decompressed
// payload is a new slice owned by the caller. A tombstone returns a nil payload.
func (d *Decoder) Decode(b []byte) (Header, []byte, error) {
	if len(b) > d.lim.MaxValueLen {
		return Header{}, nil, fmt.Errorf("%w: value is %d bytes, limit MaxValueLen %d", ErrTooLarge, len(b), d.lim.MaxValueLen)
	}
	h, err := DecodeHeader(b)
	if err != nil {
		return Header{}, nil, err
	}
	if uint64(h.RawLen) > uint64(d.lim.MaxDecodedLen) {
		return Header{}, nil, fmt.Errorf("%w: declared payload is %d bytes, limit MaxDecodedLen %d", ErrTooLarge, h.RawLen, d.lim.MaxDecodedLen)
	}
	if h.Tombstone {
		return h, nil, nil
	}
	p := b[HeaderSize:]
	switch h.Compression {
	case CompressZstd:
		out, err := d.decodeZstd(p, h.RawLen)
		if err != nil {
			return Header{}, nil, err
		}
		return h, out, nil
	case CompressS2:
		out, err := d.decodeS2(p, h.RawLen)
		if err != nil {
			return Header{}, nil, err
		}
		return h, out, nil
	}
	return h, p[:len(p):len(p)], nil
}

// decodeZstd decodes the zstd frame p, which must declare rawLen as its
// content size if it declares one, and must decode to exactly rawLen bytes.
func (d *Decoder) decodeZstd(p []byte, rawLen uint32) ([]byte, error) {
	var zh zstd.Header
	if err := zh.Decode(p); err != nil {
		return nil, decompressError("zstd frame header", err)
	}
	switch {
	case zh.Skippable:
		return nil, fmt.Errorf("%w: zstd payload starts with a skippable frame", ErrCorrupt)
	case zh.DictionaryID != 0:
		return nil, fmt.Errorf("%w: zstd frame needs dictionary %d", ErrCorrupt, zh.DictionaryID)
	case !zh.HasFCS:
		// Legal zstd, though Encoder never writes it: the frame's size is
		// only known by decoding it, which the cap limit bounds to rawLen.
	case zh.FrameContentSize > uint64(d.lim.MaxDecodedLen):
		return nil, fmt.Errorf("%w: zstd frame declares %d bytes, limit MaxDecodedLen %d", ErrTooLarge, zh.FrameContentSize, d.lim.MaxDecodedLen)
	case zh.FrameContentSize != uint64(rawLen):
		return nil, fmt.Errorf("%w: zstd frame declares %d bytes, envelope declares %d", ErrCorrupt, zh.FrameContentSize, rawLen)
	}
	// A hostile frame can decode one block (up to 128 KiB) past its declared
	// size before the decoder notices. Were that block to overflow the
	// buffer, append would reallocate it at about twice the size, so large
	// buffers get room for one block: 12.5% extra at most, and the frame is
	// then refused without a reallocation. Below 1 MiB the reallocation is
	// small and the extra room would double small values.
	headroom := 0
	if rawLen >= 1<<20 {
		headroom = zstdMaxBlock + 64
	}
	out, err := d.zdec.DecodeAll(p, make([]byte, 0, int(rawLen)+headroom))
	if err != nil {
		return nil, decompressError("zstd", err)
	}
	if len(out) != int(rawLen) {
		return nil, fmt.Errorf("%w: zstd payload decoded to %d bytes, declared %d", ErrCorrupt, len(out), rawLen)
	}
	return out[:rawLen:rawLen], nil
}

// zstdMaxBlock is the largest zstd block: its content can never exceed it.
const zstdMaxBlock = 128 << 10

// decodeS2 decodes the s2 block p, which must declare rawLen as its length.
func (d *Decoder) decodeS2(p []byte, rawLen uint32) ([]byte, error) {
	n, err := s2.DecodedLen(p)
	if err != nil {
		return nil, decompressError("s2 block header", err)
	}
	if n > d.lim.MaxDecodedLen {
		return nil, fmt.Errorf("%w: s2 block declares %d bytes, limit MaxDecodedLen %d", ErrTooLarge, n, d.lim.MaxDecodedLen)
	}
	if n != int(rawLen) {
		return nil, fmt.Errorf("%w: s2 block declares %d bytes, envelope declares %d", ErrCorrupt, n, rawLen)
	}
	buf := make([]byte, rawLen)
	out, err := s2.Decode(buf, p)
	if err != nil {
		return nil, decompressError("s2", err)
	}
	if len(out) != int(rawLen) {
		return nil, fmt.Errorf("%w: s2 payload decoded to %d bytes, declared %d", ErrCorrupt, len(out), rawLen)
	}
	return out, nil
}

// decompressError wraps a decompressor error: ErrTruncated when the input
// ended early, ErrCorrupt otherwise.
func decompressError(what string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s: %w", ErrTruncated, what, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorrupt, what, err)
}
