package wire

import (
	"fmt"
	"testing"

	"github.com/tiercache/tiercache/internal/corpus"
)

// benchSizes are the synthetic chat-context sizes benchmarked.
var benchSizes = []struct {
	name string
	size int
}{
	{"1KiB", 1 << 10},
	{"10KiB", 10 << 10},
	{"100KiB", 100 << 10},
}

var benchComps = []Compression{CompressNone, CompressZstd, CompressS2}

// reportRatio reports the stored payload size relative to the raw one.
func reportRatio(b *testing.B, raw, env int) {
	stored := float64(env - HeaderSize)
	b.ReportMetric(stored/float64(raw), "stored/raw")
	b.ReportMetric(100*(1-stored/float64(raw)), "saved%")
}

// BenchmarkEncode measures Encode of synthetic chat contexts with each
// compression into a reused buffer. Encoders use threshold 1, so the 1 KiB
// document is compressed (the default threshold is 1024 bytes, which it
// also meets). SetBytes counts the raw payload.
func BenchmarkEncode(b *testing.B) {
	for _, c := range benchComps {
		for _, s := range benchSizes {
			b.Run(fmt.Sprintf("%v/%s", c, s.name), func(b *testing.B) {
				doc := corpus.ChatContext(s.size, 1)
				e := encoderFor(b, c)
				h := Header{Codec: CodecJSON, Version: 1}
				buf, _ := e.Encode(nil, h, doc)
				b.SetBytes(int64(len(doc)))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					buf, _ = e.Encode(buf[:0], h, doc)
				}
				reportRatio(b, len(doc), len(buf))
			})
		}
	}
}

// BenchmarkDecode measures Decode of the envelopes BenchmarkEncode makes.
// SetBytes counts the raw payload. A raw envelope decodes without copying.
func BenchmarkDecode(b *testing.B) {
	d := NewDecoder(Limits{})
	for _, c := range benchComps {
		for _, s := range benchSizes {
			b.Run(fmt.Sprintf("%v/%s", c, s.name), func(b *testing.B) {
				doc := corpus.ChatContext(s.size, 1)
				env, _ := encoderFor(b, c).Encode(nil, Header{Codec: CodecJSON, Version: 1}, doc)
				b.SetBytes(int64(len(doc)))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if _, _, err := d.Decode(env); err != nil {
						b.Fatal(err)
					}
				}
				reportRatio(b, len(doc), len(env))
			})
		}
	}
}
