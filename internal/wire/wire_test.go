package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/tiercache/tiercache/internal/corpus"
)

func TestDecodeHostile(t *testing.T) {
	t.Parallel()
	for _, tt := range hostileCases(t) {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := NewDecoder(tt.lim)
			h, p, err := d.Decode(tt.b)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = (%+v, %d bytes, %v), want error %v", h, len(p), err, tt.want)
			}
			if p != nil || h != (Header{}) {
				t.Errorf("Decode returned %+v and %d bytes with error %v, want zero values", h, len(p), err)
			}
			if !strings.HasPrefix(err.Error(), "tiercache: wire: ") {
				t.Errorf("Decode error %q lacks the tiercache: wire: prefix", err)
			}
		})
	}
}

// TestDecodeHostileAllocation checks that envelopes declaring or inflating to
// gigabytes are refused without allocating anything near that: bomb cases
// allocate under 1 MiB per Decode, and no hostile case allocates more than
// 1 MiB beyond the payload length it declares within MaxDecodedLen. It does
// not run in parallel because it reads process-wide allocation counters.
func TestDecodeHostileAllocation(t *testing.T) {
	const bound = 1 << 20
	d := NewDecoder(Limits{})
	cases := hostileCases(t)
	bombs := 0
	// Warm up: the zstd decoder allocates its block decoders' buffers once.
	for range 2 * runtime.GOMAXPROCS(0) {
		for _, tt := range cases {
			if tt.bomb {
				d.Decode(tt.b)
			}
		}
	}
	for _, tt := range cases {
		if tt.lim != (Limits{}) {
			continue
		}
		limit, runs := uint64(bound), 20
		if tt.bomb {
			bombs++
		} else if len(tt.b) >= HeaderSize && binLen(tt.b) <= uint32(DefaultLimits.MaxDecodedLen) {
			if raceEnabled && binLen(tt.b) > 1<<20 {
				continue // decoding 32 MiB takes seconds under -race; TestDecodeHostile covers it
			}
			limit += uint64(binLen(tt.b))
			runs = 3
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for range runs {
			if _, _, err := d.Decode(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("%s: Decode error %v, want %v", tt.name, err, tt.want)
			}
		}
		runtime.ReadMemStats(&after)
		if per := (after.TotalAlloc - before.TotalAlloc) / uint64(runs); per > limit {
			t.Errorf("%s: Decode allocated %d bytes per call, want <= %d", tt.name, per, limit)
		}
	}
	if bombs < 10 {
		t.Errorf("only %d bomb cases, want at least 10", bombs)
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	random := make([]byte, 5000)
	rand.NewChaCha8([32]byte{1}).Read(random)
	payloads := []struct {
		name         string
		p            []byte
		compressible bool
	}{
		{name: "empty", p: nil},
		{name: "one byte", p: []byte{'x'}},
		{name: "zeros 44", p: make([]byte, 44), compressible: true},
		{name: "zeros 300", p: make([]byte, 300), compressible: true},
		{name: "1KiB chat", p: corpus.ChatContext(1<<10, 3), compressible: true},
		{name: "10KiB chat", p: corpus.ChatContext(10<<10, 3), compressible: true},
		{name: "100KiB chat", p: corpus.ChatContext(100<<10, 3), compressible: true},
		{name: "zeros 1MiB", p: make([]byte, 1<<20), compressible: true},
		{name: "random 5000", p: random},
	}
	d := NewDecoder(Limits{})
	for _, comp := range []Compression{CompressNone, CompressZstd, CompressS2} {
		for _, pl := range payloads {
			t.Run(comp.String()+"/"+pl.name, func(t *testing.T) {
				t.Parallel()
				e := encoderFor(t, comp)
				h := testHeader
				h.RawLen, h.Compression = 12345, CompressS2 // ignored by Encode
				prefix := []byte("prefix")
				out, saved := e.Encode(prefix, h, pl.p)
				if !bytes.Equal(out[:len(prefix)], []byte("prefix")) {
					t.Fatalf("Encode overwrote dst prefix: %q", out[:len(prefix)])
				}
				env := out[len(prefix):]
				got, p, err := d.Decode(env)
				if err != nil {
					t.Fatalf("Decode(Encode(%d bytes)) error: %v", len(pl.p), err)
				}
				if !bytes.Equal(p, pl.p) {
					t.Errorf("Decode payload = %d bytes, want the %d encoded", len(p), len(pl.p))
				}
				want := testHeader
				want.RawLen = uint32(len(pl.p))
				want.Compression = got.Compression
				if got != want {
					t.Errorf("Decode header = %+v, want %+v", got, want)
				}
				wantComp := CompressNone
				if pl.compressible {
					wantComp = comp
				}
				if got.Compression != wantComp {
					t.Errorf("stored with %v, want %v", got.Compression, wantComp)
				}
				stored := len(env) - HeaderSize
				if saved != len(pl.p)-stored {
					t.Errorf("saved = %d, want rawLen %d - stored %d", saved, len(pl.p), stored)
				}
				if got.Compression != CompressNone && stored >= len(pl.p) {
					t.Errorf("compressed payload %d bytes not smaller than raw %d", stored, len(pl.p))
				}
				if v, ok := Version(env); !ok || v != testHeader.Version {
					t.Errorf("Version = %#x, %v; want %#x, true", v, ok, testHeader.Version)
				}
				if a := e.Append(nil, testHeader, pl.p); !bytes.Equal(a, env) {
					t.Errorf("Append differs from Encode")
				}
			})
		}
	}
}

func TestEncodeThreshold(t *testing.T) {
	t.Parallel()
	doc := corpus.ChatContext(4096, 9)
	tests := []struct {
		name      string
		comp      Compression
		threshold int
		payload   []byte
		want      Compression
	}{
		{name: "zstd default threshold, 4 KiB", comp: CompressZstd, threshold: 0, payload: doc, want: CompressZstd},
		{name: "zstd default threshold, 1023 B", comp: CompressZstd, threshold: 0, payload: doc[:1023], want: CompressNone},
		{name: "zstd default threshold, 1024 B", comp: CompressZstd, threshold: 0, payload: doc[:1024], want: CompressZstd},
		{name: "s2 threshold 5000", comp: CompressS2, threshold: 5000, payload: doc, want: CompressNone},
		{name: "s2 threshold 4096", comp: CompressS2, threshold: 4096, payload: doc, want: CompressS2},
		{name: "zstd negative threshold is off", comp: CompressZstd, threshold: -1, payload: doc, want: CompressNone},
		{name: "none", comp: CompressNone, threshold: 1, payload: doc, want: CompressNone},
		{name: "zstd not smaller", comp: CompressZstd, threshold: 1, payload: []byte("abcdefgh"), want: CompressNone},
		{name: "s2 not smaller", comp: CompressS2, threshold: 1, payload: []byte("abcdefgh"), want: CompressNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := NewEncoder(tt.comp, tt.threshold)
			if err != nil {
				t.Fatalf("NewEncoder(%v, %d): %v", tt.comp, tt.threshold, err)
			}
			b, saved := e.Encode(nil, Header{}, tt.payload)
			h, err := DecodeHeader(b)
			if err != nil {
				t.Fatalf("DecodeHeader: %v", err)
			}
			if h.Compression != tt.want {
				t.Errorf("Compression = %v, want %v", h.Compression, tt.want)
			}
			if (saved > 0) != (tt.want != CompressNone) {
				t.Errorf("saved = %d with compression %v", saved, h.Compression)
			}
		})
	}
}

func TestNewEncoderUnknownCompression(t *testing.T) {
	t.Parallel()
	if _, err := NewEncoder(3, 0); !errors.Is(err, ErrFlags) {
		t.Errorf("NewEncoder(3, 0) error = %v, want ErrFlags", err)
	}
}

func TestEncodePanicsOnInvalidHeader(t *testing.T) {
	t.Parallel()
	e := encoderFor(t, CompressZstd)
	tests := []struct {
		name    string
		h       Header
		payload []byte
		want    error
	}{
		{name: "codec 8", h: Header{Codec: 8}, want: ErrFlags},
		{name: "tombstone with payload", h: Header{Tombstone: true}, payload: []byte("x"), want: ErrCorrupt},
		{name: "fail-safe before expiry", h: Header{Expiry: 2, FailSafeExpiry: 1}, want: ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := tt.h.Validate(len(tt.payload)); !errors.Is(err, tt.want) {
				t.Errorf("Validate = %v, want %v", err, tt.want)
			}
			defer func() {
				if recover() == nil {
					t.Errorf("Encode(%+v) did not panic", tt.h)
				}
			}()
			e.Encode(nil, tt.h, tt.payload)
		})
	}
}

