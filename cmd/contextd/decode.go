package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// The request contract every JSON route shares, in one place (decodeBody):
//
//   - Content-Type application/json (415), at most MaxBody bytes (413), read
//     within the server's read timeout (408);
//   - valid UTF-8, with no unpaired UTF-16 surrogate escape ("\ud800"), which
//     encoding/json would silently turn into U+FFFD (400 bad_json);
//   - exactly one JSON object: not null, not an array, nothing after it
//     (400 bad_json);
//   - only the documented field names, matched exactly (encoding/json matches
//     them case-insensitively), each at most once (400 unknown_field,
//     400 bad_json for a repeated one);
//   - values of the documented types (400 bad_json).
//
// encoding/json/v2, which matches names exactly, needs GOEXPERIMENT=jsonv2 in
// Go 1.26, so the names are checked here with a token scan before decoding.

// maxEcho is the most bytes of caller input an error message repeats.
const maxEcho = 80

// clip shortens caller input for an error message, on a UTF-8 boundary.
func clip(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… (%d bytes)", len(s))
}

// quote is strconv.Quote of clip(s).
func quote(s string) string { return strconv.Quote(clip(s)) }

// decodeBody decodes the JSON request body into dst, a pointer to a struct
// whose json tags name the accepted fields, under the contract above.
func (s *server) decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || mt != "application/json" {
		return &apiError{http.StatusUnsupportedMediaType, "unsupported_media_type", fmt.Sprintf("Content-Type %s: want application/json", quote(ct))}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.MaxBody))
	if err != nil {
		return bodyReadError(err)
	}
	return decodeJSON(body, dst)
}

// bodyReadError maps a failure to read the body: too large (413), too slow
// (408), or cut off (400). The messages never carry socket addresses or other
// internals of the error.
func bodyReadError(err error) error {
	var mb *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mb):
		return err
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return &apiError{http.StatusRequestTimeout, "request_timeout", "the request body did not arrive within the server's read timeout"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &apiError{http.StatusBadRequest, "bad_json", "the request body ended before its declared length"}
	}
	return &apiError{http.StatusBadRequest, "bad_json", "the request body could not be read"}
}

// decodeJSON applies the contract to body and decodes it into dst.
func decodeJSON(body []byte, dst any) error {
	if !utf8.Valid(body) {
		return &apiError{http.StatusBadRequest, "bad_json", fmt.Sprintf("request body is not valid UTF-8 (byte %d)", badUTF8(body))}
	}
	if err := checkFields(body, fieldsOf(dst)); err != nil {
		return err
	}
	if off := loneSurrogate(body); off >= 0 {
		return &apiError{http.StatusBadRequest, "bad_json", fmt.Sprintf(`request body holds an unpaired UTF-16 surrogate escape at byte %d: not a character`, off)}
	}
	if err := json.Unmarshal(body, dst); err != nil {
		return jsonError(err)
	}
	return nil
}

// checkFields scans body as one JSON object whose keys are all in fields,
// each once.
func checkFields(body []byte, fields map[string]string) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return jsonError(err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return &apiError{http.StatusBadRequest, "bad_json", "request body must be a JSON object, not " + jsonKind(tok)}
	}
	seen := make(map[string]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return jsonError(err)
		}
		key := tok.(string) // object keys are strings, or Token fails
		if _, ok := fields[key]; !ok {
			msg := "unknown field " + quote(key)
			for name := range fields {
				if strings.EqualFold(name, key) {
					msg += ` (field names are case-sensitive: did you mean "` + name + `"?)`
				}
			}
			return &apiError{http.StatusBadRequest, "unknown_field", msg}
		}
		if seen[key] {
			return &apiError{http.StatusBadRequest, "bad_json", fmt.Sprintf("field %q is given twice", key)}
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return jsonError(err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &apiError{http.StatusBadRequest, "bad_json", "request body holds more than one JSON value"}
	}
	return nil
}

// jsonKind names the JSON value a first token starts.
func jsonKind(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64, json.Number:
		return "a number"
	case string:
		return "a string"
	case json.Delim:
		if v == '[' {
			return "an array"
		}
	}
	return fmt.Sprint(tok)
}

// badUTF8 returns the offset of the first invalid UTF-8 byte in b.
func badUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return i
		}
		i += n
	}
	return len(b)
}

// loneSurrogate returns the offset of the first "\uXXXX" escape in valid
// JSON b that is a UTF-16 surrogate without its pair, or -1. Backslashes
// occur only inside strings in valid JSON, so no string tracking is needed.
func loneSurrogate(b []byte) int {
	hex4 := func(i int) (rune, bool) {
		if i+6 > len(b) || b[i] != '\\' || b[i+1] != 'u' {
			return 0, false
		}
		v, err := strconv.ParseUint(string(b[i+2:i+6]), 16, 16)
		return rune(v), err == nil
	}
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		r, ok := hex4(i)
		if !ok {
			i++ // a two-byte escape: skip its second byte (it may be a backslash)
			continue
		}
		switch {
		case r >= 0xD800 && r <= 0xDBFF:
			if lo, ok := hex4(i + 6); ok && lo >= 0xDC00 && lo <= 0xDFFF {
				i += 11
				continue
			}
			return i
		case r >= 0xDC00 && r <= 0xDFFF:
			return i
		}
		i += 5
	}
	return -1
}

// fieldNames caches, per struct type, its JSON field names.
var fieldNames sync.Map // reflect.Type -> map[string]string

// fieldsOf returns the JSON field names of the struct dst points to.
func fieldsOf(dst any) map[string]string {
	t := reflect.TypeOf(dst).Elem()
	if m, ok := fieldNames.Load(t); ok {
		return m.(map[string]string)
	}
	m := make(map[string]string, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		m[name] = f.Name
	}
	fieldNames.Store(t, m)
	return m
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return &apiError{http.StatusBadRequest, "bad_json", fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, se)}
	case errors.As(err, &te):
		return &apiError{http.StatusBadRequest, "bad_json", fmt.Sprintf("field %s: want %v, got JSON %s", quote(te.Field), te.Type, te.Value)}
	case errors.Is(err, io.EOF):
		return &apiError{http.StatusBadRequest, "bad_json", "empty request body: want a JSON object"}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &apiError{http.StatusBadRequest, "bad_json", "malformed JSON: unexpected end of body"}
	}
	return &apiError{http.StatusBadRequest, "bad_json", "malformed JSON"}
}
