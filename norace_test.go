//go:build !race

package tiercache

const raceEnabled = false