func TestTombstone(t *testing.T) {
	t.Parallel()
	e := encoderFor(t, CompressZstd)
	b, saved := e.Encode(nil, Header{Tombstone: true, Version: 77, Expiry: 5}, nil)
	if len(b) != HeaderSize || saved != 0 {
		t.Fatalf("tombstone is %d bytes, saved %d; want %d, 0", len(b), saved, HeaderSize)
	}
	h, p, err := NewDecoder(Limits{}).Decode(b)
	if err != nil || !h.Tombstone || h.Version != 77 || h.Expiry != 5 || p != nil {
		t.Errorf("Decode(tombstone) = %+v, %v, %v", h, p, err)
	}
}

func TestHeaderLayout(t *testing.T) {
	t.Parallel()
	h := Header{Codec: 5, Tombstone: false, Version: 0x0102030405060708, Expiry: 0x1112131415161718, FailSafeExpiry: 0x2122232425262728}
	b, _ := encoderFor(t, CompressNone).Encode(nil, h, []byte("xyz"))
	want := []byte{
		0xC1,                   // format
		5,                      // flags: codec 5, no compression, no tombstone
		1, 2, 3, 4, 5, 6, 7, 8, // version
		0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, // expiry
		0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, // fail-safe expiry
		0, 0, 0, 3, // raw length
		'x', 'y', 'z',
	}
	if !bytes.Equal(b, want) {
		t.Errorf("Encode = % x\nwant     % x", b, want)
	}
	// The Lua scripts read the version as struct.unpack('>I4I4', v, 3):
	// two big-endian 32-bit halves starting at 1-based position 3.
	hi, lo := binary.BigEndian.Uint32(b[2:6]), binary.BigEndian.Uint32(b[6:10])
	if got := uint64(hi)<<32 | uint64(lo); got != h.Version {
		t.Errorf("Lua-style version = %#x, want %#x", got, h.Version)
	}
	tomb, _ := encoderFor(t, CompressNone).Encode(nil, Header{Tombstone: true, Codec: 2}, nil)
	if tomb[1] != 1<<5|2 {
		t.Errorf("tombstone flags = %#x, want %#x", tomb[1], 1<<5|2)
	}
	z := validEnvelope(t, CompressZstd)
	if z[1] != byte(CodecJSON)|1<<3 {
		t.Errorf("zstd JSON flags = %#x, want %#x", z[1], byte(CodecJSON)|1<<3)
	}
	s := validEnvelope(t, CompressS2)
	if s[1] != byte(CodecJSON)|2<<3 {
		t.Errorf("s2 JSON flags = %#x, want %#x", s[1], byte(CodecJSON)|2<<3)
	}
}

