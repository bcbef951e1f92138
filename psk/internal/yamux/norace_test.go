//go:build !race

package yamux

// raceEnabled reports whether the tests run under the race detector
// (milagro: TestSendData_VeryLarge sends less there).
const raceEnabled = false
