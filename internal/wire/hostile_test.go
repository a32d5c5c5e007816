package wire

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/klauspost/compress/s2"
	"github.com/tiercache/tiercache/internal/corpus"
)

// This file builds the envelopes shared by the unit tests, the fuzz seed
// corpora and the benchmarks: valid ones made by the Encoder, and hostile
// ones assembled byte by byte.

// rawEnvelope assembles an envelope from its parts without any validation.
func rawEnvelope(flags byte, version uint64, expiry, failSafe int64, rawLen uint32, payload []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(payload))
	b[0] = FormatV1
	b[1] = flags
	binary.BigEndian.PutUint64(b[2:], version)
	binary.BigEndian.PutUint64(b[10:], uint64(expiry))
	binary.BigEndian.PutUint64(b[18:], uint64(failSafe))
	binary.BigEndian.PutUint32(b[26:], rawLen)
	return append(b, payload...)
}

// flagsFor returns the flags byte for a codec and compression.
func flagsFor(c Codec, comp Compression) byte { return byte(c) | byte(comp)<<3 }

var (
	encodersOnce sync.Once
	testEncoders map[Compression]*Encoder // threshold 1: compress whenever it pays
)

// encoderFor returns a shared Encoder with threshold 1 for c.
func encoderFor(tb testing.TB, c Compression) *Encoder {
	tb.Helper()
	encodersOnce.Do(func() {
		testEncoders = make(map[Compression]*Encoder)
		for _, c := range []Compression{CompressNone, CompressZstd, CompressS2} {
			e, err := NewEncoder(c, 1)
			if err != nil {
				panic(err)
			}
			testEncoders[c] = e
		}
	})
	return testEncoders[c]
}

// testHeader is the header used by valid test envelopes.
var testHeader = Header{Codec: CodecJSON, Version: 0x0123456789ABCDEF, Expiry: 1_750_000_000_000, FailSafeExpiry: 1_750_000_600_000}

// validEnvelope encodes a 2 KiB chat document with compression c and checks
// that c was actually used.
func validEnvelope(tb testing.TB, c Compression) []byte {
	tb.Helper()
	b, _ := encoderFor(tb, c).Encode(nil, testHeader, corpus.ChatContext(2048, 1))
	if h, err := DecodeHeader(b); err != nil || h.Compression != c {
		tb.Fatalf("validEnvelope(%v): header %+v, err %v", c, h, err)
	}
	return b
}

// zstdFrameHeader returns a zstd frame header (magic, descriptor, optional
// window descriptor, content size) with no blocks. fcs < 0 means no content
// size field (and a 128 KiB window).
func zstdFrameHeader(fcs int64) []byte {
	b := []byte{0x28, 0xB5, 0x2F, 0xFD}
	if fcs < 0 {
		return append(b, 0x00, 7<<3) // no FCS, not single segment; window 1<<(10+7)
	}
	// Single segment, 8-byte FCS field.
	b = append(b, 3<<6|1<<5)
	return binary.LittleEndian.AppendUint64(b, uint64(fcs))
}