func TestDecodeRawIsSubslice(t *testing.T) {
	t.Parallel()
	b := encoderFor(t, CompressNone).Append(nil, Header{}, []byte("hello"))
	_, p, err := NewDecoder(Limits{}).Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if &p[0] != &b[HeaderSize] {
		t.Errorf("raw payload was copied, want a subslice")
	}
	if cap(p) != len(p) {
		t.Errorf("cap(payload) = %d, want %d so appends cannot write into the envelope", cap(p), len(p))
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	b := validEnvelope(t, CompressZstd)
	tests := []struct {
		name   string
		b      []byte
		want   uint64
		wantOK bool
	}{
		{name: "valid", b: b, want: testHeader.Version, wantOK: true},
		{name: "header only", b: b[:HeaderSize], want: testHeader.Version, wantOK: true},
		{name: "short", b: b[:HeaderSize-1]},
		{name: "nil", b: nil},
		{name: "wrong format", b: append([]byte{0}, b[1:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if v, ok := Version(tt.b); v != tt.want || ok != tt.wantOK {
				t.Errorf("Version = %#x, %v; want %#x, %v", v, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		err     error
		want    error
		wantMsg string
	}{
		{name: "key ok", err: CheckKey("user:42", Limits{})},
		{name: "key at limit", err: CheckKey(strings.Repeat("k", 512), Limits{})},
		{name: "key too long", err: CheckKey(strings.Repeat("k", 600), Limits{}), want: ErrTooLarge,
			wantMsg: "tiercache: wire: too large: key is 600 bytes, limit MaxKeyLen 512"},
		{name: "key custom limit", err: CheckKey("abcdef", Limits{MaxKeyLen: 5}), want: ErrTooLarge,
			wantMsg: "tiercache: wire: too large: key is 6 bytes, limit MaxKeyLen 5"},
		{name: "empty key", err: CheckKey("", Limits{}), want: ErrEmptyKey},
		{name: "value ok", err: DefaultLimits.CheckValue(8 << 20)},
		{name: "value too large", err: DefaultLimits.CheckValue(8<<20 + 1), want: ErrTooLarge,
			wantMsg: "tiercache: wire: too large: value is 8388609 bytes encoded, limit MaxValueLen 8388608"},
		{name: "value zero limits", err: Limits{}.CheckValue(9 << 20), want: ErrTooLarge},
		{name: "payload ok", err: Limits{}.CheckPayload(32 << 20)},
		{name: "payload too large", err: Limits{MaxDecodedLen: 10}.CheckPayload(11), want: ErrTooLarge,
			wantMsg: "tiercache: wire: too large: payload is 11 bytes uncompressed, limit MaxDecodedLen 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !errors.Is(tt.err, tt.want) || (tt.want == nil) != (tt.err == nil) {
				t.Fatalf("error = %v, want %v", tt.err, tt.want)
			}
			if tt.wantMsg != "" && tt.err.Error() != tt.wantMsg {
				t.Errorf("error = %q, want %q", tt.err, tt.wantMsg)
			}
		})
	}
	if got := (Limits{}).WithDefaults(); got != DefaultLimits {
		t.Errorf("Limits{}.WithDefaults() = %+v, want %+v", got, DefaultLimits)
	}
}

// TestConcurrent shares one Encoder and Decoder per compression between
// goroutines; run with -race.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	d := NewDecoder(Limits{})
	docs := [][]byte{corpus.ChatContext(2000, 1), corpus.ChatContext(20000, 2), []byte("small")}
	var wg sync.WaitGroup
	for g := range 8 {
		comp := Compression(g % 3)
		wg.Go(func() {
			e := encoderFor(t, comp)
			var buf []byte
			for i := range 50 {
				doc := docs[i%len(docs)]
				buf, _ = e.Encode(buf[:0], Header{Version: uint64(i)}, doc)
				h, p, err := d.Decode(buf)
				if err != nil || h.Version != uint64(i) || !bytes.Equal(p, doc) {
					t.Errorf("goroutine %d: Decode = %+v, %d bytes, %v", g, h, len(p), err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	e, err := NewEncoder(CompressZstd, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(Limits{})
	b := e.Append(nil, Header{}, corpus.ChatContext(5000, 1))
	if _, _, err := d.Decode(b); err != nil {
		t.Fatal(err)
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Errorf("goroutines %d -> %d after NewEncoder/NewDecoder; want no background goroutines (there is no Close)", before, after)
	}
}

// TestDecodeZstdWithoutContentSize decodes a legal frame that does not
// declare its content size (Encoder never writes one, other encoders may).
func TestDecodeZstdWithoutContentSize(t *testing.T) {
	t.Parallel()
	const n = 3 * zstdMaxBlock
	b := rawEnvelope(flagsFor(CodecBytes, CompressZstd), 1, 0, 0, n, zstdRLEBlocks(zstdFrameHeader(-1), 3))
	_, p, err := NewDecoder(Limits{}).Decode(b)
	if err != nil || !bytes.Equal(p, make([]byte, n)) {
		t.Fatalf("Decode = %d bytes, %v; want %d zero bytes", len(p), err, n)
	}
	short := rawEnvelope(flagsFor(CodecBytes, CompressZstd), 1, 0, 0, n+1, zstdRLEBlocks(zstdFrameHeader(-1), 3))
	if _, _, err := NewDecoder(Limits{}).Decode(short); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Decode(frame shorter than declared) error = %v, want ErrCorrupt", err)
	}
}
