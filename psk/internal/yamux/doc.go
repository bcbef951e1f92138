// Package yamux is github.com/hashicorp/yamux v0.1.2, a stream multiplexer
// over one reliable connection, with four opt-in patches for package psk:
// Config.DirectWrites, Config.AsyncWindowUpdates, Config.DeferAck and
// Config.CloseTimeoutSinceData (PATCHES.md). The wire format is upstream's.
package yamux