// zstdRLEBlocks appends n RLE blocks of 128 KiB zeros (4 bytes each: a
// 128 KiB block regenerates from a 3-byte header and one byte).
func zstdRLEBlocks(b []byte, n int) []byte {
	for i := range n {
		hdr := uint32(1<<1 | (128<<10)<<3) // type RLE, size 128 KiB
		if i == n-1 {
			hdr |= 1 // last block
		}
		b = append(b, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return b
}

// gigabyteZstd is a 32 KiB zstd frame that inflates to 1 GiB of zeros.
func gigabyteZstd(fcs int64) []byte { return zstdRLEBlocks(zstdFrameHeader(fcs), 8192) }

// s2Declaring returns an s2 block whose header declares n bytes followed by junk.
func s2Declaring(n uint64) []byte {
	b := binary.AppendUvarint(nil, n)
	return append(b, 0x00, 0x61, 0x62, 0x63)
}

// hostileCase is an envelope Decode must reject with want.
type hostileCase struct {
	name string
	b    []byte
	lim  Limits // zero: DefaultLimits
	want error
	bomb bool // declares or inflates to a huge size: checked for allocation
}

// hostileCases returns the envelopes every Decoder must reject.
func hostileCases(tb testing.TB) []hostileCase {
	tb.Helper()
	zs := validEnvelope(tb, CompressZstd)
	sn := validEnvelope(tb, CompressS2)
	raw := validEnvelope(tb, CompressNone)
	zsPayload := zs[HeaderSize:]
	zsRaw := binLen(zs)
	withRawLen := func(b []byte, n uint32) []byte {
		c := append([]byte(nil), b...)
		binary.BigEndian.PutUint32(c[26:], n)
		return c
	}
	flipped := func(b []byte, i int) []byte {
		c := append([]byte(nil), b...)
		c[i] ^= 0xFF
		return c
	}
	json, zstd, s2c := flagsFor(CodecJSON, CompressNone), flagsFor(CodecJSON, CompressZstd), flagsFor(CodecJSON, CompressS2)
	big := s2.Encode(nil, make([]byte, 1000))
	return []hostileCase{
		{name: "empty", b: nil, want: ErrTruncated},
		{name: "wrong format byte", b: append([]byte{0xC2}, raw[1:]...), want: ErrFormat},
		{name: "format byte zero", b: make([]byte, 40), want: ErrFormat},
		{name: "plain JSON", b: []byte(`{"a":1}`), want: ErrFormat},
		{name: "header only half", b: raw[:HeaderSize/2], want: ErrTruncated},
		{name: "header one byte short", b: raw[:HeaderSize-1], want: ErrTruncated},
		{name: "reserved bit 6", b: rawEnvelope(json|1<<6, 1, 0, 0, 3, []byte("abc")), want: ErrFlags},
		{name: "reserved bit 7", b: rawEnvelope(json|1<<7, 1, 0, 0, 3, []byte("abc")), want: ErrFlags},
		{name: "compression 3", b: rawEnvelope(3<<3, 1, 0, 0, 3, []byte("abc")), want: ErrFlags},
		{name: "tombstone with payload", b: rawEnvelope(1<<5, 1, 0, 0, 3, []byte("abc")), want: ErrCorrupt},
		{name: "tombstone with raw length", b: rawEnvelope(1<<5, 1, 0, 0, 3, nil), want: ErrCorrupt},
		{name: "tombstone compressed", b: rawEnvelope(1<<5|zstd, 1, 0, 0, 0, nil), want: ErrFlags},
		{name: "fail-safe before expiry", b: rawEnvelope(json, 1, 2000, 1000, 3, []byte("abc")), want: ErrCorrupt},
		{name: "raw declared larger", b: withRawLen(raw, binLen(raw)+1), want: ErrTruncated},
		{name: "raw declared smaller", b: withRawLen(raw, binLen(raw)-1), want: ErrCorrupt},
		{name: "raw truncated", b: raw[:len(raw)-1], want: ErrTruncated},
		{name: "raw declared 4 GiB", b: withRawLen(raw, 0xFFFFFFFF), want: ErrTruncated, bomb: true},
		{name: "raw over MaxDecodedLen", b: raw, lim: Limits{MaxDecodedLen: 100}, want: ErrTooLarge},
		{name: "value over MaxValueLen", b: zs, lim: Limits{MaxValueLen: 100}, want: ErrTooLarge},
		{name: "zstd empty payload", b: rawEnvelope(zstd, 1, 0, 0, 10, nil), want: ErrTruncated},
		{name: "zstd declared larger", b: withRawLen(zs, zsRaw+1), want: ErrCorrupt},
		{name: "zstd declared smaller", b: withRawLen(zs, zsRaw-1), want: ErrCorrupt},
		{name: "zstd envelope declares 4 GiB", b: withRawLen(zs, 0xFFFFFFFF), want: ErrTooLarge, bomb: true},
		{name: "zstd frame declares 4 GiB", b: rawEnvelope(zstd, 1, 0, 0, 1<<20, zstdRLEBlocks(zstdFrameHeader(4<<30), 1)), want: ErrTooLarge, bomb: true},
		{name: "zstd frame declares 4 GiB, envelope too", b: rawEnvelope(zstd, 1, 0, 0, 0xFFFFFFFF, zstdRLEBlocks(zstdFrameHeader(4<<30), 1)), want: ErrTooLarge, bomb: true},
		{name: "zstd 1 GiB bomb without content size", b: rawEnvelope(zstd, 1, 0, 0, 1000, gigabyteZstd(-1)), want: ErrCorrupt, bomb: true},
		{name: "zstd 1 GiB bomb without content size, 32 MiB declared", b: rawEnvelope(zstd, 1, 0, 0, 32<<20, gigabyteZstd(-1)), want: ErrCorrupt},
		{name: "zstd frame without content size, short", b: rawEnvelope(zstd, 1, 0, 0, 1000, zstdRLEBlocks(zstdFrameHeader(-1), 0)), want: ErrTruncated},
		{name: "zstd 1 GiB bomb declaring 1000", b: rawEnvelope(zstd, 1, 0, 0, 1000, gigabyteZstd(1000)), want: ErrCorrupt, bomb: true},
		{name: "zstd 1 GiB bomb declaring 256 KiB", b: rawEnvelope(zstd, 1, 0, 0, 256<<10, gigabyteZstd(256<<10)), want: ErrCorrupt, bomb: true},
		{name: "zstd 1 GiB bomb declaring 32 MiB", b: rawEnvelope(zstd, 1, 0, 0, 32<<20, gigabyteZstd(32<<20)), want: ErrCorrupt},
		{name: "zstd header cut", b: rawEnvelope(zstd, 1, 0, 0, zsRaw, zsPayload[:3]), want: ErrTruncated},
		{name: "zstd truncated", b: zs[:len(zs)-10], want: ErrTruncated},
		{name: "zstd bad magic", b: rawEnvelope(zstd, 1, 0, 0, zsRaw, append([]byte{0, 0, 0, 0}, zsPayload[4:]...)), want: ErrCorrupt},
		{name: "zstd skippable frame", b: rawEnvelope(zstd, 1, 0, 0, 4, []byte{0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}), want: ErrCorrupt},
		{name: "zstd dictionary", b: rawEnvelope(zstd, 1, 0, 0, 1, []byte{0x28, 0xB5, 0x2F, 0xFD, 1<<5 | 1, 7, 1, 9, 0, 0, 'x'}), want: ErrCorrupt},
		{name: "zstd garbage", b: rawEnvelope(zstd, 1, 0, 0, 100, []byte("this is not a zstd frame at all")), want: ErrCorrupt},
		{name: "zstd flipped checksum", b: flipped(zs, len(zs)-1), want: ErrCorrupt},
		{name: "s2 empty payload", b: rawEnvelope(s2c, 1, 0, 0, 10, nil), want: ErrTruncated},
		{name: "s2 declared larger", b: withRawLen(sn, binLen(sn)+1), want: ErrCorrupt},
		{name: "s2 declared smaller", b: withRawLen(sn, binLen(sn)-1), want: ErrCorrupt},
		{name: "s2 envelope declares 4 GiB", b: withRawLen(sn, 0xFFFFFFFF), want: ErrTooLarge, bomb: true},
		{name: "s2 block declares 4 GiB", b: rawEnvelope(s2c, 1, 0, 0, 100, s2Declaring(0xFFFFFFFF)), want: ErrTooLarge, bomb: true},
		{name: "s2 block declares 33 MiB", b: rawEnvelope(s2c, 1, 0, 0, 33<<20, s2Declaring(33<<20)), want: ErrTooLarge, bomb: true},
		{name: "s2 block declares 32 MiB of junk", b: rawEnvelope(s2c, 1, 0, 0, 32<<20, s2Declaring(32<<20)), want: ErrCorrupt},
		{name: "s2 bad varint", b: rawEnvelope(s2c, 1, 0, 0, 100, []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}), want: ErrCorrupt},
		{name: "s2 truncated", b: sn[:len(sn)-5], want: ErrCorrupt},
		{name: "s2 garbage", b: rawEnvelope(s2c, 1, 0, 0, 1000, append(binary.AppendUvarint(nil, 1000), []byte("garbage garbage garbage")...)), want: ErrCorrupt},
		{name: "s2 valid block of other length", b: rawEnvelope(s2c, 1, 0, 0, 999, big), want: ErrCorrupt},
	}
}

// binLen returns the declared raw length of envelope b.
func binLen(b []byte) uint32 { return binary.BigEndian.Uint32(b[26:]) }
