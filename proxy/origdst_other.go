//go:build !linux

package proxy

import (
	"errors"
	"net"
	"net/netip"
)

// OriginalDst is only available on Linux.
func OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("transparent mode needs Linux (SO_ORIGINAL_DST)")
}
