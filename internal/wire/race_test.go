//go:build race

package wire

// raceEnabled is true under -race, where decoding tens of MiB is slow.
const raceEnabled = true
