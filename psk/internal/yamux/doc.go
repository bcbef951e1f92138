// Package yamux is github.com/hashicorp/yamux v0.1.2, a stream multiplexer
// over one reliable connection, with patches for package psk (PATCHES.md):
// four opt-in settings (Config.DirectWrites, Config.AsyncWindowUpdates,
// Config.DeferAck, Config.CloseTimeoutSinceData) and fixes (among them a
// GoAway written before streams are refused, and a bound on ping answers).
// The wire format is upstream's.
package yamux
