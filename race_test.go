//go:build race

package tiercache

const raceEnabled = true
