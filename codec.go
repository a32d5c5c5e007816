package tiercache

import (
	"encoding/json"

	"github.com/tiercache/tiercache/internal/wire"
)

// Codec turns values of type V into bytes for Redis and back. Implementations must be safe for
// concurrent use. ID identifies the encoding in the stored envelope so a reader never decodes
// bytes written by another codec: 0 bytes, 1 string, 2 JSON, 3 gob, 4 protobuf, 5–7 free for
// the application.
type Codec[V any] interface {
	ID() uint8
	Encode(v V) ([]byte, error)
	Decode(b []byte) (V, error)
}

// JSON is the default codec: encoding/json.
func JSON[V any]() Codec[V] { return jsonCodec[V]{} }

type jsonCodec[V any] struct{}

func (jsonCodec[V]) ID() uint8                  { return uint8(wire.CodecJSON) }
func (jsonCodec[V]) Encode(v V) ([]byte, error) { return json.Marshal(v) }
func (jsonCodec[V]) Decode(b []byte) (V, error) {
	var v V
	err := json.Unmarshal(b, &v)
	return v, err
}

// Bytes stores []byte values as they are. Decoded slices share memory with the cache: callers
// must not modify them.
func Bytes() Codec[[]byte] { return bytesCodec{} }

type bytesCodec struct{}

func (bytesCodec) ID() uint8                       { return uint8(wire.CodecBytes) }
func (bytesCodec) Encode(v []byte) ([]byte, error) { return v, nil }
func (bytesCodec) Decode(b []byte) ([]byte, error) { return b, nil }

// String stores string values as their bytes.
func String() Codec[string] { return stringCodec{} }

type stringCodec struct{}

func (stringCodec) ID() uint8                       { return uint8(wire.CodecString) }
func (stringCodec) Encode(v string) ([]byte, error) { return []byte(v), nil }
func (stringCodec) Decode(b []byte) (string, error) { return string(b), nil }

// checkCodecID rejects IDs the envelope cannot carry.
func checkCodecID(id uint8) error {
	if id > 7 {
		return errorf("codec ID %d out of range 0-7", id)
	}
	return nil
}
