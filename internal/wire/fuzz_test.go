package wire

import (
	"bytes"
	"errors"
	"testing"

	"github.com/tiercache/tiercache/internal/corpus"
)

// fuzzDecoder has small limits so the fuzzer cannot make one iteration
// allocate 32 MiB; the limit checks are the same code at any size.
var fuzzDecoder = NewDecoder(Limits{MaxValueLen: 1 << 20, MaxDecodedLen: 4 << 20})

// FuzzDecode feeds arbitrary bytes to Decode. Decode must not panic, must
// return only this package's errors, and whatever it accepts must survive a
// re-encode without compression with the same header fields and payload.
func FuzzDecode(f *testing.F) {
	for _, c := range []Compression{CompressNone, CompressZstd, CompressS2} {
		b := validEnvelope(f, c)
		for i := range len(b) + 1 {
			f.Add(b[:i]) // every truncation, and the whole envelope
		}
	}
	for _, tt := range hostileCases(f) {
		f.Add(tt.b)
	}
	tomb, _ := encoderFor(f, CompressNone).Encode(nil, Header{Tombstone: true, Version: 9}, nil)
	f.Add(tomb)

	raw := encoderFor(f, CompressNone)
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := fuzzDecoder.Decode(b)
		if err != nil {
			if !isWireError(err) {
				t.Fatalf("Decode error %v wraps none of the package errors", err)
			}
			if p != nil || h != (Header{}) {
				t.Fatalf("Decode returned %+v, %d bytes with error %v", h, len(p), err)
			}
			return
		}
		if hh, err := DecodeHeader(b); err != nil || hh != h {
			t.Fatalf("DecodeHeader = %+v, %v; Decode header %+v", hh, err, h)
		}
		if v, ok := Version(b); !ok || v != h.Version {
			t.Fatalf("Version = %d, %v; want %d, true", v, ok, h.Version)
		}
		if len(p) != int(h.RawLen) {
			t.Fatalf("payload %d bytes, RawLen %d", len(p), h.RawLen)
		}
		again := raw.Append(nil, h, p)
		h2, p2, err := fuzzDecoder.Decode(again)
		if err != nil {
			t.Fatalf("Decode(re-encoded) error: %v", err)
		}
		h.Compression = CompressNone
		if h2 != h || !bytes.Equal(p2, p) {
			t.Fatalf("re-encoded = %+v, %d bytes; want %+v, %d bytes", h2, len(p2), h, len(p))
		}
	})
}

// FuzzRoundTrip encodes random payloads and header fields with each
// compression and checks that Decode returns them unchanged.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte(nil), uint8(0), false, uint64(0), int64(0), int64(0), uint8(0))
	f.Add([]byte("hello"), uint8(1), false, uint64(1), int64(1000), int64(2000), uint8(1))
	f.Add([]byte(nil), uint8(2), true, uint64(1<<63), int64(-1), int64(0), uint8(2))
	f.Add(corpus.ChatContext(1500, 1), uint8(2), false, uint64(0xFFFFFFFFFFFFFFFF), int64(1<<62), int64(1<<62), uint8(1))
	f.Add(corpus.ChatContext(3000, 2), uint8(7), false, uint64(12345), int64(0), int64(99), uint8(2))
	f.Add(bytes.Repeat([]byte{0}, 5000), uint8(4), false, uint64(5), int64(5), int64(4), uint8(1))
	f.Fuzz(func(t *testing.T, payload []byte, codec uint8, tomb bool, version uint64, expiry, failSafe int64, comp uint8) {
		h := Header{Codec: Codec(codec) & MaxCodec, Tombstone: tomb, Version: version, Expiry: expiry, FailSafeExpiry: failSafe}
		if expiry != 0 && failSafe != 0 && failSafe < expiry {
			h.FailSafeExpiry = expiry // keep the header valid
		}
		if tomb {
			payload = nil
		}
		c := Compression(comp % 3)
		prefix := []byte{1, 2, 3}
		out, saved := encoderFor(t, c).Encode(prefix, h, payload)
		if !bytes.Equal(out[:3], []byte{1, 2, 3}) {
			t.Fatalf("Encode overwrote dst")
		}
		env := out[3:]
		got, p, err := fuzzDecoder.Decode(env)
		if err != nil {
			t.Fatalf("Decode(Encode(%+v, %d bytes, %v)) error: %v", h, len(payload), c, err)
		}
		if !bytes.Equal(p, payload) {
			t.Fatalf("payload changed: %d bytes in, %d out", len(payload), len(p))
		}
		if got.Compression != CompressNone && got.Compression != c {
			t.Fatalf("stored with %v, encoder uses %v", got.Compression, c)
		}
		if saved != len(payload)-(len(env)-HeaderSize) || saved < 0 {
			t.Fatalf("saved = %d, raw %d, stored %d", saved, len(payload), len(env)-HeaderSize)
		}
		h.RawLen, h.Compression = uint32(len(payload)), got.Compression
		if got != h {
			t.Fatalf("header = %+v, want %+v", got, h)
		}
	})
}

func isWireError(err error) bool {
	for _, e := range []error{ErrFormat, ErrTruncated, ErrFlags, ErrTooLarge, ErrCorrupt} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
