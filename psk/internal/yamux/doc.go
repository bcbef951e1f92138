// Package yamux is github.com/hashicorp/yamux v0.1.2, a stream multiplexer
// over one reliable connection, with two opt-in patches for package psk:
// Config.DirectWrites and Config.AsyncWindowUpdates (PATCHES.md). The wire
// format is upstream's.
package yamux
